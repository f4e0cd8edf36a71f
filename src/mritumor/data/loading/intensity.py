"""The intensity window of a slice: which raw values become 0 and 1, per channel.

numpy only, so that both the cache's torch preprocessing
(:func:`mritumor.data.loading.cache.preprocess_image`) and its numpy twin for the ONNX path
(:func:`mritumor.inference.arrays.preprocess_image`, which must not import torch) compute the
same statistics from one piece of code.

Methods (``Preprocessing.intensity``):

* ``percentile`` (the default): the ``clip_low``/``clip_high`` percentiles of all pixels,
  background included. The share of background (field of view, plane, zero padding) then moves
  the window: a slice padded with zeros is scaled differently from the same slice uncropped.
* ``foreground``: the same percentiles over the head only. The head is every pixel above
  ``floor + FOREGROUND_FRACTION × (ceiling − floor)``: ``floor`` is the channel's minimum (the
  background value: 0 in most files, but offsets occur), ``ceiling`` the ``clip_high``
  percentile of the pixels above the minimum. Taking the ceiling over the non-minimum pixels
  only makes the threshold, and so the whole result, exactly the same whatever amount of
  minimum-valued padding surrounds the head. 5 % of that range is above the noise of air in MR
  magnitude images and below the tissue of usual T1, T2 and FLAIR slices; a dark head pixel left
  out becomes 0, as the head's darkest 0.5 % do anyway. Every pixel below the threshold lies
  below the window's low end, so clipping alone sets the background to 0. When fewer than
  :data:`MIN_FOREGROUND` pixels pass (a blank or near-blank slice), percentiles over so few
  values would be noise: the channel falls back to the ``percentile`` window (all pixels).
"""

from __future__ import annotations

import numpy as np

INTENSITY_METHODS = ("percentile", "foreground")
FOREGROUND_FRACTION = 0.05  # of the robust range above the minimum; see the module's docstring
MIN_FOREGROUND = 64  # pixels (8 × 8): a count, not a share, so padding cannot change it


def intensity_window(
    flat: np.ndarray, method: str, clip_low: float, clip_high: float
) -> tuple[np.ndarray, np.ndarray]:
    """``flat``: (C, N) float32 pixel values of one slice → ``(low, high)``, (C,) float32: the
    values that map to 0 and 1 (everything outside is clipped)."""
    if method == "percentile":
        # numpy's partition-based percentile is several times faster than torch.quantile's sort
        low, high = np.percentile(flat, [clip_low, clip_high], axis=1).astype(np.float32)
        return low, high
    if method != "foreground":
        raise ValueError(f"intensity must be one of {INTENSITY_METHODS}, not {method!r}")
    lows, highs = np.empty(len(flat), np.float32), np.empty(len(flat), np.float32)
    for c, values in enumerate(flat):
        mask = foreground_mask(values, clip_high)
        head = values if mask is None else values[mask]
        lows[c], highs[c] = np.percentile(head, [clip_low, clip_high])
    return lows, highs


def foreground_mask(values: np.ndarray, clip_high: float) -> np.ndarray | None:
    """(N,) values of one channel → (N,) bool head mask, or None when it would be tiny."""
    floor = values.min()
    above = values[values > floor]
    if above.size < MIN_FOREGROUND:
        return None
    ceiling = np.percentile(above, clip_high)
    mask = values > floor + FOREGROUND_FRACTION * (ceiling - floor)
    return mask if np.count_nonzero(mask) >= MIN_FOREGROUND else None

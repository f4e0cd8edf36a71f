"""Pre- and post-processing of ``predict`` in numpy only, for the ONNX Runtime engine: with a
cached ONNX model, ``mritumor predict`` then never imports torch (seconds of start-up).

Each function mirrors a torch one and is tested against it (``tests/test_engines.py``):

* :func:`preprocess_image` ↔ :func:`mritumor.data.loading.cache.preprocess_image` (clip to percentiles
  of all pixels or of the foreground, both computed by :mod:`mritumor.data.loading.intensity`, scale to
  [0, 1], zero-pad to a centred square, antialiased bilinear resize, float16 rounding).
  The resize uses torch's own weights (``_upsample_bilinear2d_aa``, PIL's triangle filter), so
  the two differ by float32 rounding only: after the float16 rounding a pixel now and then lands
  one float16 step (≤ 4.9e-4) away, far below what moves a probability by 1e-4;
* :func:`evaluation_bag` ↔ :func:`mritumor.data.loading.datasets.bag_positions` (deterministic policies);
* :func:`hierarchical_probabilities` ↔ :func:`mritumor.models.hierarchical.hierarchical_probabilities`;
* :func:`mask_at_original_size` ↔ ``F.interpolate(bilinear, align_corners=False)`` + crop + > 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mritumor.data.loading.intensity import (
    intensity_window,  # numpy only: the cache's own statistics
)


def preprocess_image(image: np.ndarray, prep) -> np.ndarray:
    """(C, H, W) raw → (prep.channels, S, S) float32 holding float16 values in [0, 1]; ``prep``
    is a :class:`~mritumor.data.loading.cache.Preprocessing` or anything with its five fields."""
    array = match_channels(np.ascontiguousarray(image, dtype=np.float32), prep.channels)
    flat = array.reshape(array.shape[0], -1)
    low, high = intensity_window(flat, prep.intensity, prep.clip_low, prep.clip_high)
    low, high = low[:, None, None], high[:, None, None]
    # as the cache: a constant channel (high == low) maps to 0 instead of dividing by zero
    scaled = np.clip((array - low) / np.maximum(high - low, np.float32(1e-6)), 0, 1)
    return resize_square(scaled, prep.image_size).astype(np.float16).astype(np.float32)


def match_channels(array: np.ndarray, channels: int) -> np.ndarray:
    if array.shape[0] == channels:
        return array
    if array.shape[0] == 1:
        return np.broadcast_to(array, (channels, *array.shape[1:]))
    if channels == 1:
        return array.mean(axis=0, keepdims=True, dtype=np.float32)
    from mritumor.data.reading.io import SliceReadError

    raise SliceReadError(f"{array.shape[0]} channels cannot be turned into {channels}")


def resize_square(array: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (C, H, W) to a centred square, then antialiased bilinear resize to (C, S, S)."""
    channels, height, width = array.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = np.zeros((channels, side, side), dtype=np.float32)
    padded[:, top : top + height, left : left + width] = array
    if side == size:
        return padded
    weights = _aa_weights(side, size)  # (S, side): rows then columns, a separable filter
    return np.matmul(np.matmul(weights, padded), weights.T)


@lru_cache(maxsize=16)
def _aa_weights(in_size: int, out_size: int) -> np.ndarray:
    """torch's antialiased bilinear weights (aten ``_compute_indices_min_size_weights_aa``
    with the triangle filter): support scaled by the zoom factor when shrinking."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        j = np.arange(first, last)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * invscale))
        total = w.sum()
        weights[i, first:last] = w / total if total != 0 else w
    weights = weights.astype(np.float32)
    weights.setflags(write=False)  # shared by every call (lru_cache)
    return weights


@lru_cache(maxsize=16)
def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Plain bilinear (align_corners=False, no antialias) weights, as ``F.interpolate``'s."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        source = max(scale * (i + 0.5) - 0.5, 0.0)
        first = int(source)
        step = 1 if first < in_size - 1 else 0
        fraction = source - first
        weights[i, first] += 1.0 - fraction
        weights[i, first + step] += fraction
    weights.setflags(write=False)
    return weights


def mask_at_original_size(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(S, S) mask logits → (height, width) bool: the inverse of the cache's zero-pad-and-resize
    (resized back to the square bilinearly, the padding cropped, then > 0)."""
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape[-1] != side:
        weights = _bilinear_weights(logits.shape[-1], side)
        logits = weights @ logits @ weights.T
    return logits[top : top + height, left : left + width] > 0


def evaluation_bag(n_slices: int, bag_size: int, policy: str) -> list[int]:
    """The deterministic bags of :func:`mritumor.data.loading.datasets.bag_positions` (``uniform``,
    ``all``): evenly spaced slices, or all of them when there are no more than ``bag_size``."""
    if policy not in ("uniform", "all"):
        raise ValueError(f"evaluation bags are 'uniform' or 'all', not {policy!r}")
    if policy == "all" or n_slices <= bag_size:
        return list(range(n_slices))
    return np.linspace(0, n_slices - 1, bag_size).round().astype(int).tolist()


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def hierarchical_probabilities(
    type_logits: np.ndarray, grade_logits: np.ndarray, temperature: float = 1.0
) -> dict:
    """P(t), P(g|t), P(g) = Σ_t P(t) P(g|t) and its renormalised form; a type without any
    allowed grade (-inf everywhere) has P(g|t) = 0, so P(g) then sums to 1 − P(t)."""
    type_probs = softmax(np.asarray(type_logits, dtype=np.float32) / np.float32(temperature))
    grade_logits = np.asarray(grade_logits, dtype=np.float32)
    finite = np.isfinite(grade_logits)
    safe = np.where(finite, grade_logits, np.float32(-1e30))
    # a model trained without grades (figshare) has no grade axis to normalise over
    grade_given_type = softmax(safe) * finite if grade_logits.shape[-1] else safe * 0
    grade_e2e = np.einsum("bt,btg->bg", type_probs, grade_given_type)
    total = grade_e2e.sum(axis=-1, keepdims=True)
    return {
        "type": type_probs,
        "grade_given_type": grade_given_type,
        "grade_e2e": grade_e2e,
        "grade_e2e_normalised": grade_e2e / np.maximum(total, 1e-12),
    }

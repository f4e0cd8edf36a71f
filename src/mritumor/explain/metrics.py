"""Does an attribution map point at the tumour? Scores against a mask, and their aggregation.

* **share in mask**: Σ positive attribution inside the mask / Σ positive attribution anywhere.
  Negative values (regions whose occlusion made the class *more* likely) are not evidence for
  the prediction and are ignored. Compare it with the mask's share of the image (``mask_share``):
  a map spread uniformly scores exactly that.
* **pointing game** (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside the mask
  (optionally within ``tolerance`` pixels of it). With several equal maxima the first in row-major
  order counts. A map with no positive value points nowhere: a miss.

Both are undefined (None) for a slice without a mask or with an empty mask (no tumour visible).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensors(attribution, mask) -> tuple[torch.Tensor, torch.Tensor]:
    attribution = torch.as_tensor(np.asarray(attribution, dtype=np.float32)).squeeze()
    mask = torch.as_tensor(np.asarray(mask)).squeeze() > 0
    if attribution.shape != mask.shape or attribution.dim() != 2:
        raise ValueError(
            f"attribution {tuple(attribution.shape)} and mask {tuple(mask.shape)} must be the "
            "same 2-D shape"
        )
    return attribution, mask


def share_in_mask(attribution, mask) -> float | None:
    """Share of the positive attribution that falls inside the mask, in [0, 1].

    None when the mask is empty; 0.0 when the map has no positive value at all."""
    attribution, mask = _as_tensors(attribution, mask)
    if not mask.any():
        return None
    positive = attribution.clamp_min(0).double()
    total = positive.sum()
    if total <= 0:
        return 0.0
    return float(positive[mask].sum() / total)


def mask_share(mask) -> float:
    """The mask's share of the image: what a uniform map scores with :func:`share_in_mask`."""
    mask = torch.as_tensor(np.asarray(mask)).squeeze() > 0
    return float(mask.float().mean())


def pointing_game_hit(attribution, mask, tolerance: int = 0) -> bool | None:
    """Whether the map's (first) maximum lies inside the mask dilated by ``tolerance`` pixels
    (a square neighbourhood). None when the mask is empty."""
    attribution, mask = _as_tensors(attribution, mask)
    if not mask.any():
        return None
    if tolerance > 0:
        size = 2 * tolerance + 1
        mask = F.max_pool2d(mask[None, None].float(), size, stride=1, padding=tolerance)[0, 0] > 0
    if not (attribution > 0).any():
        return False
    row, column = divmod(int(attribution.argmax()), attribution.shape[1])
    return bool(mask[row, column])


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise_scores(records: Iterable[dict], group_key: str = "true_type") -> dict:
    """Aggregate per-slice scores, overall and per class.

    Each record has ``group_key`` (the class), ``method``, ``share_in_mask`` (float or None),
    ``pointing_hit`` (bool or None) and ``mask_share``. Returns, per method,
    ``{"all": stats, "per_class": {class: stats}}`` where stats hold ``n_slices`` (explained),
    ``n_with_mask`` (slices whose mask is non-empty, the only ones scored), the mean and median
    share in mask, the mean mask share (the uniform-map reference), pointing-game hits and hit
    rate. Rates and means over no slice are None.
    """
    by_method: dict[str, list[dict]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    summary = {}
    for method, rows in by_method.items():
        classes = sorted({str(r[group_key]) for r in rows})
        summary[method] = {
            "all": _stats(rows),
            "per_class": {c: _stats([r for r in rows if str(r[group_key]) == c]) for c in classes},
        }
    return summary


def _stats(rows: list[dict]) -> dict:
    scored = [r for r in rows if r.get("share_in_mask") is not None]
    shares = [float(r["share_in_mask"]) for r in scored]
    hits = [bool(r["pointing_hit"]) for r in scored if r.get("pointing_hit") is not None]
    return {
        "n_slices": len(rows),
        "n_with_mask": len(scored),
        "share_in_mask_mean": _mean(shares),
        "share_in_mask_median": float(np.median(shares)) if shares else None,
        "mask_share_mean": _mean([float(r["mask_share"]) for r in scored]),
        "pointing_game_hits": int(sum(hits)),
        "pointing_game_hit_rate": float(np.mean(hits)) if hits else None,
    }

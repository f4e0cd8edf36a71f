"""Per-slice segmentation metrics (Dice, IoU, HD95) via MONAI, and per-patient averages.

Masks are binary slices shaped (N, H, W) or (N, 1, H, W), NumPy arrays or torch tensors. A
pixel is foreground when its value is > 0.5, which reads 0/1, boolean and 0/255 masks alike
and thresholds probabilities at 0.5.

Empty-mask conventions (state them in a paper's methods section):
    * Dice/IoU: prediction and target both empty -> ``empty_value`` (default 1.0: correctly
      finding no tumour is a perfect answer); exactly one empty -> 0.
    * HD95: NaN when either mask is empty (a distance to nothing is undefined);
      ``per_patient_mean`` skips NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

# MONAI is imported inside the functions: ``import monai`` loads its whole package (networks,
# torchvision) in ~5 s, which commands that only score classifiers should not pay.


def binary_slices(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float tensor of 0/1, MONAI's (batch, channel, spatial) layout."""
    masks = masks if torch.is_tensor(masks) else torch.as_tensor(np.asarray(masks))
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) or (N, 1, H, W), got {tuple(masks.shape)}")
    return (masks.detach().cpu().float() > 0.5).float().unsqueeze(1)


def _paired(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = binary_slices(pred), binary_slices(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return pred, target


def _is_empty(masks: torch.Tensor) -> np.ndarray:
    return (masks.flatten(start_dim=1).sum(dim=1) == 0).numpy()


def dice_iou(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    empty_value: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice Dice and IoU, each a float64 array (N,).

    Both masks empty -> ``empty_value``; only one empty -> 0 (MONAI's ``ignore_empty=False``).
    """
    from monai.metrics import compute_dice, compute_iou

    pred, target = _paired(pred, target)
    dice_t = compute_dice(pred, target, include_background=True, ignore_empty=False)
    iou_t = compute_iou(pred, target, include_background=True, ignore_empty=False)
    dice, iou = dice_t[:, 0].double().numpy(), iou_t[:, 0].double().numpy()
    both_empty = _is_empty(pred) & _is_empty(target)
    dice[both_empty] = empty_value
    iou[both_empty] = empty_value
    return dice, iou


def hd95(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    spacing: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Per-slice 95th-percentile symmetric Hausdorff distance (N,), in pixels or, given
    ``spacing`` (one number or (row, column) sizes, e.g. mm), in those units.

    NaN where either mask is empty; only the other slices are passed to MONAI, which would
    otherwise warn and return inf/NaN for them.
    """
    from monai.metrics import compute_hausdorff_distance

    pred, target = _paired(pred, target)
    distances = np.full(len(pred), np.nan)
    both_filled = ~(_is_empty(pred) | _is_empty(target))
    if both_filled.any():
        selected = torch.from_numpy(both_filled)
        with warnings.catch_warnings():
            # MONAI 1.6 calls its own deprecated ``always_return_as_numpy`` argument internally;
            # the FutureWarning is MONAI's business, not the user's.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            result = compute_hausdorff_distance(
                pred[selected],
                target[selected],
                include_background=True,
                percentile=95,
                spacing=spacing,
            )
        distances[both_filled] = result[:, 0].double().numpy()
    return distances


def per_patient_mean(values: np.ndarray, patient_ids: Sequence[str]) -> dict[str, float]:
    """Mean of per-slice ``values`` per patient, NaN ignored (NaN when all of a patient's values
    are NaN); patients in order of first appearance."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != len(patient_ids):
        raise ValueError(f"{len(values)} values but {len(patient_ids)} patient ids")
    means = pd.Series(values).groupby(np.asarray(patient_ids), sort=False).mean()
    return {str(patient): float(mean) for patient, mean in means.items()}

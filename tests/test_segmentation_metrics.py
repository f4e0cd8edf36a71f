"""Per-slice Dice / IoU / HD95 against hand-computed masks and direct MONAI calls; empty-mask
conventions; per-patient means."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU, compute_hausdorff_distance

from mritumor.evaluation.segmentation import dice_iou, hd95, per_patient_mean


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


def random_blobs(n: int, seed: int, size: int = 32) -> np.ndarray:
    """(n, 1, size, size) masks, each a random rectangle plus speckle, never empty."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, 1, size, size)) > 0.97).astype(np.float32)
    for i in range(n):
        top, left = rng.integers(0, size - 10, 2)
        height, width = rng.integers(3, 10, 2)
        masks[i, 0, top : top + height, left : left + width] = 1
    return masks


def test_overlapping_squares_by_hand():
    pred = square(20, 0, 0, 10)[None]  # 100 pixels
    target = square(20, 5, 5, 10)[None]  # 100 pixels, overlap rows/cols 5..9 = 25 pixels
    dice, iou = dice_iou(pred, target)
    assert dice[0] == pytest.approx(2 * 25 / (100 + 100))  # 0.25
    assert iou[0] == pytest.approx(25 / (100 + 100 - 25))  # 1/7


def test_dice_and_iou_match_monai_metric_classes():
    pred, target = random_blobs(8, seed=1), random_blobs(8, seed=2)
    dice, iou = dice_iou(torch.from_numpy(pred), target[:, 0])  # (N,1,H,W) tensor vs (N,H,W)
    expected_dice = DiceMetric(include_background=True, reduction="none")(
        torch.from_numpy(pred), torch.from_numpy(target)
    )
    expected_iou = MeanIoU(include_background=True, reduction="none")(
        torch.from_numpy(pred), torch.from_numpy(target)
    )
    np.testing.assert_allclose(dice, expected_dice[:, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(iou, expected_iou[:, 0].numpy(), rtol=1e-6)
    assert dice.shape == iou.shape == (8,)
    assert np.all((0 < dice) & (dice < 1)) and np.all(iou <= dice)  # IoU = D / (2 - D) <= D


def test_empty_mask_conventions():
    empty, blob = np.zeros((16, 16)), square(16, 2, 2, 5)
    pred = np.stack([empty, blob, empty])
    target = np.stack([empty, empty, blob])
    dice, iou = dice_iou(pred, target)
    np.testing.assert_array_equal(dice, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(iou, [1.0, 0.0, 0.0])
    dice, iou = dice_iou(pred, target, empty_value=np.nan)
    assert math.isnan(dice[0]) and math.isnan(iou[0]) and dice[1] == 0.0


def test_0_255_and_boolean_masks_read_like_0_1():
    pred, target = random_blobs(4, seed=3)[:, 0], random_blobs(4, seed=4)[:, 0]
    reference = dice_iou(pred, target)
    as_png = dice_iou((pred * 255).astype(np.uint8), target.astype(bool))
    np.testing.assert_array_equal(reference[0], as_png[0])
    np.testing.assert_array_equal(reference[1], as_png[1])


def test_hd95_of_two_points_by_hand():
    pred = np.zeros((1, 12, 12))
    target = np.zeros((1, 12, 12))
    pred[0, 2, 4] = 1
    target[0, 5, 4] = 1  # three rows below
    assert hd95(pred, target)[0] == pytest.approx(3.0)
    assert hd95(pred, target, spacing=(2.0, 0.5))[0] == pytest.approx(6.0)  # 2 mm rows


def test_hd95_matches_monai_and_is_nan_for_empty_masks():
    pred, target = random_blobs(6, seed=5), random_blobs(6, seed=6)
    pred[1] = 0  # empty prediction
    target[3] = 0  # empty target
    pred[4] = target[4] = 0  # both empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI "all 0" / deprecation warnings leak out
        distances = hd95(pred, torch.from_numpy(target), spacing=1.5)
    assert np.isnan(distances[[1, 3, 4]]).all()
    for i in (0, 2, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = compute_hausdorff_distance(
                torch.from_numpy(pred[i : i + 1]),
                torch.from_numpy(target[i : i + 1]),
                include_background=True,
                percentile=95,
                spacing=1.5,
            )
        assert distances[i] == pytest.approx(float(expected[0, 0]))
        assert distances[i] > 0


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError):
        dice_iou(np.zeros((2, 8, 8)), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError):
        hd95(np.zeros((8, 8)), np.zeros((8, 8)))  # one slice must still be (1, H, W)


def test_per_patient_mean_ignores_nan():
    values = np.array([0.8, np.nan, 0.6, 0.9, np.nan, 0.3])
    patients = ["P1", "P1", "P1", "P2", "P3", "P2"]
    means = per_patient_mean(values, patients)
    assert list(means) == ["P1", "P2", "P3"]
    assert means["P1"] == pytest.approx(0.7)
    assert means["P2"] == pytest.approx(0.6)
    assert math.isnan(means["P3"])
    with pytest.raises(ValueError):
        per_patient_mean(values, patients[:-1])


def test_report_separates_tumour_slices_from_tumour_free_ones():
    """Dice over all slices counts a correctly empty prediction as 1: with tumour-free slices
    (LGG stacks) the report adds Dice over the tumour slices and the share of tumour-free slices
    predicted empty; without them (figshare) neither appears."""
    from mritumor.evaluation.multitask import segmentation_report

    def square(top, left, side, size=8):
        mask = np.zeros((size, size), bool)
        mask[top : top + side, left : left + side] = True
        return mask

    empty = np.zeros((8, 8), bool)
    true = [square(0, 0, 4), square(2, 2, 4), empty, empty, empty, square(0, 0, 2)]
    pred = [square(0, 0, 4), square(2, 2, 2), empty, empty, square(5, 5, 2), empty]
    prediction = {
        "has_mask": np.array([True] * 6 + [False]),
        "true_masks": np.stack(true + [empty]),
        "pred_masks": np.stack(pred + [square(0, 0, 3)]),
    }
    patients = np.array(["p1", "p1", "p1", "p2", "p2", "p2", "p3"])
    result = segmentation_report(prediction, patients, n_boot=50, seed=0)
    headline, report = result["headline"], result["report"]
    tumour_dice = [1.0, 2 * 4 / (16 + 4), 0.0]  # identical; 2×2 inside 4×4; missed entirely
    all_dice = [1.0, 0.4, 1.0, 1.0, 0.0, 0.0]  # both empty → 1; a false positive → 0
    assert headline["dice"]["value"] == pytest.approx(np.mean(all_dice))
    assert headline["dice_tumour_slices"]["value"] == pytest.approx(np.mean(tumour_dice))
    assert headline["empty_slices_predicted_empty"]["value"] == pytest.approx(2 / 3)
    assert report["n_tumour_slices"] == 3 and report["n_tumour_free_slices"] == 3
    assert report["n_slices_with_mask"] == 6
    low, high = headline["dice_tumour_slices"]["low"], headline["dice_tumour_slices"]["high"]
    # by hand: a resample of the two scored patients is p1 twice (tumour Dice 1, 0.4: mean 0.7),
    # p2 twice (0) or one of each (7/15); each extreme has probability 1/4, so 50 draws put well
    # over 2.5 % of them at either end and the percentile interval is [0, 0.7]
    assert low == pytest.approx(0.0) and high == pytest.approx(0.7)

    only_tumour = {key: value[[0, 1, 5]] for key, value in prediction.items()}
    result = segmentation_report(only_tumour, patients[[0, 1, 5]], n_boot=20, seed=0)
    assert "dice_tumour_slices" not in result["headline"]
    assert "n_tumour_slices" not in result["report"]
    assert result["headline"]["dice"]["value"] == pytest.approx(np.mean(tumour_dice))

"""`mritumor train-multitask --variant all` end to end on tiny synthetic data: every artifact,
numbers that agree with an independent recomputation, C re-using A, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.reading.readers import read_catalog
from mritumor.evaluation.segmentation import dice_iou
from mritumor.models.multitask import VARIANTS
from mritumor.tasks.multitask import model_from_checkpoint

SIZE = 32


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("mt") / "data",
        patients_per_class=4,
        slices_per_patient=3,
        image_size=SIZE,
        seed=2,
    )


def train(data_root: Path, outdir: Path, *extra: str) -> int:
    return main(
        [
            "-q", "train-multitask", "--data_root", str(data_root), "--outdir", str(outdir),
            "--backbone", "small_cnn", "--image_size", str(SIZE), "--epochs", "2",
            "--batch_size", "16", "--n_boot", "50", "--patience", "0", "--augment", "none",
            "--num_workers", "0", "--val_frac", "0.25", "--test_frac", "0.3", *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def all_variants(cohort, tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("mt") / "run"
    assert train(cohort, outdir, "--variant", "all") == 0
    return outdir


def test_every_variant_writes_its_artifacts(all_variants):
    for variant in VARIANTS:
        folder = all_variants / variant
        metrics = json.loads((folder / "test_metrics.json").read_text())
        json.loads((folder / "test_report.json").read_text())
        assert metrics["variant"] == variant
        segments, classifies = variant != "B", variant != "A"
        assert ("dice" in metrics) == segments
        assert ("tumor_type_accuracy" in metrics) == classifies
        pngs = ["overlays.png"] * segments + [
            "roc_tumor_type_ovr.png",
            "pr_tumor_type_ovr.png",
            "confusion_tumor_type.png",
            "reliability_tumor_type.png",
        ] * classifies
        for name in pngs:
            with Image.open(folder / name) as image:
                assert image.size[0] > 100 and np.asarray(image).std() > 0
        assert load_checkpoint(folder / "best.pt")["model_config"]["variant"] == variant
    assert (all_variants / "config.yaml").is_file() and (all_variants / "split.json").is_file()


def test_comparison_table_lists_the_seven_with_the_seed_numbers(all_variants):
    table = pd.read_csv(all_variants / "comparison.csv")
    assert list(table["variant"]) == list(VARIANTS)
    assert table.loc[table.variant == "E", "seed_dice"].item() == pytest.approx(0.7482)
    assert np.isnan(table.loc[table.variant == "A", "accuracy"].item())
    for variant in VARIANTS:
        metrics = json.loads((all_variants / variant / "test_metrics.json").read_text())
        if "dice" in metrics:
            row = table[table.variant == variant]
            assert row["dice"].item() == pytest.approx(metrics["dice"]["value"])
    markdown = (all_variants / "comparison.md").read_text()
    assert markdown.count("\n|") == 1 + 7  # separator + seven rows after the header


def test_metrics_match_the_predictions_file(all_variants):
    """Dice from predictions.csv and sklearn accuracy recomputed; per slice and clustered CI."""
    folder = all_variants / "D"
    metrics = json.loads((folder / "test_metrics.json").read_text())
    frame = pd.read_csv(folder / "predictions.csv")
    assert metrics["dice"]["value"] == pytest.approx(frame["dice"].mean())
    accuracy = accuracy_score(frame["true_type"], frame["pred_type"])
    assert metrics["tumor_type_accuracy"]["value"] == pytest.approx(accuracy)
    low, high = metrics["tumor_type_accuracy"]["low"], metrics["tumor_type_accuracy"]["high"]
    assert low <= accuracy <= high
    probabilities = frame.filter(like="p_type_").to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_dice_in_predictions_is_recomputable_from_the_checkpoint(cohort, all_variants):
    """Reload best.pt, predict the test slices again, score with MONAI: the same Dice per slice
    and the same (temperature-scaled) class probabilities as predictions.csv."""
    folder = all_variants / "E"
    checkpoint = load_checkpoint(folder / "best.pt")
    model = model_from_checkpoint(checkpoint)
    frame = pd.read_csv(folder / "predictions.csv")
    catalog = read_catalog(cohort)
    cache = SliceCache.build(catalog, Preprocessing(image_size=SIZE, channels=1), progress=False)
    position = {path: i for i, path in enumerate(cache.catalog.table["image"].astype(str))}
    rows = [position[path] for path in frame["image"]]
    images = torch.stack([cache.image(r) for r in rows])
    truth = torch.stack([cache.mask(r) for r in rows])[:, 0].numpy()
    with torch.no_grad():
        out = model(images)
    dice, _ = dice_iou((out["mask_logits"][:, 0] > 0).numpy(), truth)
    np.testing.assert_allclose(frame["dice"].to_numpy(), dice, atol=1e-6)
    probs = torch.softmax(out["class_logits"] / checkpoint["temperature"], dim=1).numpy()
    np.testing.assert_allclose(frame.filter(like="p_type_").to_numpy(), probs, atol=1e-5)


def test_variant_c_keeps_the_segmentation_of_a(all_variants):
    a = pd.read_csv(all_variants / "A" / "predictions.csv")
    c = pd.read_csv(all_variants / "C" / "predictions.csv")
    np.testing.assert_allclose(c["dice"].to_numpy(), a["dice"].to_numpy())
    a_state = load_checkpoint(all_variants / "A" / "best.pt")["model_state"]
    c_state = load_checkpoint(all_variants / "C" / "best.pt")["model_state"]
    for key, value in a_state.items():
        assert torch.equal(value, c_state[key]), key


def test_data_without_masks_is_refused(tmp_path, capsys):
    for patient in ("a1", "a2", "b1", "b2"):
        folder = tmp_path / "data" / ("typea" if patient.startswith("a") else "typeb") / patient
        folder.mkdir(parents=True)
        Image.fromarray(np.full((SIZE, SIZE), 90, np.uint8)).save(folder / "s0.png")
    assert train(tmp_path / "data", tmp_path / "run", "--variant", "D") == 2
    assert "no tumour masks" in capsys.readouterr().err


def test_c_refuses_a_stage_one_checkpoint_of_another_variant(
    cohort, all_variants, tmp_path, capsys
):
    code = train(
        cohort, tmp_path / "c", "--variant", "C", "--seg_ckpt", str(all_variants / "D" / "best.pt")
    )
    assert code == 2
    assert "not a variant-A checkpoint" in capsys.readouterr().err


def test_uncertainty_is_fitted_and_its_test_report_matches_the_predictions(all_variants):
    """best.pt holds the OOD detector and conformal scores; uncertainty.json's coverage, set
    size and risk-coverage equal what predictions.csv gives with the stored threshold."""
    from mritumor.evaluation.uncertainty import set_threshold

    folder = all_variants / "D"
    state = load_checkpoint(folder / "best.pt")["uncertainty"]
    report = json.loads((folder / "uncertainty.json").read_text())
    frame = pd.read_csv(folder / "predictions.csv")
    classes = [c.removeprefix("p_type_") for c in frame.filter(like="p_type_").columns]
    probs = frame[[f"p_type_{c}" for c in classes]].to_numpy()
    truth = frame["true_type"].map(classes.index).to_numpy()
    threshold = set_threshold(state)
    members = (1 - probs) <= threshold + 1e-12  # lac sets
    members[np.arange(len(probs)), probs.argmax(axis=1)] = True
    conformal = report["conformal"]
    assert conformal["nominal_coverage"] == 0.9 and conformal["method"] == "lac"
    assert conformal["coverage"] == pytest.approx(
        members[np.arange(len(truth)), truth].mean(), abs=1e-6
    )
    assert conformal["mean_set_size"] == pytest.approx(members.sum(axis=1).mean(), abs=1e-6)
    correct = probs.argmax(axis=1) == truth
    order = np.argsort(-probs.max(axis=1), kind="stable")
    aurc = np.mean(np.cumsum(~correct[order]) / np.arange(1, len(order) + 1))
    assert report["selective"]["aurc"] == pytest.approx(aurc, abs=1e-4)  # csv rounds probabilities
    assert (folder / "risk_coverage.png").stat().st_size > 0
    assert "uncertainty" not in load_checkpoint(all_variants / "A" / "best.pt")  # no classifier

"""`mritumor train-hierarchical` end to end on synthetic data: it learns, and writes every artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset

SEED_ARTIFACTS = [
    "best.pt",
    "test_metrics.json",
    "test_report.json",
    "roc_tumor_type_ovr.png",
    "pr_tumor_type_ovr.png",
    "roc_grade_e2e_ovr.png",
    "pr_grade_e2e_ovr.png",
    "curves_summary.json",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("h") / "data",
        patients_per_class=12,
        slices_per_patient=4,
        image_size=64,
        seed=1,
    )


def train(data_root: Path, outdir: Path, *extra: str) -> int:
    return main(
        [
            "-q",
            "train-hierarchical",
            "--data_root",
            str(data_root),
            "--outdir",
            str(outdir),
            "--epochs",
            "15",
            "--batch_size",
            "2",
            "--bag_size",
            "4",
            "--backbone",
            "small_cnn",
            "--image_size",
            "64",
            "--lr",
            "1e-3",
            "--augment",
            "none",
            "--test_frac",
            "0.3",
            "--val_frac",
            "0.2",
            "--n_boot",
            "100",
            "--patience",
            "0",
            "--accelerator",
            "cpu",
            *extra,
        ]
    )


def test_learns_types_and_writes_every_seed_artifact(cohort: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert train(cohort, out) == 0
    for name in SEED_ARTIFACTS + [
        "config.yaml",
        "split.json",
        "predictions.csv",
        "confusion_tumor_type.png",
        "confusion_grade_e2e.png",
        "reliability_tumor_type.png",
    ]:
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        pixels = np.asarray(Image.open(png).convert("L"))
        assert pixels.std() > 5, png  # a drawn figure, not a blank canvas
    metrics = json.loads((out / "test_metrics.json").read_text())
    n = metrics["n_patients"]
    assert n >= 10
    # 3 types (chance ≈ 0.4 for the most common): the heads must be wired right to beat this
    # (64 px: at 48 px the synthetic textures are too small and accuracy hovers around 0.65)
    assert metrics["tumor_type_accuracy"]["value"] >= 0.7, metrics["tumor_type_accuracy"]
    low, high = metrics["tumor_type_accuracy"]["low"], metrics["tumor_type_accuracy"]["high"]
    assert low <= metrics["tumor_type_accuracy"]["value"] <= high
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == n
    recomputed = (predictions["true_type"] == predictions["pred_type"]).mean()
    assert recomputed == pytest.approx(metrics["tumor_type_accuracy"]["value"])
    p_type = predictions.filter(like="p_type_").to_numpy()
    np.testing.assert_allclose(p_type.sum(axis=1), 1, atol=1e-5)
    assert set(predictions["true_grade"].dropna().astype(str)) <= {"1", "2", "3"}
    checkpoint = load_checkpoint(out / "best.pt")
    assert {
        "model_state",
        "labels",
        "encoder_config",
        "temperature",
        "metadata",
        "training",
    } <= set(checkpoint)
    assert checkpoint["labels"]["pairs"] == [
        ["astrocytoma", "2"],
        ["astrocytoma", "3"],
        ["meningioma", "1"],
        ["meningioma", "2"],
        ["pituitary", "1"],
    ]
    split = json.loads((out / "split.json").read_text())
    assert set(split["test"]) == set(predictions["patient_id"])
    report = json.loads((out / "test_report.json").read_text())
    assert "grade_conditional" in report and report["skipped"] == {}
    # uncertainty: type sets per patient from the stored conformal scores, as predictions.csv says
    from mritumor.evaluation.uncertainty import set_threshold

    state = checkpoint["uncertainty"]
    uncertainty = json.loads((out / "uncertainty.json").read_text())
    classes = [c.removeprefix("p_type_") for c in predictions.filter(like="p_type_").columns]
    truth = predictions["true_type"].map(classes.index).to_numpy()
    members = (1 - p_type) <= set_threshold(state) + 1e-12
    members[np.arange(len(p_type)), p_type.argmax(axis=1)] = True
    covered = members[np.arange(len(truth)), truth].mean()
    assert uncertainty["conformal"]["coverage"] == pytest.approx(covered, abs=1e-6)
    assert uncertainty["conformal"]["mean_set_size"] == pytest.approx(
        members.sum(1).mean(), abs=1e-6
    )
    assert uncertainty["grade_conformal"]["n"] == predictions["true_grade"].notna().sum()
    assert uncertainty["ood"]["threshold"] == pytest.approx(state["ood"]["threshold"])


def test_dataset_without_grades_skips_grade_artifacts_with_reason(tmp_path: Path, capsys):
    root = write_synthetic_dataset(
        tmp_path / "data",
        patients_per_class=4,
        slices_per_patient=3,
        image_size=32,
        classes=(("meningioma", "1"), ("pituitary", "1")),
        seed=2,
    )
    for folder in root.iterdir():  # strip the grade from the class folder names, like Figshare
        folder.rename(folder.with_name(folder.name.split("-g")[0]))
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train-hierarchical",
                "--data_root",
                str(root),
                "--outdir",
                str(out),
                "--epochs",
                "1",
                "--backbone",
                "small_cnn",
                "--image_size",
                "32",
                "--bag_size",
                "3",
                "--n_boot",
                "50",
                "--test_frac",
                "0.25",
                "--accelerator",
                "cpu",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert "no grades" in metrics["grade_skipped"] and "grade_e2e_accuracy" not in metrics
    assert (
        not (out / "roc_grade_e2e_ovr.png").exists() and (out / "roc_tumor_type_ovr.png").exists()
    )
    # predict on a patient of such a model (both engines): type only, no grade fields
    patient = next(next(root.iterdir()).iterdir())
    for engine in ("torch", "onnx"):
        capsys.readouterr()
        argv = ["-q", "predict", "--checkpoint", str(out / "best.pt"), "--input", str(patient)]
        assert main([*argv, "--engine", engine]) == 0
        (record,) = json.loads(capsys.readouterr().out)["patients"]
        assert sum(record["type_probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert "grade_probabilities" not in record and "grade_prediction_set" not in record


def test_cross_validation_writes_folds_and_summary(cohort: Path, tmp_path: Path):
    out = tmp_path / "cv"
    assert (
        main(
            [
                "-q",
                "train-hierarchical",
                "--data_root",
                str(cohort),
                "--outdir",
                str(out),
                "--epochs",
                "1",
                "--backbone",
                "small_cnn",
                "--image_size",
                "32",
                "--bag_size",
                "2",
                "--n_boot",
                "20",
                "--cv",
                "2",
                "--accelerator",
                "cpu",
                "--pooling",
                "mean",
            ]
        )
        == 0
    )
    tested = []
    for fold in range(2):
        assert (out / f"fold_{fold}" / "test_metrics.json").is_file()
        tested += json.loads((out / f"fold_{fold}" / "split.json").read_text())["test"]
    assert len(tested) == len(set(tested)) == 60
    summary = json.loads((out / "cv_summary.json").read_text())
    accuracies = [
        json.loads((out / f"fold_{k}" / "test_metrics.json").read_text())["tumor_type_accuracy"][
            "value"
        ]
        for k in range(2)
    ]
    key = next(k for k in summary if "tumor_type_accuracy" in k and "value" in k)
    assert summary[key]["mean"] == pytest.approx(np.mean(accuracies))

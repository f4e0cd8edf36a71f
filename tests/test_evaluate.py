"""`mritumor evaluate`: a trained checkpoint on a second cohort gives the training run's
artifacts, with metrics that agree with an independent recomputation from predictions.csv;
mismatched classes and channels are refused clearly, unknown grades become unknown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.data.synthetic import write_synthetic_dataset

SIZE = 32
TRAIN = {
    "hierarchical": [
        "train-hierarchical", "--bag_size", "4", "--batch_size", "4", "--n_boot", "20",
        "--accelerator", "cpu",
    ],
    "multitask": ["train-multitask", "--variant", "D", "--batch_size", "16", "--n_boot", "20"],
}  # fmt: skip
NOT_ARTIFACTS = {"best.pt", "checkpoints", "logs"}  # the model itself and training state


def trained(tmp_path_factory, task: str) -> Path:
    """A tiny checkpoint trained once per test session (the same helper as test_predict's)."""
    base = tmp_path_factory.getbasetemp() / "mritumor-trained"
    checkpoint = base / task / "best.pt"
    if not checkpoint.is_file():
        data = base / "data"
        if not data.is_dir():
            write_synthetic_dataset(
                data, patients_per_class=2, slices_per_patient=4, image_size=SIZE, seed=1
            )
        common = [
            "--data_root", str(data), "--outdir", str(base / task), "--backbone", "small_cnn",
            "--image_size", str(SIZE), "--epochs", "1", "--augment", "none", "--patience", "0",
            "--num_workers", "0", "--val_frac", "0.2", "--test_frac", "0.3",
        ]  # fmt: skip
        assert main(["-q", *TRAIN[task], *common]) == 0
    return checkpoint


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> Path:
    """A second cohort: another seed, other patients (prefix 'ext')."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ext") / "data",
        patients_per_class=2,
        slices_per_patient=3,
        image_size=40,
        seed=21,
        patient_prefix="ext",
    )


def evaluate(checkpoint: Path, data: Path, outdir: Path, *extra: str) -> int:
    return main(
        ["-q", "evaluate", "--checkpoint", str(checkpoint), "--data_root", str(data),
         "--outdir", str(outdir), "--n_boot", "30", "--n_overlays", "2", *extra]
    )  # fmt: skip


def artifacts(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - NOT_ARTIFACTS


def test_hierarchical_external_validation(tmp_path_factory, external, tmp_path, capsys):
    checkpoint = trained(tmp_path_factory, "hierarchical")
    out = tmp_path / "eval"
    assert evaluate(checkpoint, external, out) == 0
    assert "evaluated 10 patient(s)" in capsys.readouterr().out
    assert artifacts(checkpoint.parent) <= artifacts(out), artifacts(checkpoint.parent) - artifacts(out)  # fmt: skip
    metrics = json.loads((out / "test_metrics.json").read_text())
    table = pd.read_csv(out / "predictions.csv")
    # every patient of the cohort is a test patient
    assert sorted(table["patient_id"]) == sorted(p.name for p in external.glob("*/*"))
    assert metrics["n_patients"] == 10
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["test"]) == sorted(table["patient_id"]) and not split["train"]
    # independent recomputation (sklearn) from predictions.csv
    types = [c[len("p_type_") :] for c in table.columns if c.startswith("p_type_")]
    probs = table[[f"p_type_{t}" for t in types]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (table["pred_type"] == np.array(types)[probs.argmax(axis=1)]).all()
    accuracy = accuracy_score(table["true_type"], table["pred_type"])
    assert metrics["tumor_type_accuracy"]["value"] == pytest.approx(accuracy)
    y = table["true_type"].map(types.index).to_numpy()
    auc = roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(len(types)))
    assert metrics["tumor_type_macro_auc"]["value"] == pytest.approx(auc, abs=1e-6)
    graded = table[table["true_grade"].notna()]
    grade_accuracy = accuracy_score(
        graded["true_grade"].astype(int).astype(str), graded["pred_grade_e2e"].astype(str)
    )
    assert metrics["grade_e2e_accuracy"]["value"] == pytest.approx(grade_accuracy)
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["task"] == "hierarchical" and summary["n_patients"] == 10
    assert summary["temperature"] == pytest.approx(load_checkpoint(checkpoint)["temperature"])
    # the same patient through `mritumor predict` (its own reading and preprocessing)
    first = table.iloc[0]
    patient_dir = next(external.glob(f"*/{first['patient_id']}"))
    capsys.readouterr()
    assert (
        main(["-q", "predict", "--checkpoint", str(checkpoint), "--input", str(patient_dir)]) == 0
    )
    record = json.loads(capsys.readouterr().out)["patients"][0]
    for t in types:
        assert record["type_probabilities"][t] == pytest.approx(first[f"p_type_{t}"], abs=1e-6)


def test_split_file_restricts_to_its_test_part(tmp_path_factory, external, tmp_path):
    checkpoint = trained(tmp_path_factory, "hierarchical")
    patients = sorted(p.name for p in external.glob("*/*"))
    split = {"train": patients[:6], "val": patients[6:7], "test": patients[7:], "strategy": "given"}
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = tmp_path / "eval"
    assert evaluate(checkpoint, external, out, "--split_file", str(tmp_path / "split.json")) == 0
    assert sorted(pd.read_csv(out / "predictions.csv")["patient_id"]) == patients[7:]


def test_multitask_external_validation(tmp_path_factory, external, tmp_path):
    checkpoint = trained(tmp_path_factory, "multitask")
    out = tmp_path / "eval"
    assert evaluate(checkpoint, external, out, "--no_calibration") == 0
    assert artifacts(checkpoint.parent) <= artifacts(out), artifacts(checkpoint.parent) - artifacts(out)  # fmt: skip
    metrics = json.loads((out / "test_metrics.json").read_text())
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 30  # 10 patients × 3 slices, one row per slice
    assert table["patient_id"].str.startswith("ext-").all()
    assert metrics["tumor_type_accuracy"]["value"] == pytest.approx(
        accuracy_score(table["true_type"], table["pred_type"])
    )
    assert metrics["dice"]["value"] == pytest.approx(table["dice"].mean())
    assert json.loads((out / "evaluation.json").read_text())["temperature"] == 1.0


def test_unknown_types_and_channels_are_refused(tmp_path_factory, external, tmp_path, capsys):
    checkpoint = trained(tmp_path_factory, "hierarchical")
    renamed = tmp_path / "renamed"
    shutil.copytree(external, renamed)
    (renamed / "pituitary-g1").rename(renamed / "glioblastoma-g4")
    capsys.readouterr()
    assert evaluate(checkpoint, renamed, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "mritumor: error:" in err and "glioblastoma" in err and "pituitary" not in err.split("knows")[0]  # fmt: skip
    rgb = write_synthetic_dataset(
        tmp_path / "rgb", patients_per_class=1, slices_per_patient=2, image_size=32, channels=3
    )
    assert evaluate(checkpoint, rgb, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "3-channel" in err and "1-channel" in err


def test_unknown_grade_becomes_unknown_with_a_warning(tmp_path_factory, external, tmp_path, capsys):  # fmt: skip
    checkpoint = trained(tmp_path_factory, "hierarchical")
    renamed = tmp_path / "renamed"
    shutil.copytree(external, renamed)
    (renamed / "astrocytoma-g3").rename(renamed / "astrocytoma-g4")
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data_root", str(renamed),
                 "--outdir", str(out), "--n_boot", "20"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "WARNING" in err and "4 (2 patient(s))" in err
    assert json.loads((out / "evaluation.json").read_text())["unknown_grades"] == {"4": 2}
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n_patients"] == 10 and metrics["n_patients_with_grade"] == 8
    table = pd.read_csv(out / "predictions.csv")
    assert table.loc[table["patient_id"].str.contains("g3"), "true_grade"].isna().all()

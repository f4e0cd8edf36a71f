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
from mritumor.data.acquire.synthetic import write_synthetic_dataset

SIZE = 32
NOT_ARTIFACTS = {
    "best.pt",
    "checkpoints",
    "logs",
    ".mritumor_onnx",
}  # the model, training state, its ONNX cache


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
    # checkpoints are inputs (other test files leave copies beside the session ones)
    return {p.name for p in folder.iterdir() if p.suffix != ".pt"} - NOT_ARTIFACTS


def test_hierarchical_external_validation(hierarchical_checkpoint, external, tmp_path, capsys):
    checkpoint = hierarchical_checkpoint
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


def test_split_file_restricts_to_its_test_part(hierarchical_checkpoint, external, tmp_path):
    checkpoint = hierarchical_checkpoint
    patients = sorted(p.name for p in external.glob("*/*"))
    split = {"train": patients[:6], "val": patients[6:7], "test": patients[7:], "strategy": "given"}
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = tmp_path / "eval"
    assert evaluate(checkpoint, external, out, "--split_file", str(tmp_path / "split.json")) == 0
    assert sorted(pd.read_csv(out / "predictions.csv")["patient_id"]) == patients[7:]


def test_multitask_external_validation(multitask_checkpoint, external, tmp_path):
    checkpoint = multitask_checkpoint
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


def test_unknown_types_and_channels_are_refused(
    hierarchical_checkpoint, external, tmp_path, capsys
):
    checkpoint = hierarchical_checkpoint
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


def test_unknown_grade_becomes_unknown_with_a_warning(hierarchical_checkpoint, external, tmp_path, capsys):  # fmt: skip
    checkpoint = hierarchical_checkpoint
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


def test_old_format_checkpoints_load_evaluate_and_predict(
    old_format_checkpoints, trained_data, tmp_path, capsys
):
    """Checkpoints in the layout written before the loading layer was shared (conftest writes
    them key by key) load with their weights, and evaluate and predict give the saved
    network's probabilities, computed here by hand with the network itself."""
    import torch

    from mritumor.data.loading.cache import Preprocessing, SliceCache
    from mritumor.data.reading.readers import read_catalog
    from mritumor.models.loading import load_model

    catalog = read_catalog(trained_data)
    patient = catalog.patients[0]
    prep = Preprocessing(image_size=32, channels=1)
    cache = SliceCache.build(catalog.subset([patient]), prep, progress=False)
    images = torch.stack([cache.image(i) for i in range(len(cache))])
    patient_dir = next(trained_data.glob(f"*/{patient}"))
    for task, (path, network) in old_format_checkpoints.items():
        loaded = load_model(path)
        assert loaded.task == task and loaded.temperature == 1.7
        saved = network.state_dict()
        assert set(loaded.model.state_dict()) == set(saved)
        for key, value in loaded.model.state_dict().items():
            assert torch.equal(value, saved[key]), key
        with torch.no_grad():
            if task == "hierarchical":  # its bag of 4 is the patient's 4 slices
                bag = torch.ones(1, len(images), dtype=torch.bool)
                expected = torch.softmax(network(images[None], bag)["type_logits"][0] / 1.7, -1)
            else:  # the patient's probabilities are the mean of its slices'
                expected = torch.softmax(network(images)["class_logits"] / 1.7, -1).mean(0)
        types = loaded.labels.types

        out = tmp_path / task
        assert evaluate(path, trained_data, out) == 0
        summary = json.loads((out / "evaluation.json").read_text())
        assert summary["n_patients"] == 10 and summary["temperature"] == 1.7
        rows = pd.read_csv(out / "predictions.csv")
        rows = rows[rows["patient_id"] == patient]
        assert len(rows) == (1 if task == "hierarchical" else len(images))
        evaluated = rows[[f"p_type_{t}" for t in types]].to_numpy().mean(axis=0)
        np.testing.assert_allclose(evaluated, expected.numpy(), atol=1e-5)

        capsys.readouterr()
        assert main(["-q", "predict", "--checkpoint", str(path), "--input", str(patient_dir)]) == 0
        record = json.loads(capsys.readouterr().out)["patients"][0]
        predicted = [record["type_probabilities"][t] for t in types]
        np.testing.assert_allclose(predicted, expected.numpy(), atol=2e-6)


def test_evaluate_and_explain_import_no_training_stack(hierarchical_checkpoint, trained_data, tmp_path):  # fmt: skip
    """One real process each: `mritumor evaluate` and `mritumor explain` of a hierarchical
    checkpoint load it through models.loading, without Lightning or the task modules (before
    the shared loading layer both imported mritumor.tasks.hierarchical, hence Lightning)."""
    import subprocess
    import sys

    commands = {
        "evaluate": ["evaluate", "--outdir", str(tmp_path / "e"), "--n_boot", "10"],
        "explain": ["explain", "--outdir", str(tmp_path / "x"), "--max_patients", "1"],
    }
    for name, argv in commands.items():
        argv = [*argv, "--checkpoint", str(hierarchical_checkpoint), "--data_root", str(trained_data)]  # fmt: skip
        code = (
            "import sys, json; from mritumor.cli import main; "
            f"assert main(['-q', *{argv!r}]) == 0; "
            "heavy = [m for m in ('lightning', 'pytorch_lightning', 'mritumor.tasks') "
            "if m in sys.modules]; sys.stderr.write(json.dumps(heavy))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stderr.strip().splitlines()[-1]) == [], name

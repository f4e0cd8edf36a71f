"""--logger tensorboard|mlflow: the metrics of every epoch, the resolved flags and the test
metrics are found in TensorBoard's event files and in the MLflow store; a missing package is a
clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("log") / "data", patients_per_class=4, slices_per_patient=3,
        image_size=32, seed=4, classes=(("astrocytoma", "2"), ("meningioma", "1")),
    )  # fmt: skip


def train(cohort: Path, outdir: Path, *extra: str) -> int:
    return main(
        ["-q", "train-multitask", "--data_root", str(cohort), "--outdir", str(outdir),
         "--variant", "D", "--backbone", "small_cnn", "--image_size", "32", "--epochs", "2",
         "--batch_size", "8", "--augment", "none", "--patience", "0", "--n_boot", "20",
         "--val_frac", "0.25", "--test_frac", "0.25", *extra]
    )  # fmt: skip


def csv_val_losses(outdir: Path) -> list[float]:
    frame = pd.read_csv(next((outdir / "logs").glob("version_*/metrics.csv")))
    return frame["val_loss"].dropna().tolist()


def test_tensorboard_event_files_hold_the_epochs_and_the_test_metrics(cohort, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert train(cohort, out, "--logger", "tensorboard") == 0
    events = EventAccumulator(str(next((out / "tensorboard").glob("version_*"))))
    events.Reload()
    logged = [e.value for e in events.Scalars("val_loss")]
    assert logged == pytest.approx(csv_val_losses(out), rel=1e-5)  # the same epochs as the CSV
    metrics = json.loads((out / "test_metrics.json").read_text())
    accuracy = events.Scalars("test_tumor_type_accuracy")[-1].value
    assert accuracy == pytest.approx(metrics["tumor_type_accuracy"]["value"], rel=1e-5)


def test_mlflow_store_holds_flags_epochs_test_metrics_and_artifacts(cohort, tmp_path):
    import mlflow

    out = tmp_path / "ml"
    assert train(cohort, out, "--logger", "mlflow") == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "mritumor"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["variant"] == "D" and run.data.params["image_size"] == "32"
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert history == pytest.approx(csv_val_losses(out), rel=1e-5)
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert run.data.metrics["test_dice"] == pytest.approx(metrics["dice"]["value"], rel=1e-5)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"test_metrics.json", "best.pt", "config.yaml"} <= artifacts


def test_a_missing_tracking_package_is_a_clear_error(cohort, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    assert train(cohort, tmp_path / "none", "--logger", "mlflow") == 2
    err = capsys.readouterr().err
    assert "--logger mlflow needs the mlflow package" in err and "mritumor[tracking]" in err

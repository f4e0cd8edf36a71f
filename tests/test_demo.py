"""`mritumor demo --quick`: the README's first command runs the whole chain and ends in a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mritumor.cli import main


def numpy_dice(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-slice Dice 2|P∩T| / (|P| + |T|), 1 where both masks are empty, with NumPy."""
    pred, true = pred.reshape(len(pred), -1) > 0.5, true.reshape(len(true), -1) > 0.5
    overlap, total = (pred & true).sum(1), pred.sum(1) + true.sum(1)
    return np.where(total == 0, 1.0, 2 * overlap / np.maximum(total, 1))


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path: Path, capsys, monkeypatch):
    from mritumor.tasks import multitask as task

    masks = {}  # variant -> (predicted, reference) masks of its test slices that have one
    original = task.evaluate_multitask

    def spy(prediction, *args, **kwargs):
        scored = prediction["has_mask"].astype(bool)
        masks[kwargs["variant"]] = (
            prediction["pred_masks"][scored],
            prediction["true_masks"][scored],
        )
        return original(prediction, *args, **kwargs)

    monkeypatch.setattr(task, "evaluate_multitask", spy)
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--outdir", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "=== 9/9" in printed and str((out / "report.html").resolve()) in printed
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["report"] == str(out / "report.html")
    # every stage left what the next one reads
    assert (out / "simclr_pretrain" / "simclr_pretrain.pt").is_file()
    two_step = json.loads((out / "two_step" / "test_metrics.json").read_text())
    assert summary["tumor_type_accuracy"] == two_step["tumor_type_accuracy"]
    patients = pd.read_csv(out / "two_step" / "predictions.csv")
    accuracy = np.mean(patients["pred_type"] == patients["true_type"])
    assert two_step["tumor_type_accuracy"]["value"] == pytest.approx(accuracy)
    frames = {}
    for variant in ("D", "E"):
        metrics = json.loads((out / "multitask" / variant / "test_metrics.json").read_text())
        assert summary["multitask"][variant]["dice"] == metrics["dice"]["value"]
        # Dice counted with NumPy on the variant's own test masks
        assert metrics["dice"]["value"] == pytest.approx(numpy_dice(*masks[variant]).mean())
        frames[variant] = pd.read_csv(out / "multitask" / variant / "predictions.csv")
        correct = frames[variant]["pred_type"] == frames[variant]["true_type"]
        assert metrics["tumor_type_accuracy"]["value"] == pytest.approx(correct.mean())
    # all models were tested on the pretraining run's test patients: the comparison is paired
    split = json.loads((out / "simclr_pretrain" / "split.json").read_text())
    compared = json.loads((out / "compare" / "comparison.json").read_text())
    predictions = pd.read_csv(out / "multitask" / "D" / "predictions.csv")
    assert set(predictions["patient_id"].astype(str)) == set(split["test"])
    # the paired comparison counts the slices only one variant got right, from the same files
    (pairing,) = compared["pairwise"]
    assert (pairing["run_a"], pairing["run_b"]) == ("D", "E")
    d, e = (frames[v].set_index("image").sort_index() for v in ("D", "E"))
    assert list(d.index) == list(e.index)  # same test slices
    right_d = (d["pred_type"] == d["true_type"]).to_numpy()
    right_e = (e["pred_type"] == e["true_type"]).to_numpy()
    assert pairing["accuracy"]["a_only_correct"] == int((right_d & ~right_e).sum())
    assert pairing["accuracy"]["b_only_correct"] == int((~right_d & right_e).sum())
    assert pairing["accuracy"]["difference"] == pytest.approx(right_d.mean() - right_e.mean())
    assert (out / "explain" / "attribution_summary.json").is_file()
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "two_step" in html and "compare" in html


def test_demo_on_real_data_trains_with_the_cpu_quick_recipe(tmp_path: Path):
    from mritumor.demo import run_demo

    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def run(argv: list[str]) -> int:
        seen.append(argv)
        if argv[0] == "explain":
            raise Stop  # the training steps are what this test is about
        return 0

    with pytest.raises(Stop):
        run_demo(tmp_path / "d", data_root=str(tmp_path / "data"), quick=True, run=run)
    training = [a for a in seen if a[0] in ("pretrain", "train-hierarchical", "train-multitask")]
    assert [a[0] for a in training] == [
        "pretrain", "train-hierarchical", "train-multitask", "train-multitask",
    ]  # fmt: skip
    for argv in training:
        assert argv[argv.index("--recipe") + 1] == "cpu-quick"
        assert argv[argv.index("--epochs") + 1] == "2"  # --quick
        assert "--image_size" not in argv and "--backbone" not in argv  # the recipe decides

"""benchmarks/summarise_folds.py: mean and sample sd over folds, against numpy."""

from __future__ import annotations

import json

import numpy as np


def load_script():
    from conftest import load_benchmark

    return load_benchmark("summarise_folds")


def test_mean_and_sample_sd_over_folds(tmp_path, capsys):
    accuracies, dices = [0.9, 0.8, 0.7], [0.5, 0.65, 0.6]
    folders = []
    for k, (acc, dice) in enumerate(zip(accuracies, dices, strict=True)):
        folder = tmp_path / f"fold{k}"
        folder.mkdir()
        metrics = {"tumor_type_accuracy": {"value": acc}, "dice": {"value": dice}, "variant": "F"}
        (folder / "test_metrics.json").write_text(json.dumps(metrics))
        folders.append(str(folder))
    summary = load_script().main(folders)
    np.testing.assert_allclose(summary["tumor_type_accuracy"]["mean"], np.mean(accuracies))
    np.testing.assert_allclose(summary["dice"]["sd"], np.std(dices, ddof=1))
    assert "tumor_type_patient_accuracy" not in summary  # absent from every fold: not invented
    assert "0.800 ± 0.100" in capsys.readouterr().out

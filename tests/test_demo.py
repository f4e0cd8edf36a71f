"""`mritumor demo --quick`: the README's first command runs the whole chain and ends in a report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mritumor.cli import main


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path: Path, capsys):
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
    for variant in ("D", "E"):
        metrics = json.loads((out / "multitask" / variant / "test_metrics.json").read_text())
        assert summary["multitask"][variant]["dice"] == metrics["dice"]["value"]
        assert 0.0 <= metrics["dice"]["value"] <= 1.0
    # all models were tested on the pretraining run's test patients: the comparison is paired
    split = json.loads((out / "simclr_pretrain" / "split.json").read_text())
    compared = json.loads((out / "compare" / "comparison.json").read_text())
    predictions = pd.read_csv(out / "multitask" / "D" / "predictions.csv")
    assert set(predictions["patient_id"].astype(str)) == set(split["test"])
    assert compared  # written, and parsed as JSON
    assert (out / "explain" / "attribution_summary.json").is_file()
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "two_step" in html and "compare" in html

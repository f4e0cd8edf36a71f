"""The command line: synth → inspect → split, both flag spellings, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mritumor.cli import main


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "synth"
    code = main(
        [
            "-q",
            "data",
            "synth",
            "--out",
            str(root),
            "--patients_per_class",
            "3",
            "--slices-per-patient",
            "3",
            "--image_size",
            "64",
        ]
    )
    assert code == 0
    return root


def test_inspect_json_counts(synth_root: Path, capsys):
    capsys.readouterr()
    assert main(["-q", "data", "inspect", "--data-root", str(synth_root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "folder" and report["slices"] == 45 and report["patients"] == 15
    assert {(c["tumor_type"], c["grade"]): c["patients"] for c in report["classes"]} == {
        ("astrocytoma", "2"): 3,
        ("astrocytoma", "3"): 3,
        ("meningioma", "1"): 3,
        ("meningioma", "2"): 3,
        ("pituitary", "1"): 3,
    }
    assert report["image_sizes"] == {"64x64": 45} and report["channels"] == {"1": 45}
    assert report["masks"]["slices_with_mask"] == 45 and report["problems"] == []


def test_inspect_text_names_problems_and_strict_fails_cleanly(
    synth_root: Path, tmp_path: Path, capsys
):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    patient = next((root / "pituitary-g1").iterdir())
    (patient / "slice_000.png").write_bytes(b"")
    capsys.readouterr()
    assert main(["-q", "data", "inspect", "--data_root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Problems: 1" in out and "slice_000.png: empty file (0 bytes)" in out
    assert "pituitary" in out and "Slices per patient: min 3" in out
    assert main(["-q", "data", "inspect", "--data_root", str(root), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "mritumor: error: 1 problem(s) found (--strict)" in err and "Traceback" not in err


def test_split_command_writes_reusable_files(synth_root: Path, tmp_path: Path):
    assert (
        main(
            [
                "-q",
                "data",
                "split",
                "--data_root",
                str(synth_root),
                "--out",
                str(tmp_path / "s.json"),
                "--cv",
                "3",
                "--val_frac",
                "0.2",
            ]
        )
        == 0
    )
    folds = [json.loads((tmp_path / f"s_fold{k}.json").read_text()) for k in range(3)]
    assert sorted(p for f in folds for p in f["test"]) == sorted(
        d.name for c in synth_root.iterdir() for d in c.iterdir()
    )
    assert (
        main(
            [
                "-q",
                "data",
                "split",
                "--data_root",
                str(synth_root),
                "--out",
                str(tmp_path / "one.json"),
            ]
        )
        == 0
    )
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["strategy"].startswith("stratified") and len(one["test"]) >= 3


def test_missing_data_root_is_a_clean_error(tmp_path: Path, capsys):
    assert main(["data", "inspect", "--data_root", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_help_lists_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "mritumor.cli", "data", "synth", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--patients_per_class" in result.stdout and "(default: 4)" in result.stdout
    assert "--patients-per-class" in result.stdout

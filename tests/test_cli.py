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


def _parse(argv: list[str]):
    from mritumor.cli import build_parser
    from mritumor.commands.common import apply_config

    parser = build_parser()
    return apply_config(parser, parser.parse_args(argv), argv)


@pytest.mark.parametrize("command", ["pretrain", "train-hierarchical", "train-multitask"])
def test_config_file_sits_between_defaults_and_the_command_line(tmp_path: Path, command):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\nbatch_size: 5\nseed: 11\n")
    base = [command, "--data_root", "D", "--outdir", "O"]
    defaults = _parse(base)
    args = _parse([*base, "--config", str(config), "--epochs", "7"])
    assert args.epochs == 7  # the command line wins over the file
    assert (args.batch_size, args.seed) == (5, 11)  # the file wins over the defaults
    assert args.lr == defaults.lr and defaults.batch_size != 5 and defaults.seed != 11


def test_resolved_config_reproduces_the_run(tmp_path: Path):
    from mritumor.commands.common import save_resolved_config

    argv = ["train-multitask", "--data_root", "D", "--outdir", "O", "--variant", "E"]
    args = _parse([*argv, "--epochs", "4", "--seg_weight", "0.5"])
    saved = save_resolved_config(args, tmp_path)
    again = _parse([*argv, "--config", str(saved)])
    keep = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "handler"}
    assert {k: v for k, v in vars(again).items() if k in keep and k != "config"} == {
        k: v for k, v in keep.items() if k != "config"
    }


def test_config_errors_are_clean(tmp_path: Path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("epoch: 3\n")
    assert main(["pretrain", "--data_root", "D", "--outdir", "O", "--config", str(typo)]) == 2
    assert "unknown key(s) ['epoch']" in capsys.readouterr().err
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert main(["pretrain", "--data_root", "D", "--outdir", "O", "--config", str(listed)]) == 2
    assert "mapping" in capsys.readouterr().err
    assert main(["pretrain", "--data_root", "D", "--outdir", "O", "--config", "/no/such"]) == 2
    assert "cannot read --config" in capsys.readouterr().err


def test_building_the_command_line_imports_no_torch():
    """`mritumor --help` and every command's start stay fast: torch, Lightning and MONAI are
    imported only by the command that needs them."""
    code = (
        "import sys, json; from mritumor.cli import build_parser; build_parser(); "
        "print(json.dumps([m for m in ('torch', 'lightning', 'monai') if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_backbone_choices_are_the_registry():
    from mritumor.commands.common import BACKBONE_NAMES
    from mritumor.models.backbones import BACKBONES

    assert sorted(BACKBONE_NAMES) == sorted(BACKBONES)


def test_quiet_training_prints_results_not_lightning_chatter(synth_root: Path, tmp_path: Path):
    command = [sys.executable, "-m", "mritumor.cli", "-q", "train-multitask", "--data_root"]
    command += [str(synth_root), "--outdir", str(tmp_path / "run"), "--variant", "D"]
    command += ["--backbone", "small_cnn", "--image_size", "32", "--epochs", "1", "--n_boot", "10"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tumor_type_accuracy" in done.stdout
    assert "INFO" not in done.stdout + done.stderr
    # nor third-party deprecation notices users cannot act on (Lightning's LeafSpec, variant D)
    assert "is deprecated" not in done.stderr, done.stderr[-2000:]

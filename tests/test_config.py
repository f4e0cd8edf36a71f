"""The training API's configurations (mritumor.config): built by flag name from the parsed
command line and flattened back to it, written as config.yaml and read again with --config,
and the layering that keeps the training code free of the command line."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import yaml

from mritumor.cli import build_parser
from mritumor.commands.common import apply_config
from mritumor.config import (
    DataConfig,
    HierarchicalConfig,
    MultitaskConfig,
    PretrainConfig,
    TrainerConfig,
    save_resolved_config,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "mritumor"
CONFIGS = {
    "pretrain": PretrainConfig,
    "train-hierarchical": HierarchicalConfig,
    "train-multitask": MultitaskConfig,
}
# Non-default values for the flags every training command has, plus some of each command's.
SHARED = ["--format", "folder", "--strict", "--channels", "3", "--cache_dir", "C"]
SHARED += ["--intensity", "foreground"]
SHARED += ["--val_frac", "0.2", "--test_frac", "0.25", "--seed", "7", "--group_by", "site"]
SHARED += ["--accelerator", "cpu", "--devices", "2", "--num_nodes", "3", "--precision", "16"]
SHARED += ["--num_workers", "0", "--deterministic", "--resume", "--data_on_device", "off"]
OWN = {
    "pretrain": ["--encoder", "small_cnn", "--temperature", "0.2", "--positive_pairs", "same_patient"],
    "train-hierarchical": ["--bag_size", "5", "--pooling", "mean", "--no-channels_last", "--cv", "3"],
    "train-multitask": ["--variant", "E", "--decoder", "fcn", "--ema_decay", "0.9", "--seg_loss",
                        "dice_focal", "--warmup_epochs", "2", "--seg_ckpt", "A.pt"],
}  # fmt: skip


def parse(argv: list[str]):
    parser = build_parser()
    return apply_config(parser, parser.parse_args(argv), argv)


def flags_of(args) -> dict:
    """The parsed command line without argparse's dispatch and the parser itself."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "handler"}


def full_argv(command: str) -> list[str]:
    return ["-q", command, "--data_root", "D", "--outdir", "O", *SHARED, *OWN[command]]


@pytest.mark.parametrize("command", CONFIGS)
def test_from_flags_then_to_flat_is_the_parsed_command_line(command):
    args = parse(full_argv(command))
    config = CONFIGS[command].from_flags(vars(args))
    assert config.to_flat() == flags_of(args)
    # nested parts filled from the same mapping
    assert config.data == DataConfig(
        data_root="D", format="folder", strict=True, image_size=args.image_size, channels=3,
        intensity="foreground", cache_dir="C", split_file=None, val_frac=0.2, test_frac=0.25,
        seed=7, group_by="site",
    )  # fmt: skip
    assert config.trainer == TrainerConfig(
        accelerator="cpu", devices="2", num_nodes=3, precision="16", num_workers=0,
        deterministic=True, resume=True, data_on_device="off", quiet=True, seed=7,
    )  # fmt: skip


@pytest.mark.parametrize("command", CONFIGS)
def test_the_dataclass_defaults_are_the_flag_defaults(command):
    """Every flag has a field of the same name and default (a flag without one would be lost)."""
    args = parse([command, "--data_root", "D", "--outdir", "O"])
    config = CONFIGS[command].from_flags({"data_root": "D", "outdir": "O"})
    assert config.to_flat() == flags_of(args)


def test_unknown_keys_are_ignored_and_one_flag_has_one_value():
    config = MultitaskConfig.from_flags({"outdir": "O", "seed": 3, "bag_policy": "all", "x": 1})
    assert config.data.seed == config.trainer.seed == 3 and "bag_policy" not in config.to_flat()
    assert config.data.image_size == 256  # the command's default, not DataConfig's 224
    split = dataclasses.replace(config, data=dataclasses.replace(config.data, seed=4))
    with pytest.raises(ValueError, match="seed"):
        split.to_flat()


@pytest.mark.parametrize("command", CONFIGS)
def test_config_yaml_reloads_with_config_to_the_same_configuration(command, tmp_path: Path):
    args = parse([*full_argv(command), "--recipe", "cpu-quick", "--epochs", "9"])
    config = CONFIGS[command].from_flags(vars(args))
    path = save_resolved_config(config, tmp_path)
    written = yaml.safe_load(path.read_text())
    # the keys and values the command line wrote before configurations existed
    expected = {
        k: v
        for k, v in flags_of(args).items()
        if k not in ("config", "command", "data_command", "quiet")
    }
    assert written == expected and written["recipe"] == "cpu-quick" and written["epochs"] == 9
    # required flags are given on the command line (argparse checks them before --config)
    reparsed = parse([command, "--data_root", "D", "--outdir", "O", "--config", str(path)])
    again = CONFIGS[command].from_flags(vars(reparsed))
    quiet = dataclasses.replace(config.trainer, quiet=False)  # -q is not part of config.yaml
    assert again == dataclasses.replace(config, config=str(path), trainer=quiet)


@pytest.mark.parametrize("command", CONFIGS)
def test_checkpoint_config_holds_what_it_held(command):
    """Checkpoints' "config": the scalar flag values of the parsed command line, as before."""
    args = parse(full_argv(command))
    before = {
        k: v
        for k, v in vars(args).items()
        if not k.startswith("_")
        and k != "handler"
        and isinstance(v, (str, int, float, bool, type(None)))
    }
    assert CONFIGS[command].from_flags(vars(args)).scalar_flags() == before


# ----------------------------------------------------------------------------- layering


def imported_modules(source: str) -> set[str]:
    """Every module a Python file imports (``from a import b`` counts as a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layering_violations(files: dict[str, str]) -> list[str]:
    """``files``: path under src/mritumor → source. Outside commands/ and cli.py nothing imports
    the command line; the multi-task task does not import the hierarchical one."""
    found = []
    for path, source in files.items():
        modules = imported_modules(source)
        if not (path.startswith("commands/") or path == "cli.py"):
            found += [
                f"{path}: {m}"
                for m in modules
                if m in ("mritumor.commands", "mritumor.cli") or m.startswith("mritumor.commands.")
            ]
        if path == "tasks/multitask.py" and "mritumor.tasks.hierarchical" in modules:
            found.append(f"{path}: mritumor.tasks.hierarchical")
    return found


def test_only_the_command_line_imports_the_commands():
    files = {str(p.relative_to(SRC)): p.read_text() for p in SRC.rglob("*.py")}
    assert len(files) > 50 and layering_violations(files) == []


def test_the_layering_check_finds_the_old_imports():
    """The check above is not vacuous: the tree before configurations (tasks importing
    commands.common, demo importing cli, multitask importing hierarchical) fails it."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["git", "archive", "1ab0b26", "src/mritumor"], cwd=root, capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("not a git checkout with the old commit")
    files = {}
    with tarfile.open(fileobj=BytesIO(done.stdout)) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                name = member.name.removeprefix("src/mritumor/")
                files[name] = archive.extractfile(member).read().decode()
    found = layering_violations(files)
    assert "tasks/ssl.py: mritumor.commands.common" in found
    assert "demo.py: mritumor.cli" in found
    assert "tasks/multitask.py: mritumor.tasks.hierarchical" in found


def test_the_demo_and_the_configs_import_no_command_line_and_no_torch():
    code = (
        "import sys, json; import mritumor.demo, mritumor.config; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m == 'mritumor.cli'"
        " or m.startswith('mritumor.commands'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_demo_runs_a_command_line_as_the_cli_does(tmp_path: Path, capsys):
    from mritumor.cli import main
    from mritumor.commands.demo import run_as_typed

    argv = ["data", "synth", "--patients_per_class", "1", "--slices_per_patient", "2"]
    argv += ["--image_size", "32"]
    assert run_as_typed([*argv, "--out", str(tmp_path / "demo")]) == 0
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    demo = sorted(p.relative_to(tmp_path / "demo") for p in (tmp_path / "demo").rglob("*"))
    cli = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*"))
    assert demo == cli and len(demo) > 3
    for path in demo:
        if (tmp_path / "demo" / path).is_file() and path.suffix == ".png":
            assert (tmp_path / "demo" / path).read_bytes() == (tmp_path / "cli" / path).read_bytes()
    capsys.readouterr()
    # an error is reported like the CLI's, with its exit status
    assert run_as_typed(["data", "inspect", "--data_root", str(tmp_path / "none")]) == 2
    assert "mritumor: error:" in capsys.readouterr().err

"""Flags shared by several commands, both spellings, and ``--config`` files."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from mritumor.config import save_resolved_config  # noqa: F401  (commands write config.yaml)
from mritumor.errors import MritumorError

# The backbone registry's names (mritumor.models.backbones.BACKBONES; a test keeps them equal),
# spelled out so that building the command line imports no torch.
BACKBONE_NAMES = ("mobilenet_v2", "resnet18", "resnet50", "small_cnn")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default and keeps descriptions' line breaks."""


def build_command_parser(modules, version: str | None = None) -> argparse.ArgumentParser:
    """The ``mritumor`` parser with the commands of ``modules`` (each has ``register``); every
    command's own parser is its ``_command_parser`` default (for :func:`apply_config`)."""
    parser = argparse.ArgumentParser(
        prog="mritumor",
        description="Brain-MRI tumour analysis: data, pretraining, classification, segmentation.",
        formatter_class=Formatter,
    )
    if version is not None:
        parser.add_argument("--version", action="version", version=f"mritumor {version}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars"
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        module.register(subcommands)
    for command_parser in _leaf_parsers(parser):
        command_parser.set_defaults(_command_parser=command_parser)
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser):
    """Every parser that runs a command (the ones that set a handler)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                if child.get_default("handler") is not None:
                    yield child
                yield from _leaf_parsers(child)


def run_command(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Parse ``argv`` (recipe < --config < flags), set up logging and run the command's
    handler, as ``mritumor ARGV`` does; the exit status (2: an error the user can fix)."""
    try:
        args = apply_config(parser, parser.parse_args(argv), argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
            force=True,
        )
        if args.quiet:  # Lightning logs through its own loggers and handlers
            for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
                logging.getLogger(name).setLevel(logging.WARNING)
        args.handler(args)
    except MritumorError as error:
        print(f"mritumor: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mritumor: interrupted", file=sys.stderr)
        return 130
    return 0


def add_command(subcommands, name: str, help: str, description: str | None = None):
    return subcommands.add_parser(
        name, help=help, description=description or help, formatter_class=Formatter
    )


def flag(parser: argparse.ArgumentParser, name: str, **options) -> None:
    """Add ``--snake_case`` and its ``--kebab-case`` spelling (DESIGN: both are accepted)."""
    names = [name]
    if "_" in name:
        names.append(name.replace("_", "-"))
    parser.add_argument(*names, **options)


class RootsAction(argparse.Action):
    """``--data_root`` given once stays a path (every one-source code path is unchanged);
    given again, the values become a list: several sources."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is None or current == self.default:
            setattr(namespace, self.dest, values)
        else:
            setattr(namespace, self.dest, [*([current] if isinstance(current, str) else current), values])  # fmt: skip


def add_data_flags(
    parser: argparse.ArgumentParser, required: bool = True, several: bool = False
) -> None:
    """``several``: training commands, which also read several sources at once."""
    from mritumor.data.reading.readers import FORMATS

    flag(
        parser,
        "--data_root",
        required=required and not several,
        action=RootsAction if several else "store",
        help="dataset folder, manifest CSV, or Figshare/LGG release"
        + (
            "; give it several times to train on several sources at once (each read by its "
            "own reader, split by patient within each source, its metrics reported apart)"
            if several
            else ""
        ),
    )
    if several:
        flag(
            parser,
            "--source_name",
            action="append",
            default=None,
            help="a name for each --data_root, in the same order (default: the folder's name); "
            "it prefixes patient ids and labels the per-source metrics",
        )
        flag(
            parser,
            "--sources",
            default=None,
            help="a YAML file listing sources, each with data_root and optionally name, format, "
            "channel (0-based; e.g. 2 = LGG's post-contrast T1 for a 1-channel model), types "
            "(renames, e.g. astrocytoma: glioma), keep (column: [values]) and masks (false: "
            "classification only); see mritumor.data.reading.sources",
        )
        flag(
            parser,
            "--sequence",
            default=None,
            help="the MR sequence of the training images when their source does not name it "
            "(e.g. 'T1 post-contrast'; Figshare's reader and LGG's channels say it themselves): "
            "recorded in the checkpoint, so that predict warns about a DICOM series of another "
            "sequence",
        )
    flag(
        parser,
        "--format",
        choices=FORMATS,
        default=None,
        help="source format; auto-detected when omitted",
    )
    flag(parser, "--strict", action="store_true", help="make any skipped file or patient fatal")


# mritumor.data.loading.intensity.INTENSITY_METHODS (a test keeps them equal), spelled out so that
# building the command line imports no data code.
INTENSITY_METHODS = ("percentile", "foreground")


def add_intensity_flag(
    parser: argparse.ArgumentParser,
    note: str = "; stored in best.pt, and evaluate, predict and serve use the model's own",
) -> None:
    flag(
        parser,
        "--intensity",
        choices=INTENSITY_METHODS,
        default="percentile",
        help="intensity standardisation per slice and channel, before resizing: percentile "
        "clips to the 0.5/99.5 percentiles of all pixels and scales to [0, 1] (the background's "
        "share, which differs by scanner, plane and padding, moves the window); foreground "
        "takes those percentiles over the head only (pixels above 5 %% of the robust range) "
        "and sets the background to 0, so the amount of background does not matter" + note,
    )


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--val_frac",
        type=float,
        default=0.15,
        help="share of patients (groups) for validation",
    )
    flag(
        parser,
        "--test_frac",
        type=float,
        default=0.15,
        help="share of patients (groups) for testing",
    )
    flag(
        parser,
        "--seed",
        type=int,
        default=0,
        help="random seed of sampling and initialisation (and of the split unless --split_seed)",
    )
    flag(
        parser,
        "--split_seed",
        type=int,
        default=None,
        help="random seed of the patient split (default: --seed); keep it fixed while varying "
        "--seed so that runs of several training seeds test the same patients",
    )
    flag(
        parser,
        "--group_by",
        default=None,
        help="column whose groups never cross splits (default: patient_family if present, else patient_id)",
    )
    flag(parser, "--split_file", default=None, help="re-use the split.json of an earlier run")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--config",
        default=None,
        help="YAML file whose keys are flag names; command-line flags win",
    )


def add_coverage_flag(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--coverage",
        type=float,
        default=0.9,
        help="target coverage of the conformal prediction sets fitted on the validation "
        "patients and stored in best.pt (predict and evaluate may ask for another)",
    )
    add_conformal_method_flag(parser, default="lac")
    add_mondrian_flag(parser)


def add_mondrian_flag(parser: argparse.ArgumentParser, note: str = "") -> None:
    flag(
        parser,
        "--conformal_mondrian",
        action="store_true",
        help="class-conditional (Mondrian) prediction sets: one threshold per true class, so "
        "each class reaches the coverage, not only their average (a rare or hard class is "
        "not hidden by an easy one); needs enough calibration units of every class" + note,
    )


def add_conformal_method_flag(parser: argparse.ArgumentParser, default: str | None) -> None:
    flag(
        parser,
        "--conformal_method",
        choices=("lac", "aps"),  # mritumor.evaluation.conformal.METHODS (a test keeps them equal)
        default=default,
        help="score of the prediction sets: lac (1 - p of the class; the smallest sets) or aps "
        "(the probability mass ranked at or above the class; larger sets that widen where the "
        "model spreads its probabilities)"
        + ("" if default else "; default: the checkpoint's, else lac"),
    )


def add_tta_flag(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--tta",
        type=int,
        default=1,
        help="test-time augmentation: average the logits over this many flips/turns of every "
        "slice (1: none, up to 8; 2 adds the horizontal flip every model trains with, more "
        "views suit models trained with --augment shift)",
    )


def add_recipe_flag(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--recipe",
        default=None,
        help="a named training recipe (`mritumor recipes` lists them): its values replace the "
        "built-in defaults; --config and explicit flags still win",
    )


def apply_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]
) -> argparse.Namespace:
    """Re-parse with the recipe's and the YAML's values as defaults:
    command line > --config file > --recipe > built-in default."""
    recipe, path = getattr(args, "recipe", None), getattr(args, "config", None)
    if not recipe and not path:
        return args
    command_parser = args._command_parser
    known = {action.dest for action in command_parser._actions}
    values: dict = {}
    if recipe:
        from mritumor.recipes import recipe_values

        values.update(_known_keys(recipe_values(recipe, args.command), known, f"recipe {recipe}"))
    if path:
        values.update(_known_keys(_read_config(path), known, f"--config {path}"))
    command_parser.set_defaults(**values)
    return parser.parse_args(argv)


def _read_config(path: str) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise MritumorError(f"cannot read --config {path}: {error}") from error
    if not isinstance(values, dict):
        raise MritumorError(f"--config {path} must hold a mapping of flag names to values")
    return {key.replace("-", "_"): value for key, value in values.items()}


def _known_keys(values: dict, known: set[str], where: str) -> dict:
    unknown = sorted(set(values) - known)
    if unknown:
        raise MritumorError(f"{where}: unknown key(s) {unknown}; keys are the command's flag names")
    return values


def add_trainer_flags(parser: argparse.ArgumentParser) -> None:
    flag(parser, "--accelerator", default="auto", help="cpu, gpu or auto")
    flag(
        parser,
        "--devices",
        default="1",
        help="devices per node (an integer, or 'auto'); >1 runs DDP",
    )
    flag(
        parser,
        "--num_nodes",
        type=int,
        default=1,
        help="machines for multi-node DDP (torchrun/SLURM)",
    )
    flag(
        parser,
        "--precision",
        default="gpu-bf16",  # mritumor.training.DEFAULT_PRECISION (spelled out: no torch here)
        help="gpu-bf16: bf16 mixed precision on a GPU, float32 on the CPU; auto: also bf16 mixed "
        "on a CPU that computes bf16 natively (AMX or AVX512-BF16; detected and logged), float32 "
        "on other CPUs; 32: float32 everywhere; bf16: bf16 mixed everywhere (on a CPU without "
        "native bf16 it is emulated, many times slower, and a warning says so); or any Lightning "
        "precision (32-true, bf16-mixed, 16-mixed, ...). The checkpoint records what was used; "
        "validation runs in it too, the test evaluation at the end, evaluate and predict in "
        "float32",
    )
    flag(
        parser,
        "--num_workers",
        type=int,
        default=-1,
        help="data-loader workers (-1: chosen from the machine)",
    )
    flag(
        parser,
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (reproducible on CPU)",
    )
    flag(
        parser,
        "--resume",
        action="store_true",
        help="continue an interrupted run in the same --outdir",
    )
    flag(
        parser,
        "--logger",
        choices=("csv", "tensorboard", "mlflow"),
        default="csv",
        help="experiment tracking besides OUTDIR/logs/*/metrics.csv (always written): "
        "TensorBoard event files in OUTDIR/tensorboard, or an MLflow run (config, metrics per "
        "epoch, test metrics, artifacts' paths); needs pip install 'mritumor[tracking]'",
    )
    flag(
        parser,
        "--tracking_uri",
        default=None,
        help="MLflow tracking URI (default: a local file store, file:OUTDIR/mlruns)",
    )


def add_data_on_device_flag(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--data_on_device",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: keep the training slices in the training device's memory (GPU, or the CPU "
        "process) and augment them there in batches when the run is one process and they fit "
        "in half the free memory; on: always; off: always the DataLoader with worker processes",
    )

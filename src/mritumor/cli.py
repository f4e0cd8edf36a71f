"""The ``mritumor`` command line. Thin: parses arguments, calls the API, prints results."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mritumor import __version__
from mritumor.errors import MritumorError

FORMAT_HELP = "data source format; auto-detected from --data_root when omitted"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default and keeps descriptions' line breaks."""


def flag(parser: argparse.ArgumentParser, name: str, **options) -> None:
    """Add ``--snake_case`` and its ``--kebab-case`` spelling (DESIGN: both are accepted)."""
    names = [name]
    if "_" in name:
        names.append(name.replace("_", "-"))
    parser.add_argument(*names, **options)


def add_data_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from mritumor.data.readers import FORMATS

    flag(
        parser,
        "--data_root",
        required=required,
        help="dataset folder, manifest CSV or Figshare/LGG release",
    )
    flag(parser, "--format", choices=FORMATS, default=None, help=FORMAT_HELP)
    flag(parser, "--strict", action="store_true", help="make any skipped file or patient fatal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mritumor",
        description="Brain-MRI tumour analysis: data, pretraining, classification, segmentation.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"mritumor {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser(
        "data", help="generate, inspect and split datasets", formatter_class=Formatter
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = data_commands.add_parser(
        "synth",
        help="write a synthetic phantom dataset (folder tree with masks)",
        formatter_class=Formatter,
    )
    flag(synth, "--out", required=True, help="folder to write ROOT/<type>-g<grade>/<patient>/ into")
    flag(
        synth, "--patients_per_class", type=int, default=4, help="patients per (type, grade) class"
    )
    flag(synth, "--slices_per_patient", type=int, default=8, help="slices per patient")
    flag(synth, "--image_size", type=int, default=128, help="slice size in pixels")
    flag(synth, "--channels", type=int, choices=(1, 3), default=1, help="1 grayscale, 3 sequences")
    flag(synth, "--seed", type=int, default=0, help="random seed (same seed, same files)")
    flag(
        synth, "--prefix", default="syn", help="patient id prefix (use another for a second cohort)"
    )
    synth.set_defaults(handler=run_synth)

    inspect = data_commands.add_parser(
        "inspect",
        help="patients and slices per class, sizes, masks, and every problem found",
        formatter_class=Formatter,
    )
    add_data_flags(inspect)
    flag(inspect, "--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(handler=run_inspect)

    split = data_commands.add_parser(
        "split",
        help="write a patient-level split (or k folds) as JSON for --split_file",
        formatter_class=Formatter,
    )
    add_data_flags(split)
    add_split_flags(split)
    flag(
        split,
        "--out",
        required=True,
        help="JSON file to write (with --cv: one file per fold, _foldK)",
    )
    flag(
        split, "--cv", type=int, default=0, help="k-fold cross-validation by patient (0: one split)"
    )
    split.set_defaults(handler=run_split)

    demo = commands.add_parser(
        "demo",
        help="run the pipeline end to end on generated (or your) data",
        formatter_class=Formatter,
    )
    flag(demo, "--outdir", default="runs/demo", help="where the demo writes its data and results")
    flag(demo, "--data_root", default=None, help="run on this dataset instead of generated data")
    demo.set_defaults(handler=run_demo)
    return parser


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
    flag(parser, "--seed", type=int, default=0, help="random seed of the split")
    flag(
        parser,
        "--group_by",
        default=None,
        help="column whose groups never cross splits (default: patient_family if present, else patient_id)",
    )


def run_synth(args) -> None:
    from mritumor.data.synthetic import write_synthetic_dataset

    out = write_synthetic_dataset(
        args.out,
        patients_per_class=args.patients_per_class,
        slices_per_patient=args.slices_per_patient,
        image_size=args.image_size,
        channels=args.channels,
        seed=args.seed,
        patient_prefix=args.prefix,
    )
    print(f"synthetic dataset written to {out}")


def run_inspect(args) -> None:
    from mritumor.data.catalog import raise_if_strict
    from mritumor.data.inspect import format_report, inspect_catalog
    from mritumor.data.readers import read_catalog

    catalog = read_catalog(args.data_root, format=args.format, strict=args.strict)
    report = inspect_catalog(catalog, progress=not (args.json or args.quiet))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    from mritumor.data.catalog import Problem

    raise_if_strict([Problem(p["path"], p["reason"]) for p in report["problems"]], args.strict)


def run_split(args) -> None:
    from mritumor.data.readers import read_catalog
    from mritumor.data.splits import make_folds, make_split

    table = read_catalog(args.data_root, format=args.format, strict=args.strict).table
    out = Path(args.out)
    if args.cv:
        folds = make_folds(table, args.cv, args.val_frac, seed=args.seed, group_by=args.group_by)
        for fold in folds:
            written = fold.save(out.with_name(f"{out.stem}_fold{fold.fold}{out.suffix or '.json'}"))
            print(
                f"fold {fold.fold}: {len(fold.train)}/{len(fold.val)}/{len(fold.test)} patients → {written}"
            )
    else:
        split = make_split(
            table, args.val_frac, args.test_frac, seed=args.seed, group_by=args.group_by
        )
        split.save(out)
        print(
            f"train/val/test: {len(split.train)}/{len(split.val)}/{len(split.test)} patients "
            f"({split.strategy}, grouped by {split.group_by}) → {out}"
        )


def run_demo(args) -> None:
    from mritumor.demo import run_demo as demo

    demo(Path(args.outdir), args.data_root)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args.handler(args)
    except MritumorError as error:
        print(f"mritumor: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mritumor: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

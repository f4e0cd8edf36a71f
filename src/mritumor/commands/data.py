"""``mritumor data synth | inspect | split``."""

from __future__ import annotations

import json
from pathlib import Path

from mritumor.commands.common import add_command, add_data_flags, add_split_flags, flag


def register(subcommands) -> None:
    data = add_command(subcommands, "data", "generate, inspect and split datasets")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = add_command(
        actions, "synth", "write a synthetic phantom dataset (folder tree with masks)"
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
        synth,
        "--prefix",
        default="syn",
        help="patient id prefix (use another one for a second cohort)",
    )
    synth.set_defaults(handler=run_synth)

    inspect = add_command(
        actions, "inspect", "patients and slices per class, sizes, masks, and every problem"
    )
    add_data_flags(inspect)
    flag(inspect, "--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(handler=run_inspect)

    split = add_command(
        actions, "split", "write a patient-level split (or k folds) as JSON for --split_file"
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
    from mritumor.data.catalog import Problem, raise_if_strict
    from mritumor.data.inspect import format_report, inspect_catalog
    from mritumor.data.readers import read_catalog

    catalog = read_catalog(args.data_root, format=args.format, strict=args.strict)
    report = inspect_catalog(catalog, progress=not (args.json or args.quiet))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    raise_if_strict([Problem(p["path"], p["reason"]) for p in report["problems"]], args.strict)


def run_split(args) -> None:
    from mritumor.data.readers import read_catalog
    from mritumor.data.splits import make_folds, make_split

    table = read_catalog(args.data_root, format=args.format, strict=args.strict).table
    out = Path(args.out)
    if args.cv:
        for fold in make_folds(
            table, args.cv, args.val_frac, seed=args.seed, group_by=args.group_by
        ):
            written = fold.save(out.with_name(f"{out.stem}_fold{fold.fold}{out.suffix or '.json'}"))
            print(
                f"fold {fold.fold}: {len(fold.train)}/{len(fold.val)}/{len(fold.test)} patients → {written}"
            )
        return
    split = make_split(table, args.val_frac, args.test_frac, seed=args.seed, group_by=args.group_by)
    split.save(out)
    print(
        f"train/val/test: {len(split.train)}/{len(split.val)}/{len(split.test)} patients "
        f"({split.strategy}, grouped by {split.group_by}) → {out}"
    )

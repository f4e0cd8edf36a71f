"""``mritumor data synth | inspect | split | download | convert``."""

from __future__ import annotations

import json
from pathlib import Path

from mritumor.commands.common import add_command, add_data_flags, add_split_flags, flag
from mritumor.errors import DataError


def register(subcommands) -> None:
    from mritumor.data.reading.readers import FORMATS

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

    download = add_command(
        actions,
        "download",
        "download a public dataset, checked by md5 (--list: sources, licences, citations)",
        description="Download a dataset into --out, each file verified against its md5 before "
        "anything is unpacked; interrupted downloads resume. Sources that need an account print "
        "the steps and the folder layout, and check it once the files are in place.",
    )
    download.add_argument("name", nargs="?", help="source to download (see --list)")
    flag(download, "--list", action="store_true", help="list the sources, licences, citations")
    flag(download, "--out", default=None, help="folder to download into (the data root)")
    flag(
        download,
        "--base_url",
        default=None,
        help="mirror serving files.json and the files; when omitted $MRITUMOR_MIRROR, else the source",
    )
    flag(download, "--retries", type=int, default=2, help="resumed retries of a broken transfer")
    download.set_defaults(handler=run_download)

    convert = add_command(
        actions,
        "convert",
        "convert any readable source into a normalised folder tree (+ masks, manifest)",
        description="Write OUT/<type>[-g<grade>]/<patient>/slice_NNNN.<png|npy> (+ _mask files), "
        "OUT/manifest.csv and OUT/conversion.json. Each channel is windowed to its 0.5-99.5th "
        "percentiles and scaled to [0, 1]; PNG stores round(255 v), NPY float32.",
    )
    flag(convert, "--data_root", required=True, help="dataset folder, manifest CSV or release")
    flag(
        convert,
        "--source_format",
        choices=FORMATS,
        default=None,
        help="source format; auto-detected when omitted",
    )
    flag(convert, "--strict", action="store_true", help="make any skipped file or patient fatal")
    flag(convert, "--out", required=True, help="new (or empty) folder to write the tree into")
    flag(convert, "--format", choices=("png", "npy"), default="png", help="slice file format")
    flag(
        convert,
        "--image_size",
        type=int,
        default=None,
        help="pad to a square and resize to N pixels (default: keep each slice's size)",
    )
    convert.set_defaults(handler=run_convert)


def run_synth(args) -> None:
    from mritumor.data.acquire.synthetic import write_synthetic_dataset

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
    from mritumor.data.reading.catalog import Problem, raise_if_strict
    from mritumor.data.reading.inspect import format_report, inspect_catalog
    from mritumor.data.reading.readers import read_catalog

    catalog = read_catalog(args.data_root, format=args.format, strict=args.strict)
    report = inspect_catalog(catalog, progress=not (args.json or args.quiet))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    raise_if_strict([Problem(p["path"], p["reason"]) for p in report["problems"]], args.strict)


def run_split(args) -> None:
    from mritumor.data.loading.splits import make_folds, make_split
    from mritumor.data.reading.readers import read_catalog

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


def run_download(args) -> None:
    from mritumor.data.acquire.download import SOURCES, download_figshare, format_sources

    if args.list:
        print(format_sources())
        return
    if args.name not in SOURCES:
        raise DataError(
            f"unknown source {args.name!r}; choose one of {', '.join(SOURCES)} (--list describes them)"
        )
    if not args.out:
        raise DataError("--out is required: the folder to download into")
    source = SOURCES[args.name]
    if not source.downloadable:
        _check_manual_source(source, args.out)
        return
    result = download_figshare(
        args.out, base_url=args.base_url, progress=not args.quiet, retries=args.retries
    )
    print(
        f"{len(result.verified)} file(s) verified by md5 in {result.out / 'downloads'} "
        f"({len(result.transferred)} downloaded now), {len(result.unpacked)} file(s) placed in "
        f"{result.out}\nread it with --data_root {result.out}"
    )


def _check_manual_source(source, out) -> None:
    """The steps, unless the files are already in place (then: what was found)."""
    from mritumor.data.acquire.download import manual_source_catalog, manual_steps

    catalog, reason = manual_source_catalog(source.name, out)
    if catalog is None:
        if reason:
            print(f"{out} is not ready yet: {reason}\n")
        print(manual_steps(source.name, out))
        raise DataError(f"{source.name} cannot be downloaded here; follow the steps above")
    print(
        f"{out}: {len(catalog.patients)} patients, {len(catalog)} slices read as "
        f"--format {catalog.source}; ready: --data_root {out}"
    )


def run_convert(args) -> None:
    from mritumor.data.acquire.convert import convert_catalog
    from mritumor.data.reading.catalog import raise_if_strict
    from mritumor.data.reading.readers import read_catalog

    catalog = read_catalog(args.data_root, format=args.source_format, strict=args.strict)
    result = convert_catalog(
        catalog, args.out, format=args.format, image_size=args.image_size, progress=not args.quiet
    )
    for problem in result.problems[:10]:
        print(f"skipped: {problem}")
    print(
        f"{result.slices} slices ({result.masks} with masks) of {result.patients} patients "
        f"written to {result.out} as {args.format}"
        + (
            f"; {len(result.problems)} problem(s), listed in conversion.json"
            if result.problems
            else ""
        )
        + f"\nread it with --data_root {result.out}"
    )
    raise_if_strict(result.problems, args.strict)

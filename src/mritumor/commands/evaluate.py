"""``mritumor evaluate``: a trained checkpoint on a (new) dataset, with the training run's artifacts."""

from __future__ import annotations

import argparse

from mritumor.commands.common import (
    add_command,
    add_config_flag,
    add_data_flags,
    add_tta_flag,
    flag,
)

DESCRIPTION = """\
External validation: every patient of --data_root is a test patient (with --split_file: the
test part of that split.json). The checkpoint's preprocessing, evaluation bags and temperature
are used, and the outdir gets the artifacts of the end of training: test_metrics.json,
test_report.json, predictions.csv, ROC/PR/confusion/reliability PNGs (hierarchical also
curves_summary.json and the end-to-end grade curves; multi-task overlays.png), split.json,
config.yaml, and evaluation.json (what was evaluated: checkpoint, data, temperature, patients).
Refused: data with tumour types the model does not know, or with another number of channels
than the training data. Grades the model does not know are treated as unknown (warning)."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "evaluate", "evaluate a trained checkpoint on a dataset", DESCRIPTION
    )
    flag(
        parser,
        "--checkpoint",
        required=True,
        help="best.pt of train-hierarchical or train-multitask",
    )
    add_data_flags(parser)
    flag(parser, "--outdir", required=True, help="folder for the metrics, curves and predictions")
    add_config_flag(parser)
    flag(
        parser,
        "--split_file",
        default=None,
        help="evaluate only the test part of this split.json (default: every patient)",
    )
    flag(
        parser,
        "--batch_size",
        type=int,
        default=8,
        help="patients (hierarchical) or slices per batch",
    )
    flag(parser, "--n_boot", type=int, default=1000, help="bootstrap resamples for 95 %% intervals")
    flag(parser, "--seed", type=int, default=0, help="bootstrap seed")
    flag(
        parser,
        "--no_calibration",
        action="store_true",
        help="ignore the checkpoint's temperature (raw softmax probabilities)",
    )
    flag(
        parser, "--n_overlays", type=int, default=8, help="multi-task: slices drawn in overlays.png"
    )
    flag(parser, "--cache_dir", default=None, help="keep the preprocessed cache on disk here")
    flag(
        parser,
        "--engine",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="what runs the network: ONNX Runtime (onnx; exported once per checkpoint, checked "
        "against PyTorch), PyTorch (torch), or onnx when installed (auto)",
    )
    add_tta_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from mritumor.commands.common import save_resolved_config
    from mritumor.inference.evaluate import evaluate_checkpoint

    if args.batch_size < 1 or args.n_boot < 0:
        from mritumor.errors import MritumorError

        raise MritumorError("--batch_size must be ≥ 1 and --n_boot ≥ 0")
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data_root,
        args.outdir,
        split_file=args.split_file,
        format=args.format,
        strict=args.strict,
        batch_size=args.batch_size,
        n_boot=args.n_boot,
        seed=args.seed,
        calibrated=not args.no_calibration,
        n_overlays=args.n_overlays,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        engine=args.engine,
        tta=args.tta,
    )
    save_resolved_config(args, args.outdir)
    summary = result["evaluation"]
    print(
        f"evaluated {summary['n_patients']} patient(s) ({summary['task']}); results in {args.outdir}"
    )
    metrics = result.get("metrics", {})
    for key in (
        "tumor_type_accuracy",
        "tumor_type_macro_auc",
        "grade_e2e_accuracy",
        "dice",
        "dice_tumour_slices",
    ):
        value = metrics.get(key)
        if isinstance(value, dict) and value.get("value") is not None:
            low, high = value.get("low"), value.get("high")
            interval = (
                f" (95% CI {low:.3f}–{high:.3f})" if low is not None and high is not None else ""
            )
            print(f"  {key}: {value['value']:.3f}{interval}")

"""``mritumor fit-uncertainty``: re-fit a multi-task checkpoint's out-of-distribution detector
and prediction sets without training again."""

from __future__ import annotations

import argparse
from pathlib import Path

from mritumor.commands.common import (
    add_command,
    add_conformal_method_flag,
    add_mondrian_flag,
    flag,
)

DESCRIPTION = """\
Runs the network of a train-multitask best.pt (variants B-G) over the training and validation
patients its run recorded (read from --data_root, the data it was trained on) and fits again
what predict, evaluate and serve use to know when not to answer: the out-of-distribution
detector (Mahalanobis distances of each encoder resolution's feature statistics to the
training classes, threshold keeping 95 % of the validation patients) and the split-conformal
prediction sets (--coverage, --conformal_method, --conformal_mondrian). Use it for a
checkpoint written before feature statistics (its detector scored the classification
embedding), for another coverage or set score, or for class-conditional (Mondrian) sets with
one threshold per class. The network,
temperature and split are copied unchanged; the original file is kept."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands,
        "fit-uncertainty",
        "re-fit a multi-task checkpoint's OOD detector and prediction sets",
        DESCRIPTION,
    )
    flag(parser, "--checkpoint", required=True, help="best.pt of train-multitask")
    flag(parser, "--data_root", required=True, help="the data the checkpoint was trained on")
    flag(
        parser,
        "--output",
        default=None,
        help="the new checkpoint (default: <checkpoint>_refit.pt beside it)",
    )
    flag(
        parser,
        "--coverage",
        type=float,
        default=None,
        help="coverage of the prediction sets (default: the checkpoint's, else 0.9)",
    )
    add_conformal_method_flag(parser, default=None)  # None: the checkpoint's, else lac
    add_mondrian_flag(parser, " (without it the checkpoint's own choice is kept)")
    flag(parser, "--batch_size", type=int, default=16, help="slices per forward pass")
    flag(parser, "--cache_dir", default=None, help="preprocessed-slice cache folder")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from mritumor.inference.refit import refit_uncertainty

    source = Path(args.checkpoint)
    output = Path(args.output) if args.output else source.with_name(f"{source.stem}_refit.pt")
    state = refit_uncertainty(
        source, args.data_root, output, args.coverage, args.batch_size, args.cache_dir,
        progress=not getattr(args, "quiet", False), method=args.conformal_method,
        mondrian=True if getattr(args, "conformal_mondrian", False) else None,  # None: keep
    )  # fmt: skip
    print(f"wrote {output}")
    print(
        f"  OOD threshold {state['ood']['threshold']:.3f} (keeps "
        f"{100 * state['ood']['keep']:.0f} % of validation slices), "
        f"{len(state['ood']['precision'])} feature block(s); "
        f"{state['conformal']['method']}"
        f"{' Mondrian (per-class)' if state['conformal'].get('mondrian') else ''} sets for "
        f"{100 * state['conformal']['coverage']:.0f} % coverage"
    )

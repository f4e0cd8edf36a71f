"""``mritumor fit-uncertainty``: re-fit a multi-task checkpoint's out-of-distribution detector
and prediction sets without training again."""

from __future__ import annotations

import argparse
from pathlib import Path

from mritumor.commands.common import (
    add_command,
    add_conformal_method_flag,
    add_data_flags,
    add_mondrian_flag,
    flag,
)
from mritumor.errors import MritumorError

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
    add_data_flags(parser, several=True)  # the data the checkpoint was trained on
    flag(
        parser,
        "--ood_blocks",
        default=None,
        help="which encoder resolutions the OOD score sums, 0-based from the shallowest, e.g. "
        "'2,3,4' (shallow ones see intensity and texture, which differ by scanner; deep ones "
        "see content), or 'all'; default: the checkpoint's own choice, else all. Choose on "
        "validation and development images (benchmarks/ood_blocks.py), never on a test split",
    )
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
        used_blocks=parse_blocks(args.ood_blocks), source_name=args.source_name,
        sources=args.sources, format=args.format,
    )  # fmt: skip
    print(f"wrote {output}")
    print(
        f"  OOD threshold {state['ood']['threshold']:.3f} (keeps "
        f"{100 * state['ood']['keep']:.0f} % of validation slices), "
        f"{len(state['ood']['precision'])} feature block(s)"
        + (
            f", summing {state['ood']['used_blocks']}; "
            if state["ood"].get("used_blocks")
            else "; "
        )
        + f"{state['conformal']['method']}"
        f"{' Mondrian (per-class)' if state['conformal'].get('mondrian') else ''} sets for "
        f"{100 * state['conformal']['coverage']:.0f} % coverage"
    )


def parse_blocks(text: str | None) -> list[int] | str | None:
    """'2,3,4' → [2, 3, 4]; 'all' and None pass through (all blocks; the checkpoint's)."""
    if text is None or text == "all":
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise MritumorError(
            f"--ood_blocks takes numbers such as 2,3,4 or 'all', not {text!r}"
        ) from error

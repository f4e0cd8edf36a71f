"""``mritumor adapt``: a trained multi-task checkpoint adapted to a new site (hospital,
scanner), without labels (AdaBN, TENT), with a few labelled site patients (fine-tuning,
temperature), and with its out-of-distribution detector and prediction sets re-fitted there."""

from __future__ import annotations

import argparse

from mritumor.commands.common import (
    add_command,
    add_config_flag,
    add_conformal_method_flag,
    add_mondrian_flag,
    flag,
)

DESCRIPTION = """\
Adapts the best.pt of train-multitask (variants B-G) to the images of another site, at up to
three levels:
  1. without labels (--unlabelled): every site image, preprocessed as the checkpoint says,
     re-estimates the BatchNorm statistics (adabn; nothing else changes), optionally after
     TENT (tent: a few steps minimising the entropy of the class prediction, updating only the
     BatchNorm scales and shifts);
  2. with N labelled site patients per tumour type (--labelled_per_class N): part of them
     fine-tunes the classification layers (--finetune head, or also the encoder's last stage),
     the rest (--holdout_share) early-stops it and fits the temperature;
  3. on those patients the out-of-distribution detector and the conformal prediction sets are
     fitted again, so their coverage holds at the site (--no_refit_uncertainty skips it).
Without labelled patients the checkpoint keeps the source's detector and sets, which no
longer match the adapted network: the output says so (note).
OUTDIR gets best.pt (loads in predict, evaluate, serve, export; its "adaptation" entry records
the source file and its sha256, the methods, patients and changed tensors), site_split.json
(train = fine-tune, val = held-out, test = every other site patient: evaluate --split_file
scores only those) and adapt_report.json (held-out accuracy and NLL before and after each
step). Refused: another kind of checkpoint, site images with other channels than the model's
or smaller than half its input size, more labelled patients than a tumour type has."""


def register(subcommands) -> None:
    from mritumor.data.reading.readers import FORMATS

    parser = add_command(
        subcommands, "adapt", "adapt a multi-task checkpoint to a new site", DESCRIPTION
    )
    flag(parser, "--checkpoint", required=True, help="best.pt of train-multitask (variants B-G)")
    flag(
        parser,
        "--site_root",
        required=True,
        help="the new site's images: a folder, manifest CSV or any release --data_root reads",
    )
    flag(parser, "--format", choices=FORMATS, default=None, help="site format; auto-detected when omitted")  # fmt: skip
    flag(parser, "--strict", action="store_true", help="make any skipped file or patient fatal")
    flag(
        parser,
        "--outdir",
        required=True,
        help="folder for best.pt, site_split.json and adapt_report.json (not the checkpoint's)",
    )
    add_config_flag(parser)
    flag(
        parser,
        "--unlabelled",
        choices=("adabn", "tent", "none"),
        default="adabn",
        help="adaptation without labels on every site image: adabn re-estimates the BatchNorm "
        "statistics; tent first minimises the prediction entropy over the BatchNorm scales and "
        "shifts, then re-estimates the statistics; none leaves the network as it is",
    )
    flag(parser, "--tent_steps", type=int, default=10, help="tent: optimiser steps (batches)")
    flag(
        parser,
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate of tent (Adam) and of the fine-tuning (AdamW)",
    )
    flag(
        parser,
        "--labelled_per_class",
        type=int,
        default=0,
        help="labelled site patients drawn per tumour type the model knows (e.g. 5-20; 0: no "
        "labelled adaptation); other types and no-tumour patients are left out and counted",
    )
    flag(
        parser,
        "--holdout_share",
        type=float,
        default=0.4,
        help="share of each type's labelled patients held out for early stopping, temperature "
        "and the re-fitted sets (at least one per type in each part)",
    )
    flag(
        parser,
        "--finetune",
        choices=("head", "last_stage", "none"),
        default=None,
        help="what the labelled patients fine-tune: the classification layers (head), those and "
        "the encoder's last stage (last_stage), or nothing (temperature and sets only); "
        "BatchNorm keeps the adapted statistics; default: head when --labelled_per_class > 0",
    )
    flag(parser, "--epochs", type=int, default=30, help="fine-tuning epochs at most")
    flag(
        parser,
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without a lower held-out loss (0: never); the best "
        "epoch is kept",
    )
    flag(parser, "--weight_decay", type=float, default=1e-4, help="fine-tuning weight decay")
    flag(parser, "--batch_size", type=int, default=32, help="slices per batch")
    flag(parser, "--seed", type=int, default=0, help="seed of the labelled draw and the batch order")  # fmt: skip
    flag(
        parser,
        "--coverage",
        type=float,
        default=None,
        help="coverage of the re-fitted prediction sets (default: the checkpoint's, else 0.9)",
    )
    add_conformal_method_flag(parser, default=None)
    add_mondrian_flag(parser, note=" (here: held-out slices and patients)")
    flag(
        parser,
        "--no_refit_uncertainty",
        action="store_true",
        help="keep the checkpoint's OOD detector and sets even with labelled patients",
    )
    flag(parser, "--cache_dir", default=None, help="preprocessed-slice cache folder")
    flag(
        parser,
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the network runs (auto: a GPU when there is one)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from mritumor.config import AdaptConfig
    from mritumor.tasks.adapt import adapt_checkpoint

    config = AdaptConfig.from_flags(vars(args))
    report = adapt_checkpoint(config)
    print(f"wrote {report['output']}")
    counts = report["counts"]
    print(
        f"  site: {counts['site_patients']} patients, {counts['site_slices']} slices; "
        f"unlabelled: {report['unlabelled']['method']}; labelled: "
        f"{counts['finetune_patients']} fine-tune + {counts['heldout_patients']} held-out "
        f"patients, {counts['test_patients']} left for testing (site_split.json)"
    )
    for step, metrics in report["heldout"].items():
        print(f"  held-out {step}: accuracy {metrics['accuracy']:.3f}, NLL {metrics['nll']:.3f}")
    for note in report["notes"]:
        print(f"  note: {note}")

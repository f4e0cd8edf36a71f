"""``mritumor train-hierarchical`` (seed 000, steps 2–3)."""

from __future__ import annotations

import argparse

from mritumor.commands.common import (
    BACKBONE_NAMES,
    add_command,
    add_config_flag,
    add_coverage_flag,
    add_data_flags,
    add_data_on_device_flag,
    add_intensity_flag,
    add_recipe_flag,
    add_split_flags,
    add_trainer_flags,
    flag,
)

DESCRIPTION = """\
Patient bags of slices → tumour type → grade given type; end-to-end P(g) = Σt P(t) P(g|t).
Writes best.pt, test_metrics.json, test_report.json, roc_/pr_ curves for type and end-to-end
grade, curves_summary.json, confusion matrices, predictions.csv, config.yaml and split.json."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "train-hierarchical", "train the two-step type → grade classifier", DESCRIPTION
    )
    add_data_flags(parser, several=True)
    flag(parser, "--outdir", required=True, help="run folder for the checkpoint and every artifact")
    add_config_flag(parser)
    add_recipe_flag(parser)
    # the seed's flags, unchanged
    flag(parser, "--epochs", type=int, default=40, help="maximum training epochs")
    flag(parser, "--batch_size", type=int, default=2, help="patients (bags) per batch")
    flag(parser, "--bag_size", type=int, default=8, help="slices per patient bag")
    flag(
        parser,
        "--bag_policy",
        choices=("uniform", "random", "all"),
        default="uniform",
        help="uniform: evenly spaced slices; random: a random subset each epoch; all: every slice (padded)",
    )
    flag(
        parser,
        "--bag_slices",
        choices=("all", "tumour"),
        default="all",
        help="which slices a bag is drawn from: all, or those whose mask shows tumour (patients "
        "without masks, and new scans at predict time, use all of theirs). Masks select the "
        "test patients' slices too: the metrics then assume the tumour slices are known",
    )
    flag(
        parser,
        "--backbone",
        choices=BACKBONE_NAMES,
        default="mobilenet_v2",
        help="slice encoder from the backbone registry",
    )
    flag(
        parser,
        "--ssl_ckpt",
        default=None,
        help="simclr_pretrain.pt of `mritumor pretrain`: only encoder.* is loaded",
    )
    flag(
        parser,
        "--freeze_backbone",
        action="store_true",
        help="train only pooling and heads (small datasets)",
    )
    # ours
    flag(
        parser,
        "--pooling",
        choices=("mean", "max", "attention"),
        default="attention",
        help="multi-instance pooling; attention is gated attention (Ilse et al. 2018)",
    )
    flag(
        parser, "--image_size", type=int, default=224, help="slices are resized to this square size"
    )
    flag(
        parser, "--channels", type=int, default=None, help="input channels (default: from the data)"
    )
    add_intensity_flag(parser)
    flag(
        parser,
        "--pretrained",
        action="store_true",
        help="ImageNet weights from the local torch cache",
    )
    flag(
        parser,
        "--augment",
        choices=("standard", "light", "shift", "none"),
        default="standard",
        help="training augmentation: standard MRI augmentation, light (crops keep ≥ 90 %% of the "
        "slice), shift (other scanners' and planes' contrast, bias field, blur, resolution, flips "
        "and 90° turns), or none",
    )
    flag(parser, "--lr", type=float, default=3e-4, help="AdamW learning rate (cosine schedule)")
    flag(parser, "--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
    flag(parser, "--dropout", type=float, default=0.25, help="dropout before the heads")
    flag(parser, "--grade_weight", type=float, default=1.0, help="weight of the grade loss")
    flag(
        parser,
        "--balance",
        choices=("none", "weights", "sampler"),
        default="weights",
        help="class imbalance: inverse-frequency type weights, or a balanced patient sampler",
    )
    flag(
        parser,
        "--monitor",
        choices=("val_loss", "val_type_accuracy"),
        default="val_loss",
        help="validation metric for the best epoch and early stopping",
    )
    flag(
        parser, "--patience", type=int, default=8, help="early-stopping patience in epochs (0: off)"
    )
    flag(
        parser,
        "--cv",
        type=int,
        default=0,
        help="K-fold cross-validation by patient: fold_k/ folders + cv_summary.json",
    )
    flag(parser, "--n_boot", type=int, default=1000, help="bootstrap resamples for 95 %% intervals")
    add_coverage_flag(parser)
    flag(
        parser,
        "--no_calibration",
        action="store_true",
        help="do not fit temperature scaling on validation",
    )
    flag(
        parser,
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last memory format (faster convolutions on CPU)",
    )
    flag(
        parser,
        "--cache_dir",
        default=None,
        help="keep the preprocessed cache on disk here (re-used across runs)",
    )
    flag(
        parser,
        "--label_fraction",
        type=float,
        default=1.0,
        help="train on this share of the training patients (per type); val/test unchanged",
    )
    add_split_flags(parser)
    add_trainer_flags(parser)
    add_data_on_device_flag(parser)
    parser.set_defaults(handler=run)


def run(args) -> None:
    from mritumor.config import HierarchicalConfig
    from mritumor.tasks.hierarchical import train_hierarchical

    result = train_hierarchical(HierarchicalConfig.from_flags(vars(args)))
    metrics = result.get("metrics", result)
    print(f"results in {args.outdir}")
    for key in (
        "tumor_type_accuracy",
        "grade_e2e_accuracy",
        "grade_conditional_accuracy",
        "grade_e2e_macro_auc",
    ):
        if isinstance(metrics.get(key), dict) and metrics[key].get("value") is not None:
            m = metrics[key]
            print(
                f"  {key}: {m['value']:.3f} (95% CI {m.get('low', float('nan')):.3f}–{m.get('high', float('nan')):.3f})"
            )

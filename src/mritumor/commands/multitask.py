"""``mritumor train-multitask`` (seed 004: segmentation + classification, variants A–G)."""

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
Slices → tumour mask and tumour type with one network (FCN-ResNet50 by default), in seven
variants: A segmentation only, B classification only, C frozen segmentation features + classifier,
D naive joint training, E class logits projected and added into the segmentation features,
F segmentation embedding used for classification, G penultimate classification embedding fused
into segmentation. --variant all trains the seven (OUTDIR/A … OUTDIR/G) and writes
comparison.md/.csv, the seed's table with 95 %% intervals over patients.
Each variant folder: best.pt, test_metrics.json, test_report.json, predictions.csv (per slice),
overlays.png, and for classifiers ROC/PR/confusion/reliability PNGs."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands,
        "train-multitask",
        "train segmentation + classification variants A–G",
        DESCRIPTION,
    )
    add_data_flags(parser, several=True)
    flag(
        parser, "--outdir", required=True, help="run folder (one sub-folder per variant for 'all')"
    )
    add_config_flag(parser)
    add_recipe_flag(parser)
    flag(
        parser,
        "--variant",
        choices=("A", "B", "C", "D", "E", "F", "G", "all"),
        default="all",
        help="which variant to train; 'all' trains the seven and writes the comparison table",
    )
    flag(
        parser,
        "--backbone",
        choices=("fcn_resnet50", *BACKBONE_NAMES),
        default="fcn_resnet50",
        help="fcn_resnet50: torchvision's FCN-ResNet50 (the seed's); the others are lighter "
        "encoders with an FCN head and an FCN-8s skip (resnet18 or small_cnn train on 2 CPU cores)",
    )
    flag(
        parser,
        "--decoder",
        choices=("unet", "fcn"),
        default="unet",
        help="segmentation decoder: unet (skip connections from every encoder resolution) or "
        "fcn (the seed's FCN head on the last features, plus an FCN-8s skip for light encoders)",
    )
    flag(parser, "--image_size", type=int, default=256, help="slices are resized to this size")
    flag(parser, "--channels", type=int, default=None, help="input channels (default: from data)")
    add_intensity_flag(parser)
    flag(parser, "--epochs", type=int, default=30, help="maximum training epochs per variant")
    flag(parser, "--batch_size", type=int, default=16, help="slices per batch")
    flag(parser, "--lr", type=float, default=1e-3, help="AdamW learning rate (cosine schedule)")
    flag(parser, "--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
    flag(
        parser,
        "--warmup_epochs",
        type=int,
        default=0,
        help="linear learning-rate warm-up from lr/10 before the cosine decay",
    )
    flag(
        parser,
        "--ema_decay",
        type=float,
        default=0.0,
        help="validate and save an exponential moving average of the weights with this decay "
        "per step (e.g. 0.99; 0: off)",
    )
    flag(
        parser,
        "--seg_loss",
        choices=("dice_ce", "dice_focal", "tversky_ce"),  # mritumor.losses.SEG_LOSSES
        default="dice_ce",
        help="mask loss: Dice + binary cross-entropy, Dice + focal loss, or Tversky (missed "
        "tumour weighs 0.7, extra 0.3: for models that under-segment) + cross-entropy",
    )
    flag(
        parser, "--seg_weight", type=float, default=1.0, help="weight of the mask loss (--seg_loss)"
    )
    flag(parser, "--cls_weight", type=float, default=1.0, help="weight of the class cross-entropy")
    flag(parser, "--hidden_dim", type=int, default=256, help="classification embedding size")
    flag(parser, "--dropout", type=float, default=0.2, help="dropout before the classifier")
    flag(
        parser,
        "--augment",
        choices=("standard", "light", "shift", "none"),
        default="light",
        help="training augmentation (image and mask together); light keeps ≥ 90 %% of the slice; "
        "shift adds other scanners' and planes' contrast, bias field, blur, resolution, flips "
        "and 90° turns",
    )
    flag(
        parser,
        "--balance",
        choices=("none", "weights", "source", "source+weights"),
        default="weights",
        help="weights: inverse-frequency class weights in the class loss; source: draw the "
        "training slices so that every source (--data_root given several times) is seen "
        "equally often, whatever its size; source+weights: both",
    )
    flag(
        parser,
        "--monitor",
        choices=("val_loss", "val_dice", "val_accuracy"),
        default="val_loss",
        help="validation metric for the best epoch and early stopping (variants without that "
        "output use val_loss)",
    )
    flag(parser, "--patience", type=int, default=8, help="early-stopping patience (0: off)")
    flag(
        parser,
        "--pretrained",
        action="store_true",
        help="ImageNet weights for the encoder from the local torch cache (never downloaded)",
    )
    flag(
        parser,
        "--ssl_ckpt",
        default=None,
        help="simclr_pretrain.pt of `mritumor pretrain` with the same encoder (resnet50 for "
        "fcn_resnet50): only encoder.* is loaded",
    )
    flag(
        parser,
        "--seg_ckpt",
        default=None,
        help="variant C only: best.pt of a variant-A run to freeze (otherwise C trains A first)",
    )
    flag(parser, "--n_boot", type=int, default=1000, help="bootstrap resamples (95 %% intervals)")
    add_coverage_flag(parser)
    flag(parser, "--n_overlays", type=int, default=8, help="test slices drawn in overlays.png")
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
    flag(parser, "--cache_dir", default=None, help="keep the preprocessed cache on disk here")
    flag(
        parser,
        "--cv_by",
        choices=("none", "source"),
        default="none",
        help="source: leave-one-source-out over the sources of --data_root/--sources — for each "
        "source, train on the others and test on all its patients (OUTDIR/<source>/), and the "
        "table of held-out sources in OUTDIR/loso.md and loso_summary.json",
    )
    add_split_flags(parser)
    add_trainer_flags(parser)
    add_data_on_device_flag(parser)
    parser.set_defaults(handler=run)


def run(args) -> None:
    from mritumor.config import MultitaskConfig
    from mritumor.tasks.multitask import train_multitask

    result = train_multitask(MultitaskConfig.from_flags(vars(args)))
    print(f"results in {args.outdir}")
    if args.cv_by == "source":  # one report per held-out source
        print(f"leave-one-source-out table: {args.outdir}/loso.md")
    results = result if args.variant == "all" or args.cv_by == "source" else {args.variant: result}
    for variant, report in results.items():
        metrics = report.get("metrics", {})
        parts = [
            f"{name} {m['value']:.3f} ({m['low']:.3f}–{m['high']:.3f})"
            for name, m in (
                (k, metrics.get(k)) for k in ("dice", "dice_tumour_slices", "tumor_type_accuracy")
            )
            if isinstance(m, dict) and m.get("value") is not None and m.get("low") is not None
        ]
        print(f"  {variant}: " + ", ".join(parts))
    if args.variant == "all":
        print(f"comparison table: {args.outdir}/comparison.md")

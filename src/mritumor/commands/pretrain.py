"""``mritumor pretrain`` (SimCLR, seed ``000``) and ``mritumor evaluate-ssl``."""

from __future__ import annotations

from mritumor.commands.common import (
    BACKBONE_NAMES,
    add_command,
    add_config_flag,
    add_data_flags,
    add_data_on_device_flag,
    add_intensity_flag,
    add_recipe_flag,
    add_split_flags,
    add_trainer_flags,
    flag,
)

PRETRAIN_DESCRIPTION = """\
Self-supervised SimCLR pretraining of a slice encoder; tumour labels are never read.

Two views of each slice (two augmentations, or two slices of one patient) are pulled together
and all other slices in the batch pushed apart (NT-Xent loss). Training uses the split's train
patients; the epoch with the lowest validation contrastive loss (val patients) is saved as
OUTDIR/simclr_pretrain.pt (simclr_state, encoder_config, metadata). Test patients are left
out, so OUTDIR/split.json can be re-used downstream with --split_file. --resume continues from
OUTDIR/checkpoints/last.ckpt.
"""

EVALUATE_DESCRIPTION = """\
Quality of frozen SimCLR embeddings, judged with tumour-type labels that pretraining never saw:
linear-probe (logistic regression on standardised features) and k-NN (cosine) accuracy, trained
on the split's train+val patients and measured on its test patients. By default the split is
the one recorded in the checkpoint, so test patients are ones the encoder never saw. Writes
OUTDIR/ssl_eval_metrics.json and OUTDIR/ssl_embedding_pca.png (2-D PCA coloured by type).
--ckpt random evaluates a randomly initialised --encoder as a baseline.
"""


def register(subcommands) -> None:
    pretrain = add_command(
        subcommands, "pretrain", "SimCLR self-supervised encoder pretraining", PRETRAIN_DESCRIPTION
    )
    add_data_flags(pretrain, several=True)
    flag(pretrain, "--outdir", required=True, help="folder for the checkpoint, logs and split")
    add_encoder_flags(pretrain)
    flag(
        pretrain,
        "--pretrained",
        action="store_true",
        help="start from torchvision ImageNet weights found in the local torch cache "
        "(never downloaded; a missing file is named with where to put it)",
    )
    flag(
        pretrain,
        "--projection_dim",
        type=int,
        default=128,
        help="output size of the projection head (MLP) the loss is computed on",
    )
    flag(
        pretrain,
        "--temperature",
        type=float,
        default=0.5,
        help="NT-Xent temperature τ; lower values weigh hard negatives more",
    )
    flag(pretrain, "--epochs", type=int, default=50, help="training epochs")
    flag(
        pretrain,
        "--batch_size",
        type=int,
        default=64,
        help="slices per batch per device; each gives 2 views, negatives are all other views "
        "(across all devices under DDP)",
    )
    flag(pretrain, "--lr", type=float, default=1e-3, help="AdamW learning rate (cosine decay)")
    flag(pretrain, "--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
    flag(
        pretrain,
        "--positive_pairs",
        choices=("augment", "same_patient"),
        default="augment",
        help="augment: two augmentations of one slice; same_patient: two augmented slices of "
        "the same patient",
    )
    add_split_flags(pretrain)
    add_trainer_flags(pretrain)
    add_data_on_device_flag(pretrain)
    add_config_flag(pretrain)
    add_recipe_flag(pretrain)
    pretrain.set_defaults(handler=run_pretrain)

    evaluate = add_command(
        subcommands,
        "evaluate-ssl",
        "linear-probe and k-NN accuracy of frozen SimCLR embeddings",
        EVALUATE_DESCRIPTION,
    )
    flag(
        evaluate,
        "--ckpt",
        required=True,
        help="simclr_pretrain.pt of `mritumor pretrain`, or 'random' for a randomly "
        "initialised --encoder",
    )
    add_data_flags(evaluate)
    flag(
        evaluate,
        "--outdir",
        default=None,
        help="where metrics and plot go (None: ssl_eval/ beside --ckpt, or runs/ssl_eval_random)",
    )
    add_encoder_flags(evaluate, only_random=True)
    flag(
        evaluate,
        "--label_fraction",
        type=float,
        default=1.0,
        help="fraction of training patients whose labels the probes may use (stratified by "
        "type, at least one patient per type; drawn with --seed)",
    )
    flag(evaluate, "--knn_k", type=int, default=5, help="neighbours of the k-NN classifier")
    flag(evaluate, "--batch_size", type=int, default=128, help="slices per forward pass")
    flag(evaluate, "--device", default="auto", help="cpu, cuda, or auto")
    add_split_flags(evaluate)
    add_config_flag(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def add_encoder_flags(parser, only_random: bool = False) -> None:
    note = " (with --ckpt random; a checkpoint brings its own)" if only_random else ""
    flag(
        parser,
        "--encoder",
        choices=BACKBONE_NAMES,
        default="mobilenet_v2",
        help="slice encoder from the backbone registry" + note,
    )
    flag(parser, "--image_size", type=int, default=224, help="slices are resized to this" + note)
    flag(
        parser,
        "--channels",
        type=int,
        default=None,
        help="input channels (None: from the data; 1 grayscale, 3 for RGB/multi-sequence)" + note,
    )
    add_intensity_flag(
        parser,
        note
        or "; stored in simclr_pretrain.pt and followed by evaluate-ssl (fine-tune with the same)",
    )
    flag(
        parser,
        "--cache_dir",
        default=None,
        help="keep preprocessed slices here and re-use them (None: in memory)",
    )


def run_pretrain(args) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from mritumor.config import PretrainConfig
    from mritumor.tasks.ssl import pretrain

    path = pretrain(PretrainConfig.from_flags(vars(args)))
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # lightning sets it on import
        print(f"SimCLR checkpoint (best validation loss): {path}")


def run_evaluate(args) -> None:
    import json

    from mritumor.ssl_eval import evaluate_ssl

    metrics = evaluate_ssl(
        args.ckpt,
        args.data_root,
        args.outdir,
        encoder_name=args.encoder,
        image_size=args.image_size,
        channels=args.channels,
        intensity=args.intensity,
        label_fraction=args.label_fraction,
        knn_k=args.knn_k,
        batch_size=args.batch_size,
        device=args.device,
        format=args.format,
        strict=args.strict,
        cache_dir=args.cache_dir,
        split_file=args.split_file,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        seed=args.seed,
        group_by=args.group_by,
        progress=not args.quiet,
    )
    summary = {
        "linear_probe_accuracy": metrics["linear_probe"]["accuracy"],
        "knn_accuracy": metrics["knn"]["accuracy"],
        "metrics": metrics["files"]["metrics"],
        "plot": metrics["files"]["plot"],
    }
    print(json.dumps(summary, indent=2))

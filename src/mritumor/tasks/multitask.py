"""Training the multi-task variants A–G: ``mritumor train-multitask`` (seed 004).

Per variant: slices (+ masks) of the training patients → Lightning fit with early stopping →
best epoch's weights → temperature fitted on validation (variants with a classifier) → test
evaluation (:mod:`mritumor.evaluation.multitask`). ``--variant all`` prepares the data once,
trains the seven in ``OUTDIR/<variant>/`` (C re-uses A's segmentation network) and writes the
seed's comparison table.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as nnf
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, WeightedRandomSampler

from mritumor import runfiles
from mritumor.checkpoints import (
    CheckpointError,
    check_resume_checkpoint,
    load_checkpoint,
    run_metadata,
    save_checkpoint,
)
from mritumor.config import MultitaskConfig, save_resolved_config
from mritumor.data.loading.datasets import SliceDataset, identity, rows_of_patients
from mritumor.data.loading.device_data import DeviceSliceLoader
from mritumor.data.loading.fast_path import batch_augment, training_data_device, training_transform
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.loading.prepare import PreparedData, prepare_data_for
from mritumor.data.loading.splits import Split, leave_one_source_out
from mritumor.data.reading.sequences import training_data
from mritumor.data.reading.sources import source_balanced_weights
from mritumor.errors import DataError
from mritumor.evaluation.calibration import fit_temperature
from mritumor.evaluation.conformal import check_options
from mritumor.evaluation.multitask import evaluate_multitask, write_comparison, write_loso_summary
from mritumor.evaluation.uncertainty import ood_features, softmax, write_test_uncertainty
from mritumor.inference.loops import predict_slices  # shared with `mritumor evaluate`
from mritumor.losses import segmentation_loss
from mritumor.models.loading import multitask_network as model_from_checkpoint
from mritumor.models.multitask import (
    VARIANTS,
    MultiTaskNet,
    build_multitask_model,
    freeze_for_stage_two,
    keep_frozen_in_eval,
)
from mritumor.models.simclr import load_ssl_encoder
from mritumor.resources import check_writable
from mritumor.tasks.uncertainty import fit_slice_uncertainty
from mritumor.training import (
    BestStateCheckpoint,
    LastCheckpoint,
    build_trainer,
    default_workers,
    ema_with_warmup,
    log_run,
    warmup_cosine,
)

log = logging.getLogger(__name__)

STAGES = ("joint", "segmentation", "classification")


class MultiTaskTask(L.LightningModule):
    """``stage``: joint (every head the variant has), segmentation (C's first stage: mask loss
    only) or classification (C's second stage: class loss only, encoder and mask head frozen)."""

    def __init__(
        self,
        model: MultiTaskNet,
        lr: float,
        weight_decay: float,
        epochs: int,
        seg_weight: float = 1.0,
        cls_weight: float = 1.0,
        class_weights: torch.Tensor | None = None,
        stage: str = "joint",
        seg_loss: str = "dice_ce",
        warmup_epochs: int = 0,
        ema_decay: float = 0.0,
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        self.model, self.lr, self.weight_decay, self.epochs = model, lr, weight_decay, epochs
        self.stage, self.seg_loss, self.warmup_epochs = stage, seg_loss, warmup_epochs
        # An exponential moving average of the weights (and BatchNorm statistics) is what is
        # validated and saved: on small CPU batches it smooths the step-to-step noise and the
        # lag of BatchNorm's running statistics behind the weights.
        self.ema = None
        if ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(model, avg_fn=ema_with_warmup(ema_decay), use_buffers=True)
        self.seg_weight = seg_weight if model.segments and stage != "classification" else 0.0
        self.cls_weight = cls_weight if model.classifies and stage != "segmentation" else 0.0
        self.register_buffer("class_weights", class_weights, persistent=False)
        self._val: list[torch.Tensor] = []
        if stage == "classification":
            freeze_for_stage_two(model)

    @property
    def eval_model(self) -> MultiTaskNet:
        """The network that is validated and saved: the weight average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def on_train_epoch_start(self) -> None:
        if self.stage == "classification":
            keep_frozen_in_eval(self.model)

    def on_train_batch_end(self, outputs, batch, batch_index) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def losses(self, batch: dict, model: MultiTaskNet | None = None) -> tuple[dict, dict]:
        outputs = (model or self.model)(batch["image"])
        parts: dict[str, torch.Tensor] = {}
        if self.seg_weight:
            with_mask = batch["has_mask"]
            if with_mask.any():
                parts["seg"] = segmentation_loss(
                    outputs["mask_logits"][with_mask].float(),
                    batch["mask"][with_mask],
                    self.seg_loss,
                )
        if self.cls_weight and (batch["tumor_type"] >= 0).any():
            parts["cls"] = nnf.cross_entropy(
                outputs["class_logits"].float(),
                batch["tumor_type"],
                weight=self.class_weights,
                ignore_index=-1,
            )
        # keeps the graph when a batch has no target; float32 like the losses (under bf16
        # autocast the network's outputs are bf16)
        zero = outputs[next(iter(outputs))].float().sum() * 0.0
        total = self.seg_weight * parts.get("seg", zero) + self.cls_weight * parts.get("cls", zero)
        return outputs, {"loss": total, **parts}

    def training_step(self, batch, batch_index):
        _, losses = self.losses(batch)
        self.log(
            "train_loss", losses["loss"], on_step=False, on_epoch=True, prog_bar=True,
            batch_size=batch["image"].shape[0],
        )  # fmt: skip
        return losses["loss"]

    def validation_step(self, batch, batch_index):
        outputs, losses = self.losses(batch, self.eval_model)
        size = batch["image"].shape[0]
        self.log("val_loss", losses["loss"], prog_bar=True, batch_size=size, sync_dist=True)
        if "mask_logits" in outputs and self.seg_weight:
            predicted = outputs["mask_logits"] > 0
            target = batch["mask"].bool()
            overlap = (predicted & target).flatten(1).sum(1).float()
            sizes = (predicted.flatten(1).sum(1) + target.flatten(1).sum(1)).float()
            dice = torch.where(sizes > 0, 2 * overlap / sizes.clamp(min=1), torch.ones_like(sizes))
            self.log("val_dice", dice.mean(), prog_bar=True, batch_size=size, sync_dist=True)
        if "class_logits" in outputs and self.cls_weight:
            correct = (outputs["class_logits"].argmax(-1) == batch["tumor_type"]).float()
            self.log("val_accuracy", correct.mean(), prog_bar=True, batch_size=size, sync_dist=True)

    def configure_optimizers(self):
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        schedule = warmup_cosine(optimizer, self.epochs, self.warmup_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


# ----------------------------------------------------------------------------- building blocks


def slice_loaders(
    config: MultitaskConfig, data: PreparedData, split: Split, labels: LabelSpace
) -> dict:
    """DataLoaders of the three parts; the training part is a device-resident
    :class:`DeviceSliceLoader` when :func:`training_data_device` says so (``--data_on_device``).
    ``train_dataset`` is the training part as a ``SliceDataset`` (for class weights)."""
    workers = default_workers(config.trainer.num_workers)
    loaders = {}
    for part in ("train", "val", "test"):
        rows = rows_of_patients(data.cache, split.part(part))
        transform = (
            training_transform(config.augment, config.data.image_size)
            if part == "train"
            else identity
        )
        dataset = SliceDataset(data.cache, rows, labels, transform)
        weights = source_weights(config, data, rows) if part == "train" else None
        loaders[part] = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=part == "train" and weights is None,
            sampler=None
            if weights is None
            else WeightedRandomSampler(weights.tolist(), len(rows), replacement=True),
            num_workers=workers,
            drop_last=part == "train" and len(dataset) > config.batch_size,
            persistent_workers=workers > 0 and part == "train",
        )
    loaders["train_dataset"] = train = loaders["train"].dataset
    device = training_data_device(
        config.trainer, len(train), data.cache.prep.channels, config.data.image_size, masks=True
    )
    if device is not None:
        loaders["train"] = DeviceSliceLoader.from_cache(
            data.cache,
            train.rows,
            labels,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(train) > config.batch_size,
            augment=batch_augment(config.augment, config.data.image_size),
            device=device,
            seed=None,  # the global generators, re-seeded per epoch by EpochSeeding
            weights=source_weights(config, data, train.rows),
        )
    return loaders


def source_weights(config: MultitaskConfig, data: PreparedData, rows) -> np.ndarray | None:
    """``--balance source`` (or ``source+weights``): per-row sampling weights that draw every
    source equally often, whatever its size; None otherwise."""
    if "source" not in config.balance.split("+"):
        return None
    sources = data.cache.catalog.table["source"].to_numpy()[np.asarray(rows, dtype=int)]
    return source_balanced_weights(sources)


def class_weights(dataset: SliceDataset, n_classes: int) -> torch.Tensor:
    """Inverse slice frequency of each type in the training rows, normalised to mean 1."""
    types = dataset.types[torch.as_tensor(dataset.rows)].numpy()
    counts = np.bincount(types[types >= 0], minlength=n_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def build_model(
    config: MultitaskConfig, variant: str, labels: LabelSpace, channels: int
) -> MultiTaskNet:
    model = build_multitask_model(
        variant,
        len(labels.types),
        config.backbone,
        channels,
        config.data.image_size,
        pretrained=config.pretrained,
        hidden_dim=config.hidden_dim,
        dropout=config.dropout,
        decoder=config.decoder,
    )
    if config.ssl_ckpt:
        load_ssl_encoder(model.encoder, config.ssl_ckpt)
    return model


def load_stage_one(model: MultiTaskNet, checkpoint_path: Path) -> None:
    """Variant C: encoder and segmentation head from a variant-A checkpoint of the same setup."""
    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint.get("model_config", {})
    if checkpoint.get("task") != "multitask" or config.get("variant") != "A":
        raise CheckpointError(
            f"{checkpoint_path} is not a variant-A checkpoint of `mritumor train-multitask`"
        )
    if config.get("backbone") != model.backbone_name:
        raise CheckpointError(
            f"{checkpoint_path} holds a {config.get('backbone')} network; this run uses "
            f"{model.backbone_name} (use the same --backbone)"
        )
    result = model.load_state_dict(checkpoint["model_state"], strict=False)
    not_classifier = [k for k in result.missing_keys if not k.startswith("cls_")]
    if not_classifier or result.unexpected_keys:
        raise CheckpointError(
            f"{checkpoint_path} does not fit this network (missing {not_classifier[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    log.info("variant C: encoder and segmentation head from %s", checkpoint_path)


# ----------------------------------------------------------------------------- the command


def train_multitask(config: MultitaskConfig) -> dict:
    """Run ``mritumor train-multitask`` (flags: :mod:`mritumor.commands.multitask`): one
    variant's test report, or for ``variant="all"`` the seven by variant."""
    outdir = check_writable(config.outdir, "--outdir")  # before reading or caching any data
    check_options(config.coverage, config.conformal_method)  # used only at the end of training
    for given in (config.ssl_ckpt, config.seg_ckpt):  # unusable checkpoints fail in seconds
        if given:
            load_checkpoint(given)
    save_resolved_config(config, outdir)
    L.seed_everything(config.data.seed, workers=True, verbose=False)
    data = prepare_data_for(config.data, outdir=outdir, progress=not config.trainer.quiet)
    has_masks = data.catalog.table["mask"].notna().any()
    if not has_masks:
        raise DataError(
            f"{config.data.data_root} has no tumour masks: train-multitask needs masks for segmentation "
            "(use train-hierarchical for classification only)"
        )
    if config.cv_by == "source":
        return leave_one_source_out_runs(config, data, outdir)
    labels = LabelSpace.from_table(data.catalog.subset(data.split.train).table)
    if len(labels.types) < 2:
        raise DataError(f"the training patients have one tumour type only ({labels.types})")
    if config.variant != "all":
        return run_variant(config, data, labels, config.variant, outdir, config.seg_ckpt)
    reports = {}
    for variant in VARIANTS:
        stage_one = outdir / "A" / runfiles.BEST_CHECKPOINT if variant == "C" else None
        log.info("variant %s", variant)
        reports[variant] = run_variant(config, data, labels, variant, outdir / variant, stage_one)
    write_comparison(reports, outdir)
    return reports


def leave_one_source_out_runs(config: MultitaskConfig, data: PreparedData, outdir: Path) -> dict:
    """``--cv_by source``: for every source, train on the others (split by patient within each)
    and test on all of its patients, in ``OUTDIR/<source>/``; the table of the held-out
    sources in ``loso_summary.json`` and ``loso.md``."""
    if config.variant == "all":
        raise DataError("--cv_by source trains one variant per held-out source: give --variant")
    if config.data.split_file:
        raise DataError("--cv_by source makes its own splits; leave out --split_file")
    folds = leave_one_source_out(
        data.catalog.table, config.data.val_frac, config.data.effective_split_seed,
        config.data.group_by,
    )  # fmt: skip
    reports = {}
    for fold in folds:
        name = fold.extra["held_out_source"]
        fold_dir = outdir / name
        fold_dir.mkdir(parents=True, exist_ok=True)
        fold.save(fold_dir / runfiles.SPLIT)
        labels = LabelSpace.from_table(data.catalog.subset(fold.train).table)
        if len(labels.types) < 2:
            raise DataError(f"without {name} the training patients have one type ({labels.types})")
        log.info("leave-one-source-out: %s held out (%d test patients)", name, len(fold.test))
        fold_data = dataclasses.replace(data, split=fold, labels=labels)
        reports[name] = run_variant(config, fold_data, labels, config.variant, fold_dir)
    write_loso_summary(reports, outdir)
    return reports


def run_variant(
    config: MultitaskConfig,
    data: PreparedData,
    labels: LabelSpace,
    variant: str,
    outdir: Path,
    stage_one=None,
) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    if variant == "C" and not stage_one:
        log.info("variant C: stage 1 trains the segmentation network (variant A) first")
        run_variant(config, data, labels, "A", outdir / "stage1_A")
        stage_one = outdir / "stage1_A" / runfiles.BEST_CHECKPOINT
    L.seed_everything(config.data.seed, workers=True, verbose=False)
    loaders = slice_loaders(config, data, data.split, labels)
    model = build_model(config, variant, labels, data.cache.prep.channels)
    if variant == "C":
        load_stage_one(model, Path(stage_one))
    if config.channels_last:
        model = model.to_channels_last()
    weights = (
        class_weights(loaders["train_dataset"], len(labels.types))
        if "weights" in config.balance.split("+")
        else None
    )
    stage = "classification" if variant == "C" else "joint"
    task = MultiTaskTask(
        model, config.lr, config.weight_decay, config.epochs, config.seg_weight, config.cls_weight,
        weights, stage, config.seg_loss, config.warmup_epochs, config.ema_decay,
    )  # fmt: skip

    def payload(module: MultiTaskTask) -> dict:
        return checkpoint_payload(module.eval_model, variant, labels, data, config)

    has_val = len(data.split.val) > 0
    monitor = config.monitor if has_val else "train_loss"
    # a variant without the monitored output (or C, whose masks are frozen) watches its loss
    if (monitor == "val_dice" and (not model.segments or variant == "C")) or (
        monitor == "val_accuracy" and not model.classifies
    ):
        monitor = "val_loss"
    mode = "min" if monitor.endswith("loss") else "max"
    callbacks = [
        BestStateCheckpoint(outdir / runfiles.BEST_CHECKPOINT, payload, monitor=monitor, mode=mode),
        LastCheckpoint(outdir / "checkpoints"),
    ]
    if config.patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=config.patience))
    trainer = build_trainer(
        config.trainer, outdir, config.epochs, callbacks,
        limit_val_batches=1.0 if has_val else 0, num_sanity_val_steps=0,
    )  # fmt: skip
    resume = outdir / "checkpoints" / runfiles.LAST_CHECKPOINT
    resume = check_resume_checkpoint(resume) if config.trainer.resume and resume.is_file() else None
    trainer.fit(
        task,
        loaders["train"],
        loaders["val"] if has_val else None,
        ckpt_path=resume,
        weights_only=True,
    )
    if not trainer.is_global_zero:
        return {}
    report = finish_variant(config, outdir, labels, loaders, data)
    log_run(trainer, config.to_flat(), report.get("metrics", {}), outdir)
    return report


def finish_variant(
    config: MultitaskConfig, outdir: Path, labels: LabelSpace, loaders: dict, data
) -> dict:
    checkpoint = load_checkpoint(outdir / runfiles.BEST_CHECKPOINT)
    model = model_from_checkpoint(checkpoint)
    temperature = 1.0
    if model.classifies and not config.no_calibration and len(loaders["val"].dataset):
        val = predict_slices(model, loaders["val"])
        temperature = fit_temperature(val["class_logits"], torch.as_tensor(val["type_true"]))
        checkpoint["temperature"] = float(temperature)
        save_checkpoint(
            {k: v for k, v in checkpoint.items() if k != "format"},
            outdir / runfiles.BEST_CHECKPOINT,
        )
    test = predict_slices(model, loaders["test"])
    report = evaluate_multitask(
        test,
        labels,
        outdir,
        cache=data.cache,
        variant=checkpoint["model_config"]["variant"],
        temperature=temperature,
        n_boot=config.n_boot,
        seed=config.data.seed,
        n_overlays=config.n_overlays,
    )
    if model.classifies and len(loaders["val"].dataset):
        state = fit_slice_uncertainty(model, loaders, data, temperature, config)
        checkpoint["uncertainty"] = state
        save_checkpoint(
            {k: v for k, v in checkpoint.items() if k != "format"},
            outdir / runfiles.BEST_CHECKPOINT,
        )
        probs = softmax(test["class_logits"].numpy(), temperature)
        report["uncertainty"] = write_test_uncertainty(
            state, outdir, ood_features(state, test), probs, test["type_true"], labels.types
        )
    return report


def checkpoint_payload(
    model: MultiTaskNet, variant: str, labels: LabelSpace, data, config: MultitaskConfig
) -> dict:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    split = data.split
    return {
        "task": "multitask",
        "model_state": state,
        "encoder_config": model.encoder.config.to_dict(),
        "model_config": {
            "variant": variant,
            "backbone": config.backbone,
            "decoder": model.decoder_name,
            "n_classes": len(labels.types),
            "image_size": data.cache.prep.image_size,
            "in_channels": data.cache.prep.channels,
            "hidden_dim": config.hidden_dim,
            "dropout": config.dropout,
        },
        "labels": labels.to_dict(),
        "preprocessing": {
            "image_size": data.cache.prep.image_size,
            "channels": data.cache.prep.channels,
            "clip_low": data.cache.prep.clip_low,
            "clip_high": data.cache.prep.clip_high,
            "intensity": data.cache.prep.intensity,
        },
        "temperature": 1.0,
        "split": {"train": split.train, "val": split.val, "test": split.test},
        "config": config.scalar_flags(),
        "metadata": run_metadata(),
        "training_data": training_data(data.cache.catalog.subset(split.train).table),
    }

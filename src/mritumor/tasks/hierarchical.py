"""Training the two-step classifier: ``mritumor train-hierarchical`` (seed 000, steps 2 and 3).

Per run (or per fold with ``--cv K``): patient bags → Lightning fit with early stopping →
the best epoch's weights → temperature fitted on validation → test evaluation and the seed's
artifacts (see :mod:`mritumor.evaluation.hierarchical`).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, WeightedRandomSampler

from mritumor.checkpoints import (
    CheckpointError,
    check_resume_checkpoint,
    load_checkpoint,
    run_metadata,
    save_checkpoint,
)
from mritumor.commands.common import save_resolved_config
from mritumor.data.datasets import PatientBagDataset, collate_bags
from mritumor.data.device_data import DeviceBagLoader
from mritumor.data.fast_path import augment_config, batch_augment, training_data_device
from mritumor.data.labels import LabelSpace
from mritumor.data.prepare import PreparedData, prepare_data
from mritumor.data.splits import Split, make_folds, sample_labelled_patients
from mritumor.data.transforms import build_transform
from mritumor.evaluation.calibration import fit_temperature
from mritumor.evaluation.hierarchical import evaluate_hierarchical
from mritumor.evaluation.metrics import cv_summary
from mritumor.inference.loops import predict_bags  # shared with `mritumor evaluate`
from mritumor.models.backbones import build_encoder
from mritumor.models.hierarchical import (
    TwoStepClassifier,
    hierarchical_loss,
    hierarchical_probabilities,
)
from mritumor.models.loading import hierarchical_network as model_from_checkpoint
from mritumor.models.simclr import extract_encoder_state
from mritumor.resources import check_writable
from mritumor.training import (
    BestStateCheckpoint,
    LastCheckpoint,
    build_trainer,
    default_workers,
)

log = logging.getLogger(__name__)


class HierarchicalTask(L.LightningModule):
    def __init__(
        self,
        model: TwoStepClassifier,
        lr: float,
        weight_decay: float,
        epochs: int,
        type_weights: torch.Tensor | None = None,
        grade_weight: float = 1.0,
        freeze_backbone: bool = False,
    ):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.epochs = lr, weight_decay, epochs
        self.grade_weight, self.freeze_backbone = grade_weight, freeze_backbone
        self.register_buffer("type_weights", type_weights, persistent=False)
        self._val_outputs: list[dict] = []
        if freeze_backbone:
            model.backbone.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        if self.freeze_backbone:
            self.model.backbone.eval()  # frozen BatchNorm statistics, not just frozen weights

    def _losses(self, batch) -> tuple[dict, dict]:
        outputs = self.model(batch["images"], batch["mask"])
        losses = hierarchical_loss(
            outputs, batch["tumor_type"], batch["grade"], self.type_weights, self.grade_weight
        )
        return outputs, losses

    def training_step(self, batch, batch_index):
        _, losses = self._losses(batch)
        size = batch["images"].shape[0]
        self.log(
            "train_loss",
            losses["loss"],
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
        )
        return losses["loss"]

    def validation_step(self, batch, batch_index):
        outputs, losses = self._losses(batch)
        size = batch["images"].shape[0]
        self.log(
            "val_loss",
            losses["loss"],
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
            sync_dist=True,
        )
        self._val_outputs.append(
            {"type": outputs["type_logits"].argmax(-1), "true": batch["tumor_type"]}
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        predicted = torch.cat([o["type"] for o in self._val_outputs])
        true = torch.cat([o["true"] for o in self._val_outputs])
        self.log(
            "val_type_accuracy", (predicted == true).float().mean(), prog_bar=True, sync_dist=True
        )
        self._val_outputs.clear()

    def configure_optimizers(self):
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": schedule}


# ----------------------------------------------------------------------------- building blocks


def with_fewer_labels(
    data: PreparedData, split: Split, fraction: float, seed: int, outdir: Path
) -> Split:
    """Keep ``fraction`` of the training patients (per type, at least one each); validation and
    test stay whole. For label-efficiency studies (e.g. SSL init vs scratch at 10 % labels)."""
    table = data.catalog.subset(split.train).table.drop_duplicates("patient_id")
    kept = sample_labelled_patients(
        dict(zip(table["patient_id"], table["tumor_type"], strict=True)), fraction, seed
    )
    log.info(
        "label_fraction %.2f: training on %d of %d patients", fraction, len(kept), len(split.train)
    )
    reduced = replace(split, train=kept, extra={**split.extra, "label_fraction": fraction})
    reduced.save(outdir / "split.json")
    return reduced


def build_model(args: argparse.Namespace, labels: LabelSpace, channels: int) -> TwoStepClassifier:
    encoder = build_encoder(args.backbone, channels, args.image_size, pretrained=args.pretrained)
    if args.ssl_ckpt:
        load_ssl_encoder(encoder, args.ssl_ckpt)
    model = TwoStepClassifier(encoder, labels.allowed(), pooling=args.pooling, dropout=args.dropout)
    return model.to_channels_last() if args.channels_last else model


def load_ssl_encoder(encoder, ssl_ckpt: str | Path) -> dict:
    """Only ``encoder.*`` of the SimCLR checkpoint; missing and unexpected keys are reported."""
    payload = load_checkpoint(ssl_ckpt)
    if "simclr_state" not in payload:
        raise CheckpointError(
            f"{ssl_ckpt} has no 'simclr_state': not a checkpoint of `mritumor pretrain`"
        )
    config = payload.get("encoder_config", {})
    expected = encoder.config
    if config and (config.get("name"), config.get("in_channels")) != (
        expected.name,
        expected.in_channels,
    ):
        raise CheckpointError(
            f"{ssl_ckpt} holds a {config.get('name')} encoder for {config.get('in_channels')} channel(s); this "
            f"model is a {expected.name} for {expected.in_channels} channel(s) (use --backbone {config.get('name')})"
        )
    state = extract_encoder_state(payload["simclr_state"])
    result = encoder.load_state_dict(state, strict=False)
    report = {
        "loaded": len(state),
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
    }
    log.info(
        "SSL encoder from %s: %d tensors loaded, %d missing, %d unexpected",
        ssl_ckpt,
        report["loaded"],
        len(report["missing"]),
        len(report["unexpected"]),
    )
    for key in report["missing"][:10]:
        log.warning("  missing from SSL checkpoint: %s", key)
    for key in report["unexpected"][:10]:
        log.warning("  unexpected in SSL checkpoint: %s", key)
    return report


def bag_loaders(args, data: PreparedData, split: Split, labels: LabelSpace) -> dict:
    """DataLoaders of patient bags for the three parts; the training part is a device-resident
    :class:`DeviceBagLoader` when :func:`training_data_device` says so (``--data_on_device``).
    ``train_dataset`` is the training part as a ``PatientBagDataset`` (for class weights)."""
    workers = default_workers(args.num_workers)
    train_set = PatientBagDataset(
        data.cache,
        split.train,
        labels,
        args.bag_size,
        args.bag_policy,
        transform=training_transform(args.augment, args.image_size),
    )
    # evaluation bags are deterministic: 'random' becomes 'uniform'
    eval_policy = "uniform" if args.bag_policy == "random" else args.bag_policy
    loaders = {}
    sampler = None
    if args.balance == "sampler":
        counts = np.bincount(train_set.types, minlength=len(labels.types)).astype(float)
        weights = 1.0 / counts[train_set.types]
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights), num_samples=len(train_set), replacement=True
        )
    loaders["train"] = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_bags,
        num_workers=workers,
        drop_last=len(train_set) > args.batch_size,
    )
    loaders["train_dataset"] = train_set
    n_slices = sum(len(rows) for rows in train_set.rows.values())
    device = training_data_device(args, n_slices, data.cache.prep.channels, masks=False)
    if device is not None:
        loaders["train"] = DeviceBagLoader.from_dataset(
            train_set,
            weights=None if sampler is None else sampler.weights,
            batch_size=args.batch_size,
            shuffle=sampler is None,
            drop_last=len(train_set) > args.batch_size,
            augment=batch_augment(args.augment, args.image_size),
            device=device,
            seed=None,  # the global generators, re-seeded per epoch by EpochSeeding
        )
    for part in ("val", "test"):
        dataset = PatientBagDataset(
            data.cache, split.part(part), labels, args.bag_size, eval_policy
        )
        loaders[part] = DataLoader(
            dataset, batch_size=args.batch_size, collate_fn=collate_bags, num_workers=workers
        )
    return loaders


def training_transform(augment: str, image_size: int):
    """The per-slice CPU transform of an ``--augment`` preset (:func:`augment_config`)."""
    config = augment_config(augment)
    return build_transform("eval" if config is None else "train", image_size, config)


def class_weights(dataset: PatientBagDataset, n_types: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1."""
    counts = np.bincount(dataset.types, minlength=n_types).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_types * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# ----------------------------------------------------------------------------- the command


def train_hierarchical(args: argparse.Namespace) -> dict:
    outdir = check_writable(args.outdir, "--outdir")  # before reading or caching any data
    if args.ssl_ckpt:  # an unusable encoder checkpoint fails in seconds, not after caching
        load_checkpoint(args.ssl_ckpt)
    save_resolved_config(args, outdir)
    L.seed_everything(args.seed, workers=True, verbose=False)
    data = prepare_data(
        args.data_root,
        format=args.format,
        strict=args.strict,
        image_size=args.image_size,
        channels=args.channels,
        cache_dir=args.cache_dir,
        split_file=args.split_file,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        seed=args.seed,
        group_by=args.group_by,
        outdir=None if args.cv else outdir,
        progress=not args.quiet,
    )
    if not args.cv:
        return run_fold(args, data, data.split, outdir)
    folds = make_folds(
        data.catalog.table, args.cv, args.val_frac, seed=args.seed, group_by=args.group_by
    )
    reports = []
    for fold in folds:
        fold_dir = outdir / f"fold_{fold.fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        fold.save(fold_dir / "split.json")
        log.info(
            "fold %d/%d: %d/%d/%d patients",
            fold.fold + 1,
            args.cv,
            len(fold.train),
            len(fold.val),
            len(fold.test),
        )
        reports.append(run_fold(args, data, fold, fold_dir))
    summary = cv_summary(reports)
    (outdir / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_fold(args, data: PreparedData, split: Split, outdir: Path) -> dict:
    L.seed_everything(args.seed, workers=True, verbose=False)
    if args.label_fraction < 1:
        split = with_fewer_labels(data, split, args.label_fraction, args.seed, outdir)
    labels = LabelSpace.from_table(data.catalog.subset(split.train).table)
    if len(labels.types) < 2:
        from mritumor.errors import DataError

        raise DataError(
            f"the training patients have only one tumour type ({labels.types}); nothing to classify"
        )
    loaders = bag_loaders(args, data, split, labels)
    model = build_model(args, labels, data.cache.prep.channels)
    type_weights = (
        class_weights(loaders["train_dataset"], len(labels.types))
        if args.balance == "weights"
        else None
    )
    task = HierarchicalTask(
        model,
        args.lr,
        args.weight_decay,
        args.epochs,
        type_weights,
        args.grade_weight,
        args.freeze_backbone,
    )

    def payload(module: HierarchicalTask) -> dict:
        return checkpoint_payload(module.model, labels, data, args, split)

    has_val = len(split.val) > 0
    monitor = args.monitor if has_val else "train_loss"
    mode = "max" if monitor.endswith("accuracy") else "min"
    best = BestStateCheckpoint(outdir / "best.pt", payload, monitor=monitor, mode=mode)
    callbacks = [
        best,
        LastCheckpoint(outdir / "checkpoints"),
    ]
    if args.patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=args.patience))
    trainer = build_trainer(
        args,
        outdir,
        args.epochs,
        callbacks,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
    )
    resume = outdir / "checkpoints" / "last.ckpt"
    resume = check_resume_checkpoint(resume) if args.resume and resume.is_file() else None
    trainer.fit(
        task,
        loaders["train"],
        loaders["val"] if has_val else None,
        ckpt_path=resume,
        weights_only=True,
    )
    if not trainer.is_global_zero:
        return {}
    return finish_fold(args, outdir, labels, loaders)


def finish_fold(args, outdir: Path, labels: LabelSpace, loaders: dict) -> dict:
    """Best weights → temperature on validation → test artifacts; the temperature goes into best.pt."""
    checkpoint = load_checkpoint(outdir / "best.pt")
    model = model_from_checkpoint(checkpoint)
    temperature = 1.0
    if not args.no_calibration and len(loaders["val"].dataset):
        val = predict_bags(model, loaders["val"])
        temperature = fit_temperature(val["type_logits"], torch.as_tensor(val["type_true"]))
        checkpoint["temperature"] = float(temperature)
        save_checkpoint({k: v for k, v in checkpoint.items() if k != "format"}, outdir / "best.pt")
    test = predict_bags(model, loaders["test"])
    return evaluate_hierarchical(
        test,
        labels,
        outdir,
        temperature=temperature,
        n_boot=args.n_boot,
        seed=args.seed,
        catalog=loaders["test"].dataset.cache.catalog,
    )


def checkpoint_payload(
    model: TwoStepClassifier, labels: LabelSpace, data: PreparedData, args, split: Split
) -> dict:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        "task": "hierarchical",
        "model_state": state,
        "encoder_config": model.backbone.config.to_dict(),
        "model_config": {"pooling": args.pooling, "dropout": args.dropout},
        "labels": labels.to_dict(),
        "preprocessing": {
            "image_size": data.cache.prep.image_size,
            "channels": data.cache.prep.channels,
            "clip_low": data.cache.prep.clip_low,
            "clip_high": data.cache.prep.clip_high,
        },
        "bag": {"bag_size": args.bag_size, "bag_policy": args.bag_policy},
        "temperature": 1.0,
        "split": {
            "train": split.train,
            "val": split.val,
            "test": split.test,
            "strategy": split.strategy,
        },
        "config": {
            k: v
            for k, v in vars(args).items()
            if not k.startswith("_")
            and k != "handler"
            and isinstance(v, (str, int, float, bool, type(None)))
        },
        "metadata": run_metadata(),
    }


def probabilities_from_prediction(prediction: dict, temperature: float = 1.0) -> dict:
    return {
        k: v.numpy()
        for k, v in hierarchical_probabilities(
            prediction["type_logits"], prediction["grade_logits"], temperature
        ).items()
    }

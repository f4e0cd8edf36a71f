"""Training the two-step classifier: ``mritumor train-hierarchical`` (seed 000, steps 2 and 3).

Per run (or per fold with ``--cv K``): patient bags → Lightning fit with early stopping →
the best epoch's weights → temperature fitted on validation → test evaluation and the seed's
artifacts (see :mod:`mritumor.evaluation.hierarchical`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, WeightedRandomSampler

from mritumor import runfiles
from mritumor.checkpoints import (
    check_resume_checkpoint,
    load_checkpoint,
    run_metadata,
    save_checkpoint,
)
from mritumor.config import HierarchicalConfig, save_resolved_config
from mritumor.data.loading.datasets import PatientBagDataset, collate_bags
from mritumor.data.loading.device_data import DeviceBagLoader
from mritumor.data.loading.fast_path import batch_augment, training_data_device, training_transform
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.loading.prepare import PreparedData, prepare_data_for
from mritumor.data.loading.splits import Split, make_folds, sample_labelled_patients
from mritumor.data.reading.sequences import training_data
from mritumor.evaluation.calibration import fit_temperature
from mritumor.evaluation.conformal import check_options
from mritumor.evaluation.hierarchical import evaluate_hierarchical
from mritumor.evaluation.metrics import cv_summary
from mritumor.evaluation.uncertainty import write_test_uncertainty
from mritumor.inference.loops import predict_bags  # shared with `mritumor evaluate`
from mritumor.models.backbones import build_encoder
from mritumor.models.hierarchical import (
    TwoStepClassifier,
    hierarchical_loss,
    hierarchical_probabilities,
)
from mritumor.models.loading import hierarchical_network as model_from_checkpoint
from mritumor.models.simclr import load_ssl_encoder
from mritumor.resources import check_writable
from mritumor.tasks.uncertainty import fit_patient_uncertainty
from mritumor.training import (
    BestStateCheckpoint,
    LastCheckpoint,
    build_trainer,
    default_workers,
    log_run,
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
    reduced.save(outdir / runfiles.SPLIT)
    return reduced


def build_model(config: HierarchicalConfig, labels: LabelSpace, channels: int) -> TwoStepClassifier:
    encoder = build_encoder(
        config.backbone, channels, config.data.image_size, pretrained=config.pretrained
    )
    if config.ssl_ckpt:
        load_ssl_encoder(encoder, config.ssl_ckpt)
    model = TwoStepClassifier(
        encoder, labels.allowed(), pooling=config.pooling, dropout=config.dropout
    )
    return model.to_channels_last() if config.channels_last else model


def bag_loaders(
    config: HierarchicalConfig, data: PreparedData, split: Split, labels: LabelSpace
) -> dict:
    """DataLoaders of patient bags for the three parts; the training part is a device-resident
    :class:`DeviceBagLoader` when :func:`training_data_device` says so (``--data_on_device``).
    ``train_dataset`` is the training part as a ``PatientBagDataset`` (for class weights)."""
    workers = default_workers(config.trainer.num_workers)
    train_set = PatientBagDataset(
        data.cache,
        split.train,
        labels,
        config.bag_size,
        config.bag_policy,
        transform=training_transform(config.augment, config.data.image_size),
        slices=config.bag_slices,
    )
    # evaluation bags are deterministic: 'random' becomes 'uniform'
    eval_policy = "uniform" if config.bag_policy == "random" else config.bag_policy
    loaders = {}
    sampler = None
    if config.balance == "sampler":
        counts = np.bincount(train_set.types, minlength=len(labels.types)).astype(float)
        weights = 1.0 / counts[train_set.types]
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights), num_samples=len(train_set), replacement=True
        )
    loaders["train"] = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_bags,
        num_workers=workers,
        drop_last=len(train_set) > config.batch_size,
    )
    loaders["train_dataset"] = train_set
    n_slices = sum(len(rows) for rows in train_set.rows.values())
    device = training_data_device(
        config.trainer, n_slices, data.cache.prep.channels, config.data.image_size, masks=False
    )
    if device is not None:
        loaders["train"] = DeviceBagLoader.from_dataset(
            train_set,
            weights=None if sampler is None else sampler.weights,
            batch_size=config.batch_size,
            shuffle=sampler is None,
            drop_last=len(train_set) > config.batch_size,
            augment=batch_augment(config.augment, config.data.image_size),
            device=device,
            seed=None,  # the global generators, re-seeded per epoch by EpochSeeding
        )
    for part in ("val", "test"):
        dataset = PatientBagDataset(
            data.cache,
            split.part(part),
            labels,
            config.bag_size,
            eval_policy,
            slices=config.bag_slices,
        )
        loaders[part] = DataLoader(
            dataset, batch_size=config.batch_size, collate_fn=collate_bags, num_workers=workers
        )
    return loaders


def class_weights(dataset: PatientBagDataset, n_types: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1."""
    counts = np.bincount(dataset.types, minlength=n_types).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_types * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# ----------------------------------------------------------------------------- the command


def train_hierarchical(config: HierarchicalConfig) -> dict:
    """Run ``mritumor train-hierarchical`` (flags: :mod:`mritumor.commands.hierarchical`): the
    test report, or with ``cv`` the summary over folds."""
    outdir = check_writable(config.outdir, "--outdir")  # before reading or caching any data
    check_options(config.coverage, config.conformal_method)  # used only at the end of training
    if config.ssl_ckpt:  # an unusable encoder checkpoint fails in seconds, not after caching
        load_checkpoint(config.ssl_ckpt)
    save_resolved_config(config, outdir)
    L.seed_everything(config.data.seed, workers=True, verbose=False)
    data = prepare_data_for(
        config.data, outdir=None if config.cv else outdir, progress=not config.trainer.quiet
    )
    if not config.cv:
        return run_fold(config, data, data.split, outdir)
    folds = make_folds(
        data.catalog.table,
        config.cv,
        config.data.val_frac,
        seed=config.data.effective_split_seed,
        group_by=config.data.group_by,
    )
    reports = []
    for fold in folds:
        fold_dir = outdir / f"fold_{fold.fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        fold.save(fold_dir / runfiles.SPLIT)
        log.info(
            "fold %d/%d: %d/%d/%d patients",
            fold.fold + 1,
            config.cv,
            len(fold.train),
            len(fold.val),
            len(fold.test),
        )
        reports.append(run_fold(config, data, fold, fold_dir))
    summary = cv_summary(reports)
    (outdir / runfiles.CV_SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def run_fold(config: HierarchicalConfig, data: PreparedData, split: Split, outdir: Path) -> dict:
    L.seed_everything(config.data.seed, workers=True, verbose=False)
    if config.label_fraction < 1:
        split = with_fewer_labels(data, split, config.label_fraction, config.data.seed, outdir)
    labels = LabelSpace.from_table(data.catalog.subset(split.train).table)
    if len(labels.types) < 2:
        from mritumor.errors import DataError

        raise DataError(
            f"the training patients have only one tumour type ({labels.types}); nothing to classify"
        )
    loaders = bag_loaders(config, data, split, labels)
    model = build_model(config, labels, data.cache.prep.channels)
    type_weights = (
        class_weights(loaders["train_dataset"], len(labels.types))
        if config.balance == "weights"
        else None
    )
    task = HierarchicalTask(
        model,
        config.lr,
        config.weight_decay,
        config.epochs,
        type_weights,
        config.grade_weight,
        config.freeze_backbone,
    )

    def payload(module: HierarchicalTask) -> dict:
        return checkpoint_payload(module.model, labels, data, config, split)

    has_val = len(split.val) > 0
    monitor = config.monitor if has_val else "train_loss"
    mode = "max" if monitor.endswith("accuracy") else "min"
    best = BestStateCheckpoint(
        outdir / runfiles.BEST_CHECKPOINT, payload, monitor=monitor, mode=mode
    )
    callbacks = [
        best,
        LastCheckpoint(outdir / "checkpoints"),
    ]
    if config.patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=config.patience))
    trainer = build_trainer(
        config.trainer,
        outdir,
        config.epochs,
        callbacks,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
    )
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
    report = finish_fold(config, outdir, labels, loaders)
    log_run(trainer, config.to_flat(), report.get("metrics", {}), outdir)
    return report


def finish_fold(
    config: HierarchicalConfig, outdir: Path, labels: LabelSpace, loaders: dict
) -> dict:
    """Best weights → temperature on validation → test artifacts; the temperature goes into best.pt."""
    checkpoint = load_checkpoint(outdir / runfiles.BEST_CHECKPOINT)
    model = model_from_checkpoint(checkpoint)
    temperature = 1.0
    if not config.no_calibration and len(loaders["val"].dataset):
        val = predict_bags(model, loaders["val"])
        temperature = fit_temperature(val["type_logits"], torch.as_tensor(val["type_true"]))
        checkpoint["temperature"] = float(temperature)
        save_checkpoint(
            {k: v for k, v in checkpoint.items() if k != "format"},
            outdir / runfiles.BEST_CHECKPOINT,
        )
    test = predict_bags(model, loaders["test"])
    report = evaluate_hierarchical(
        test,
        labels,
        outdir,
        temperature=temperature,
        n_boot=config.n_boot,
        seed=config.data.seed,
        catalog=loaders["test"].dataset.cache.catalog,
    )
    if len(loaders["val"].dataset):
        state = fit_patient_uncertainty(model, loaders, temperature, config)
        checkpoint["uncertainty"] = state
        save_checkpoint(
            {k: v for k, v in checkpoint.items() if k != "format"},
            outdir / runfiles.BEST_CHECKPOINT,
        )
        probs = probabilities_from_prediction(test, temperature)
        report["uncertainty"] = write_test_uncertainty(
            state, outdir, test["patient_embedding"], probs["type"], test["type_true"],
            labels.types, probs["grade_e2e_normalised"], test["grade_true"], labels.grades,
        )  # fmt: skip
    return report


def checkpoint_payload(
    model: TwoStepClassifier,
    labels: LabelSpace,
    data: PreparedData,
    config: HierarchicalConfig,
    split: Split,
) -> dict:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        "task": "hierarchical",
        "model_state": state,
        "encoder_config": model.backbone.config.to_dict(),
        "model_config": {"pooling": config.pooling, "dropout": config.dropout},
        "labels": labels.to_dict(),
        "preprocessing": {
            "image_size": data.cache.prep.image_size,
            "channels": data.cache.prep.channels,
            "clip_low": data.cache.prep.clip_low,
            "clip_high": data.cache.prep.clip_high,
            "intensity": data.cache.prep.intensity,
        },
        "bag": {
            "bag_size": config.bag_size,
            "bag_policy": config.bag_policy,
            "bag_slices": config.bag_slices,
        },
        "temperature": 1.0,
        "split": {
            "train": split.train,
            "val": split.val,
            "test": split.test,
            "strategy": split.strategy,
        },
        "config": config.scalar_flags(),
        "metadata": run_metadata(),
        "training_data": training_data(data.cache.catalog.subset(split.train).table),
    }


def probabilities_from_prediction(prediction: dict, temperature: float = 1.0) -> dict:
    return {
        k: v.numpy()
        for k, v in hierarchical_probabilities(
            prediction["type_logits"], prediction["grade_logits"], temperature
        ).items()
    }

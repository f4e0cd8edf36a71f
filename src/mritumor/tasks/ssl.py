"""SimCLR pretraining: :class:`SimCLRTask` (the LightningModule) and :func:`pretrain` (the
``mritumor pretrain`` command).

Data: the patient-level split of :func:`~mritumor.data.loading.prepare.prepare_data`. The encoder trains
on the *train* patients and the best epoch is chosen on the *val* patients. The *test* patients
are left out altogether, although no label is ever read: downstream models and
``mritumor evaluate-ssl`` can then re-use this run's ``split.json`` (``--split_file``) and be
tested on patients the encoder has never seen, not even unlabelled.

Artifacts in ``--outdir``:

* ``simclr_pretrain.pt`` (:func:`~mritumor.checkpoints.save_checkpoint`; written whenever the
  validation loss improves, so it always holds the best epoch) with exactly the keys

  - ``format``: checkpoint layout version (added by ``save_checkpoint``);
  - ``simclr_state``: state dict of :class:`~mritumor.models.simclr.SimCLRModel`, keys
    ``encoder.*`` and ``projection.*``; downstream code takes only ``encoder.*``
    (:func:`~mritumor.models.simclr.extract_encoder_state`);
  - ``encoder_config``: ``name``, ``in_channels``, ``image_size``, ``feature_dim``
    (:class:`~mritumor.models.backbones.EncoderConfig`, rebuilt by ``encoder_from_config``);
  - ``metadata``: :data:`METADATA_KEYS` — epochs run and requested, whether the run completed,
    the best epoch (counted from 1) and its validation loss, the data (root, source, counts),
    the split (patient ids per part), preprocessing, training settings (including the
    projection head's sizes), and date, versions, commit, machine (``run_metadata``).
* ``checkpoints/last.ckpt``: Lightning's own checkpoint of the last finished epoch, for
  ``--resume`` (loaded with ``weights_only=True``: it holds only tensors and plain values);
* ``split.json``, ``config.yaml``, and ``logs/version_*/metrics.csv`` (train/val loss per epoch).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from mritumor import runfiles
from mritumor.checkpoints import (
    check_resume_checkpoint,
    load_checkpoint,
    run_metadata,
    save_checkpoint,
)
from mritumor.config import PretrainConfig, save_resolved_config
from mritumor.data.augment.batch_augment import BatchAugment
from mritumor.data.augment.transforms import build_transform
from mritumor.data.loading.datasets import ContrastivePairDataset, rows_of_patients
from mritumor.data.loading.device_data import DevicePairLoader
from mritumor.data.loading.fast_path import training_data_device
from mritumor.data.loading.prepare import PreparedData, prepare_data_for
from mritumor.errors import DataError, MritumorError
from mritumor.losses import nt_xent_loss
from mritumor.models.backbones import build_encoder
from mritumor.models.simclr import SimCLRModel
from mritumor.resources import check_writable
from mritumor.training import LastCheckpoint, build_trainer, default_workers, log_run

log = logging.getLogger(__name__)

CHECKPOINT_NAME = runfiles.SSL_CHECKPOINT
CHECKPOINT_KEYS = ("format", "simclr_state", "encoder_config", "metadata")
METADATA_KEYS = (
    "epochs_run",
    "epochs_requested",
    "completed",
    "best_epoch",
    "best_val_loss",
    "data",
    "split",
    "preprocessing",
    "training",
    "date",
    "versions",
    "commit",
    "machine",
)


class SimCLRTask(L.LightningModule):
    """Trains a :class:`SimCLRModel` with NT-Xent; logs ``train_loss`` and ``val_loss`` per epoch.

    Batches are pairs ``(first_views, second_views)``, each (B, C, S, S). AdamW with a cosine
    learning-rate decay over ``trainer.max_epochs``. The model is kept in channels-last memory
    format, which oneDNN's CPU convolutions and GPU tensor cores prefer (measured on 2 CPU
    cores, forward + backward: small_cnn 1.3x and resnet18 1.6x faster, mobilenet_v2 about
    even).
    """

    def __init__(
        self,
        model: SimCLRModel,
        temperature: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)
        self.temperature, self.lr, self.weight_decay = temperature, lr, weight_decay

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.contiguous(memory_format=torch.channels_last))

    def _loss(self, batch) -> tuple[torch.Tensor, int]:
        first, second = batch
        # One forward pass over both views, as SimCLR's reference code does.
        z1, z2 = self(torch.cat([first, second])).chunk(2)
        return nt_xent_loss(z1, z2, self.temperature), len(first)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, n = self._loss(batch)
        self._log_epoch("train_loss", loss, n)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, n = self._loss(batch)
        self._log_epoch("val_loss", loss, n)

    def _log_epoch(self, name: str, loss: torch.Tensor, batch_size: int) -> None:
        # sync_dist: the epoch mean over all processes, so they all agree on the best epoch.
        self.log(
            name,
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=True,
        )

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        # LambdaLR rather than CosineAnnealingLR: a plain function is not stored in the
        # scheduler's state, so `--resume --epochs N` with a larger N follows the new length
        # instead of the T_max restored from the checkpoint.
        def cosine(epoch: int) -> float:
            total = max(1, self.trainer.max_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(epoch, total) / total))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


class FixedViews(Dataset):
    """The same augmented pair for item i in every epoch (torch's RNG seeded with seed + i), so
    the validation loss changes only because the model does, and epochs can be compared."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + item)
            return self.dataset[item]


class SaveBestSimCLR(L.Callback):
    """Writes ``simclr_pretrain.pt`` whenever the validation loss improves, and at the end of
    training records how many epochs ran. The best loss survives ``--resume``: Lightning keeps
    this callback's state in ``last.ckpt``.

    Not ``training.BestStateCheckpoint``: that one adds a top-level ``training`` key, and this
    checkpoint's keys are a contract (seed ``000``)."""

    def __init__(self, path: Path, encoder_config: dict, metadata: dict):
        self.path, self.encoder_config, self.metadata = Path(path), encoder_config, metadata
        self.best_loss: float | None = None
        self.best_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, task: SimCLRTask) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or loss is None or not torch.isfinite(loss):
            return
        if self.best_loss is not None and float(loss) >= self.best_loss:
            return
        self.best_loss, self.best_epoch = float(loss), trainer.current_epoch + 1
        if trainer.is_global_zero:
            state = {k: v.detach().cpu().contiguous() for k, v in task.model.state_dict().items()}
            metadata = {
                **self.metadata,
                **run_metadata(),
                "epochs_run": trainer.current_epoch + 1,
                "completed": False,
                "best_epoch": self.best_epoch,
                "best_val_loss": self.best_loss,
            }
            # Through JSON so that only plain types are stored: a str or number subclass
            # (numpy scalars, TorchVersion) would make torch.load(weights_only=True) refuse the file.
            metadata = json.loads(json.dumps(metadata))
            payload = {
                "simclr_state": state,
                "encoder_config": self.encoder_config,
                "metadata": metadata,
            }
            save_checkpoint(payload, self.path)
            log.info("epoch %d: val_loss %.4f, best so far → %s", self.best_epoch, loss, self.path)

    def on_fit_end(self, trainer: L.Trainer, task: SimCLRTask) -> None:
        # The best weights stay; only how long the run went is updated.
        if trainer.is_global_zero and self.path.is_file():
            payload = load_checkpoint(self.path)
            del payload["format"]  # save_checkpoint adds it back
            payload["metadata"].update(epochs_run=trainer.current_epoch, completed=True)
            save_checkpoint(payload, self.path)

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_loss = state_dict.get("best_loss")
        self.best_epoch = state_dict.get("best_epoch")


def make_loaders(
    data: PreparedData, config: PretrainConfig, world_size: int = 1
) -> tuple[DataLoader, DataLoader]:
    """Contrastive pairs of the train and val patients (labels are never read)."""
    transform = build_transform("ssl", config.data.image_size)
    cache = data.cache
    train = ContrastivePairDataset(
        cache, rows_of_patients(cache, data.patients("train")), transform, config.positive_pairs
    )
    val = FixedViews(
        ContrastivePairDataset(
            cache, rows_of_patients(cache, data.patients("val")), transform, config.positive_pairs
        ),
        seed=config.data.seed,
    )
    workers = default_workers(config.trainer.num_workers)
    options = {
        "batch_size": config.batch_size,
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    # A small last batch gives few negatives and a noisy step; drop it unless it is all there is.
    drop_last = len(train) // world_size >= config.batch_size
    val_loader = DataLoader(val, shuffle=False, **options)
    device = None
    if config.positive_pairs == "augment":  # the device loader makes augmented pairs only
        device = training_data_device(
            config.trainer, len(train), cache.prep.channels, config.data.image_size, masks=False
        )
    if device is not None:
        train_loader = DevicePairLoader.from_cache(
            cache,
            train.rows,
            BatchAugment(None, config.data.image_size, "ssl"),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=drop_last,
            device=device,
            seed=None,  # the global generators, re-seeded per epoch by EpochSeeding
        )
        return train_loader, val_loader
    return DataLoader(train, shuffle=True, drop_last=drop_last, **options), val_loader


def pretrain(config: PretrainConfig) -> Path:
    """Run ``mritumor pretrain`` (flags: :mod:`mritumor.commands.pretrain`); returns the path of
    ``simclr_pretrain.pt``."""
    outdir = check_writable(config.outdir, "--outdir")  # before reading or caching any data
    is_main_process = rank_zero_only.rank == 0
    if config.pretrained:  # fail in seconds when the weights are missing, not after data caching
        build_encoder(config.encoder, 1, config.data.image_size, pretrained=True)
    resume_from = _resume_checkpoint(outdir) if config.trainer.resume else None
    L.seed_everything(config.data.seed, workers=True, verbose=False)
    split_file = config.data.split_file
    if resume_from and not split_file and (outdir / runfiles.SPLIT).is_file():
        split_file = outdir / runfiles.SPLIT  # a resumed run keeps its patients
    data = prepare_data_for(
        replace(config.data, split_file=split_file),
        outdir=outdir if is_main_process else None,
        progress=is_main_process and not config.trainer.quiet,
    )
    if not data.split.val:
        raise DataError(
            "pretrain keeps the epoch with the lowest validation loss and needs validation "
            "patients: set --val_frac > 0, or give a --split_file with a val part"
        )
    encoder = build_encoder(
        config.encoder,
        data.cache.prep.channels,
        config.data.image_size,
        pretrained=config.pretrained,
    )
    model = SimCLRModel(encoder, projection_dim=config.projection_dim)
    if is_main_process:
        save_resolved_config(config, outdir)

    best = SaveBestSimCLR(
        outdir / CHECKPOINT_NAME, encoder.config.to_dict(), _static_metadata(config, data, model)
    )
    last = LastCheckpoint(outdir / "checkpoints")
    trainer = build_trainer(
        config.trainer,
        outdir,
        config.epochs,
        callbacks=[best, last],
        # SimCLR's "global BN" across GPUs; PyTorch's SyncBatchNorm does not run on CPU.
        sync_batchnorm=config.trainer.accelerator != "cpu" and torch.cuda.is_available(),
    )
    best.metadata["training"].update(
        world_size=trainer.world_size, precision=str(trainer.precision)
    )
    train_loader, val_loader = make_loaders(data, config, trainer.world_size)
    task = SimCLRTask(model, config.temperature, config.lr, config.weight_decay)
    trainer.fit(task, train_loader, val_loader, ckpt_path=resume_from, weights_only=True)

    path = outdir / CHECKPOINT_NAME
    if trainer.is_global_zero and not path.is_file():  # other nodes may not share the disk
        raise MritumorError(
            f"no epoch ended with a finite validation loss, so {path} was not written "
            "(try a lower --lr)"
        )
    log_run(trainer, config.to_flat(), {}, outdir)
    return path


def _resume_checkpoint(outdir: Path) -> Path:
    path = outdir / "checkpoints" / runfiles.LAST_CHECKPOINT
    if not path.is_file():
        raise MritumorError(
            f"--resume: {path} does not exist; no finished epoch of an earlier run in {outdir}"
        )
    return check_resume_checkpoint(path)  # unsafe or damaged: a clear error, not a traceback


def _static_metadata(config: PretrainConfig, data: PreparedData, model: SimCLRModel) -> dict:
    """The parts of the metadata known before training starts."""
    cache = data.cache
    return {
        "epochs_requested": config.epochs,
        "data": {
            "data_root": [str(Path(r).resolve()) for r in config.data.data_root]
            if isinstance(config.data.data_root, list)
            else str(Path(config.data.data_root).resolve())
            if config.data.data_root
            else None,
            "source": data.catalog.source,
            "slices": len(data.catalog),
            "patients": len(data.catalog.patients),
            "train_slices": len(rows_of_patients(cache, data.patients("train"))),
            "val_slices": len(rows_of_patients(cache, data.patients("val"))),
            "test_patients_used": False,
        },
        "split": asdict(data.split),
        "preprocessing": asdict(cache.prep),
        "training": {
            "method": "simclr",
            "temperature": config.temperature,
            "projection_dim": model.projection_dim,
            "projection_hidden_dim": model.hidden_dim,
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "batch_size": config.batch_size,
            "positive_pairs": config.positive_pairs,
            "imagenet_init": bool(config.pretrained),
            "seed": config.data.seed,
        },
    }

"""Which path the training batches take: device-resident (fast) or the DataLoader (general).

``--data_on_device auto`` (the default) keeps the whole cached training set in the training
device's memory (the GPU's, or on a CPU run the process's own) and cuts and augments batches
there (:mod:`mritumor.data.loading.device_data`) when that is safe:

* the run is one process on one device (the device loaders do not shard across DDP processes,
  so with several every process would see every slice: those runs keep the DataLoader and its
  distributed sampler);
* the slices take at most half of the device's free memory (GPU) or of the available memory
  (CPU; figshare at 224 px: about 0.3 GB). A cache too large for memory stays on disk and is
  read by the DataLoader; a disk cache that fits is copied into memory (``off`` avoids that).

On the CPU this is faster too (measured on 2 cores, ``benchmarks/RESULTS.md``: 22–43 % more
throughput than one DataLoader worker): a worker process competes with the training
threads for the same cores, and a parallel region waits for its slowest thread, while batched
augmentation runs on those threads between the steps.

Otherwise batches come from the DataLoader (worker processes augment per slice on the CPU).
``on`` forces the device path (an error when the slices do not fit); ``off`` forces the
DataLoader. Both paths draw augmentations from the same distributions
(``tests/test_batch_augment.py``); device batches draw from the global generators, which
:class:`mritumor.training.EpochSeeding` re-seeds every epoch, so ``--resume`` stays exact.
"""

from __future__ import annotations

import logging

import torch

from mritumor.config import TrainerConfig
from mritumor.data.augment.batch_augment import BatchAugment
from mritumor.data.augment.transforms import SHIFT_CONFIG, AugmentConfig, build_transform
from mritumor.data.loading.device_data import cache_nbytes, fits_on_device
from mritumor.errors import MritumorError

log = logging.getLogger(__name__)


def augment_config(augment: str) -> AugmentConfig | None:
    """The augmentation presets of the training commands (``--augment``): standard is the MRI
    augmentation; light keeps ≥ 90 % of the slice in the crop (small tumours at the edge of the
    brain stay in view) and rotates at most 5°; shift adds what other scanners and planes do to
    a slice (strong gamma and bias field, blur, down-/up-sampling, vertical flips and 90°
    turns: :data:`~mritumor.data.augment.transforms.SHIFT_CONFIG`); none is ``None``."""
    if augment == "none":
        return None
    if augment == "light":
        return AugmentConfig(crop_scale=(0.9, 1.0), rotate_degrees=5.0)
    if augment == "standard":
        return AugmentConfig()
    if augment == "shift":
        return SHIFT_CONFIG
    raise ValueError(f"unknown augmentation preset {augment!r}")


def batch_augment(augment: str, image_size: int) -> BatchAugment | None:
    """The batched counterpart of the preset (``None`` for none: cached slices are used as they
    are, at the cache's size, which is the training size)."""
    config = augment_config(augment)
    return None if config is None else BatchAugment(config, image_size, "train")


def training_transform(augment: str, image_size: int):
    """The per-slice CPU transform of an ``--augment`` preset (:func:`augment_config`)."""
    config = augment_config(augment)
    return build_transform("eval" if config is None else "train", image_size, config)


def _single_device(trainer: TrainerConfig) -> torch.device | None:
    """The one device this run trains on, or None when it runs several processes."""
    devices = str(trainer.devices)
    on_gpu = trainer.accelerator in ("gpu", "cuda") or (
        trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    if trainer.num_nodes > 1:
        return None
    if devices == "auto":
        if on_gpu and torch.cuda.device_count() > 1:
            return None
    elif int(devices) != 1:
        return None
    return torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")


def training_data_device(
    trainer: TrainerConfig, n_slices: int, channels: int, image_size: int, masks: bool
) -> torch.device | None:
    """Where the ``n_slices`` training slices (``channels`` × ``image_size``², with masks or
    not) should live for this run, or ``None`` for the DataLoader."""
    mode = trainer.data_on_device
    if mode == "off":
        return None
    device = _single_device(trainer)
    if device is None:
        if mode == "on":
            log.warning("--data_on_device on: ignored for a multi-process (DDP) run")
        return None
    needed = cache_nbytes(n_slices, channels, image_size, masks)
    if mode == "on":
        if not fits_on_device(needed, device, fraction=0.9):
            raise MritumorError(
                f"--data_on_device on: the {n_slices} training slices need "
                f"{needed / 2**30:.2f} GiB, more than {device} has free; use auto or off"
            )
        return device
    if not fits_on_device(needed, device):
        log.info(
            "training slices (%.2f GiB) go through the DataLoader: too large for %s's memory",
            needed / 2**30,
            device,
        )
        return None
    log.info(
        "training slices (%.2f GiB) kept in %s memory, augmented there in batches",
        needed / 2**30,
        device,
    )
    return device

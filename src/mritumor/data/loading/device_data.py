"""The whole cached dataset on the device, batches cut and augmented there.

When a :class:`~mritumor.data.loading.cache.SliceCache`'s arrays fit in the accelerator's memory
(:func:`fits_on_device`; figshare's and LGG's slices take well under 1 GB at 224 px in float16),
they are copied there once and every batch is an ``index_select`` of a permutation drawn on the
device, followed by :class:`~mritumor.data.augment.batch_augment.BatchAugment`: no worker processes, no
per-batch host-to-device copy, and no host synchronisation in the batch path (shapes and
batch counts are Python ints known up front; nothing reads a device value back).

* :class:`DeviceSliceLoader` yields the same dicts as ``SliceDataset`` + the DataLoader's default
  collate: ``image`` float32 (B, C, S, S), ``mask`` uint8 (B, 1, S, S) (zeros where a slice has
  no mask), ``has_mask`` bool (B,), ``tumor_type`` / ``grade`` int64 (B,) (-1 unknown), ``row``
  int64 (B,) (the cache row).
* :class:`DevicePairLoader` yields ``[first, second]`` like ``ContrastivePairDataset`` with
  ``positive_pairs='augment'`` + default collate: two independent augmentations of each slice.
* :class:`DeviceBagLoader` yields patient bags like ``PatientBagDataset`` + ``collate_bags``
  (``images`` (B, L, C, S, S), ``mask`` (B, L), ``rows``, labels, ``patient_index``); L is fixed
  (the bag size, or the longest patient for ``all``) instead of the batch's longest bag, because
  reading the batch's longest bag back would synchronise.

Shuffles are reproducible: epoch ``e`` draws its permutation and augmentations from a device
generator seeded with ``(seed, e)``. The epoch advances by one at every ``iter()`` (a pass cut
short counts too); ``set_epoch(e)`` sets it explicitly (e.g. from ``trainer.current_epoch``
when resuming: Lightning calls ``set_epoch`` only on a DataLoader's sampler, not on these).
``seed=None`` draws from the device's global RNG instead (seeded by ``torch.manual_seed``).
Every process iterates over all its slices: there is no sharding across DDP ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from mritumor.data.augment.batch_augment import BatchAugment
from mritumor.data.loading.cache import available_memory
from mritumor.data.loading.datasets import bag_positions

if TYPE_CHECKING:
    from mritumor.data.loading.cache import SliceCache
    from mritumor.data.loading.labels import LabelSpace

__all__ = [
    "DeviceBagLoader",
    "DevicePairLoader",
    "DeviceSliceLoader",
    "cache_nbytes",
    "fits_on_device",
]

_SEED_STRIDE = 1_000_003  # epoch e of seed s uses s * stride + e


def cache_nbytes(n: int, channels: int, size: int, masks: bool = True) -> int:
    """Bytes of ``n`` cached slices on the device: float16 images plus uint8 masks."""
    return n * size * size * (2 * channels + (1 if masks else 0))


def fits_on_device(
    n_bytes: int,
    device: torch.device | str,
    fraction: float = 0.5,
    cpu_budget: int | None = None,
) -> bool:
    """Whether ``n_bytes`` may be kept on ``device``: at most ``fraction`` of the free memory
    reported by ``torch.cuda.mem_get_info`` on CUDA; elsewhere at most ``cpu_budget`` bytes
    (default: ``fraction`` of the available RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return n_bytes <= fraction * free
    budget = fraction * available_memory() if cpu_budget is None else cpu_budget
    return n_bytes <= budget


def _on(device: torch.device, array, dtype: torch.dtype | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    return tensor.to(device=device, dtype=dtype or tensor.dtype).contiguous()


class _DeviceBatches:
    """Epoch bookkeeping shared by the loaders: per-epoch generator, permutation, index slices."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        augment: BatchAugment | None,
        device: torch.device | str,
        seed: int | None,
        weights=None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n < 1:
            raise ValueError("no slices to load")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.augment, self.device, self.seed = augment, torch.device(device), seed
        self.epoch = 0
        # weights (n,): the shuffle becomes n draws with replacement in proportion to them
        # (WeightedRandomSampler: --balance sampler / source)
        self.weights = None if weights is None else _on(self.device, weights, torch.float64)
        if self.weights is not None and self.weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},)")

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed((self.seed * _SEED_STRIDE + self.epoch) % (2**63))
        return generator

    def _order(self, generator: torch.Generator | None) -> torch.Tensor:
        """The epoch's item order (a permutation, weighted draws, or 0..n-1 without shuffling)."""
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        if self.shuffle:
            return torch.randperm(self.n, generator=generator, device=self.device)
        return torch.arange(self.n, device=self.device)

    def _index_batches(self, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
        order = self._order(generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]

    def __iter__(self) -> Iterator:
        # The epoch is read and advanced here, eagerly: a pass cut short still counts.
        generator = self._generator()
        self.epoch += 1
        return self._batches(generator)

    def _batches(self, generator: torch.Generator | None) -> Iterator:
        raise NotImplementedError


class DeviceSliceLoader(_DeviceBatches):
    """Iterable of slice batches from tensors kept on ``device`` (see the module doc).

    ``images``: (N, C, S, S) float (float16 as cached; kept in that dtype on the device and cast
    to float32 per batch); ``masks``: (N, 1, S, S) uint8 or ``None``; ``has_mask``: (N,) bool
    (default: all True when masks are given); ``tumor_type`` / ``grade``: (N,) int label
    indices; ``rows``: (N,) the cache rows reported as ``row`` (default ``arange(N)``).
    Arrays may be numpy arrays (memory maps included) or tensors. ``augment=None`` yields the
    cached slices unchanged (as ``SliceDataset`` with the identity transform does).
    """

    def __init__(
        self,
        images,
        masks,
        tumor_type,
        grade,
        *,
        has_mask=None,
        rows=None,
        batch_size: int = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        device: torch.device | str = "cpu",
        seed: int | None = 0,
        weights=None,
    ) -> None:
        super().__init__(len(images), batch_size, shuffle, drop_last, augment, device, seed, weights)  # fmt: skip
        device = self.device
        self.images = _on(device, images)
        if not (self.images.ndim == 4 and self.images.is_floating_point()):
            raise ValueError(f"images must be (N, C, S, S) float, got {tuple(self.images.shape)}")
        n, size = self.n, self.images.shape[-1]
        if has_mask is None:
            has_mask = np.full(n, masks is not None)
        self.has_mask = _on(device, has_mask, torch.bool)
        self.masks = None
        if masks is not None:
            masks = _on(device, masks, torch.uint8)
            if masks.shape != (n, 1, *self.images.shape[-2:]):
                raise ValueError(f"masks must be (N, 1, S, S), got {tuple(masks.shape)}")
            # SliceDataset gives zeros for a slice without a mask, whatever the cache holds.
            self.masks = masks * self.has_mask.view(-1, 1, 1, 1)
        self.tumor_type = _on(device, tumor_type, torch.int64)
        self.grade = _on(device, grade, torch.int64)
        self.rows = _on(device, np.arange(n) if rows is None else rows, torch.int64)
        for name in ("has_mask", "tumor_type", "grade", "rows"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")
        self.out_size = augment.size if augment is not None else size

    @classmethod
    def from_cache(cls, cache: SliceCache, rows, labels: LabelSpace, **kwargs) -> DeviceSliceLoader:
        """The slices ``rows`` of ``cache`` (as ``SliceDataset(cache, rows, labels)``)."""
        rows = np.asarray(rows, dtype=np.int64)
        table = cache.catalog.table
        types = np.array([labels.type_index(t) for t in table["tumor_type"]], dtype=np.int64)
        grades = np.array([labels.grade_index(g) for g in table["grade"]], dtype=np.int64)
        return cls(
            np.asarray(cache.images[rows]),
            np.asarray(cache.masks[rows]),
            types[rows],
            grades[rows],
            has_mask=np.asarray(cache.has_mask)[rows],
            rows=rows,
            **kwargs,
        )

    @property
    def nbytes(self) -> int:
        tensors = [self.images, self.masks, self.has_mask, self.tumor_type, self.grade, self.rows]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _batches(self, generator: torch.Generator | None) -> Iterator[dict]:
        for index in self._index_batches(generator):
            images = self.images.index_select(0, index).to(torch.float32)
            masks = None if self.masks is None else self.masks.index_select(0, index)
            if self.augment is not None:
                images, masks = self.augment(images, masks, generator=generator)
            if masks is None:
                shape = (images.shape[0], 1, *images.shape[-2:])
                masks = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            yield {
                "image": images,
                "mask": masks,
                "has_mask": self.has_mask.index_select(0, index),
                "tumor_type": self.tumor_type.index_select(0, index),
                "grade": self.grade.index_select(0, index),
                "row": self.rows.index_select(0, index),
            }


class DevicePairLoader(_DeviceBatches):
    """SimCLR views on the device: each batch is ``[first, second]``, two independent
    ``augment`` draws of the same slices, float32 (B, C, S', S') (``ContrastivePairDataset``
    with ``positive_pairs='augment'``; labels and masks are never returned)."""

    def __init__(
        self,
        images,
        augment: BatchAugment,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int | None = 0,
    ) -> None:
        if augment is None:
            raise ValueError(
                "DevicePairLoader needs an augmentation: identical views teach nothing"
            )
        super().__init__(len(images), batch_size, shuffle, drop_last, augment, device, seed)
        self.images = _on(self.device, images)
        if not (self.images.ndim == 4 and self.images.is_floating_point()):
            raise ValueError(f"images must be (N, C, S, S) float, got {tuple(self.images.shape)}")

    @classmethod
    def from_cache(
        cls, cache: SliceCache, rows, augment: BatchAugment, **kwargs
    ) -> DevicePairLoader:
        """The slices ``rows`` of ``cache`` (as ``ContrastivePairDataset(cache, rows, ...)``)."""
        return cls(np.asarray(cache.images[np.asarray(rows, dtype=np.int64)]), augment, **kwargs)

    def _batches(self, generator: torch.Generator | None) -> Iterator[list[torch.Tensor]]:
        augment = self.augment
        assert augment is not None  # __init__ refuses None
        for index in self._index_batches(generator):
            images = self.images.index_select(0, index).to(torch.float32)
            first, _ = augment(images, None, generator=generator)
            second, _ = augment(images, None, generator=generator)
            yield [first, second]


class DeviceBagLoader(_DeviceBatches):
    """Patient bags from slices kept on ``device`` (``PatientBagDataset`` + ``collate_bags``).

    ``images``: (N, C, S, S) float, the patients' slices; ``patient_slices``: for each patient,
    the indices of its slices in ``images`` in anatomical order; ``rows``: (N,) the cache rows
    reported in ``rows`` (default ``arange(N)``); ``tumor_type`` / ``grade``: (P,) per patient.
    Bags follow :func:`~mritumor.data.loading.datasets.bag_positions`: ``uniform`` and ``all`` are fixed
    tables built once; ``random`` draws, per bag, the ``bag_size`` slices with the smallest of
    i.i.d. uniform keys (a uniformly random subset, as ``randperm(n)[:bag_size]``), in order.
    ``weights`` (P,) switches the shuffle to sampling P patients with replacement in proportion
    to the weights (``WeightedRandomSampler``, for ``--balance sampler``). Each slice of a bag is
    augmented independently, as the per-slice CPU transform does.
    """

    def __init__(
        self,
        images,
        patient_slices: list,
        tumor_type,
        grade,
        *,
        rows=None,
        bag_size: int = 8,
        bag_policy: str = "uniform",
        weights=None,
        batch_size: int = 2,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        device: torch.device | str = "cpu",
        seed: int | None = 0,
    ) -> None:
        n_patients = len(patient_slices)
        super().__init__(n_patients, batch_size, shuffle, drop_last, augment, device, seed, weights)  # fmt: skip
        if bag_size < 1:
            raise ValueError("bag_size must be >= 1")
        bag_positions(1, bag_size, bag_policy)  # validates the policy
        self.bag_policy, self.bag_size = bag_policy, bag_size
        self.images = _on(self.device, images)
        if not (self.images.ndim == 4 and self.images.is_floating_point()):
            raise ValueError(f"images must be (N, C, S, S) float, got {tuple(self.images.shape)}")
        counts = [len(s) for s in patient_slices]
        if min(counts) < 1:
            raise ValueError("every patient needs at least one slice")
        # the bag table: what each patient's bag draws from (padding -1)
        if bag_policy == "random":
            chosen = [np.asarray(s) for s in patient_slices]
        else:
            chosen = [
                np.asarray(s)[bag_positions(len(s), bag_size, bag_policy)] for s in patient_slices
            ]
        width = max(len(c) for c in chosen)
        table = np.full((n_patients, width), -1, dtype=np.int64)
        for i, c in enumerate(chosen):
            table[i, : len(c)] = c
        self.table = _on(self.device, table)
        self.counts = _on(self.device, np.asarray([len(c) for c in chosen]), torch.int64)
        self.width = width if bag_policy != "random" else min(width, bag_size)
        rows = np.arange(len(images)) if rows is None else rows
        self.slice_rows = _on(self.device, rows, torch.int64)
        self.tumor_type = _on(self.device, tumor_type, torch.int64)
        self.grade = _on(self.device, grade, torch.int64)
        for name in ("tumor_type", "grade"):
            if getattr(self, name).shape != (n_patients,):
                raise ValueError(f"{name} must have shape ({n_patients},)")

    @classmethod
    def from_dataset(cls, dataset, **kwargs) -> DeviceBagLoader:
        """The bags of a ``PatientBagDataset`` (its cache, patients, bag size and policy)."""
        used = np.unique(np.concatenate([dataset.rows[p] for p in dataset.patient_ids]))
        local = {int(r): i for i, r in enumerate(used)}
        return cls(
            np.asarray(dataset.cache.images[used]),
            [[local[int(r)] for r in dataset.rows[p]] for p in dataset.patient_ids],
            dataset.types,
            dataset.grades,
            rows=used,
            bag_size=dataset.bag_size,
            bag_policy=dataset.bag_policy,
            **kwargs,
        )

    def _bag_slices(self, patients: torch.Tensor, generator: torch.Generator | None):
        """(B, L) indices into ``images`` (-1 = padding) and the (B, L) mask of real slices."""
        table = self.table.index_select(0, patients)
        counts = self.counts.index_select(0, patients)
        if self.bag_policy != "random":
            return table, table >= 0
        keys = torch.rand(table.shape, generator=generator, device=self.device)
        positions = torch.arange(table.shape[1], device=self.device)
        keys = keys.masked_fill(positions >= counts[:, None], 2.0)  # padding sorts last
        picked = keys.topk(self.width, dim=1, largest=False).indices.sort(dim=1).values
        # padding positions (≥ count) sort after the real ones, so real slices come first
        slices = table.gather(1, picked)
        return slices, slices >= 0

    def _batches(self, generator: torch.Generator | None) -> Iterator[dict]:
        for patients in self._index_batches(generator):
            slices, mask = self._bag_slices(patients, generator)
            flat = slices.clamp(min=0).reshape(-1)
            images = self.images.index_select(0, flat).to(torch.float32)
            if self.augment is not None:
                images, _ = self.augment(images, None, generator=generator)
            images = images.view(*slices.shape, *images.shape[1:])
            images = images * mask.view(*mask.shape, 1, 1, 1)  # padding is zeros, as collate_bags
            rows = self.slice_rows.index_select(0, flat).view(slices.shape).masked_fill(~mask, -1)
            yield {
                "images": images,
                "mask": mask,
                "rows": rows,
                "tumor_type": self.tumor_type.index_select(0, patients),
                "grade": self.grade.index_select(0, patients),
                "patient_index": patients,
            }

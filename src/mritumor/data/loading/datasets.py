"""Torch datasets over a :class:`SliceCache`: slices, contrastive pairs, patient bags.

They only index the cache's arrays and apply a transform ``(image, mask) -> (image, mask)``
(see :mod:`mritumor.data.augment.transforms`); nothing here decodes a file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mritumor.data.loading.cache import SliceCache
from mritumor.data.loading.labels import LabelSpace

Transform = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]
BAG_POLICIES = ("uniform", "random", "all")
BAG_SLICES = ("all", "tumour")


def identity(image, mask):
    return image, mask


def tumour_rows(cache: SliceCache, rows: np.ndarray) -> np.ndarray:
    """The rows whose cached mask has a tumour pixel; all rows when none has (a patient without
    masks, or whose masks are all empty, keeps its whole stack)."""
    with_tumour = [
        row for row in rows if cache.has_mask[row] and np.asarray(cache.masks[row]).any()
    ]
    return np.asarray(with_tumour, dtype=rows.dtype) if with_tumour else rows


def rows_of_patients(cache: SliceCache, patient_ids: Sequence[str]) -> np.ndarray:
    """Cache positions of the given patients' slices, in catalog order."""
    return np.flatnonzero(cache.catalog.table["patient_id"].isin(set(patient_ids)).to_numpy())


class SliceDataset(Dataset):
    """One slice per item: image, type/grade indices (-1 unknown), mask (zeros if none)."""

    def __init__(
        self, cache: SliceCache, rows, labels: LabelSpace, transform: Transform = identity
    ):
        self.cache, self.rows, self.labels, self.transform = (
            cache,
            np.asarray(rows),
            labels,
            transform,
        )
        table = cache.catalog.table
        self.types = torch.tensor([labels.type_index(t) for t in table["tumor_type"]])
        self.grades = torch.tensor([labels.grade_index(g) for g in table["grade"]])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict:
        row = int(self.rows[item])
        image, mask = self.transform(self.cache.image(row), self.cache.mask(row))
        has_mask = mask is not None
        if mask is None:
            mask = torch.zeros((1, *image.shape[1:]), dtype=torch.uint8)
        return {
            "image": image,
            "mask": mask,
            "has_mask": has_mask,
            "tumor_type": self.types[row],
            "grade": self.grades[row],
            "row": row,
        }


class ContrastivePairDataset(Dataset):
    """Two views for SimCLR. ``positive_pairs='augment'``: two augmentations of one slice;
    ``'same_patient'``: the second view is another slice of the same patient (the same slice
    when the patient has only one). Labels are never returned."""

    def __init__(
        self, cache: SliceCache, rows, transform: Transform, positive_pairs: str = "augment"
    ):
        if positive_pairs not in ("augment", "same_patient"):
            raise ValueError(
                f"positive_pairs must be 'augment' or 'same_patient', not {positive_pairs!r}"
            )
        self.cache, self.rows, self.transform = cache, np.asarray(rows), transform
        self.positive_pairs = positive_pairs
        patients = cache.catalog.table["patient_id"].to_numpy()[self.rows]
        self.siblings = {p: self.rows[patients == p] for p in np.unique(patients)}
        self.patient_of_row = dict(zip(self.rows.tolist(), patients, strict=True))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[item])
        partner = row
        if self.positive_pairs == "same_patient":
            siblings = self.siblings[self.patient_of_row[row]]
            others = siblings[siblings != row]
            if len(others):
                partner = int(others[torch.randint(len(others), ()).item()])
        first, _ = self.transform(self.cache.image(row), None)
        second, _ = self.transform(self.cache.image(partner), None)
        return first, second


def bag_positions(
    n_slices: int, bag_size: int, policy: str, generator: torch.Generator | None = None
) -> list[int]:
    """Which of a patient's slices (0..n-1, anatomical order) form its bag.

    uniform: evenly spaced across the stack (deterministic); random: a random subset in order;
    all: every slice. Patients with fewer slices than ``bag_size`` give all their slices (the
    collate function pads and masks)."""
    if policy not in BAG_POLICIES:
        raise ValueError(f"bag_policy must be one of {BAG_POLICIES}, not {policy!r}")
    if policy == "all" or n_slices <= bag_size:
        return list(range(n_slices))
    if policy == "uniform":
        return np.linspace(0, n_slices - 1, bag_size).round().astype(int).tolist()
    chosen = torch.randperm(n_slices, generator=generator)[:bag_size]
    return sorted(chosen.tolist())


class PatientBagDataset(Dataset):
    """One patient per item: a bag of slices (n, C, S, S) with the patient's labels."""

    def __init__(
        self,
        cache: SliceCache,
        patient_ids: Sequence[str],
        labels: LabelSpace,
        bag_size: int = 8,
        bag_policy: str = "uniform",
        transform: Transform = identity,
        slices: str = "all",
    ):
        """``slices``: all of a patient's slices, or only those whose mask shows tumour
        (:func:`tumour_rows`): in a full LGG stack most slices show no tumour, and a bag of
        eight evenly spaced slices holds one or two that carry the grade."""
        if bag_size < 1:
            raise ValueError("bag_size must be ≥ 1")
        if slices not in BAG_SLICES:
            raise ValueError(f"slices must be one of {BAG_SLICES}, not {slices!r}")
        bag_positions(1, bag_size, bag_policy)  # validates the policy early
        self.cache, self.labels, self.transform = cache, labels, transform
        self.bag_size, self.bag_policy = bag_size, bag_policy
        table = cache.catalog.table
        self.patient_ids = [p for p in dict.fromkeys(table["patient_id"]) if p in set(patient_ids)]
        self.rows = {
            p: np.flatnonzero((table["patient_id"] == p).to_numpy()) for p in self.patient_ids
        }
        if slices == "tumour":
            self.rows = {p: tumour_rows(cache, rows) for p, rows in self.rows.items()}
        first = {p: rows[0] for p, rows in self.rows.items()}
        self.types = [labels.type_index(table.at[first[p], "tumor_type"]) for p in self.patient_ids]
        self.grades = [labels.grade_index(table.at[first[p], "grade"]) for p in self.patient_ids]

    def __len__(self) -> int:
        return len(self.patient_ids)

    def __getitem__(self, item: int) -> dict:
        patient = self.patient_ids[item]
        rows = self.rows[patient]
        chosen = rows[bag_positions(len(rows), self.bag_size, self.bag_policy)]
        images = torch.stack([self.transform(self.cache.image(int(r)), None)[0] for r in chosen])
        return {
            "images": images,
            "tumor_type": torch.tensor(self.types[item]),
            "grade": torch.tensor(self.grades[item]),
            "patient_index": item,
            "rows": torch.as_tensor(chosen),
        }


def collate_bags(batch: list[dict]) -> dict:
    """Pad bags to the longest one; ``mask`` (B, N) is True for real slices."""
    longest = max(item["images"].shape[0] for item in batch)
    shape = batch[0]["images"].shape[1:]
    images = torch.zeros(len(batch), longest, *shape, dtype=batch[0]["images"].dtype)
    mask = torch.zeros(len(batch), longest, dtype=torch.bool)
    rows = torch.full((len(batch), longest), -1, dtype=torch.long)
    for i, item in enumerate(batch):
        n = item["images"].shape[0]
        images[i, :n], mask[i, :n], rows[i, :n] = item["images"], True, item["rows"]
    return {
        "images": images,
        "mask": mask,
        "rows": rows,
        "tumor_type": torch.stack([item["tumor_type"] for item in batch]),
        "grade": torch.stack([item["grade"] for item in batch]),
        "patient_index": torch.tensor([item["patient_index"] for item in batch]),
    }

"""Datasets over the cache: slices, contrastive pairs, patient bags with padding masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.loading.datasets import (
    ContrastivePairDataset,
    PatientBagDataset,
    SliceDataset,
    bag_positions,
    collate_bags,
    rows_of_patients,
)
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.reading.readers import read_catalog


@pytest.fixture
def cache(folder_tree: Path) -> SliceCache:
    return SliceCache.build(
        read_catalog(folder_tree), Preprocessing(image_size=24, channels=1), progress=False
    )


def test_label_space_indices_and_allowed_pairs(cache):
    labels = LabelSpace.from_table(cache.catalog.table)
    assert labels.types == ("astrocytoma", "meningioma") and labels.grades == ("2", "3")
    allowed = labels.allowed()
    assert allowed.tolist() == [[True, True], [False, False]]  # meningioma has no grade here
    assert labels.grade_index(None) == -1 and labels.type_index("unknown") == -1
    assert LabelSpace.from_dict(labels.to_dict()) == labels
    assert LabelSpace.from_table(cache.catalog.table.assign(grade=["10", "9"] * 18)).grades == (
        "9",
        "10",
    )


def test_slice_dataset_items(cache):
    labels = LabelSpace.from_table(cache.catalog.table)
    rows = rows_of_patients(cache, ["meningioma-P1", "astrocytoma-g3-P0"])
    dataset = SliceDataset(cache, rows, labels)
    assert len(dataset) == 8
    batch = next(iter(DataLoader(dataset, batch_size=8)))
    assert batch["image"].shape == (8, 1, 24, 24) and batch["mask"].shape == (8, 1, 24, 24)
    table = cache.catalog.table
    for row, tumor_type, grade in zip(
        batch["row"], batch["tumor_type"], batch["grade"], strict=True
    ):
        assert labels.types[tumor_type] == table.at[int(row), "tumor_type"]
        expected = table.at[int(row), "grade"]
        assert (grade == -1) if expected is None else labels.grades[grade] == expected


def test_bag_policies():
    assert bag_positions(20, 5, "uniform") == [0, 5, 10, 14, 19]
    assert bag_positions(3, 8, "uniform") == [0, 1, 2]
    assert bag_positions(6, 2, "all") == list(range(6))
    generator = torch.Generator().manual_seed(0)
    chosen = bag_positions(30, 6, "random", generator)
    assert len(set(chosen)) == 6 and chosen == sorted(chosen)
    with pytest.raises(ValueError, match="bag_policy"):
        bag_positions(3, 2, "median")


def test_bags_pad_and_mask_variable_sizes(cache):
    labels = LabelSpace.from_table(cache.catalog.table)
    patients = ["astrocytoma-g2-P0", "meningioma-P2"]
    dataset = PatientBagDataset(cache, patients, labels, bag_size=3, bag_policy="all")
    # shrink one patient's bag to two slices to get a ragged batch
    dataset.rows["meningioma-P2"] = dataset.rows["meningioma-P2"][:2]
    batch = collate_bags([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 4, 1, 24, 24)
    assert batch["mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.count_nonzero(batch["images"][1, 2:]) == 0
    assert labels.types[batch["tumor_type"][1]] == "meningioma" and batch["grade"][1] == -1
    rows = batch["rows"][0]
    torch.testing.assert_close(batch["images"][0, 1], cache.image(int(rows[1])))


def test_contrastive_pairs_never_return_labels_and_same_patient_partner(cache):
    rows = rows_of_patients(cache, ["astrocytoma-g2-P1"])
    noisy = lambda image, mask: (image + 0.01 * torch.randn_like(image), mask)  # noqa: E731
    pairs = ContrastivePairDataset(cache, rows, noisy, positive_pairs="augment")
    first, second = pairs[0]
    assert first.shape == second.shape == (1, 24, 24)
    assert not torch.equal(first, second) and (first - second).abs().mean() < 0.05
    same = ContrastivePairDataset(cache, rows, lambda i, m: (i, m), positive_pairs="same_patient")
    first, second = same[0]
    partners = [cache.image(int(r)) for r in rows[1:]]
    assert any(torch.equal(second, p) for p in partners) and not torch.equal(first, second)
    with pytest.raises(ValueError):
        ContrastivePairDataset(cache, rows, noisy, positive_pairs="labels")
    assert np.array_equal(np.sort(rows), rows)


def test_tumour_bags_keep_only_slices_whose_mask_shows_tumour(cache):
    labels = LabelSpace.from_table(cache.catalog.table)
    patient = "meningioma-P1"
    rows = rows_of_patients(cache, [patient])
    emptied = rows[[0, 2]]
    cache.masks[emptied] = 0  # two of the four slices without tumour
    dataset = PatientBagDataset(
        cache, [patient], labels, bag_size=8, bag_policy="all", slices="tumour"
    )
    assert dataset.rows[patient].tolist() == sorted(set(rows) - set(emptied))
    assert dataset[0]["rows"].tolist() == dataset.rows[patient].tolist()
    cache.masks[rows] = 0  # no tumour anywhere: the whole stack is kept
    dataset = PatientBagDataset(cache, [patient], labels, slices="tumour")
    assert dataset.rows[patient].tolist() == rows.tolist()
    with pytest.raises(ValueError, match="slices"):
        PatientBagDataset(cache, [patient], labels, slices="some")

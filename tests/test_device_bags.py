"""Patient bags cut and augmented on the device (`DeviceBagLoader`) against the CPU path
(`PatientBagDataset` + `collate_bags`): same bags, same distributions, and train-hierarchical
trains through it with `--data_on_device on`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.data.augment.batch_augment import BatchAugment
from mritumor.data.augment.transforms import AugmentConfig
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.loading.datasets import PatientBagDataset, collate_bags
from mritumor.data.loading.device_data import DeviceBagLoader
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.reading.catalog import Catalog

SLICES = [2, 5, 7, 3, 9, 6]  # slices per patient: fewer, as many and more than the bag
TYPES = ["astrocytoma", "meningioma", "astrocytoma", "pituitary", "meningioma", "astrocytoma"]


@pytest.fixture(scope="module")
def bags_cache():
    rng = np.random.default_rng(0)
    patients = [p for p, n in enumerate(SLICES) for _ in range(n)]
    n, size = len(patients), 16
    table = pd.DataFrame(
        {
            "image": [f"s{i}.png" for i in range(n)],
            "frame": -1,
            "mask": None,
            "patient_id": [f"P{p}" for p in patients],
            "tumor_type": [TYPES[p] for p in patients],
            "grade": [("2", "3", None)[p % 3] for p in patients],
            "source": "test",
        }
    )
    images = rng.random((n, 1, size, size)).astype(np.float16)
    cache = SliceCache(
        Catalog(table, "test", "."), Preprocessing(image_size=size), images, None, np.zeros(n, bool)
    )
    return cache, LabelSpace.from_table(table)


def patients(subset=(0, 1, 2, 3, 4, 5)):
    return [f"P{p}" for p in subset]


@pytest.mark.parametrize("policy", ["uniform", "all"])
def test_bags_equal_the_bag_dataset_with_collate(bags_cache, policy):
    cache, labels = bags_cache
    dataset = PatientBagDataset(cache, patients((1, 0, 4, 3, 5)), labels, 4, policy)
    expected = list(DataLoader(dataset, batch_size=2, collate_fn=collate_bags))
    loader = DeviceBagLoader.from_dataset(dataset, batch_size=2, shuffle=False)
    got = list(loader)
    assert len(got) == len(loader) == len(expected) == 3
    width = 4 if policy == "uniform" else 9  # fixed: the bag size, or the longest patient
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.keys() == theirs.keys()
        assert ours["images"].shape[1] == ours["mask"].shape[1] == width
        used = theirs["mask"].shape[1]  # collate pads to the batch's longest bag
        for key in ("images", "mask", "rows"):
            assert ours[key].dtype == theirs[key].dtype, key
            assert torch.equal(ours[key][:, :used], theirs[key]), key
        # beyond the batch's longest bag: padding only
        assert not ours["mask"][:, used:].any() and not ours["images"][:, used:].any()
        assert (ours["rows"][:, used:] == -1).all()
        for key in ("tumor_type", "grade", "patient_index"):
            assert torch.equal(ours[key], theirs[key]), key


def test_random_bags_are_uniform_subsets_in_anatomical_order(bags_cache):
    cache, labels = bags_cache
    dataset = PatientBagDataset(cache, patients(), labels, 4, "random")
    loader = DeviceBagLoader.from_dataset(dataset, batch_size=3, seed=1)
    hits = {p: np.zeros(n) for p, n in enumerate(SLICES)}
    epochs = 3000
    for _ in range(epochs):
        for batch in loader:
            for i, patient in enumerate(batch["patient_index"].tolist()):
                rows = batch["rows"][i][batch["mask"][i]].numpy()
                own = dataset.rows[dataset.patient_ids[patient]]
                assert len(rows) == min(4, SLICES[patient]) == len(set(rows.tolist()))
                assert np.all(np.diff(rows) > 0) and np.isin(rows, own).all()
                assert batch["mask"][i].tolist() == sorted(batch["mask"][i].tolist(), reverse=True)
                hits[patient][np.searchsorted(own, rows)] += 1
    # every slice of a patient with n > 4 slices is in the bag with probability 4 / n,
    # as with bag_positions' randperm; a chi-square test over the slices of each patient
    for patient, n in enumerate(SLICES):
        if n <= 4:
            assert (hits[patient] == epochs).all()
            continue
        expected = np.full(n, epochs * 4 / n)
        assert stats.chisquare(hits[patient], expected).pvalue > 1e-3, patient


def test_shuffle_each_patient_once_per_epoch_and_reproducible(bags_cache):
    cache, labels = bags_cache
    dataset = PatientBagDataset(cache, patients(), labels, 3, "uniform")
    loader = DeviceBagLoader.from_dataset(dataset, batch_size=4, seed=5)
    orders = [torch.cat([b["patient_index"] for b in loader]) for _ in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(6))
    assert not all(torch.equal(orders[0], o) for o in orders[1:])
    loader.set_epoch(0)
    assert torch.equal(torch.cat([b["patient_index"] for b in loader]), orders[0])
    dropping = DeviceBagLoader.from_dataset(dataset, batch_size=4, drop_last=True)
    assert len(dropping) == 1 and [len(b["patient_index"]) for b in dropping] == [4]


def test_weights_sample_patients_like_the_weighted_sampler(bags_cache):
    """--balance sampler: P patients per epoch, with replacement, in proportion to the weights
    (here: inverse type frequency, so each type is drawn a third of the time)."""
    cache, labels = bags_cache
    dataset = PatientBagDataset(cache, patients(), labels, 3, "uniform")
    counts = np.bincount(dataset.types, minlength=3).astype(float)
    weights = 1.0 / counts[dataset.types]
    loader = DeviceBagLoader.from_dataset(dataset, weights=weights, batch_size=6, seed=0)
    drawn = torch.cat([b["tumor_type"] for _ in range(2000) for b in loader]).numpy()
    assert len(drawn) == 2000 * 6
    freq = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(freq, 1 / 3, atol=0.015), freq
    with pytest.raises(ValueError, match="weights"):
        DeviceBagLoader.from_dataset(dataset, weights=weights[:3])


def test_each_slice_of_a_bag_is_augmented_and_padding_stays_zero(bags_cache):
    cache, labels = bags_cache
    dataset = PatientBagDataset(cache, patients((0, 4)), labels, 4, "uniform")
    augment = BatchAugment(AugmentConfig(), 10)
    batch = next(iter(DeviceBagLoader.from_dataset(dataset, batch_size=2, augment=augment)))
    assert batch["images"].shape == (2, 4, 1, 10, 10) and batch["images"].dtype == torch.float32
    assert batch["mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert not batch["images"][0, 2:].any()
    real = batch["images"][batch["mask"]]
    assert all(not torch.equal(real[i], real[j]) for i in range(6) for j in range(i))


def test_invalid_bags_are_refused():
    images = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="bag_policy"):
        DeviceBagLoader(images, [[0, 1], [2, 3]], [0, 1], [0, 1], bag_policy="some")
    with pytest.raises(ValueError, match="at least one slice"):
        DeviceBagLoader(images, [[0, 1], []], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="tumor_type"):
        DeviceBagLoader(images, [[0, 1], [2, 3]], [0], [0, 1])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("bags") / "data", patients_per_class=4, slices_per_patient=4,
        image_size=32, seed=4,
    )  # fmt: skip


def hierarchical(cohort: Path, out: Path, mode: str, balance: str = "none") -> int:
    return main(
        ["-q", "train-hierarchical", "--data_root", str(cohort), "--outdir", str(out)]
        + ["--backbone", "small_cnn", "--image_size", "32", "--epochs", "2", "--bag_size", "3"]
        + ["--bag_policy", "random", "--batch_size", "2", "--n_boot", "50", "--patience", "0"]
        + ["--accelerator", "cpu", "--data_on_device", mode, "--num_workers", "0"]
        + ["--deterministic", "--balance", balance]
    )


def test_train_hierarchical_trains_through_the_device_bag_loader(cohort, tmp_path, monkeypatch):
    from mritumor.tasks import hierarchical as task

    used = []
    original = task.bag_loaders

    def spy(*a, **k):
        loaders = original(*a, **k)
        used.append(type(loaders["train"]))
        return loaders

    monkeypatch.setattr(task, "bag_loaders", spy)
    assert hierarchical(cohort, tmp_path / "on", "on") == 0
    assert hierarchical(cohort, tmp_path / "again", "on") == 0
    assert hierarchical(cohort, tmp_path / "sampler", "on", balance="sampler") == 0
    assert hierarchical(cohort, tmp_path / "off", "off") == 0
    assert used == [DeviceBagLoader] * 3 + [DataLoader]
    metrics = json.loads((tmp_path / "on" / "test_metrics.json").read_text())
    # the accuracy, recomputed from the per-patient predictions; the true types read from the
    # synthetic patient ids (syn-<type>-g<grade>-p<n>), not from the pipeline's own labels
    predictions = pd.read_csv(tmp_path / "on" / "predictions.csv")
    split = json.loads((tmp_path / "on" / "split.json").read_text())
    assert sorted(predictions["patient_id"]) == sorted(split["test"])
    assert list(predictions["true_type"]) == [p.split("-")[1] for p in predictions["patient_id"]]
    p_type = predictions.filter(like="p_type_")
    assert list(p_type.idxmax(axis=1).str.removeprefix("p_type_")) == list(predictions["pred_type"])
    accuracy = np.mean(predictions["pred_type"] == predictions["true_type"])
    headline = metrics["tumor_type_accuracy"]
    assert headline["value"] == pytest.approx(accuracy)
    assert headline["low"] <= headline["value"] <= headline["high"]
    # device bags draw from the generators EpochSeeding re-seeds: same seed, same weights
    first = load_checkpoint(tmp_path / "on" / "best.pt")["model_state"]
    second = load_checkpoint(tmp_path / "again" / "best.pt")["model_state"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = load_checkpoint(tmp_path / "off" / "best.pt")["model_state"]
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())

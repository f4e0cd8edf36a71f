"""`--data_on_device`: when the device-resident path is chosen, and that training runs through it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.config import TrainerConfig
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.data.loading import device_data, fast_path
from mritumor.data.loading.device_data import DevicePairLoader, DeviceSliceLoader
from mritumor.errors import MritumorError


def args(**overrides) -> TrainerConfig:
    values = {"data_on_device": "auto", "accelerator": "cpu", "devices": "1", "num_nodes": 1}
    return TrainerConfig(**{**values, **overrides})


def test_auto_keeps_small_data_in_cpu_memory_and_off_never_does(monkeypatch):
    assert fast_path.training_data_device(args(), 100, 1, 32, True) == torch.device("cpu")
    assert fast_path.training_data_device(args(data_on_device="off"), 100, 1, 32, True) is None
    # a training set larger than half the available memory goes through the DataLoader
    monkeypatch.setattr(device_data, "available_memory", lambda: 2 * 100 * 32 * 32 * 3 - 2)
    assert fast_path.training_data_device(args(), 100, 1, 32, True) is None
    assert fast_path.training_data_device(args(), 99, 1, 32, True) == torch.device("cpu")


def test_on_uses_the_single_device_and_never_a_ddp_run(caplog):
    assert fast_path.training_data_device(
        args(data_on_device="on"), 100, 1, 32, True
    ) == torch.device("cpu")
    assert (
        fast_path.training_data_device(args(data_on_device="on", devices="2"), 100, 1, 32, True)
        is None
    )
    assert "ignored for a multi-process" in caplog.text
    assert (
        fast_path.training_data_device(args(data_on_device="on", num_nodes=2), 10, 1, 32, True)
        is None
    )


def test_auto_on_cuda_needs_the_data_to_fit(monkeypatch):
    monkeypatch.setattr(fast_path, "_single_device", lambda a: torch.device("cuda", 0))
    monkeypatch.setattr(fast_path, "fits_on_device", lambda n, device, fraction=0.5: n < 10_000)
    assert fast_path.training_data_device(args(), 2, 1, 32, True) == torch.device("cuda", 0)
    assert fast_path.training_data_device(args(), 1000, 1, 32, True) is None  # 3 MB > budget


def test_on_refuses_data_that_cannot_fit(monkeypatch):
    monkeypatch.setattr(fast_path, "fits_on_device", lambda n, device, fraction=0.5: False)
    with pytest.raises(MritumorError, match="need"):
        fast_path.training_data_device(args(data_on_device="on"), 100, 1, 32, True)


def test_presets_match_the_cpu_transforms():
    from mritumor.data.loading.fast_path import training_transform

    assert fast_path.batch_augment("none", 32) is None
    light = fast_path.batch_augment("light", 32)
    assert light.config.crop_scale == (0.9, 1.0) and light.config.rotate_degrees == 5.0
    assert training_transform("light", 32).config == light.config
    assert (
        fast_path.batch_augment("standard", 32).config == training_transform("standard", 32).config
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("fast") / "data", patients_per_class=4, slices_per_patient=3,
        image_size=32, seed=3,
    )  # fmt: skip


def multitask(cohort: Path, out: Path, mode: str) -> int:
    return main(
        ["-q", "train-multitask", "--data_root", str(cohort), "--outdir", str(out)]
        + ["--variant", "D", "--backbone", "small_cnn", "--image_size", "32", "--epochs", "2"]
        + ["--batch_size", "8", "--n_boot", "50", "--patience", "0", "--accelerator", "cpu"]
        + ["--data_on_device", mode, "--num_workers", "0", "--deterministic"]
    )


def numpy_dice(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-slice Dice 2|P∩T| / (|P| + |T|), 1 where both masks are empty (the documented
    convention), counted with NumPy rather than MONAI."""
    pred, true = pred.reshape(len(pred), -1) > 0.5, true.reshape(len(true), -1) > 0.5
    overlap, total = (pred & true).sum(1), pred.sum(1) + true.sum(1)
    return np.where(total == 0, 1.0, 2 * overlap / np.maximum(total, 1))


def test_multitask_trains_through_the_device_loader(cohort: Path, tmp_path: Path, monkeypatch):
    from mritumor.tasks import multitask as task

    used, evaluated = [], []
    original, original_evaluate = task.slice_loaders, task.evaluate_multitask

    def spy(*a, **k):
        loaders = original(*a, **k)
        used.append(type(loaders["train"]))
        return loaders

    def evaluate_spy(prediction, *a, **k):
        evaluated.append((prediction, k["cache"]))
        return original_evaluate(prediction, *a, **k)

    monkeypatch.setattr(task, "slice_loaders", spy)
    monkeypatch.setattr(task, "evaluate_multitask", evaluate_spy)
    assert multitask(cohort, tmp_path / "on", "on") == 0
    assert multitask(cohort, tmp_path / "again", "on") == 0
    assert multitask(cohort, tmp_path / "off", "off") == 0
    assert used == [DeviceSliceLoader, DeviceSliceLoader, torch.utils.data.DataLoader]
    metrics = json.loads((tmp_path / "on" / "test_metrics.json").read_text())
    # Dice recomputed from the run's test masks; the reference masks are the cache's own
    prediction, cache = evaluated[0]
    scored = prediction["has_mask"].astype(bool)
    assert scored.sum() > 0
    for row, true in zip(prediction["rows"][scored], prediction["true_masks"][scored], strict=True):
        np.testing.assert_array_equal(true, cache.mask(int(row)).numpy().reshape(true.shape) > 0)
    dice = numpy_dice(prediction["pred_masks"][scored], prediction["true_masks"][scored])
    assert metrics["dice"]["value"] == pytest.approx(dice.mean())
    # the test outputs are the saved network's on the cache's slices of those rows, in that order
    # (two epochs at 32 px predict mostly empty masks: the class logits are the sharper check)
    network = task.model_from_checkpoint(load_checkpoint(tmp_path / "on" / "best.pt"))
    with torch.no_grad():
        out = network(torch.stack([cache.image(int(row)) for row in prediction["rows"]]))
    torch.testing.assert_close(prediction["class_logits"], out["class_logits"])
    np.testing.assert_array_equal(prediction["pred_masks"], out["mask_logits"][:, 0].numpy() > 0)
    # device batches draw from the generators EpochSeeding re-seeds: same seed, same weights
    first = load_checkpoint(tmp_path / "on" / "best.pt")["model_state"]
    second = load_checkpoint(tmp_path / "again" / "best.pt")["model_state"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the DataLoader run drew other random numbers: not silently the same path
    other = load_checkpoint(tmp_path / "off" / "best.pt")["model_state"]
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_pretrain_trains_through_the_device_pair_loader(cohort: Path, tmp_path: Path, monkeypatch):
    from mritumor.tasks import ssl

    used = []
    original = ssl.make_loaders

    def spy(*a, **k):
        loaders = original(*a, **k)
        used.append(type(loaders[0]))
        return loaders

    monkeypatch.setattr(ssl, "make_loaders", spy)
    code = main(
        ["-q", "pretrain", "--data_root", str(cohort), "--outdir", str(tmp_path / "ssl")]
        + ["--encoder", "small_cnn", "--image_size", "32", "--epochs", "2", "--batch_size", "8"]
        + ["--accelerator", "cpu", "--data_on_device", "on", "--num_workers", "0"]
    )
    assert code == 0 and used == [DevicePairLoader]
    checkpoint = load_checkpoint(tmp_path / "ssl" / "simclr_pretrain.pt")
    logs = [pd.read_csv(p) for p in sorted((tmp_path / "ssl").glob("logs/version_*/metrics.csv"))]
    val_loss = pd.concat(logs)["val_loss"].dropna()
    assert len(val_loss) == 2  # one validation per epoch
    assert checkpoint["metadata"]["best_val_loss"] == pytest.approx(val_loss.min())


def test_shift_preset_is_the_shift_config():
    from mritumor.data.augment.transforms import SHIFT_CONFIG
    from mritumor.data.loading.fast_path import augment_config, batch_augment

    assert augment_config("shift") == SHIFT_CONFIG
    assert SHIFT_CONFIG.rot90_p > 0 and SHIFT_CONFIG.lowres_p > 0 and SHIFT_CONFIG.vflip_p > 0
    assert batch_augment("shift", 32).config == SHIFT_CONFIG

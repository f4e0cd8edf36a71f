"""Shared fixtures: small datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def blob_slice(rng: np.random.Generator, size: int = 48, bright: bool = True):
    """A noisy slice with a square 'tumour' and its 0/255 mask."""
    image = (rng.random((size, size)) * 80).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(4, size - 16, 2)
    mask[y : y + 10, x : x + 10] = 255
    if bright:
        image[mask > 0] = 220
    return image, mask


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    """ROOT/<type>[-g<grade>]/<patient>/slice_k.png with _mask.png beside: 3 classes × 3 patients × 4 slices."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for class_name in ("astrocytoma-g2", "astrocytoma-g3", "meningioma"):
        for p in range(3):
            for k in range(4):
                image, mask = blob_slice(rng)
                folder = root / class_name / f"{class_name}-P{p}"
                write_png(folder / f"slice_{k}.png", image)
                write_png(folder / f"slice_{k}_mask.png", mask)
    return root


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(
            f"real data {path} is absent (CI and developers have ../shared/data beside the checkout)"
        )
    return path


# ----------------------------------------------------------------------------- trained models

TRAINED_SIZE = 32  # image size of the tiny trained checkpoints
TRAIN_ARGS = {
    "hierarchical": [
        "train-hierarchical", "--bag_size", "4", "--batch_size", "4", "--n_boot", "20",
        "--accelerator", "cpu",
    ],
    "multitask": ["train-multitask", "--variant", "D", "--batch_size", "16", "--n_boot", "20"],
}  # fmt: skip


@pytest.fixture(scope="session")
def trained_data(tmp_path_factory) -> Path:
    """The synthetic cohort the tiny checkpoints are trained on: 5 (type, grade) classes × 2
    patients × 4 slices of 32 px (patients syn-<type>-g<grade>-p00<k>)."""
    from mritumor.data.acquire.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("mritumor-trained") / "data",
        patients_per_class=2,
        slices_per_patient=4,
        image_size=TRAINED_SIZE,
        seed=1,
    )


def train_tiny(data: Path, task: str) -> Path:
    """One epoch of small_cnn on ``data`` through the command line; returns its best.pt."""
    from mritumor.cli import main

    outdir = data.parent / task
    common = [
        "--data_root", str(data), "--outdir", str(outdir), "--backbone", "small_cnn",
        "--image_size", str(TRAINED_SIZE), "--epochs", "1", "--augment", "none",
        "--patience", "0", "--num_workers", "0", "--val_frac", "0.2", "--test_frac", "0.3",
    ]  # fmt: skip
    assert main(["-q", *TRAIN_ARGS[task], *common]) == 0
    return outdir / "best.pt"


@pytest.fixture(scope="session")
def hierarchical_checkpoint(trained_data) -> Path:
    """A tiny train-hierarchical best.pt (bag of 4 slices, temperature fitted), trained once
    per test session; tests that change it work on a copy."""
    return train_tiny(trained_data, "hierarchical")


@pytest.fixture(scope="session")
def multitask_checkpoint(trained_data) -> Path:
    """A tiny train-multitask best.pt of variant D (classifies and segments), once per session."""
    return train_tiny(trained_data, "multitask")


# the labels of trained_data, as LabelSpace.to_dict writes them
OLD_LABELS = {
    "types": ["astrocytoma", "meningioma", "pituitary"],
    "grades": ["1", "2", "3"],
    "pairs": [["astrocytoma", "2"], ["astrocytoma", "3"], ["meningioma", "1"],
              ["meningioma", "2"], ["pituitary", "1"]],
}  # fmt: skip


@pytest.fixture(scope="session")
def old_format_checkpoints(trained_data, tmp_path_factory) -> dict:
    """Checkpoints in the layout mritumor wrote before the loading layer was shared (format 1,
    the keys of tasks.*.checkpoint_payload at that time), written key by key here, so that a
    change of today's payload cannot silently change them too. Untrained networks with seeded
    weights: {task: (path, the network whose weights were saved, in eval mode)}."""
    import torch

    from mritumor.checkpoints import atomic_save
    from mritumor.models.backbones import build_encoder
    from mritumor.models.hierarchical import TwoStepClassifier
    from mritumor.models.multitask import build_multitask_model

    folder = tmp_path_factory.mktemp("old-format")
    patients = sorted(p.name for p in trained_data.glob("*/*"))
    preprocessing = {"image_size": TRAINED_SIZE, "channels": 1, "clip_low": 0.5, "clip_high": 99.5}
    metadata = {
        "date": "2026-11-30T12:00:00+00:00",
        "versions": {"mritumor": "0.1.0", "torch": "2.5.0", "torchvision": "0.20.0",
                     "lightning": "2.4.0", "python": "3.11.9"},
        "commit": None,
        "machine": "x86_64",
    }  # fmt: skip
    allowed = torch.zeros(3, 3, dtype=torch.bool)
    for tumour_type, grade in OLD_LABELS["pairs"]:
        allowed[OLD_LABELS["types"].index(tumour_type), OLD_LABELS["grades"].index(grade)] = True

    torch.manual_seed(11)
    encoder = build_encoder("small_cnn", 1, TRAINED_SIZE)
    hierarchical = TwoStepClassifier(encoder, allowed, pooling="attention", dropout=0.25).eval()
    result = {
        "hierarchical": (
            atomic_save(
                {
                    "format": 1,
                    "task": "hierarchical",
                    "model_state": {k: v.clone() for k, v in hierarchical.state_dict().items()},
                    "encoder_config": {
                        "name": "small_cnn",
                        "in_channels": 1,
                        "image_size": TRAINED_SIZE,
                        "feature_dim": encoder.feature_dim,
                        "input_normalisation": "none",
                    },
                    "model_config": {"pooling": "attention", "dropout": 0.25},
                    "labels": OLD_LABELS,
                    "preprocessing": preprocessing,
                    "bag": {"bag_size": 4, "bag_policy": "random"},
                    "temperature": 1.7,
                    "split": {
                        "train": patients[:6],
                        "val": patients[6:8],
                        "test": patients[8:],
                        "strategy": "stratified",
                    },
                    "config": {"backbone": "small_cnn", "epochs": 1, "seed": 0},
                    "metadata": metadata,
                },  # fmt: skip
                folder / "hierarchical.pt",
            ),
            hierarchical,
        )
    }
    torch.manual_seed(12)
    multitask = build_multitask_model("D", 3, "small_cnn", 1, TRAINED_SIZE, hidden_dim=16).eval()
    result["multitask"] = (
        atomic_save(
            {
                "format": 1,
                "task": "multitask",
                "model_state": {k: v.clone() for k, v in multitask.state_dict().items()},
                "encoder_config": {
                    "name": "small_cnn",
                    "in_channels": 1,
                    "image_size": TRAINED_SIZE,
                    "feature_dim": multitask.encoder.feature_dim,
                    "input_normalisation": "none",
                },
                "model_config": {
                    "variant": "D",
                    "backbone": "small_cnn",
                    "n_classes": 3,
                    "image_size": TRAINED_SIZE,
                    "in_channels": 1,
                    "hidden_dim": 16,
                    "dropout": 0.2,
                },
                "labels": OLD_LABELS,
                "preprocessing": preprocessing,
                "temperature": 1.7,
                "split": {"train": patients[:6], "val": patients[6:8], "test": patients[8:]},
                "config": {"backbone": "small_cnn", "variant": "D", "seed": 0},
                "metadata": metadata,
            },  # fmt: skip
            folder / "multitask.pt",
        ),
        multitask,
    )
    return result

"""Shared fixtures: small datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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

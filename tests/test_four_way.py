"""A dataset with a ``no_tumour`` class (image-level class folders) trains a 4-way model whose
prediction names ``no_tumour`` among its types (issue: Know when not to answer)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import blob_slice, write_png
from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.data.reading.readers import LEAKAGE_WARNING

CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory):
    """Training/<class>/*.png, 12 images per class (no_tumour without the bright square)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("four") / "brain"
    for folder in CLASSES:
        for k in range(12):
            image, _ = blob_slice(rng, size=32, bright=folder != "no_tumor")
            write_png(root / "Training" / folder / f"img_{k}.png", image)
    return root


def test_a_no_tumour_class_trains_a_four_way_model(four_classes, tmp_path, capsys):
    outdir = tmp_path / "run"
    argv = [
        "-q", "train-hierarchical", "--data_root", str(four_classes), "--outdir", str(outdir),
        "--backbone", "small_cnn", "--image_size", "32", "--epochs", "1", "--bag_size", "1",
        "--batch_size", "8", "--augment", "none", "--patience", "0", "--num_workers", "0",
        "--n_boot", "20", "--accelerator", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    assert LEAKAGE_WARNING in capsys.readouterr().err  # training warns, not only `data inspect`
    checkpoint = load_checkpoint(outdir / "best.pt")
    types = checkpoint["labels"]["types"]
    assert sorted(types) == ["glioma", "meningioma", "no_tumour", "pituitary"]
    head = [v for k, v in checkpoint["model_state"].items() if k.endswith("weight")][-1]
    assert head.shape[0] >= 4  # a 4-way type output (not 3 with no_tumour dropped)
    image = next((four_classes / "Training" / "no_tumor").glob("*.png"))
    assert main(["-q", "predict", "--checkpoint", str(outdir / "best.pt"),
                 "--input", str(image), "--engine", "torch"]) == 0  # fmt: skip
    (record,) = json.loads(capsys.readouterr().out)["patients"]
    assert sorted(record["type_probabilities"]) == sorted(types)
    assert sum(record["type_probabilities"].values()) == pytest.approx(1.0, abs=1e-4)

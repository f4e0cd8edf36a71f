"""train-hierarchical with a SimCLR checkpoint (--ssl_ckpt, --freeze_backbone) and --label_fraction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.models.simclr import extract_encoder_state

COMMON = ["--image_size", "32", "--accelerator", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hssl")
    data = write_synthetic_dataset(
        root / "data", patients_per_class=4, slices_per_patient=3, image_size=32
    )
    code = main(
        [
            "-q",
            "pretrain",
            "--data_root",
            str(data),
            "--outdir",
            str(root / "ssl"),
            "--encoder",
            "small_cnn",
            "--epochs",
            "1",
            "--batch_size",
            "8",
            *COMMON,
        ]
    )
    assert code == 0
    return data, root / "ssl" / "simclr_pretrain.pt"


def test_frozen_backbone_keeps_exactly_the_ssl_encoder_weights(pretrained, tmp_path: Path):
    data, ssl_ckpt = pretrained
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train-hierarchical",
                "--data_root",
                str(data),
                "--outdir",
                str(out),
                "--epochs",
                "2",
                "--backbone",
                "small_cnn",
                "--bag_size",
                "3",
                "--ssl_ckpt",
                str(ssl_ckpt),
                "--freeze_backbone",
                "--n_boot",
                "20",
                *COMMON,
            ]
        )
        == 0
    )
    encoder = extract_encoder_state(load_checkpoint(ssl_ckpt)["simclr_state"])
    model_state = load_checkpoint(out / "best.pt")["model_state"]
    backbone = {
        k[len("backbone.") :]: v for k, v in model_state.items() if k.startswith("backbone.")
    }
    assert backbone.keys() == encoder.keys()
    for key, value in encoder.items():
        torch.testing.assert_close(backbone[key], value, rtol=0, atol=0, msg=key)
    heads = {k: v for k, v in model_state.items() if k.startswith("type_head.")}
    assert heads  # the heads exist and were trained (not part of the SSL checkpoint)


def test_unfrozen_backbone_starts_from_ssl_and_moves(pretrained, tmp_path: Path):
    data, ssl_ckpt = pretrained
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train-hierarchical",
                "--data_root",
                str(data),
                "--outdir",
                str(out),
                "--epochs",
                "1",
                "--backbone",
                "small_cnn",
                "--bag_size",
                "3",
                "--ssl_ckpt",
                str(ssl_ckpt),
                "--lr",
                "1e-2",
                "--monitor",
                "val_loss",
                "--n_boot",
                "20",
                *COMMON,
            ]
        )
        == 0
    )
    encoder = extract_encoder_state(load_checkpoint(ssl_ckpt)["simclr_state"])
    state = load_checkpoint(out / "best.pt")["model_state"]
    first_conv = state["backbone.body.0.weight"]
    assert first_conv.shape == encoder["body.0.weight"].shape
    assert not torch.equal(first_conv, encoder["body.0.weight"])  # fine-tuned
    assert (
        torch.nn.functional.cosine_similarity(
            first_conv.flatten(), encoder["body.0.weight"].flatten(), 0
        )
        > 0.5
    )


def test_ssl_checkpoint_of_another_backbone_is_refused(pretrained, tmp_path: Path, capsys):
    data, ssl_ckpt = pretrained
    code = main(
        [
            "-q",
            "train-hierarchical",
            "--data_root",
            str(data),
            "--outdir",
            str(tmp_path / "r"),
            "--epochs",
            "1",
            "--backbone",
            "resnet18",
            "--ssl_ckpt",
            str(ssl_ckpt),
            *COMMON,
        ]
    )
    assert code == 2
    assert "small_cnn" in capsys.readouterr().err


def test_label_fraction_trains_on_fewer_patients_per_type(pretrained, tmp_path: Path):
    data, _ = pretrained
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train-hierarchical",
                "--data_root",
                str(data),
                "--outdir",
                str(out),
                "--epochs",
                "1",
                "--backbone",
                "small_cnn",
                "--bag_size",
                "2",
                "--label_fraction",
                "0.25",
                "--n_boot",
                "20",
                "--test_frac",
                "0.2",
                *COMMON,
            ]
        )
        == 0
    )
    split = json.loads((out / "split.json").read_text())
    assert split["extra"]["label_fraction"] == 0.25
    types = {p.split("-")[1] for p in split["train"]}
    assert types == {"astrocytoma", "meningioma", "pituitary"}  # at least one patient per type
    assert len(split["train"]) <= 5 and not set(split["train"]) & set(split["test"])

"""Intensity standardisation (``Preprocessing.intensity``, ``--intensity``): the default is the
old percentile window bit for bit; ``foreground`` windows over the head only, so the amount of
zero background does not move it, and leaves the background at 0; the method reaches the cache
key, the cache of a training run, its checkpoint and everything that loads one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import build_parser, main
from mritumor.commands.common import INTENSITY_METHODS as FLAG_CHOICES
from mritumor.commands.common import apply_config
from mritumor.config import HierarchicalConfig
from mritumor.data.loading import intensity
from mritumor.data.loading.cache import (
    CACHE_FORMAT,
    Preprocessing,
    SliceCache,
    cache_key,
    preprocess_image,
    resize_square,
)
from mritumor.data.loading.prepare import prepare_data_for
from mritumor.data.reading import io
from mritumor.data.reading.readers import read_catalog
from mritumor.inference import arrays
from mritumor.inference.card import ModelCard, Prep
from mritumor.models.loading import load_model, preprocessing_of

# ------------------------------------------------------------------ the code before the option


def old_preprocess_image(image: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """mritumor.data.loading.cache.preprocess_image as it was before ``intensity`` (commit 73dcb5e)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if tensor.shape[0] != prep.channels:
        tensor = (
            tensor.expand(prep.channels, -1, -1)
            if tensor.shape[0] == 1
            else tensor.mean(dim=0, keepdim=True)
        )
    flat = tensor.reshape(tensor.shape[0], -1).numpy()
    low, high = np.percentile(flat, [prep.clip_low, prep.clip_high], axis=1).astype(np.float32)
    low, high = torch.from_numpy(low).view(-1, 1, 1), torch.from_numpy(high).view(-1, 1, 1)
    scaled = ((tensor - low) / (high - low).clamp_min(1e-6)).clamp_(0, 1)
    return resize_square(scaled, prep.image_size, "bilinear").to(torch.float16)


def old_cache_key(catalog, prep: Preprocessing) -> str:
    """mritumor.data.loading.cache.cache_key before ``intensity``: the four fields only."""
    fields = {k: getattr(prep, k) for k in ("image_size", "channels", "clip_low", "clip_high")}
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, fields]).encode())
    for image, frame, mask in catalog.table[["image", "frame", "mask"]].itertuples(index=False):
        for path in (image, mask):
            if path is None:
                digest.update(b"-")
                continue
            stat = os.stat(path)
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        digest.update(str(frame).encode())
    return digest.hexdigest()[:24]


def head_slice(rng: np.random.Generator, side: int = 48, noise: float = 0.0) -> np.ndarray:
    """(1, side, side): an elliptic 'head' of heavy-tailed intensities ≥ 150 (a few very
    bright voxels) on a background of 0, or of uniform noise in [0, noise)."""
    y, x = np.mgrid[:side, :side]
    head = ((y - side / 2) / (0.42 * side)) ** 2 + ((x - side / 2) / (0.36 * side)) ** 2 < 1
    image = rng.uniform(0, noise, (side, side)) if noise else np.zeros((side, side))
    image[head] = 150 + rng.gamma(2.0, 200.0, head.sum())
    image[side // 2, side // 2] = 1e5
    return image[None].astype(np.float32)


# ------------------------------------------------------------------------ the default method


def test_the_default_is_the_old_preprocessing_bit_for_bit():
    rng = np.random.default_rng(0)
    constant = np.full((1, 20, 30), 7.0, np.float32)
    images = [
        (rng.gamma(2.0, 300.0, (1, 240, 240)).astype(np.float32), 224, 1),
        (rng.integers(0, 256, (3, 50, 70)).astype(np.float32), 96, 3),
        (rng.normal(0, 1, (3, 64, 64)).astype(np.float32), 32, 1),  # negative values
        (rng.gamma(2.0, 300.0, (1, 33, 21)).astype(np.float32), 32, 3),
        (head_slice(rng, 64, noise=20.0), 64, 1),
        (constant, 16, 1),
    ]
    assert Preprocessing().intensity == "percentile"
    for image, size, channels in images:
        prep = Preprocessing(image_size=size, channels=channels)
        got = preprocess_image(image, prep)
        expected = old_preprocess_image(image, prep)
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_the_default_keeps_the_old_cache_key(folder_tree: Path):
    """Caches written before the option hold the same values: they are found again."""
    catalog = read_catalog(folder_tree)
    prep = Preprocessing(image_size=32, channels=1)
    assert cache_key(catalog, prep) == old_cache_key(catalog, prep)
    foreground = Preprocessing(image_size=32, channels=1, intensity="foreground")
    assert cache_key(catalog, foreground) != cache_key(catalog, prep)


def test_the_methods_never_share_a_disk_cache(folder_tree: Path, tmp_path: Path):
    catalog = read_catalog(folder_tree)
    row = 5
    raw = io.read_image(catalog.table.at[row, "image"])
    built = []
    for method in ("percentile", "foreground", "percentile"):
        prep = Preprocessing(image_size=32, intensity=method)
        cache = SliceCache.build(catalog, prep, cache_dir=tmp_path / "c", progress=False)
        built.append(np.asarray(cache.images[row]))
        np.testing.assert_array_equal(built[-1], preprocess_image(raw, prep).numpy())
    assert not np.array_equal(built[0], built[1])
    assert len(list((tmp_path / "c").iterdir())) == 2  # the third build re-used the first's


# --------------------------------------------------------------------- the foreground method


@pytest.mark.parametrize("offset", [(56, 56), (10, 102), (100, 4)])
def test_foreground_ignores_the_amount_of_zero_background(offset):
    """The same slice inside a far larger field of view of zeros (no resizing: the output's
    size is the input's) gives the same values on its own pixels; the percentile method's
    window moves (its 99.5th percentile falls inside the head)."""
    rng = np.random.default_rng(1)
    image = head_slice(rng)
    top, left = offset
    padded = np.zeros((1, 160, 160), np.float32)
    padded[:, top : top + 48, left : left + 48] = image
    for method in ("foreground", "percentile"):
        small = preprocess_image(image, Preprocessing(image_size=48, intensity=method))
        large = preprocess_image(padded, Preprocessing(image_size=160, intensity=method))
        inside = large[:, top : top + 48, left : left + 48]
        if method == "foreground":
            assert torch.equal(inside, small)
            # the numpy twin too
            twin = arrays.preprocess_image(padded, Prep(160, 1, 0.5, 99.5, "foreground"))
            np.testing.assert_array_equal(twin[:, top : top + 48, left : left + 48], small)
        else:
            assert (inside.float() - small.float()).abs().max() > 0.1


def test_foreground_equals_a_window_computed_by_hand_and_zeroes_the_background():
    """Noisy background (up to 20) below 5 % of the head's range: it is exactly 0, and the head
    is windowed to the 0.5/99.5 percentiles of the head's own pixels."""
    rng = np.random.default_rng(2)
    image = head_slice(rng, 64, noise=20.0)
    head = image[0] >= 150
    low, high = np.percentile(image[0][head], [0.5, 99.5])
    expected = np.where(head, np.clip((image[0] - low) / (high - low), 0, 1), 0)
    out = preprocess_image(image, Preprocessing(image_size=64, intensity="foreground"))[0]
    np.testing.assert_allclose(out.float().numpy(), expected, atol=2**-11, rtol=2**-10)
    assert (out[torch.from_numpy(~head)] == 0).all()
    assert (out[torch.from_numpy(head)] > 0).float().mean() > 0.98
    # the percentile method lifts the same noise above 0
    old = preprocess_image(image, Preprocessing(image_size=64))[0]
    assert (old[torch.from_numpy(~head)] > 0).float().mean() > 0.5


def test_per_channel_masks_and_a_tiny_foreground_falls_back_to_all_pixels():
    rng = np.random.default_rng(3)
    blank = np.zeros((1, 40, 40), np.float32)
    blank[0, 5:10, 5:10] = rng.uniform(100, 200, (5, 5))  # 25 pixels < MIN_FOREGROUND
    for image in (blank, np.full((1, 20, 30), 7.0, np.float32)):
        foreground = preprocess_image(image, Preprocessing(image_size=40, intensity="foreground"))
        assert torch.equal(foreground, preprocess_image(image, Preprocessing(image_size=40)))
    # two channels with different heads: each channel its own mask and window
    first, second = head_slice(rng), head_slice(rng)[:, ::-1].copy() * 3
    second[0, :20] = 0
    both = preprocess_image(
        np.concatenate([first, second]),
        Preprocessing(image_size=48, channels=2, intensity="foreground"),
    )
    for c, alone in enumerate((first, second)):
        single = preprocess_image(alone, Preprocessing(image_size=48, intensity="foreground"))
        assert torch.equal(both[c], single[0])


def test_unknown_method_is_refused_and_the_flag_offers_the_methods():
    with pytest.raises(ValueError, match="intensity"):
        Preprocessing(intensity="zscore")
    with pytest.raises(ValueError, match="intensity"):
        intensity.intensity_window(np.zeros((1, 4), np.float32), "zscore", 0.5, 99.5)
    assert FLAG_CHOICES == intensity.INTENSITY_METHODS


# ------------------------------------------------------------------------------ plumbing


def test_the_flag_reaches_the_cache_of_a_training_run(folder_tree: Path):
    argv = ["train-hierarchical", "--data_root", str(folder_tree), "--outdir", "O"]
    argv += ["--image_size", "32", "--intensity", "foreground"]
    parser = build_parser()
    config = HierarchicalConfig.from_flags(
        vars(apply_config(parser, parser.parse_args(argv), argv))
    )
    assert config.data.intensity == "foreground"
    data = prepare_data_for(config.data, progress=False)
    assert data.cache.prep == Preprocessing(image_size=32, channels=1, intensity="foreground")
    row = 5
    raw = io.read_image(data.catalog.table.at[row, "image"])
    expected = preprocess_image(raw, data.cache.prep)
    np.testing.assert_array_equal(np.asarray(data.cache.images[row]), expected.numpy())
    assert not torch.equal(expected, preprocess_image(raw, Preprocessing(image_size=32)))


def test_checkpoints_without_the_key_load_as_percentile():
    old = {"image_size": 64, "channels": 3, "clip_low": 0.5, "clip_high": 99.5}
    assert preprocessing_of({"preprocessing": old}) == Preprocessing(64, 3)
    assert preprocessing_of({"preprocessing": old}).intensity == "percentile"
    new = preprocessing_of({"preprocessing": {**old, "intensity": "foreground"}})
    assert new == Preprocessing(64, 3, intensity="foreground")
    # an ONNX card cached before the option existed
    assert Prep(**old) == Prep(64, 3, 0.5, 99.5, "percentile")


TRAIN = {
    "hierarchical": ["train-hierarchical", "--bag_size", "4", "--batch_size", "4"],
    "multitask": ["train-multitask", "--variant", "B", "--batch_size", "16"],
}


@pytest.mark.parametrize("task", TRAIN)
def test_a_foreground_run_is_predicted_with_foreground(task, trained_data: Path, tmp_path: Path, capsys):  # fmt: skip
    """Train one tiny epoch with --intensity foreground: the checkpoint records it, loading and
    the ONNX card keep it, and predict (PyTorch, and ONNX Runtime through the card and the
    numpy twin) gives the network's probabilities on slices standardised by hand with the
    foreground method (not the percentile one)."""
    outdir = tmp_path / "run"
    argv = ["-q", *TRAIN[task], "--data_root", str(trained_data), "--outdir", str(outdir)]
    argv += ["--backbone", "small_cnn", "--image_size", "32", "--epochs", "1", "--augment"]
    argv += ["none", "--patience", "0", "--num_workers", "0", "--val_frac", "0.2", "--test_frac"]
    argv += ["0.3", "--n_boot", "10", "--intensity", "foreground", "--no_calibration"]
    assert main(argv) == 0
    checkpoint = outdir / "best.pt"
    assert load_checkpoint(checkpoint)["preprocessing"]["intensity"] == "foreground"
    loaded = load_model(checkpoint)
    assert loaded.preprocessing == Preprocessing(32, 1, intensity="foreground")
    card = ModelCard.from_loaded(loaded)
    assert ModelCard.from_dict(card.to_dict(), checkpoint).preprocessing.intensity == "foreground"

    catalog = read_catalog(trained_data)
    patient = catalog.patients[0]
    rows = catalog.table[catalog.table["patient_id"] == patient]
    raw = [io.read_image(path) for path in rows["image"]]
    expected = {}
    for method in ("foreground", "percentile"):
        prep = Preprocessing(32, 1, intensity=method)
        images = torch.stack([preprocess_image(r, prep).float() for r in raw])
        with torch.no_grad():
            if task == "hierarchical":  # its bag of 4 is the patient's 4 slices
                bag = torch.ones(1, len(images), dtype=torch.bool)
                probabilities = F.softmax(loaded.model(images[None], bag)["type_logits"][0], -1)
            else:  # the patient's probabilities are the mean of its slices'
                probabilities = F.softmax(loaded.model(images)["class_logits"], -1).mean(0)
        expected[method] = probabilities.numpy()
    difference = np.abs(expected["foreground"] - expected["percentile"]).max()
    patient_dir = next(trained_data.glob(f"*/{patient}"))
    # the ONNX path differs from PyTorch by float32 rounding and, now and then, one float16
    # step of an input pixel: far below what telling the two methods apart needs
    for engine, tolerance in (("torch", 2e-6), ("onnx", 1e-5)):
        assert difference > 3 * tolerance
        capsys.readouterr()
        assert main(["-q", "predict", "--checkpoint", str(checkpoint), "--input",
                     str(patient_dir), "--engine", engine]) == 0  # fmt: skip
        result = json.loads(capsys.readouterr().out)
        assert result["model"]["intensity"] == "foreground" and result["model"]["engine"] == engine
        record = result["patients"][0]
        predicted = [record["type_probabilities"][t] for t in loaded.labels.types]
        np.testing.assert_allclose(predicted, expected["foreground"], atol=tolerance)


def test_evaluate_ssl_follows_the_pretraining_checkpoints_method(tmp_path: Path, monkeypatch):
    """A SimCLR checkpoint brings its method (``percentile`` when it records none); only the
    random baseline takes the argument."""
    from mritumor import ssl_eval
    from mritumor.checkpoints import save_checkpoint
    from mritumor.models.backbones import build_encoder

    class Prepared(Exception):
        pass

    seen = []

    def spy(data_config, *args, **kwargs):
        seen.append(data_config.intensity)
        raise Prepared

    monkeypatch.setattr(ssl_eval, "prepare_data_for", spy)
    encoder = build_encoder("small_cnn", 1, 32)
    payload = {
        "simclr_state": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
        "encoder_config": encoder.config.to_dict(),
    }
    recorded = {"image_size": 32, "channels": 1, "clip_low": 0.5, "clip_high": 99.5}
    cases = [
        (recorded | {"intensity": "foreground"}, "percentile", "foreground"),
        (recorded, "foreground", "percentile"),  # written before the option
        (None, "foreground", "foreground"),  # --ckpt random
    ]
    for preprocessing, argument, expected in cases:
        if preprocessing is None:
            ckpt = "random"
        else:
            metadata = {"preprocessing": preprocessing}
            ckpt = str(save_checkpoint(payload | {"metadata": metadata}, tmp_path / "s.pt"))
        with pytest.raises(Prepared):
            ssl_eval.evaluate_ssl(ckpt, tmp_path, tmp_path / "out", intensity=argument)
        assert seen[-1] == expected

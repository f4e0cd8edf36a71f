"""Test-time augmentation: the views, their inverses, the averaging, and --tta in evaluate and
predict against a hand-made average of the network's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mritumor.cli import main
from mritumor.errors import MritumorError
from mritumor.inference import tta
from mritumor.inference.engines import TorchEngine
from mritumor.inference.inputs import discover
from mritumor.inference.predictor import Predictor
from mritumor.models.loading import load_model


def test_the_eight_views_are_the_symmetries_of_the_square_and_invert():
    image = np.arange(16.0).reshape(1, 1, 4, 4)
    views = [tta._view(image, i) for i in range(tta.MAX_VIEWS)]
    assert len({v.tobytes() for v in views}) == 8  # all distinct
    np.testing.assert_array_equal(views[1], image[..., ::-1])  # the flip every model trains with
    np.testing.assert_array_equal(views[4], np.rot90(image, 1, axes=(-2, -1)))
    for i, view in enumerate(views):
        np.testing.assert_array_equal(tta._inverse(view, i), image)


class CornerEngine:
    """class logits = the top-left pixel; mask logits = the image itself (an equivariant
    segmenter), so averaged masks must come back equal to the input."""

    name = "fake"

    def run(self, images, mask=None):
        return {
            "class_logits": images[:, 0, :1, 0].copy(),
            "class_embedding": images[:, 0, 0, :].copy(),
            "mask_logits": images.copy(),
        }


def test_logits_are_averaged_and_masks_mapped_back():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 1, 5, 5)).astype(np.float32)
    plain = CornerEngine().run(images)
    two = tta.TTAEngine(CornerEngine(), 2).run(images)
    # views identity and h-flip: the corner pixels seen are top-left and top-right
    np.testing.assert_allclose(two["class_logits"][:, 0], (images[:, 0, 0, 0] + images[:, 0, 0, -1]) / 2, rtol=1e-6)  # fmt: skip
    eight = tta.TTAEngine(CornerEngine(), 8).run(images)
    corners = images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]  # each corner is top-left in 2 views
    np.testing.assert_allclose(eight["class_logits"][:, 0], corners.mean(1), rtol=1e-5)
    for result in (two, eight):  # an equivariant segmenter is unchanged by TTA
        np.testing.assert_allclose(result["mask_logits"], images, rtol=1e-6)
        np.testing.assert_array_equal(result["class_embedding"], plain["class_embedding"])
    assert tta.TTAEngine(CornerEngine(), 1).run(images)["class_logits"] is not None


def test_non_square_images_use_the_flips_only():
    images = np.arange(12.0, dtype=np.float32).reshape(1, 1, 3, 4)
    out = tta.TTAEngine(CornerEngine(), 8).run(images)  # views 0–3 keep the shape
    assert out["mask_logits"].shape == images.shape
    np.testing.assert_allclose(out["class_logits"][0, 0], images[0, 0, [0, 0, -1, -1], [0, -1, -1, 0]].mean())  # fmt: skip


@pytest.mark.parametrize("n", [0, 9, 2.5])
def test_bad_view_counts_are_refused(n):
    with pytest.raises(MritumorError, match="--tta"):
        tta.check_views(n)


def test_predict_with_tta_equals_the_averaged_logits(multitask_checkpoint, trained_data):
    loaded = load_model(multitask_checkpoint)
    # uncalibrated: the tiny model's fitted temperature flattens every probability
    predictor = Predictor.from_checkpoint(
        multitask_checkpoint, engine="torch", calibrated=False, tta=2
    )
    patient = discover(trained_data)[0]
    prepared = predictor.prepare(patient)
    record = predictor.predict_prepared(prepared).record
    assert predictor.header()["tta"] == 2
    images = torch.from_numpy(np.asarray(prepared.images, dtype=np.float32))
    with torch.no_grad():
        logits = (loaded.model(images)["class_logits"] + loaded.model(images.flip(-1))["class_logits"]) / 2  # fmt: skip
    probs = torch.softmax(logits, -1).numpy()
    got = np.array([list(s["type_probabilities"].values()) for s in record["slices"]])
    np.testing.assert_allclose(got, probs, atol=1e-5)
    plain = Predictor.from_checkpoint(
        multitask_checkpoint, engine="torch", calibrated=False
    ).predict_prepared(prepared)
    plain_probs = np.array([list(s["type_probabilities"].values()) for s in plain.record["slices"]])
    assert np.abs(plain_probs - got).max() > 1e-4  # the flip changed something


def test_evaluate_records_tta(hierarchical_checkpoint, trained_data, tmp_path, capsys):
    outdir = tmp_path / "eval"
    main(["-q", "evaluate", "--checkpoint", str(hierarchical_checkpoint), "--data_root",
          str(trained_data), "--outdir", str(outdir), "--n_boot", "10", "--tta", "2",
          "--engine", "torch"])  # fmt: skip
    assert json.loads((outdir / "evaluation.json").read_text())["tta"] == 2
    code = main(["-q", "evaluate", "--checkpoint", str(hierarchical_checkpoint), "--data_root",
                 str(trained_data), "--outdir", str(tmp_path / "bad"), "--tta", "0"])  # fmt: skip
    assert code != 0
    assert "--tta must be a whole number from 1 to 8" in capsys.readouterr().err


def test_torch_engine_under_tta_keeps_its_name(multitask_checkpoint):
    engine = tta.TTAEngine(TorchEngine(load_model(multitask_checkpoint)), 4)
    assert engine.name == "torch" and engine.model is not None

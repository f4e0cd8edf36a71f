"""`mritumor explain`: occlusion / Grad-CAM / slice occlusion, mask scores, and the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mritumor.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.errors import MritumorError
from mritumor.explain.attribution import (
    gradcam_maps,
    hierarchical_slice_classifier,
    last_conv_block,
    occlusion_map,
    slice_occlusion,
    window_starts,
)
from mritumor.explain.explainable import explainable_model
from mritumor.explain.metrics import (
    mask_share,
    pointing_game_hit,
    share_in_mask,
    summarise_scores,
)
from mritumor.explain.run import choose_patients
from mritumor.models.backbones import build_encoder
from mritumor.models.hierarchical import TwoStepClassifier
from mritumor.models.loading import load_model
from mritumor.models.multitask import build_multitask_model

# ----------------------------------------------------------------------------- a model that
# really depends on the tumour


def bright_tumour_slice(size: int, top: int, left: int, side: int, seed: int = 0):
    """Dark noisy background in [0, 0.35], one bright square tumour in [0.85, 1]; its mask."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 0.35, (size, size)).astype(np.float32)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top : top + side, left : left + side] = 1
    image[mask > 0] = rng.uniform(0.85, 1.0, int(mask.sum()))
    return torch.from_numpy(image)[None], mask


class BlobDetector(nn.Module):
    """Hand-weighted two-class classifier: logit(tumour) = scale · Σ ReLU(box3x3(x) − 0.6) − 1.5,
    logit(no tumour) = 0. Only pixels brighter than the dark background contribute, so hiding
    the tumour (and nothing else) lowers p(tumour); the scale keeps p away from saturation."""

    def __init__(self, scale: float = 0.3, pool: int = 1):
        super().__init__()
        conv = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            conv.weight.fill_(1 / 9)
            conv.bias.fill_(-0.6)
        self.detect = nn.Sequential(conv, nn.ReLU())
        self.downsample = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.scale, self.pool = scale, pool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        evidence = self.downsample(self.detect(images)).sum(dim=(1, 2, 3)) * self.pool**2
        tumour = self.scale * evidence - 1.5
        return torch.stack([torch.zeros_like(tumour), tumour], dim=1)


def reference_occlusion(classifier, image, target, window, stride):
    """Pixel by pixel: the mean drop over the windows that contain the pixel (a slow loop,
    written independently of the implementation's window accumulation)."""
    _, height, width = image.shape
    fill = image.mean()

    def starts(length):
        values = list(range(0, length - window + 1, stride))
        return values if values[-1] == length - window else [*values, length - window]

    with torch.no_grad():
        reference = torch.softmax(classifier(image[None]), -1)[0, target]
        drops = {}
        for top in starts(height):
            for left in starts(width):
                occluded = image.clone()
                occluded[:, top : top + window, left : left + window] = fill
                drops[top, left] = float(
                    reference - torch.softmax(classifier(occluded[None]), -1)[0, target]
                )
    expected = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            covering = [
                d for (t, s), d in drops.items() if t <= y < t + window and s <= x < s + window
            ]
            expected[y, x] = np.mean(covering)
    return expected


def test_window_starts_cover_every_pixel():
    assert window_starts(20, 5, 4) == [0, 4, 8, 12, 15]
    assert window_starts(20, 5, 5) == [0, 5, 10, 15]
    assert window_starts(8, 8, 3) == [0]
    with pytest.raises(ValueError):
        window_starts(8, 9, 1)
    with pytest.raises(ValueError):
        window_starts(8, 4, 0)


def test_occlusion_matches_a_pixel_by_pixel_reference_on_a_non_square_layout():
    image, _ = bright_tumour_slice(20, top=3, left=12, side=5, seed=3)
    detector = BlobDetector()
    found = occlusion_map(detector, image, target=1, window=5, stride=4, batch_size=7)
    expected = reference_occlusion(detector, image, 1, window=5, stride=4)
    assert found.shape == (20, 20)
    np.testing.assert_allclose(found.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("top", "left", "window", "stride"),
    [(6, 30, 6, 3), (34, 8, 8, 4), (20, 38, 5, 5), (4, 12, 6, 2)],
)
def test_occlusion_maximum_falls_inside_the_tumour(top, left, window, stride):
    """Tumours placed off the diagonal: a transposed map, or one shifted by a stride, puts its
    maximum outside the mask."""
    image, mask = bright_tumour_slice(48, top, left, side=7, seed=top)
    detector = BlobDetector()
    probability = torch.softmax(detector(image[None]), -1)[0, 1]
    assert 0.6 < probability < 0.99  # not saturated: occlusion can change it
    found = occlusion_map(detector, image, target=1, window=window, stride=stride).numpy()
    row, column = np.unravel_index(found.argmax(), found.shape)
    assert mask[row, column] == 1, (row, column)
    assert found.max() > 0.05  # hiding the tumour lowers p(tumour): positive drop
    assert share_in_mask(found, mask) > 10 * mask_share(mask)  # a uniform map scores 1x
    # windows that never touch the tumour (or its 3x3 filter halo) change nothing
    far = np.ones_like(mask, dtype=bool)
    far[
        max(0, top - window - 1) : top + 7 + window + 1,
        max(0, left - window - 1) : left + 7 + window + 1,
    ] = False
    assert np.abs(found[far]).max() < 1e-6
    # and for the other class the sign flips: hiding the tumour makes "no tumour" more likely
    other = occlusion_map(detector, image, target=0, window=window, stride=stride).numpy()
    np.testing.assert_allclose(other, -found, atol=1e-6)


def test_occlusion_baseline_is_what_fills_the_window():
    image, mask = bright_tumour_slice(32, 4, 20, side=6)
    detector = BlobDetector()
    with_mean = occlusion_map(detector, image, 1, 6, 3, baseline="mean")
    with_zero = occlusion_map(detector, image, 1, 6, 3, baseline="zero")
    with_bright = occlusion_map(detector, image, 1, 6, 3, baseline=1.0)
    # a bright fill adds tumour-like evidence wherever it goes: clearly negative drops off the
    # tumour; the mean (≈ 0.2) and zero fills only remove evidence (up to the tiny brightening
    # of background pixels darker than the mean next to the tumour's edge)
    assert with_bright[mask == 0].min() < -0.2
    assert with_mean[mask == 0].min() > -0.01 and with_zero[mask == 0].min() > -1e-6
    assert with_zero.max() > with_mean.max() > 0  # black hides the tumour's edge halo more
    with pytest.raises(ValueError):
        occlusion_map(detector, image, 1, 6, 3, baseline="blur")


def test_gradcam_of_a_linear_detector_is_its_activation_and_peaks_in_the_tumour():
    images, masks = [], []
    for top, left in [(5, 30), (30, 6)]:
        image, mask = bright_tumour_slice(40, top, left, side=6, seed=left)
        images.append(image)
        masks.append(mask)
    images = torch.stack(images)
    detector = BlobDetector(scale=0.2)
    cams = gradcam_maps(detector, detector.detect, images, [1, 1])
    # logit = 0.2 · Σ activation − 1.5: every gradient is 0.2, so CAM = ReLU(0.2 · activation)
    with torch.no_grad():
        expected = 0.2 * detector.detect(images)[:, 0]
    torch.testing.assert_close(cams, expected, atol=1e-6, rtol=1e-5)
    for cam, mask in zip(cams.numpy(), masks, strict=True):
        row, column = np.unravel_index(cam.argmax(), cam.shape)
        assert mask[row, column] == 1
        assert pointing_game_hit(cam, mask) is True
    # for the "no tumour" class the gradient is negative: ReLU leaves nothing
    assert gradcam_maps(detector, detector.detect, images, [0, 0]).abs().max() == 0


def test_gradcam_upsamples_a_coarser_feature_map_in_register():
    image, mask = bright_tumour_slice(48, 6, 34, side=8, seed=5)
    detector = BlobDetector(pool=4)
    cam = gradcam_maps(detector, detector.downsample, image[None], [1])[0].numpy()
    assert cam.shape == (48, 48)
    row, column = np.unravel_index(cam.argmax(), cam.shape)
    assert mask[row, column] == 1


# ----------------------------------------------------------------------------- the hierarchical model


def tiny_hierarchical(pooling: str = "attention") -> TwoStepClassifier:
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", 1, 32)
    allowed = torch.tensor([[True, False], [False, True], [True, True]])
    return TwoStepClassifier(encoder, allowed, pooling=pooling, dropout=0.0).eval()


def test_slice_occlusion_equals_removing_the_slice_from_the_bag():
    model = tiny_hierarchical()
    torch.manual_seed(1)
    images = torch.rand(5, 1, 32, 32)
    classify = lambda x, m: model(x, m)["type_logits"]  # noqa: E731
    drops = slice_occlusion(classify, images, target=2, batch_size=2)
    with torch.no_grad():
        full = torch.softmax(
            model(images[None], torch.ones(1, 5, dtype=torch.bool))["type_logits"], -1
        )
        for i in range(5):
            kept = torch.cat([images[:i], images[i + 1 :]])
            smaller = model(kept[None], torch.ones(1, 4, dtype=torch.bool))["type_logits"]
            expected = full[0, 2] - torch.softmax(smaller, -1)[0, 2]
            assert drops[i] == pytest.approx(float(expected), abs=1e-5)
    assert torch.isnan(slice_occlusion(classify, images[:1], target=0)).all()


def test_slice_occlusion_by_hand_on_a_mean_bag():
    """logit = mean over real slices of each slice's mean intensity × 4 (class 1), 0 (class 0)."""
    images = torch.stack([torch.full((1, 4, 4), v) for v in (0.1, 0.9, 0.5)])

    def classify(bags, mask):
        scores = bags.mean(dim=(2, 3, 4)) * 4
        mean = (scores * mask).sum(1) / mask.sum(1)
        return torch.stack([torch.zeros_like(mean), mean], 1)

    def p(values):
        return 1 / (1 + np.exp(-4 * np.mean(values)))

    expected = [p([0.1, 0.9, 0.5]) - p(rest) for rest in ([0.9, 0.5], [0.1, 0.5], [0.1, 0.9])]
    np.testing.assert_allclose(slice_occlusion(classify, images, 1).numpy(), expected, atol=1e-6)
    # removing the dim slice raises p(class 1): negative drop; the bright one: positive
    found = slice_occlusion(classify, images, 1).numpy()
    assert found[0] < 0 < found[1]


def test_hierarchical_slice_classifier_and_its_gradcam_layer():
    model = tiny_hierarchical()
    classifier = hierarchical_slice_classifier(model)
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        one_by_one = [
            model(images[i][None, None], torch.ones(1, 1, dtype=torch.bool)) for i in range(3)
        ]
        torch.testing.assert_close(
            classifier(images), torch.cat([o["type_logits"] for o in one_by_one])
        )
    layer = last_conv_block(model)
    assert layer is model.backbone.body[-1]
    cams = gradcam_maps(classifier, layer, images, [0, 1, 2])
    assert cams.shape == (3, 32, 32) and (cams >= 0).all()
    assert not layer._forward_hooks  # the hook is removed afterwards
    assert last_conv_block(nn.Linear(2, 2)) is None


# ----------------------------------------------------------------------------- mask scores


def test_share_in_mask_on_a_hand_made_map():
    attribution = np.array(
        [
            [1.0, -2.0, 0.0, 3.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.5],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 1:4] = 1  # holds the 3.0 and the -2.0 (negative: ignored); not 1.0 nor 0.5
    assert share_in_mask(attribution, mask) == pytest.approx(3.0 / 4.5)
    assert share_in_mask(attribution.T, mask) == 0.0  # transposed, 3.0 lands at (3, 0)
    assert share_in_mask(attribution.T, mask.T) == pytest.approx(3.0 / 4.5)
    assert share_in_mask(attribution, np.zeros((4, 4))) is None
    assert share_in_mask(-np.abs(attribution), mask) == 0.0
    assert mask_share(mask) == pytest.approx(6 / 16)
    assert share_in_mask(np.ones((4, 4)), mask) == pytest.approx(mask_share(mask))
    with pytest.raises(ValueError):
        share_in_mask(np.ones((4, 5)), mask)


def test_pointing_game_on_hand_made_maps():
    attribution = np.zeros((3, 5))
    attribution[2, 1] = 1.0  # flat index 11: row 2, column 1
    mask = np.zeros((3, 5), bool)
    mask[2, 1] = True
    assert pointing_game_hit(attribution, mask) is True
    mask_elsewhere = np.zeros((3, 5), bool)
    mask_elsewhere[1, 2] = True  # the transposed position
    assert pointing_game_hit(attribution, mask_elsewhere) is False
    next_door = np.zeros((3, 5), bool)
    next_door[1, 1] = True
    assert pointing_game_hit(attribution, next_door) is False
    assert pointing_game_hit(attribution, next_door, tolerance=1) is True
    assert pointing_game_hit(attribution, np.zeros((3, 5))) is None
    assert pointing_game_hit(-np.ones((3, 5)), np.ones((3, 5))) is False  # points nowhere


def test_summarise_scores_per_class():
    records = [
        {
            "method": "occlusion",
            "true_type": "a",
            "share_in_mask": 0.8,
            "pointing_hit": True,
            "mask_share": 0.1,
        },
        {
            "method": "occlusion",
            "true_type": "a",
            "share_in_mask": 0.4,
            "pointing_hit": False,
            "mask_share": 0.3,
        },
        {
            "method": "occlusion",
            "true_type": "b",
            "share_in_mask": 0.6,
            "pointing_hit": True,
            "mask_share": 0.2,
        },
        {
            "method": "occlusion",
            "true_type": "b",
            "share_in_mask": None,
            "pointing_hit": None,
            "mask_share": None,
        },
        {
            "method": "gradcam",
            "true_type": "b",
            "share_in_mask": None,
            "pointing_hit": None,
            "mask_share": 0.0,
        },
    ]
    summary = summarise_scores(records)
    occlusion = summary["occlusion"]
    assert occlusion["all"]["n_slices"] == 4 and occlusion["all"]["n_with_mask"] == 3
    assert occlusion["all"]["share_in_mask_mean"] == pytest.approx(0.6)
    assert occlusion["all"]["share_in_mask_median"] == pytest.approx(0.6)
    assert occlusion["all"]["pointing_game_hit_rate"] == pytest.approx(2 / 3)
    assert occlusion["all"]["mask_share_mean"] == pytest.approx(0.2)
    assert occlusion["per_class"]["a"]["share_in_mask_mean"] == pytest.approx(0.6)
    assert occlusion["per_class"]["a"]["pointing_game_hit_rate"] == pytest.approx(0.5)
    assert occlusion["per_class"]["b"]["pointing_game_hits"] == 1
    gradcam = summary["gradcam"]["all"]
    assert gradcam["n_with_mask"] == 0 and gradcam["pointing_game_hit_rate"] is None


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def trained(trained_data, hierarchical_checkpoint) -> tuple[Path, Path]:
    """The shared tiny hierarchical checkpoint (tests/conftest.py) and the data it learnt."""
    return trained_data, hierarchical_checkpoint


def mask_of(image_path: str) -> np.ndarray:
    path = Path(image_path)
    return np.asarray(Image.open(path.with_name(f"{path.stem}_mask{path.suffix}"))) > 0


def test_explain_command_end_to_end(trained, tmp_path: Path):
    data, checkpoint = trained
    out = tmp_path / "explain"
    patients = ["syn-astrocytoma-g2-p000", "syn-meningioma-g1-p001"]
    code = main(
        [
            "-q",
            "explain",
            "--checkpoint",
            str(checkpoint),
            "--data_root",
            str(data),
            "--outdir",
            str(out),
            "--patients",
            *patients,
            "--window",
            "8",
            "--stride",
            "4",
            "--top_slices",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "attribution_summary.json").read_text())
    assert summary["task"] == "hierarchical" and summary["n_patients"] == 2
    assert summary["settings"]["window"] == 8 and summary["settings"]["stride"] == 4
    assert summary["settings"]["methods"] == ["occlusion", "gradcam"]
    assert summary["n_explained_slices"] == 4
    assert [p["patient_id"] for p in summary["patients"]] == patients

    slices = pd.read_csv(out / "slices.csv")
    assert set(slices["patient_id"]) == set(patients)
    for patient, group in slices.groupby("patient_id"):
        assert len(group) == 4  # the checkpoint's bag of 4 (the patients have 4 slices)
        assert group["attention_weight"].sum() == pytest.approx(1.0, abs=1e-5)
        assert sorted(group["rank"]) == [1, 2, 3, 4]
        explained = group[group["explained"]]
        assert sorted(explained["rank"]) == [1, 2]
        drops = group.sort_values("rank")["slice_occlusion_drop"].to_numpy()
        assert np.all(np.diff(drops) <= 1e-12)  # ranked by slice-occlusion drop
        folder = out / "patients" / patient
        assert (folder / "slice_importance.png").is_file()
        maps = np.load(folder / "maps.npz")
        for _, row in explained.iterrows():
            overlay = out / row["overlay"]
            assert Image.open(overlay).format == "PNG"
            mask = mask_of(row["image"])  # written at 32 px: the model's size, no resizing
            for method in ("occlusion", "gradcam"):
                values = maps[f"{method}_slice_{row['slice_index']:03d}"]
                assert values.shape == (32, 32)
                if mask.any():
                    positive = np.clip(values, 0, None)
                    expected = positive[mask].sum() / positive.sum() if positive.sum() > 0 else 0.0
                    assert row[f"{method}_share_in_mask"] == pytest.approx(expected, abs=1e-5)
                    peak = np.unravel_index(values.argmax(), values.shape)
                    hit = bool(mask[peak]) if (values > 0).any() else False
                    assert bool(row[f"{method}_pointing_hit"]) == hit
                else:
                    assert pd.isna(row[f"{method}_share_in_mask"])
    for method in ("occlusion", "gradcam"):
        column = slices[f"{method}_share_in_mask"].dropna()
        overall = summary["attribution"][method]["all"]
        assert overall["n_with_mask"] == len(column)
        if len(column):
            assert overall["share_in_mask_mean"] == pytest.approx(column.mean(), abs=1e-6)
        assert set(summary["attribution"][method]["per_class"]) <= {"astrocytoma", "meningioma"}


def test_explain_defaults_to_the_test_patients_and_rejects_unknown_ones(trained, tmp_path, capsys):
    data, checkpoint = trained
    test_patients = load_checkpoint(checkpoint)["split"]["test"]
    out = tmp_path / "default"
    args = ["-q", "explain", "--checkpoint", str(checkpoint), "--data_root", str(data)]
    assert main([*args, "--outdir", str(out), "--method", "gradcam", "--top_slices", "1"]) == 0
    summary = json.loads((out / "attribution_summary.json").read_text())
    assert sorted(p["patient_id"] for p in summary["patients"]) == sorted(test_patients)
    assert list(summary["attribution"]) == ["gradcam"]
    assert main([*args, "--outdir", str(tmp_path / "x"), "--patients", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err


def test_explanation_loads_without_the_training_tasks(
    hierarchical_checkpoint, multitask_checkpoint, tmp_path, monkeypatch
):
    """Both kinds of checkpoint become explainable models through models.loading alone (the
    Lightning task modules made unimportable); other checkpoints are refused, named."""
    monkeypatch.setitem(sys.modules, "mritumor.tasks.hierarchical", None)
    monkeypatch.setitem(sys.modules, "mritumor.tasks.multitask", None)
    hierarchical = explainable_model(load_model(hierarchical_checkpoint))
    payload = load_checkpoint(hierarchical_checkpoint)
    assert hierarchical.class_names == payload["labels"]["types"]
    assert hierarchical.bag_model is not None and hierarchical.bag_size == 4
    assert hierarchical.test_patients == payload["split"]["test"]
    assert hierarchical.temperature == pytest.approx(payload["temperature"])
    multitask = explainable_model(load_model(multitask_checkpoint), temperature=1.0)
    assert multitask.bag_model is None and multitask.temperature == 1.0
    assert multitask.gradcam_layer is not None
    logits = multitask.slice_classifier(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, len(multitask.class_names))
    with pytest.raises(CheckpointError, match="pretrain"):
        load_model(save_checkpoint({"simclr_state": {}}, tmp_path / "ssl.pt"))
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(save_checkpoint({"task": "simclr"}, tmp_path / "other.pt"))


def test_multitask_checkpoints_are_explained(trained_data, multitask_checkpoint, tmp_path, capsys):
    patient = "syn-meningioma-g1-p001"
    out = tmp_path / "mt"
    args = ["-q", "explain", "--checkpoint", str(multitask_checkpoint), "--data_root", str(trained_data)]  # fmt: skip
    assert main([*args, "--outdir", str(out), "--top_slices", "1", "--window", "8", "--patients", patient]) == 0  # fmt: skip
    summary = json.loads((out / "attribution_summary.json").read_text())
    assert summary["task"] == "multitask"
    assert [p["patient_id"] for p in summary["patients"]] == [patient]
    slices = pd.read_csv(out / "slices.csv")
    assert len(slices) == 4 and slices["attention_weight"].isna().all()  # every slice, no bag
    best = slices.sort_values("rank").iloc[0]
    assert best["slice_probability"] == slices["slice_probability"].max() and best["explained"]
    assert set(summary["attribution"]) == {"occlusion", "gradcam"}

    # a segmentation-only (variant A) network has no class prediction to explain
    payload = load_checkpoint(multitask_checkpoint)
    config = {**payload["model_config"], "variant": "A"}
    net = build_multitask_model("A", config["n_classes"], config["backbone"], config["in_channels"], config["image_size"], decoder=config["decoder"])  # fmt: skip
    payload.update(model_config=config, model_state=net.state_dict())
    segmentation_only = save_checkpoint({k: v for k, v in payload.items() if k != "format"}, tmp_path / "seg.pt")  # fmt: skip
    args = ["-q", "explain", "--checkpoint", str(segmentation_only), "--data_root", str(trained_data)]  # fmt: skip
    capsys.readouterr()
    assert main([*args, "--outdir", str(tmp_path / "s")]) == 2
    assert "no classification head" in capsys.readouterr().err


def test_max_patients_takes_patients_in_turn_from_each_type():
    """A capped run shows every class (the test patients of one type are often listed first);
    without a cap, or without types, the data order is kept; an unknown --patients is refused."""
    available = ["a1", "a2", "a3", "m1", "m2", "p1", "x9"]
    types = {p: {"a": "astro", "m": "menin", "p": "pitu", "x": "astro"}[p[0]] for p in available}
    test = ["a1", "a2", "a3", "m1", "m2", "p1"]
    assert choose_patients(available, None, test, 4, types) == ["a1", "m1", "p1", "a2"]
    assert choose_patients(available, None, test, 0, types) == test
    assert choose_patients(available, None, test, 4) == ["a1", "a2", "a3", "m1"]
    assert choose_patients(available, None, [], 3, types) == ["a1", "m1", "p1"]
    assert choose_patients(available, ["p1", "a1"], test, 0, types) == ["p1", "a1"]
    with pytest.raises(MritumorError, match="not found"):
        choose_patients(available, ["zz"], test, 0, types)

"""The seven multi-task variants: shapes, which path feeds which output, frozen C, the mask
loss against a hand computation, and that every variant can fit one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mritumor.evaluation.bootstrap import bootstrap_intervals, by_group
from mritumor.losses import segmentation_loss
from mritumor.models.backbones import build_encoder
from mritumor.models.multitask import CLASSIFIES, SEGMENTS, VARIANTS, build_multitask_model
from mritumor.tasks.multitask import MultiTaskTask

SIZE, CLASSES = 32, 3


def small(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_multitask_model(variant, CLASSES, "small_cnn", 1, SIZE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_gradients(variant):
    model = small(variant)
    out = model(torch.rand(4, 1, SIZE, SIZE))
    assert ("mask_logits" in out) == (variant in SEGMENTS)
    assert ("class_logits" in out) == (variant in CLASSIFIES)
    if "mask_logits" in out:
        assert out["mask_logits"].shape == (4, 1, SIZE, SIZE)
    if "class_logits" in out:
        assert out["class_logits"].shape == (4, CLASSES)
    sum(v.sum() for k, v in out.items() if k != "class_embedding").backward()
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in encoder_grads)
    assert any(g.abs().sum() > 0 for g in encoder_grads)


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_ood_features_are_each_resolutions_channel_mean_and_sd(backbone):
    """In eval mode a classifying network outputs, per encoder resolution, the mean and the
    (population) sd of each channel of that resolution's last layer, computed here by hooks."""
    torch.manual_seed(0)
    model = build_multitask_model("F", CLASSES, backbone, 1, 64).eval()
    taps = {}
    for index in model.statistics_layers:
        model.encoder.body[index].register_forward_hook(
            lambda module, args, output, index=index: taps.__setitem__(index, output)
        )
    with torch.no_grad():
        out = model(torch.rand(3, 1, 64, 64))
    expected = torch.cat(
        [
            torch.cat([taps[i].mean((2, 3)), taps[i].var((2, 3), unbiased=False).sqrt()], 1)
            for i in model.statistics_layers
        ],
        1,
    )
    assert len(model.statistics_layers) >= 3  # one per resolution, not just the last
    assert model.ood_blocks == [taps[i].shape[1] * 2 for i in model.statistics_layers]
    torch.testing.assert_close(out["ood_features"], expected, rtol=1e-5, atol=1e-6)
    assert "ood_features" not in model.train()(torch.rand(2, 1, 64, 64))  # no loss uses them


def perturbed_output(variant: str, module_name: str, output: str) -> tuple:
    """The ``output`` of one fixed input before and after changing ``module_name``'s weights."""
    model = small(variant).eval()
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(images)[output].clone()
        for parameter in getattr(model, module_name).parameters():
            parameter.add_(torch.randn_like(parameter))
        after = model(images)[output]
    return before, after


@pytest.mark.parametrize(
    ("variant", "changes"),
    [("E", True), ("G", True), ("D", False), ("C", False)],
)
def test_mask_depends_on_classification_path_only_when_fused(variant, changes):
    """E adds projected class logits, G the penultimate embedding into the mask features;
    D and C keep the mask independent of the classifier (the control that lets this fail)."""
    before, after = perturbed_output(variant, "cls_hidden", "mask_logits")
    assert (not torch.allclose(before, after)) == changes


@pytest.mark.parametrize(("variant", "changes"), [("F", True), ("D", False), ("G", False)])
def test_class_depends_on_segmentation_path_only_in_f(variant, changes):
    before, after = perturbed_output(variant, "seg_neck", "class_logits")
    assert (not torch.allclose(before, after)) == changes


def test_variant_c_stage_two_trains_only_the_classifier():
    model = small("C")
    task = MultiTaskTask(model, 1e-3, 0.0, 1, stage="classification")
    task.on_train_epoch_start()
    batch = {
        "image": torch.rand(4, 1, SIZE, SIZE),
        "mask": torch.zeros(4, 1, SIZE, SIZE, dtype=torch.uint8),
        "has_mask": torch.ones(4, dtype=torch.bool),
        "tumor_type": torch.tensor([0, 1, 2, 0]),
    }
    _, losses = task.losses(batch)
    assert set(losses) == {"loss", "cls"}  # no mask loss in stage two
    losses["loss"].backward()
    frozen = list(model.encoder.parameters()) + [
        p for m in model.segmentation_modules() for p in m.parameters()
    ]
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(p.grad is not None for p in model.cls_out.parameters())
    assert not model.encoder.training  # BatchNorm statistics frozen too


def test_segmentation_loss_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 5, 5)
    target = (torch.rand(3, 1, 5, 5) > 0.6).float()
    p = torch.sigmoid(logits)
    smooth = 1e-5  # MONAI's smooth_nr = smooth_dr
    dice = 1 - (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert segmentation_loss(logits, target).item() == pytest.approx((dice + bce).item(), rel=1e-5)


def bright_blob_batch(n: int = 9, size: int = 64):
    """Slices with one bright blob; its class is its shape (square, wide bar, tall bar)."""
    rng = np.random.default_rng(0)
    images = rng.normal(0.2, 0.03, (n, 1, size, size)).astype(np.float32)
    masks = np.zeros((n, 1, size, size), dtype=np.uint8)
    labels = np.arange(n) % CLASSES
    for i, label in enumerate(labels):
        height, width = [(8, 8), (4, 14), (14, 4)][label]
        top, left = rng.integers(2, size - height - 2), rng.integers(2, size - width - 2)
        masks[i, 0, top : top + height, left : left + width] = 1
    images[masks.astype(bool)] = 0.9
    return torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(labels)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_overfits_one_batch(variant):
    # 64 px: at 32 px the stride-8 skip sees 4×4 cells, too coarse for these blobs
    images, masks, labels = bright_blob_batch(size=64)
    torch.manual_seed(1)
    model = build_multitask_model(variant, CLASSES, "small_cnn", 1, 64)
    task = MultiTaskTask(model, 3e-3, 0.0, 1, stage="joint")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = {
        "image": images,
        "mask": masks,
        "has_mask": torch.ones(len(images), dtype=torch.bool),
        "tumor_type": labels,
    }
    for _ in range(100):
        _, losses = task.losses(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    if variant in SEGMENTS:
        predicted, truth = out["mask_logits"] > 0, masks.bool()
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        assert dice > 0.75
    if variant in CLASSIFIES:
        assert (out["class_logits"].argmax(1) == labels).float().mean() == 1.0


def test_fcn_resnet50_is_torchvisions_and_takes_resnet50_weights():
    """The default network is torchvision's FCN-ResNet50 (output stride 8, FCNHead, no skip);
    its encoder has the registry's resnet50 keys, so a SimCLR resnet50 encoder loads strictly."""
    from torchvision.models.segmentation.fcn import FCNHead

    model = build_multitask_model("D", CLASSES, "fcn_resnet50", 1, 64)
    assert model.skip_layers == []
    assert isinstance(model.seg_neck[0], torch.nn.Conv2d) and model.seg_neck[0].in_channels == 2048
    assert isinstance(FCNHead(2048, 1)[4], type(model.seg_out))
    features, _, _ = model.encode(torch.rand(1, 1, 64, 64))
    assert features.shape[-1] == 64 // 8
    registry = build_encoder("resnet50", 1, 64)
    model.encoder.load_state_dict(registry.state_dict(), strict=True)


def test_clustered_bootstrap_resamples_patients_not_rows():
    """Each patient's value repeated on 1–4 rows: the patient-clustered interval of the mean of
    patient means equals the plain bootstrap over patients (same seed, same draws)."""
    rng = np.random.default_rng(3)
    per_patient = rng.normal(size=25)
    repeats = rng.integers(1, 5, size=25)
    rows = np.repeat(per_patient, repeats)
    # zero-padded: groups are numbered in sorted label order, here that of the patients
    groups = np.repeat([f"p{i:02d}" for i in range(25)], repeats)

    weight = 1.0 / np.repeat(repeats, repeats)  # each drawn patient weighs 1 in total

    def mean_of_patient_means(indices):
        return {"m": float(np.sum(rows[indices] * weight[indices]) / np.sum(weight[indices]))}

    fn, n_groups = by_group(mean_of_patient_means, groups)
    clustered = bootstrap_intervals(fn, n_groups, n_boot=300, seed=5)["m"]
    plain = bootstrap_intervals(
        lambda idx: {"m": float(per_patient[idx].mean())}, 25, n_boot=300, seed=5
    )["m"]
    assert n_groups == 25
    for key in ("value", "low", "high"):
        assert clustered[key] == pytest.approx(plain[key])
    naive = bootstrap_intervals(lambda idx: {"m": rows[idx].mean()}, len(rows), 300, seed=5)["m"]
    assert naive["value"] != pytest.approx(plain["value"])  # rows ≠ patients: the test can fail


def test_tversky_loss_matches_hand_computation_and_weighs_misses_more():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 6, 6)
    target = (torch.rand(2, 1, 6, 6) > 0.5).float()
    p = torch.sigmoid(logits)
    tp, fp, fn = (p * target).sum(), (p * (1 - target)).sum(), ((1 - p) * target).sum()
    smooth = 1e-5
    tversky = 1 - (tp + smooth) / (tp + 0.3 * fp + 0.7 * fn + smooth)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    got = segmentation_loss(logits, target, "tversky_ce").item()
    assert got == pytest.approx((tversky + bce).item(), rel=1e-5)
    # missing half the tumour (8 px) against adding as much outside: Dice 1/3 vs 1/5 (gap 0.133),
    # Tversky 1 - 8/13.6 vs 1 - 16/18.4 (gap 0.282); the cross-entropy terms are equal
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    missed, extra = mask.clone(), mask.clone()
    missed[..., 2:4, 2:6] = 0
    extra[..., 6:8, 2:6] = 1
    to_logits = lambda m: (m * 2 - 1) * 12  # noqa: E731  (confident 0/1 masks)

    def gap(kind):
        return (segmentation_loss(to_logits(missed), mask, kind) - segmentation_loss(to_logits(extra), mask, kind)).item()  # fmt: skip

    assert gap("dice_ce") == pytest.approx(1 / 3 - 1 / 5, abs=1e-3)
    assert gap("tversky_ce") == pytest.approx((1 - 8 / 13.6) - (1 - 16 / 18.4), abs=1e-3)


def test_the_seg_loss_flag_lists_the_losses():
    from mritumor.cli import build_parser
    from mritumor.commands.common import _leaf_parsers
    from mritumor.losses import SEG_LOSSES

    (train,) = [p for p in _leaf_parsers(build_parser()) if p.prog.endswith("train-multitask")]
    (action,) = [a for a in train._actions if a.dest == "seg_loss"]
    assert tuple(action.choices) == SEG_LOSSES

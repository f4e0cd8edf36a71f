"""The two-step classifier's arithmetic: pooling, masking, P(g) = Σt P(t) P(g|t), the loss."""

from __future__ import annotations

import math

import pytest
import torch

from mritumor.models.backbones import build_encoder
from mritumor.models.hierarchical import (
    TwoStepClassifier,
    hierarchical_loss,
    hierarchical_probabilities,
)
from mritumor.models.pooling import GatedAttentionPooling, MaxPooling, MeanPooling


def test_end_to_end_grade_formula_on_hand_made_probabilities():
    # two types, three grades; type 0 can be G1/G2, type 1 only G3
    type_logits = torch.log(torch.tensor([[0.7, 0.3]]))
    grade_logits = torch.log(torch.tensor([[[0.6, 0.4, 1.0], [1.0, 1.0, 1.0]]]))
    allowed = torch.tensor([[True, True, False], [False, False, True]])
    grade_logits = grade_logits.masked_fill(~allowed, float("-inf"))
    probs = hierarchical_probabilities(type_logits, grade_logits)
    # by hand: P(G1) = 0.7·0.6, P(G2) = 0.7·0.4, P(G3) = 0.3·1
    torch.testing.assert_close(probs["grade_e2e"], torch.tensor([[0.42, 0.28, 0.30]]))
    torch.testing.assert_close(probs["grade_given_type"][0, 1], torch.tensor([0.0, 0.0, 1.0]))
    assert probs["grade_e2e"].sum().item() == pytest.approx(1.0)


def test_type_without_grades_leaves_mass_out_and_normalised_fixes_it():
    type_logits = torch.log(torch.tensor([[0.5, 0.5]]))
    allowed = torch.tensor([[True, True], [False, False]])  # type 1 never had a grade
    grade_logits = torch.zeros(1, 2, 2).masked_fill(~allowed, float("-inf"))
    probs = hierarchical_probabilities(type_logits, grade_logits)
    torch.testing.assert_close(probs["grade_e2e"], torch.tensor([[0.25, 0.25]]))
    torch.testing.assert_close(probs["grade_e2e_normalised"], torch.tensor([[0.5, 0.5]]))
    # type 0: both grades allowed, equal logits → ½ each; type 1 has none → 0, not NaN
    torch.testing.assert_close(probs["grade_given_type"], torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]))


def tiny_model(pooling="attention", allowed=None):
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", in_channels=1, image_size=16)
    allowed = (
        allowed
        if allowed is not None
        else torch.tensor([[True, True, False], [False, False, True]])
    )
    return TwoStepClassifier(encoder, allowed, pooling=pooling, dropout=0.0).eval()


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_padding_never_changes_the_prediction(pooling):
    model = tiny_model(pooling)
    images = torch.rand(2, 4, 1, 16, 16)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    first = model(images, mask)
    images[0, 3] = torch.rand(1, 16, 16) * 100  # garbage in padded slots
    images[1, 2:] = -50
    second = model(images, mask)
    torch.testing.assert_close(first["type_logits"], second["type_logits"])
    weights = second["slice_weights"]
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert (weights[~mask] == 0).all()


def test_impossible_grades_get_zero_probability():
    model = tiny_model()
    outputs = model(torch.rand(3, 2, 1, 16, 16), torch.ones(3, 2, dtype=torch.bool))
    assert (
        torch.isinf(outputs["grade_logits"][:, 0, 2]).all()
        and torch.isinf(outputs["grade_logits"][:, 1, :2]).all()
    )
    probs = hierarchical_probabilities(outputs["type_logits"], outputs["grade_logits"])
    assert (probs["grade_given_type"][:, 0, 2] == 0).all() and (
        probs["grade_given_type"][:, 1, :2] == 0
    ).all()
    torch.testing.assert_close(probs["grade_e2e"].sum(-1), torch.ones(3))


def test_pooling_values_against_hand_computation():
    features = torch.tensor([[[1.0, 4.0], [3.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    pooled, weights = MeanPooling()(features, mask)
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 2.0]]))
    pooled, weights = MaxPooling()(features, mask)
    torch.testing.assert_close(pooled, torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5, 0.0]]))
    attention = GatedAttentionPooling(2, hidden_dim=3)
    pooled, weights = attention(features, mask)
    h = features[0, :2]
    scores = attention.score(
        torch.tanh(attention.value(h)) * torch.sigmoid(attention.gate(h))
    ).squeeze(-1)
    expected = torch.softmax(scores, 0)
    torch.testing.assert_close(weights[0, :2], expected)
    torch.testing.assert_close(pooled[0], expected @ h)


def test_loss_uses_grade_under_true_type_and_ignores_unknown_grades():
    type_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    grade_logits = torch.tensor(
        [
            [[1.0, 0.0, -math.inf], [-math.inf, -math.inf, 0.0]],
            [[0.3, 0.1, -math.inf], [-math.inf, -math.inf, 0.0]],
        ]
    )
    outputs = {"type_logits": type_logits, "grade_logits": grade_logits}
    losses = hierarchical_loss(outputs, torch.tensor([0, 1]), torch.tensor([1, -1]))
    type_ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    grade_ce = -math.log(
        math.exp(0) / (math.exp(1) + math.exp(0))
    )  # patient 0: true type 0, grade index 1
    assert losses["type_loss"].item() == pytest.approx(type_ce, rel=1e-6)
    assert losses["grade_loss"].item() == pytest.approx(grade_ce, rel=1e-6)
    assert losses["loss"].item() == pytest.approx(type_ce + grade_ce, rel=1e-6)
    none_known = hierarchical_loss(outputs, torch.tensor([0, 1]), torch.tensor([-1, -1]))
    assert none_known["grade_loss"].item() == 0.0 and torch.isfinite(none_known["loss"])


def test_gradients_reach_backbone_and_heads():
    model = tiny_model().train()
    outputs = model(torch.rand(2, 3, 1, 16, 16), torch.ones(2, 3, dtype=torch.bool))
    hierarchical_loss(outputs, torch.tensor([0, 1]), torch.tensor([1, 2]))["loss"].backward()
    for name in (
        "backbone.body.0.weight",
        "type_head.weight",
        "grade_heads.weight",
        "pooling.score.weight",
    ):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


def test_pretrained_weights_come_only_from_the_local_cache(tmp_path, monkeypatch):
    """A fake cached file stands in for the ImageNet weights: it is loaded (never downloaded),
    averaged into a grayscale first layer, and inputs get ImageNet normalisation."""
    import torchvision

    from mritumor.errors import MritumorError
    from mritumor.models.backbones import encoder_from_config

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MritumorError, match=r"resnet18-f37072fd\.pth"):
        build_encoder("resnet18", in_channels=1, pretrained=True)
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    encoder = build_encoder("resnet18", in_channels=1, image_size=32, pretrained=True)
    conv = encoder.body[0].weight
    # a gray slice must excite the filters as the gray RGB image (x, x, x) would: sum over RGB
    torch.testing.assert_close(conv, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(encoder.body[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    assert encoder.config.input_normalisation == "imagenet"
    images = torch.rand(2, 1, 32, 32)
    normalised = (images - 0.449) / 0.226
    encoder.eval()
    expected = encoder.pool(encoder.body(normalised)).flatten(1)
    torch.testing.assert_close(encoder(images), expected, atol=1e-3, rtol=1e-3)
    rebuilt = encoder_from_config(encoder.config.to_dict())
    rebuilt.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(rebuilt.eval()(images), encoder(images))

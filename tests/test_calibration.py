"""Calibration error, reliability diagram and temperature scaling, against hand computations and
simulated models whose calibration is known by construction."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy.special import softmax

from mritumor.evaluation.calibration import (
    apply_temperature,
    calibration_errors,
    fit_temperature,
    plot_reliability_diagram,
)


def calibrated_model(n: int = 20_000, n_classes: int = 4, seed: int = 0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, n_classes))
    probs = softmax(logits, axis=1)
    labels = (rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return logits, labels


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(probs[np.arange(len(labels)), labels]).mean())


def test_ece_and_mce_on_hand_computed_example():
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # conf 0.90, right  -> bin (0.75, 1]
            [0.70, 0.20, 0.10],  # conf 0.70, wrong  -> bin [0.5, 0.75)
            [0.10, 0.65, 0.25],  # conf 0.65, right  -> bin [0.5, 0.75)
            [0.20, 0.20, 0.60],  # conf 0.60, right  -> bin [0.5, 0.75)
            [0.40, 0.35, 0.25],  # conf 0.40, wrong  -> bin [0.25, 0.5)
            [0.98, 0.01, 0.01],  # unknown label: ignored
        ]
    )
    labels = np.array([0, 1, 1, 2, 2, -1])
    # Bin [0.25, 0.5): 1 row, conf 0.40, acc 0   -> gap 0.40
    # Bin [0.5, 0.75): 3 rows, conf (0.70 + 0.65 + 0.60) / 3 = 0.65, acc 2/3 -> gap 1/60
    # Bin [0.75, 1]: 1 row, conf 0.90, acc 1    -> gap 0.10
    # ECE = 1/5 * 0.40 + 3/5 * 1/60 + 1/5 * 0.10 = 0.08 + 0.01 + 0.02 = 0.11; MCE = 0.40
    errors = calibration_errors(labels, probs, n_bins=4)
    assert errors["ece"] == pytest.approx(0.11)
    assert errors["mce"] == pytest.approx(0.40)
    assert errors["n"] == 5 and errors["n_bins"] == 4
    assert [b["count"] for b in errors["bins"]] == [0, 1, 3, 1]
    assert errors["bins"][0]["confidence"] is None and errors["bins"][0]["accuracy"] is None
    middle = errors["bins"][2]
    assert (middle["lo"], middle["hi"]) == (0.5, 0.75)
    assert middle["confidence"] == pytest.approx(0.65)
    assert middle["accuracy"] == pytest.approx(2 / 3)


def test_perfectly_calibrated_model_has_small_ece():
    logits, labels = calibrated_model()
    assert calibration_errors(labels, softmax(logits, axis=1))["ece"] < 0.03


def test_overconfident_model_has_large_ece():
    logits, labels = calibrated_model()
    assert calibration_errors(labels, softmax(5 * logits, axis=1))["ece"] > 0.15


def test_temperature_scaling_recovers_overconfidence_and_improves_calibration():
    logits, labels = calibrated_model()
    overconfident = 5 * logits
    temperature = fit_temperature(torch.from_numpy(overconfident), torch.from_numpy(labels))
    assert temperature == pytest.approx(5.0, rel=0.10)

    before = softmax(overconfident, axis=1)
    after = apply_temperature(overconfident, temperature)
    assert calibration_errors(labels, after)["ece"] < calibration_errors(labels, before)["ece"]
    assert nll(after, labels) < nll(before, labels)
    assert np.array_equal(after.argmax(axis=1), before.argmax(axis=1))


def test_temperature_of_calibrated_model_is_about_one_and_unknown_rows_are_ignored():
    logits, labels = calibrated_model(n=10_000, seed=1)
    temperature = fit_temperature(torch.from_numpy(logits), torch.from_numpy(labels))
    assert temperature == pytest.approx(1.0, rel=0.10)
    garbage = np.random.default_rng(2).normal(0, 20, size=(500, 4))
    with_unknown = fit_temperature(
        torch.from_numpy(np.r_[logits, garbage]), torch.from_numpy(np.r_[labels, [-1] * 500])
    )
    assert with_unknown == pytest.approx(temperature, rel=1e-6)


def test_fitted_temperature_minimises_nll():
    logits, labels = calibrated_model(n=3_000, n_classes=3, seed=3)
    logits_t, labels_t = torch.from_numpy(2 * logits), torch.from_numpy(labels)
    best = fit_temperature(logits_t, labels_t)
    grid = np.linspace(0.5, 5.0, 451)
    losses = [float(F.cross_entropy(logits_t / t, labels_t)) for t in grid]
    assert best == pytest.approx(grid[int(np.argmin(losses))], abs=0.011)


def test_separable_logits_leave_the_temperature_at_one_with_a_warning(caplog):
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [5.0, 1.0], [9.0, 9.5]])
    with caplog.at_level(logging.WARNING):
        temperature = fit_temperature(logits, torch.tensor([0, 1, 0, -1]))
    assert temperature == 1.0
    assert "perfectly separated" in caplog.text


def test_apply_temperature_is_a_softmax_of_scaled_logits():
    logits = np.random.default_rng(4).normal(size=(6, 3))
    np.testing.assert_allclose(apply_temperature(logits, 2.5), softmax(logits / 2.5, axis=1))
    as_tensor = apply_temperature(torch.from_numpy(logits).float(), 2.5)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor.sum(dim=1).numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_reliability_diagram_is_written_and_returns_the_errors(tmp_path):
    logits, labels = calibrated_model(n=2_000)
    probs = softmax(3 * logits, axis=1)
    path = tmp_path / "plots" / "reliability.png"
    errors = plot_reliability_diagram(labels, probs, path, "Over-confident", n_bins=10)
    assert errors == calibration_errors(labels, probs, n_bins=10)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10
    assert (image < 200).any(axis=2).mean() > 0.01


@st.composite
def labelled_probabilities(draw):
    n_classes = draw(st.integers(2, 5))
    n_rows = draw(st.integers(1, 40))
    labels = draw(arrays(np.int64, n_rows, elements=st.integers(-1, n_classes - 1)))
    weights = draw(arrays(np.int64, (n_rows, n_classes), elements=st.integers(1, 1000)))
    return labels, weights / weights.sum(axis=1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(labelled_probabilities(), st.integers(1, 20), st.randoms(use_true_random=False))
def test_ece_bounded_and_independent_of_row_order(data, n_bins, random):
    labels, probs = data
    errors = calibration_errors(labels, probs, n_bins=n_bins)
    if errors["n"] == 0:
        assert errors["ece"] is None
        return
    # by hand, one bin at a time: which bin each known row falls in ([lo, hi), the last [lo, 1]),
    # then the count-weighted mean and the largest |accuracy - confidence| of a bin
    known = labels >= 0
    confidence = probs[known].max(axis=1)
    correct = probs[known].argmax(axis=1) == labels[known]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.minimum(np.searchsorted(edges, confidence, side="right") - 1, n_bins - 1)
    gaps = {b: abs(correct[index == b].mean() - confidence[index == b].mean()) for b in set(index)}
    weights = {b: np.mean(index == b) for b in gaps}
    assert errors["n"] == known.sum()
    assert errors["ece"] == pytest.approx(sum(weights[b] * gaps[b] for b in gaps), abs=1e-12)
    assert errors["mce"] == pytest.approx(max(gaps.values()), abs=1e-12)
    assert errors["ece"] <= errors["mce"] + 1e-12
    assert sum(b["count"] for b in errors["bins"]) == errors["n"]
    order = list(range(len(labels)))
    random.shuffle(order)
    shuffled = calibration_errors(labels[order], probs[order], n_bins=n_bins)
    assert shuffled["ece"] == pytest.approx(errors["ece"], abs=1e-12)

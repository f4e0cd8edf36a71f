"""Conformal sets, OOD scores and selective prediction against hand computations and
independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis

from mritumor.evaluation.conformal import (
    class_scores,
    conformal_threshold,
    prediction_sets,
    set_metrics,
)
from mritumor.evaluation.ood import OODDetector, auroc, energy_score
from mritumor.evaluation.selective import accuracy_at, risk_coverage

PROBS = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6], [0.3, 0.3, 0.4]])


def test_lac_and_aps_scores_by_hand():
    np.testing.assert_allclose(class_scores(PROBS, "lac"), 1 - PROBS)
    # aps: mass of the classes ranked at or above each class
    expected = np.array(
        [[0.7, 0.9, 1.0], [0.5, 0.9, 1.0], [1.0, 0.9, 0.6], [0.7, 1.0, 0.4]]
    )  # the last row's tie (0.3, 0.3) is broken by class order
    np.testing.assert_allclose(class_scores(PROBS, "aps"), expected)


def test_threshold_is_the_finite_sample_order_statistic():
    labels = [0, 1, 2, 0]
    # lac scores of the true classes: 0.3, 0.6, 0.4, 0.7; n = 4
    # coverage 0.6: rank ceil(5 * 0.6) = 3 → third smallest = 0.6
    assert conformal_threshold(PROBS, labels, 0.6, "lac") == pytest.approx(0.6)
    # coverage 0.9: rank ceil(4.5) = 5 > n → every class
    assert conformal_threshold(PROBS, labels, 0.9, "lac") == math.inf
    sets = prediction_sets(PROBS, 0.6, "lac")
    # classes with p ≥ 0.4, plus the arg-max
    assert sets.tolist() == [
        [True, False, False],
        [True, True, False],
        [False, False, True],
        [False, False, True],
    ]
    metrics = set_metrics(sets, labels, ["a", "b", "c"])
    assert metrics["coverage"] == pytest.approx(3 / 4)  # unit 3 (true a) gets {c}
    assert metrics["mean_set_size"] == pytest.approx(5 / 4)
    assert metrics["per_class"]["a"] == {"n": 2, "coverage": 0.5, "mean_set_size": 1.0}


def simulated(rng, n, k=3):
    """Probabilities from a Dirichlet and labels drawn from them (a calibrated model)."""
    probs = rng.dirichlet(np.full(k, 0.6), size=n)
    labels = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1)
    return probs, labels


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_coverage_over_many_calibrations_is_at_least_nominal(method):
    rng = np.random.default_rng(0)
    coverages = []
    for _ in range(400):
        cal_probs, cal_labels = simulated(rng, 10)
        test_probs, test_labels = simulated(rng, 200)
        threshold = conformal_threshold(cal_probs, cal_labels, 0.9, method)
        sets = prediction_sets(test_probs, threshold, method)
        coverages.append(sets[np.arange(200), test_labels].mean())
    mean, se = np.mean(coverages), np.std(coverages) / np.sqrt(len(coverages))
    assert mean >= 0.9 - 3 * se
    # the plain quantile without the (n + 1) correction under-covers: the test can tell
    broken = []
    rng = np.random.default_rng(0)
    for _ in range(400):
        cal_probs, cal_labels = simulated(rng, 10)
        test_probs, test_labels = simulated(rng, 200)
        scores = class_scores(cal_probs, method)[np.arange(10), cal_labels]
        sets = prediction_sets(test_probs, float(np.quantile(scores, 0.9)), method)
        broken.append(sets[np.arange(200), test_labels].mean())
    assert np.mean(broken) < 0.9 - 3 * se


def test_mahalanobis_matches_scipy_and_threshold_keeps_the_share():
    rng = np.random.default_rng(1)
    features = np.r_[rng.normal(0, 1, (200, 4)), rng.normal(3, 1, (200, 4))]
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    detector = OODDetector.fit(features, labels)
    probe = rng.normal(1, 2, (5, 4))
    expected = [
        min(mahalanobis(x, detector.means[0][k], detector.precision[0]) ** 2 for k in range(2))
        for x in probe
    ]
    np.testing.assert_allclose(detector.score(probe), expected)
    val = detector.score(rng.normal(0, 1, (100, 4)))
    threshold = detector.calibrate(val, keep=0.95)
    assert (val <= threshold).mean() == pytest.approx(0.95)
    far = detector.score(rng.normal(8, 1, (50, 4)))
    assert auroc(val, far) > 0.99
    restored = OODDetector.from_state(detector.to_state())
    np.testing.assert_allclose(restored.score(probe), expected)
    assert restored.threshold == threshold


def test_blocks_sum_their_standardised_distances():
    """Two feature blocks: each block's distance equals a one-block detector's on its columns,
    standardised by the validation mean and sd of that block's distances, and summed."""
    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(150, int), np.ones(150, int)]
    features = rng.normal(0, 1, (300, 7)) + labels[:, None] * np.r_[2.0 * np.ones(3), np.zeros(4)]
    val, probe = rng.normal(0, 1, (80, 7)), rng.normal(0.5, 2, (6, 7))
    detector = OODDetector.fit(features, labels, blocks=[3, 4], feature_name="ood_features")
    detector.standardise(val)
    expected = 0.0
    for columns in (slice(0, 3), slice(3, 7)):
        alone = OODDetector.fit(features[:, columns], labels)
        reference = alone.score(val[:, columns])
        expected = expected + (alone.score(probe[:, columns]) - reference.mean()) / reference.std()
    np.testing.assert_allclose(detector.score(probe), expected, rtol=1e-10)
    restored = OODDetector.from_state(detector.to_state())
    assert restored.features == "ood_features"
    np.testing.assert_allclose(restored.score(probe), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="add up"):
        OODDetector.fit(features, labels, blocks=[3, 3])
    with pytest.raises(ValueError, match="scores 7 values of 'ood_features'"):
        detector.score(probe[:, :6])  # another network's features: said, not a zip error


def test_a_block_state_survives_the_npz_of_the_onnx_cache(tmp_path):
    """The ONNX cache stores the state as .npz (no pickle): lists of per-block arrays come back
    as lists in order, the feature name as a string, and the scores are unchanged."""
    from mritumor.evaluation.state import load_state, save_state

    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(60, int), np.ones(60, int)]
    features = rng.normal(0, 1, (120, 12)) + labels[:, None]
    detector = OODDetector.fit(features, labels, blocks=[2, 3, 3, 4], feature_name="ood_features")
    detector.standardise(rng.normal(0, 1, (40, 12)))
    detector.calibrate(detector.score(features), 0.9)
    path = save_state({"ood": detector.to_state(), "version": 1}, tmp_path / "state.npz")
    loaded = load_state(path)
    assert loaded["version"] == 1 and isinstance(loaded["ood"]["means"], list)
    restored = OODDetector.from_state(loaded["ood"])
    assert restored.features == "ood_features" and restored.threshold == detector.threshold
    probe = rng.normal(0, 2, (5, 12))
    np.testing.assert_allclose(restored.score(probe), detector.score(probe), rtol=1e-12)


def test_a_state_written_before_blocks_still_scores():
    """The state of the one-block detector as earlier versions stored it (tensors, not lists,
    no feature name) scores its class embeddings as before."""
    import torch

    rng = np.random.default_rng(3)
    features, labels = rng.normal(0, 1, (100, 3)), np.r_[np.zeros(50, int), np.ones(50, int)]
    detector = OODDetector.fit(features, labels)
    old = {
        "method": "mahalanobis", "threshold": 4.0, "keep": 0.95,
        "means": torch.as_tensor(detector.means[0]), "precision": torch.as_tensor(detector.precision[0]),
    }  # fmt: skip
    restored = OODDetector.from_state(old)
    assert restored.features == "class_embedding" and restored.threshold == 4.0
    np.testing.assert_allclose(restored.score(features[:5]), detector.score(features[:5]))


def test_energy_is_minus_logsumexp():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -5.0]])
    expected = [
        -np.log(np.exp(logits[0]).sum()),
        -1000.0 - np.log(1 + np.exp(-1000) + np.exp(-1005)),
    ]
    np.testing.assert_allclose(energy_score(logits), expected)


def test_risk_coverage_by_hand():
    confidence = [0.9, 0.8, 0.7, 0.6]
    correct = [True, False, True, True]
    curve = risk_coverage(confidence, correct)
    assert curve["risk"] == pytest.approx([0, 1 / 2, 1 / 3, 1 / 4])
    assert curve["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert accuracy_at(confidence, correct, 0.5) == pytest.approx(0.5)
    assert accuracy_at(confidence, correct, 0.75) == pytest.approx(2 / 3)


def test_fitted_state_round_trips_a_safe_checkpoint_and_keeps_its_promises(tmp_path):
    from mritumor.checkpoints import load_checkpoint, save_checkpoint
    from mritumor.evaluation.uncertainty import (
        apply_uncertainty,
        fit_uncertainty,
        set_threshold,
        softmax,
    )

    rng = np.random.default_rng(3)
    n, d = 300, 6
    train_labels = rng.integers(0, 3, n)
    centres = rng.normal(0, 3, (3, d))
    train = centres[train_labels] + rng.normal(0, 1, (n, d))
    val_labels = rng.integers(0, 3, 120)
    val = centres[val_labels] + rng.normal(0, 1, (120, d))
    val_probs = softmax(-(((val[:, None, :] - centres[None]) ** 2).sum(-1)) / 4)
    groups = [f"p{i // 4}" for i in range(120)]  # 30 patients of 4 slices
    state = fit_uncertainty(train, train_labels, val, val_probs, val_labels, groups)
    save_checkpoint({"uncertainty": state}, tmp_path / "u.pt")
    state = load_checkpoint(tmp_path / "u.pt")["uncertainty"]
    applied = apply_uncertainty(state, val, val_probs)
    assert applied["in_distribution"].mean() == pytest.approx(0.95, abs=1 / 120)
    covered = applied["sets"][np.arange(120), val_labels].mean()
    assert covered >= 0.9  # on its own calibration units the quantile covers at least nominal
    far = apply_uncertainty(state, rng.normal(20, 1, (10, d)), val_probs[:10])
    assert not far["in_distribution"].any()
    # patient level: thresholds of patient means/medians, computed here by hand
    scores = applied["ood_score"].reshape(30, 4)
    medians = np.sort(np.median(scores, axis=1))
    assert state["patient"]["ood_threshold"] == pytest.approx(medians[int(np.ceil(0.95 * 30)) - 1])
    patient_probs = val_probs.reshape(30, 4, 3).mean(axis=1)
    patient_labels = val_labels.reshape(30, 4).max(axis=1)
    true_scores = np.sort(1 - patient_probs[np.arange(30), patient_labels])
    expected = true_scores[int(np.ceil(31 * 0.9)) - 1]
    assert set_threshold(state, level="patient") == pytest.approx(expected)
    # another coverage from the same stored scores: rank ceil(31 * 0.5) = 16
    assert set_threshold(state, 0.5, level="patient") == pytest.approx(true_scores[15])

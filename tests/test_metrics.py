"""Classification metrics, bootstrap intervals, CV summaries and ROC/PR/confusion plots, checked
against independent scikit-learn / NumPy computations."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mritumor.evaluation.bootstrap import bootstrap_intervals
from mritumor.evaluation.curves import plot_confusion_matrix, plot_pr_ovr, plot_roc_ovr
from mritumor.evaluation.metrics import (
    _fast_interval_metrics,
    _interval_metrics,
    classification_metrics,
    classification_report_with_ci,
    cv_summary,
    flatten_for_csv,
)

CLASSES = ["glioma", "meningioma", "pituitary", "no_tumour"]


def informative_predictions(n: int, n_classes: int, seed: int, unknown_every: int = 0):
    """Labels and softmax probabilities that favour the true class (AUC well above 0.5)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if unknown_every:
        y[::unknown_every] = -1
    return y, probs


def assert_same_metrics(a, b, rel=1e-9):
    """Recursive equality of metric dicts, floats compared with a relative tolerance."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_metrics(a[key], b[key], rel)
    elif isinstance(a, list):
        for x, y in zip(a, b, strict=True):
            assert_same_metrics(x, y, rel)
    elif isinstance(a, float):
        assert b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), (a, b)
    else:
        assert a == b


# --- classification_metrics -------------------------------------------------------------------


def test_classification_metrics_match_sklearn():
    y, probs = informative_predictions(300, 4, seed=1, unknown_every=17)
    metrics = classification_metrics(y, probs, CLASSES)

    known = y != -1
    yk, pk = y[known], probs[known]
    predicted = pk.argmax(axis=1)
    assert metrics["n"] == known.sum() < len(y)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(yk, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(yk, predicted, average="macro"))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yk, predicted))
    assert metrics["confusion_matrix"] == confusion_matrix(yk, predicted).tolist()
    for k, name in enumerate(CLASSES):
        scores, is_positive, said_positive = metrics["per_class"][name], yk == k, predicted == k
        assert scores["auc"] == pytest.approx(roc_auc_score(is_positive, pk[:, k]))
        assert scores["average_precision"] == pytest.approx(
            average_precision_score(is_positive, pk[:, k])
        )
        assert scores["precision"] == pytest.approx(precision_score(is_positive, said_positive))
        assert scores["recall"] == pytest.approx(recall_score(is_positive, said_positive))
        assert scores["f1"] == pytest.approx(f1_score(is_positive, said_positive))
        assert scores["support"] == is_positive.sum()
    assert metrics["macro_auc"] == pytest.approx(
        roc_auc_score(yk, pk, multi_class="ovr", average="macro")
    )
    assert metrics["macro_average_precision"] == pytest.approx(
        average_precision_score(np.eye(4)[yk], pk, average="macro")
    )
    json.dumps(metrics)  # plain Python types only


def test_unknown_rows_are_ignored():
    y, probs = informative_predictions(200, 4, seed=2)
    noise = np.random.default_rng(3).dirichlet(np.ones(4), 50)
    with_unknown = classification_metrics(np.r_[y, np.full(50, -1)], np.r_[probs, noise], CLASSES)
    assert with_unknown == classification_metrics(y, probs, CLASSES)


def test_absent_class_gives_none_without_warnings():
    y, probs = informative_predictions(200, 4, seed=4)
    y[y == 3] = 0  # no 'no_tumour' patient, but the model still predicts it sometimes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(y, probs, CLASSES)
        report = classification_report_with_ci(y, probs, CLASSES, n_boot=50)
    absent = metrics["per_class"]["no_tumour"]
    assert absent["auc"] is None and absent["average_precision"] is None
    assert absent["recall"] is None and absent["support"] == 0
    assert absent["precision"] == 0.0  # predicted, never right
    present_aucs = [roc_auc_score(y == k, probs[:, k]) for k in range(3)]
    assert metrics["macro_auc"] == pytest.approx(np.mean(present_aucs))
    with warnings.catch_warnings():  # the reference warns: "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore")
        expected_balanced_accuracy = balanced_accuracy_score(y, probs.argmax(axis=1))
    assert metrics["balanced_accuracy"] == pytest.approx(expected_balanced_accuracy)
    assert report["intervals"]["auc/no_tumour"] == {
        "value": None,
        "low": None,
        "high": None,
        "n_boot_valid": 0,
    }


def test_class_present_in_every_row_has_no_auc():
    _, probs = informative_predictions(40, 3, seed=5)
    metrics = classification_metrics(np.zeros(40, int), probs, CLASSES[:3])
    assert all(metrics["per_class"][name]["auc"] is None for name in CLASSES[:3])
    assert metrics["macro_auc"] is None and metrics["macro_average_precision"] is None
    assert metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == 0))


def test_binary_case():
    y, probs = informative_predictions(150, 2, seed=6)
    metrics = classification_metrics(y, probs, ["benign", "malignant"])
    auc = roc_auc_score(y, probs[:, 1])
    assert metrics["per_class"]["malignant"]["auc"] == pytest.approx(auc)
    assert metrics["per_class"]["benign"]["auc"] == pytest.approx(auc)  # p0 = 1 - p1
    assert metrics["macro_auc"] == pytest.approx(auc)
    assert metrics["per_class"]["malignant"]["average_precision"] == pytest.approx(
        average_precision_score(y, probs[:, 1])
    )
    assert metrics["per_class"]["benign"]["average_precision"] == pytest.approx(
        average_precision_score(y == 0, probs[:, 0])
    )
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))


def test_all_unknown_gives_empty_metrics():
    metrics = classification_metrics(np.full(5, -1), np.full((5, 2), 0.5), ["a", "b"])
    assert metrics["n"] == 0 and metrics["accuracy"] is None
    assert metrics["confusion_matrix"] == [[0, 0], [0, 0]]


@pytest.mark.parametrize(
    ("labels", "probs"),
    [
        ([0, 1], np.full((2, 3), 1 / 3)),  # 3 columns for 4 classes
        ([0, 4], np.full((2, 4), 0.25)),  # label out of range
        ([0, 1], np.array([[np.nan, 1, 0, 0], [0.25] * 4])),
    ],
)
def test_invalid_input_is_rejected(labels, probs):
    with pytest.raises(ValueError):
        classification_metrics(np.array(labels), probs, CLASSES)


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_interval_covers_true_mean_about_95_percent():
    true_p, n_items, repetitions = 0.7, 200, 200
    rng = np.random.default_rng(123)
    covered = 0
    for repetition in range(repetitions):
        correct = rng.random(n_items) < true_p
        interval = bootstrap_intervals(
            lambda idx, correct=correct: {"accuracy": correct[idx].mean()},
            n_items,
            n_boot=200,
            seed=repetition,
        )["accuracy"]
        covered += interval["low"] <= true_p <= interval["high"]
    assert 0.88 <= covered / repetitions <= 0.99


def test_bootstrap_matches_manual_percentile_resampling():
    values = np.random.default_rng(7).normal(size=60)
    intervals = bootstrap_intervals(
        lambda idx: {"mean": values[idx].mean(), "max": values[idx].max()}, 60, n_boot=300, seed=9
    )
    rng = np.random.default_rng(9)
    resamples = [rng.integers(0, 60, 60) for _ in range(300)]
    means = [values[idx].mean() for idx in resamples]
    assert intervals["mean"]["value"] == pytest.approx(values.mean())
    assert [intervals["mean"]["low"], intervals["mean"]["high"]] == pytest.approx(
        np.percentile(means, [2.5, 97.5])
    )
    assert intervals["max"]["high"] == pytest.approx(values.max())
    assert intervals["mean"]["n_boot_valid"] == 300


def test_bootstrap_is_deterministic_and_contains_point_estimate():
    correct = np.random.default_rng(8).random(150) < 0.6

    def metric_fn(idx):
        return {"accuracy": correct[idx].mean()}

    first = bootstrap_intervals(metric_fn, 150, n_boot=200, seed=3)
    assert first == bootstrap_intervals(metric_fn, 150, n_boot=200, seed=3)
    assert first != bootstrap_intervals(metric_fn, 150, n_boot=200, seed=4)
    accuracy = first["accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    assert accuracy["value"] == pytest.approx(correct.mean())


def test_bootstrap_leaves_out_undefined_resamples():
    def metric_fn(idx):  # undefined whenever item 0 is drawn, as a missing rare class would be
        return {"x": None if 0 in idx else float(len(np.unique(idx))), "never": None}

    intervals = bootstrap_intervals(metric_fn, 30, n_boot=200, seed=0)
    assert intervals["x"]["value"] is None
    assert 0 < intervals["x"]["n_boot_valid"] < 200  # P(item 0 missing) = (29/30)^30 ≈ 0.36
    assert intervals["x"]["low"] <= intervals["x"]["high"]
    assert intervals["never"] == {"value": None, "low": None, "high": None, "n_boot_valid": 0}


def test_report_with_ci_intervals_wrap_the_metrics():
    y, probs = informative_predictions(120, 4, seed=10, unknown_every=11)
    report = classification_report_with_ci(y, probs, CLASSES, n_boot=200, seed=0)
    assert report["metrics"] == classification_metrics(y, probs, CLASSES)
    expected = {"accuracy", "macro_f1", "balanced_accuracy", "macro_auc", "macro_average_precision"}
    expected |= {f"{kind}/{name}" for kind in ("auc", "average_precision") for name in CLASSES}
    assert set(report["intervals"]) == expected
    for name, interval in report["intervals"].items():
        assert interval["low"] <= interval["value"] <= interval["high"], name
        assert interval["high"] - interval["low"] > 0.01, name  # 110 patients: not degenerate
        assert interval["n_boot_valid"] == 200
    assert (
        report["intervals"]["auc/glioma"]["value"]
        == report["metrics"]["per_class"]["glioma"]["auc"]
    )
    json.dumps(report)


def labelled_scores(min_rows: int = 1, max_rows: int = 30, allow_unknown: bool = True):
    """Labels (maybe -1, maybe missing classes) and probabilities on a coarse grid, so ties are
    frequent and strictly monotone maps cannot merge distinct scores by rounding."""

    @st.composite
    def build(draw):
        n_classes = draw(st.integers(2, 4))
        n_rows = draw(st.integers(min_rows, max_rows))
        lowest = -1 if allow_unknown else 0
        labels = draw(arrays(np.int64, n_rows, elements=st.integers(lowest, n_classes - 1)))
        weights = draw(arrays(np.int64, (n_rows, n_classes), elements=st.integers(1, 9)))
        probs = weights / weights.sum(axis=1, keepdims=True)
        return labels, probs, [f"class{k}" for k in range(n_classes)]

    return build()


@settings(max_examples=50, deadline=None)
@given(labelled_scores(allow_unknown=False))
def test_fast_bootstrap_path_equals_sklearn(data):
    """The bootstrap's NumPy re-implementation must give exactly the sklearn numbers."""
    labels, probs, names = data
    assert_same_metrics(
        _fast_interval_metrics(labels, probs, names),
        _interval_metrics(classification_metrics(labels, probs, names)),
    )


@settings(max_examples=30, deadline=None)
@given(labelled_scores())
def test_scores_lie_in_unit_interval(data):
    metrics = classification_metrics(*data)
    values = [metrics["accuracy"], metrics["macro_f1"], metrics["balanced_accuracy"]]
    for scores in metrics["per_class"].values():
        values += [scores[key] for key in ("auc", "average_precision", "precision", "recall", "f1")]
    assert all(0.0 <= v <= 1.0 for v in values if v is not None)


@settings(max_examples=30, deadline=None)
@given(labelled_scores(), st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_row_order(data, random):
    labels, probs, names = data
    order = list(range(len(labels)))
    random.shuffle(order)
    assert_same_metrics(
        classification_metrics(labels[order], probs[order], names),
        classification_metrics(labels, probs, names),
    )


@settings(max_examples=30, deadline=None)
@given(labelled_scores(), st.data())
def test_auc_and_ap_invariant_to_monotone_rescoring_of_a_class(data, draw):
    """Raise column k to a power (strictly monotone on (0, 1)) and rescale the other columns so
    rows still sum to 1: class k's ranking, hence its AUC and AP, must not change."""
    labels, probs, names = data
    k = draw.draw(st.integers(0, len(names) - 1))
    power = draw.draw(st.sampled_from([0.3, 0.5, 2.0, 3.0]))
    new_column = probs[:, k] ** power
    rescored = probs * ((1 - new_column) / (1 - probs[:, k]))[:, None]
    rescored[:, k] = new_column
    before = classification_metrics(labels, probs, names)["per_class"][names[k]]
    after = classification_metrics(labels, rescored, names)["per_class"][names[k]]
    for key in ("auc", "average_precision"):
        assert (before[key] is None and after[key] is None) or math.isclose(
            before[key], after[key], rel_tol=1e-12
        )


# --- CV summary and flattening ----------------------------------------------------------------


def test_cv_summary_mean_and_sd_match_numpy():
    folds = [informative_predictions(80, 4, seed=20 + fold) for fold in range(4)]
    reports = [classification_report_with_ci(y, p, CLASSES, n_boot=20) for y, p in folds]
    reports[1] = reports[1]["metrics"]  # a bare classification_metrics dict is accepted too
    summary = cv_summary(reports)
    metrics = [classification_metrics(y, p, CLASSES) for y, p in folds]

    def column(get):
        return np.array([get(m) for m in metrics], dtype=float)

    for key, get in {
        "accuracy": lambda m: m["accuracy"],
        "per_class/pituitary/auc": lambda m: m["per_class"]["pituitary"]["auc"],
        "confusion_matrix/2/1": lambda m: m["confusion_matrix"][2][1],
    }.items():
        assert summary[key]["mean"] == pytest.approx(column(get).mean())
        assert summary[key]["sd"] == pytest.approx(column(get).std(ddof=1))
        assert summary[key]["n_folds"] == 4


def test_cv_summary_skips_undefined_folds():
    summary = cv_summary([{"auc": 0.8, "name": "x"}, {"auc": None}, {"auc": 0.6, "ok": True}])
    assert summary == {
        "auc": {"mean": pytest.approx(0.7), "sd": pytest.approx(0.1414213), "n_folds": 2}
    }
    assert cv_summary([{"auc": 0.8}])["auc"]["sd"] is None


def test_flatten_for_csv_joins_keys_and_indices():
    flat = flatten_for_csv({"metrics": {"per_class": {"a": {"auc": 0.9}}, "cm": [[1, 2], [3, 4]]}})
    assert flat == {
        "metrics/per_class/a/auc": 0.9,
        "metrics/cm/0/0": 1,
        "metrics/cm/0/1": 2,
        "metrics/cm/1/0": 3,
        "metrics/cm/1/1": 4,
    }


# --- curves -----------------------------------------------------------------------------------


def assert_png_has_content(path):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 100
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 10  # lines, text and anti-aliasing, not a blank canvas
    assert (image < 200).any(axis=2).mean() > 0.01


def test_roc_and_pr_plots_match_sklearn_and_skip_absent_class(tmp_path):
    y, probs = informative_predictions(800, 4, seed=30, unknown_every=13)
    y[y == 2] = 0  # 'pituitary' absent
    known = y != -1
    yk, pk = y[known], probs[known]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roc = plot_roc_ovr(y, probs, CLASSES, tmp_path / "roc.png", "ROC")
        pr = plot_pr_ovr(y, probs, CLASSES, tmp_path / "sub" / "pr.png", "PR")
    for path in (tmp_path / "roc.png", tmp_path / "sub" / "pr.png"):
        assert_png_has_content(path)
    for k, name in enumerate(CLASSES):
        if name == "pituitary":
            continue
        curve = roc["per_class"][name]
        assert curve["auc"] == pytest.approx(roc_auc_score(yk == k, pk[:, k]))
        assert 2 <= len(curve["fpr"]) == len(curve["tpr"]) <= 200
        assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == curve["tpr"][-1] == 1.0
        assert np.all(np.diff(curve["fpr"]) >= 0)
        assert pr["per_class"][name]["average_precision"] == pytest.approx(
            average_precision_score(yk == k, pk[:, k])
        )
        assert len(pr["per_class"][name]["recall"]) <= 200
    assert roc["per_class"]["pituitary"]["auc"] is None
    assert roc["per_class"]["pituitary"]["note"] == "absent from y_true"
    assert pr["per_class"]["pituitary"]["average_precision"] is None
    assert roc["micro"]["auc"] == pytest.approx(roc_auc_score(np.eye(4)[yk], pk, average="micro"))
    assert pr["micro"]["average_precision"] == pytest.approx(
        average_precision_score(np.eye(4)[yk], pk, average="micro")
    )
    assert len(json.dumps(roc)) < 100_000


def test_binary_roc_curve(tmp_path):
    y, probs = informative_predictions(100, 2, seed=31)
    roc = plot_roc_ovr(y, probs, ["benign", "malignant"], tmp_path / "roc.png", "binary")
    assert roc["per_class"]["malignant"]["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))


@pytest.mark.parametrize("normalise", [True, False])
def test_confusion_matrix_plot_with_empty_row(tmp_path, normalise):
    matrix = [[10, 2, 0], [0, 0, 0], [3, 1, 7]]
    path = tmp_path / f"cm_{normalise}.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_confusion_matrix(matrix, CLASSES[:3], path, "Confusion", normalise=normalise)
    assert_png_has_content(path)
    with pytest.raises(ValueError):
        plot_confusion_matrix(matrix, CLASSES, path, "wrong size")

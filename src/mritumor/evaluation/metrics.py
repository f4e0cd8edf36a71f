"""Classification metrics with patient-level bootstrap intervals and cross-validation summaries.

Every function takes one row per *patient* (aggregate slice predictions to patients first), or
slice rows with their patients as ``groups``, so the bootstrap resamples patients, the unit a
paper's confidence interval has to be about. The bootstrap itself is
``mritumor.evaluation.bootstrap``, the one ``mritumor compare`` uses too.
Rows whose label is ``-1`` (unknown, e.g. a grade the source does not give) are ignored.

Outputs are plain dicts of Python floats/ints/lists with ``None`` for undefined values, so they
can be written to JSON as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from mritumor.evaluation.bootstrap import bootstrap_intervals, by_group, rank_auc

UNKNOWN_LABEL = -1
CI_HEADLINE_METRICS = (
    "accuracy",
    "macro_f1",
    "balanced_accuracy",
    "macro_auc",
    "macro_average_precision",
)


def known_rows(
    y_true: np.ndarray, probs: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels, probs)`` without the rows whose label is unknown (-1)."""
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y_true), n_classes):
        raise ValueError(
            f"probs must have shape (N, K) = ({len(y_true)}, {n_classes}), got {probs.shape}"
        )
    if not np.isfinite(probs).all():
        raise ValueError("probs contain NaN or inf (did training diverge?)")
    if ((y_true < UNKNOWN_LABEL) | (y_true >= n_classes)).any():
        raise ValueError(f"labels must lie in [-1, {n_classes - 1}]")
    keep = y_true != UNKNOWN_LABEL
    return y_true[keep], probs[keep]


def has_both_outcomes(is_positive: np.ndarray) -> bool:
    """One-vs-rest AUC/AP need positives *and* negatives; otherwise they are undefined."""
    return bool(is_positive.any() and not is_positive.all())


def one_vs_rest_ranking(y: np.ndarray, probs: np.ndarray, k: int) -> tuple[float | None, ...]:
    """(AUC, average precision) of class ``k`` against the rest, ``None`` when undefined.

    Checking for both outcomes ourselves (rather than catching sklearn's warning / error) keeps
    bootstrap loops silent: a resample without a rare class is expected, not alarming.
    """
    is_positive = y == k
    if not has_both_outcomes(is_positive):
        return None, None
    scores = probs[:, k]
    return float(roc_auc_score(is_positive, scores)), float(
        average_precision_score(is_positive, scores)
    )


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _mean_or_none(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _empty_metrics(class_names: Sequence[str]) -> dict:
    """All-unknown input: nothing to score, but callers still get every key."""
    k = len(class_names)
    undefined = dict.fromkeys(("auc", "average_precision", "precision", "recall", "f1"))
    return {
        "n": 0,
        "accuracy": None,
        "macro_f1": None,
        "balanced_accuracy": None,
        "confusion_matrix": [[0] * k for _ in range(k)],
        "per_class": {name: {**undefined, "support": 0} for name in class_names},
        "macro_auc": None,
        "macro_average_precision": None,
    }


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Accuracy, macro F1, balanced accuracy, confusion matrix and one-vs-rest AUC/AP per class.

    Args:
        y_true: int labels (N,), ``-1`` = unknown (row ignored).
        probs: (N, K) class probabilities; the prediction is the arg-max.
        class_names: K names, in column order.

    Returns:
        ``{'n', 'accuracy', 'macro_f1', 'balanced_accuracy', 'confusion_matrix' (K×K list,
        rows = true class), 'per_class': {name: {'auc', 'average_precision', 'precision',
        'recall', 'f1', 'support'}}, 'macro_auc', 'macro_average_precision'}``.

    Conventions (all ``None`` rather than a warning, so bootstrap loops stay quiet):
        * per-class AUC/AP are ``None`` for a class absent from ``y_true`` or present in every
          row; ``macro_auc``/``macro_average_precision`` average the classes where they are
          defined (equal to sklearn's ``average='macro'`` when every class is present, where
          sklearn would raise otherwise).
        * per-class precision is ``None`` for a class never predicted, recall for a class
          with no support, F1 for a class neither present nor predicted.
        * ``macro_f1`` averages the classes present in ``y_true`` or the predictions (sklearn's
          default label set); ``balanced_accuracy`` averages recall over the classes present in
          ``y_true`` (sklearn's ``balanced_accuracy_score``).
    """
    class_names = list(class_names)
    n_classes = len(class_names)
    y, probs = known_rows(y_true, probs, n_classes)
    if len(y) == 0:
        return _empty_metrics(class_names)
    labels = np.arange(n_classes)
    predicted = probs.argmax(axis=1)
    # One call gives every per-class count-based score. NaN marks 0/0 and, unlike "warn",
    # raises no warning; dropping the NaN entries reproduces sklearn's macro-F1 label set
    # (F1 is 0/0 exactly when a class is neither true nor predicted) and its balanced accuracy
    # (recall is 0/0 exactly when a class has no support).
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=np.nan
    )
    ranking = [one_vs_rest_ranking(y, probs, k) for k in labels]
    per_class = {
        name: {
            "auc": ranking[k][0],
            "average_precision": ranking[k][1],
            "precision": _none_if_nan(precision[k]),
            "recall": _none_if_nan(recall[k]),
            "f1": _none_if_nan(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(class_names)
    }
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(np.nanmean(f1)),
        "balanced_accuracy": float(np.nanmean(recall)),
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
        "per_class": per_class,
        "macro_auc": _mean_or_none([auc for auc, _ in ranking]),
        "macro_average_precision": _mean_or_none([ap for _, ap in ranking]),
    }


def _interval_metrics(metrics: dict) -> dict:
    """The flat subset of ``classification_metrics`` that gets a confidence interval."""
    flat = {name: metrics[name] for name in CI_HEADLINE_METRICS}
    for class_name, scores in metrics["per_class"].items():
        flat[f"auc/{class_name}"] = scores["auc"]
        flat[f"average_precision/{class_name}"] = scores["average_precision"]
    return flat


# --- Fast path for the bootstrap ------------------------------------------------------------
# ``classification_metrics`` (sklearn) is the reference. Calling it 1000 times costs ~25 ms per
# resample (sklearn 1.9 validates its inputs on every call: ~4 ms per ``roc_auc_score``), i.e.
# ~30 s per report; MONAI's ``compute_roc_auc``/``compute_average_precision`` loop in Python
# and are slower still. The few formulas below reproduce exactly the numbers
# ``_interval_metrics(classification_metrics(...))`` gives, in well under a millisecond, and
# tests/test_metrics.py checks them against sklearn, ties and missing classes included.


def _ratio_or_nan(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with NaN for 0/0 (sklearn's ``zero_division=np.nan``)."""
    out = np.full(np.shape(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _step_average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """sum_t (R_t - R_{t-1}) P_t over distinct score thresholds, as sklearn computes AP."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores, hits = scores[order], is_positive[order]
    true_pos = np.cumsum(hits)
    false_pos = np.cumsum(~hits)
    last_of_each_score = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    true_pos, false_pos = true_pos[last_of_each_score], false_pos[last_of_each_score]
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _fast_interval_metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Same dict as ``_interval_metrics(classification_metrics(y, probs, class_names))`` for
    known labels ``y`` (no -1), computed with plain NumPy/SciPy."""
    n_classes = len(class_names)
    predicted = probs.argmax(axis=1)
    confusion = np.bincount(y * n_classes + predicted, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )
    true_pos = np.diag(confusion).astype(np.float64)
    support, n_predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    recall = _ratio_or_nan(true_pos, support)
    f1 = _ratio_or_nan(2 * true_pos, support + n_predicted)
    ranks = rankdata(probs, axis=0)
    aucs, aps = [], []
    for k in range(n_classes):
        is_positive = y == k
        defined = has_both_outcomes(is_positive)
        aucs.append(rank_auc(is_positive, None, ranks=ranks[:, k]) if defined else None)
        aps.append(_step_average_precision(is_positive, probs[:, k]) if defined else None)
    flat = {
        "accuracy": float(true_pos.sum() / len(y)),
        # With at least one row some class is present, so neither mean is over all-NaN.
        "macro_f1": float(np.nanmean(f1)),
        "balanced_accuracy": float(np.nanmean(recall)),
        "macro_auc": _mean_or_none(aucs),
        "macro_average_precision": _mean_or_none(aps),
    }
    for k, class_name in enumerate(class_names):
        flat[f"auc/{class_name}"] = aucs[k]
        flat[f"average_precision/{class_name}"] = aps[k]
    return flat


def classification_report_with_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict:
    """``classification_metrics`` plus 95 % percentile-bootstrap intervals over patients (rows).

    With ``groups`` (one patient id per row, e.g. for slice-level predictions) the bootstrap
    resamples groups, each with all its rows: the interval is still about patients.

    Returns ``{'metrics': classification_metrics(...), 'intervals': {name: {'value', 'low',
    'high', 'n_boot_valid'}}}`` for the names ``accuracy``, ``macro_f1``, ``balanced_accuracy``,
    ``macro_auc``, ``macro_average_precision``, ``auc/<class>`` and
    ``average_precision/<class>``. Unknown-label rows are dropped *before* resampling, so
    every resample has as many labelled patients as the data.
    """
    class_names = list(class_names)
    y, probs = known_rows(y_true, probs, len(class_names))
    metrics = classification_metrics(y, probs, class_names)
    if len(y) == 0:
        return {"metrics": metrics, "intervals": {}}

    def metric_fn(indices: np.ndarray) -> dict:
        return _fast_interval_metrics(y[indices], probs[indices], class_names)

    n_items = len(y)
    if groups is not None:
        known = np.asarray(y_true).reshape(-1) != UNKNOWN_LABEL
        metric_fn, n_items = by_group(metric_fn, np.asarray(groups, dtype=object)[known])
    intervals = bootstrap_intervals(metric_fn, n_items, n_boot=n_boot, seed=seed, alpha=0.05)
    # Report the sklearn point estimates, so that 'intervals' and 'metrics' agree to the last
    # digit (the fast path matches them only to floating-point rounding).
    for name, value in _interval_metrics(metrics).items():
        intervals[name]["value"] = value
    return {"metrics": metrics, "intervals": intervals}


def flatten_for_csv(report: dict, separator: str = "/") -> dict:
    """One-level dict for a CSV row: nested keys joined by ``separator``, lists by index.

    ``{'metrics': {'per_class': {'glioma': {'auc': 0.9}}}}`` becomes
    ``{'metrics/per_class/glioma/auc': 0.9}``; a confusion matrix becomes
    ``confusion_matrix/<true>/<pred>`` cells. ``None`` leaves are kept (an empty CSV cell).
    """
    flat: dict = {}

    def visit(prefix: str, node) -> None:
        if isinstance(node, dict):
            children = node.items()
        elif isinstance(node, list | tuple):
            children = enumerate(node)
        else:
            flat[prefix] = node
            return
        for key, child in children:
            visit(f"{prefix}{separator}{key}" if prefix else str(key), child)

    visit("", report)
    return flat


def _is_number(value) -> bool:
    # bool is an int subclass but "mean of True" is not a metric summary anyone wants.
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def cv_summary(fold_reports: list[dict]) -> dict:
    """Mean and sample SD (ddof=1) over folds of every numeric leaf of each fold's metrics.

    Each fold report is a ``classification_report_with_ci`` output (its ``'metrics'`` part is
    used) or a bare ``classification_metrics`` dict. Keys are flattened with ``/`` (e.g.
    ``per_class/glioma/auc``, ``confusion_matrix/0/1``). Returns ``{key: {'mean', 'sd',
    'n_folds'}}`` where ``n_folds`` counts the folds in which the value was defined; ``sd`` is
    ``None`` with fewer than two such folds.
    """
    values: dict[str, list[float]] = {}
    for report in fold_reports:
        metrics = report.get("metrics", report)
        for key, value in flatten_for_csv(metrics).items():
            if _is_number(value) and not np.isnan(value):
                values.setdefault(key, []).append(float(value))
    return {
        key: {
            "mean": float(np.mean(fold_values)),
            "sd": float(np.std(fold_values, ddof=1)) if len(fold_values) > 1 else None,
            "n_folds": len(fold_values),
        }
        for key, fold_values in values.items()
    }

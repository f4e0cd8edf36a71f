"""One-vs-rest ROC and precision-recall curves and confusion matrices, as PNGs plus JSON numbers.

Curves come from scikit-learn; figures are drawn on a bare ``matplotlib.figure.Figure``, which
renders PNGs with the Agg backend without touching pyplot's global state (safe on headless
servers and inside notebooks, and nothing to close afterwards).

Rows labelled ``-1`` (unknown) are ignored. A class with no positive (or no negative) row has
no curve: it is listed in the legend as skipped and reported with ``None`` / empty lists.
Returned curves are thinned to at most ``MAX_CURVE_POINTS`` points to keep JSON files small;
the PNG uses the full curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from mritumor.evaluation.metrics import known_rows

MAX_CURVE_POINTS = 200


@dataclass(frozen=True)
class _CurveKind:
    """What differs between a ROC and a PR plot."""

    summary_name: str  # 'auc' or 'average_precision'
    summary_label: str  # its short form in the legend
    x_name: str
    y_name: str
    x_label: str
    y_label: str
    curve: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # -> (x, y)
    summary: Callable[[np.ndarray, np.ndarray], float]
    drawstyle: str  # PR curves are step functions (as sklearn's PrecisionRecallDisplay draws)
    legend_loc: Literal["lower right", "best"]  # matplotlib's stubs accept only its names


def _roc_xy(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(is_positive, scores)  # thresholds dropped: the first is inf (no JSON)
    return fpr, tpr


def _pr_xy(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    precision, recall, _ = precision_recall_curve(is_positive, scores, drop_intermediate=True)
    return recall, precision


ROC = _CurveKind(
    summary_name="auc",
    summary_label="AUC",
    x_name="fpr",
    y_name="tpr",
    x_label="False positive rate",
    y_label="True positive rate",
    curve=_roc_xy,
    summary=roc_auc_score,
    drawstyle="default",
    legend_loc="lower right",
)
PR = _CurveKind(
    summary_name="average_precision",
    summary_label="AP",
    x_name="recall",
    y_name="precision",
    x_label="Recall",
    y_label="Precision",
    curve=_pr_xy,
    summary=average_precision_score,
    drawstyle="steps-post",
    legend_loc="best",
)


def thin_curve(x: np.ndarray, y: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> tuple:
    """At most ``max_points`` evenly spaced points of a curve, both end points kept."""
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
    return x[keep], y[keep]


def _as_json_curve(kind: _CurveKind, x: ArrayLike, y: ArrayLike, summary: float | None) -> dict:
    xs, ys = thin_curve(np.asarray(x), np.asarray(y))
    return {kind.summary_name: summary, kind.x_name: xs.tolist(), kind.y_name: ys.tolist()}


def _why_no_curve(is_positive: np.ndarray) -> str | None:
    if not is_positive.any():
        return "absent from y_true"
    if is_positive.all():
        return "in every row (no negatives)"
    return None


def _save(figure: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def _plot_one_vs_rest(
    kind: _CurveKind,
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str,
) -> dict:
    """Shared body of ``plot_roc_ovr`` / ``plot_pr_ovr``."""
    class_names = list(class_names)
    y, probs = known_rows(y_true, probs, len(class_names))
    figure = Figure(figsize=(6, 5), layout="constrained")
    ax = figure.add_subplot()
    per_class = {}
    for k, name in enumerate(class_names):
        is_positive = y == k
        reason = _why_no_curve(is_positive)
        if reason:
            per_class[name] = {**_as_json_curve(kind, [], [], None), "note": reason}
            ax.plot([], [], " ", label=f"{name}: {reason}, skipped")  # legend-only entry
            continue
        x, y_curve = kind.curve(is_positive, probs[:, k])
        summary = float(kind.summary(is_positive, probs[:, k]))
        per_class[name] = _as_json_curve(kind, x, y_curve, summary)
        label = f"{name} ({kind.summary_label} {summary:.3f}, n+={is_positive.sum()})"
        ax.plot(x, y_curve, drawstyle=kind.drawstyle, label=label)
    micro = _micro_average(kind, y, probs, len(class_names), ax)
    if kind is ROC:
        ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=kind.x_label, ylabel=kind.y_label)
    ax.set_title(f"{title} (n={len(y)})")
    ax.legend(loc=kind.legend_loc, fontsize="small")
    _save(figure, path)
    return {"per_class": per_class, "micro": micro}


def _micro_average(kind: _CurveKind, y, probs, n_classes: int, ax) -> dict:
    """Every (row, class) pair as one binary decision: the pooled one-vs-rest curve."""
    if len(y) == 0:
        return _as_json_curve(kind, [], [], None)
    # np.eye rather than sklearn's label_binarize, which returns a single column when K == 2.
    is_positive = np.eye(n_classes, dtype=bool)[y].ravel()
    x, y_curve = kind.curve(is_positive, probs.ravel())
    summary = float(kind.summary(is_positive, probs.ravel()))
    label = f"micro-average ({kind.summary_label} {summary:.3f})"
    ax.plot(x, y_curve, "--", color="black", drawstyle=kind.drawstyle, label=label)
    return _as_json_curve(kind, x, y_curve, summary)


def plot_roc_ovr(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path, title: str
) -> dict:
    """One-vs-rest ROC curve per class plus the micro-average, saved as a PNG at ``path``.

    Returns ``{'per_class': {name: {'auc', 'fpr', 'tpr'}}, 'micro': {'auc', 'fpr', 'tpr'}}``
    (lists of ≤ 200 floats; ``auc`` from ``roc_auc_score`` on all rows, so it equals
    ``classification_metrics``). A skipped class has ``auc`` None, empty lists and a ``note``.
    """
    return _plot_one_vs_rest(ROC, y_true, probs, class_names, path, title)


def plot_pr_ovr(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path, title: str
) -> dict:
    """One-vs-rest precision-recall curve per class plus the micro-average, saved as a PNG.

    Returns ``{'per_class': {name: {'average_precision', 'recall', 'precision'}},
    'micro': {...}}``, shaped like ``plot_roc_ovr``'s output.
    """
    return _plot_one_vs_rest(PR, y_true, probs, class_names, path, title)


def _row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its support; a class with no rows stays 0 (not NaN, no warning)."""
    support = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)


def plot_confusion_matrix(
    matrix: np.ndarray | list,
    class_names: Sequence[str],
    path: str | Path,
    title: str,
    normalise: bool = True,
) -> None:
    """Confusion matrix (rows = true class) as a PNG; ``normalise`` shows per-row fractions
    (recall on the diagonal) on a fixed 0-1 colour scale, the row counts stay in the labels."""
    counts = np.asarray(matrix)
    class_names = list(class_names)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"matrix must be {len(class_names)}×{len(class_names)}, got {counts.shape}"
        )
    size = 2.5 + 0.8 * len(class_names)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.add_subplot()
    values = _row_normalised(counts) if normalise else counts
    display = ConfusionMatrixDisplay(values, display_labels=class_names)
    display.plot(ax=ax, cmap="Blues", values_format=".2f" if normalise else "d", xticks_rotation=45)
    if normalise:
        display.im_.set_clim(0, 1)
    support = counts.sum(axis=1)
    row_labels = [f"{name} (n={n})" for name, n in zip(class_names, support, strict=True)]
    ax.set_yticks(range(len(class_names)), row_labels)
    ax.set_title(f"{title}{' (row-normalised)' if normalise else ''}")
    _save(figure, path)

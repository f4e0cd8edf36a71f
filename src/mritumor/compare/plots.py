"""The comparison plots: per-patient Dice box plot and overlaid one-vs-rest ROC curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from mritumor.compare.runs import Aligned
from mritumor.evaluation import bootstrap

BOXPLOT_FILE = "dice_per_patient_boxplot.png"
ROC_FILE = "roc_overlay.png"


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=120)


def plot_dice_boxplot(patients: np.ndarray, values: np.ndarray, names: list[str], path: Path):
    """Per-patient mean Dice of each run: box plot plus the patients as points."""
    figure = Figure(figsize=(1.6 + 1.3 * len(names), 4.5), layout="constrained")
    ax = figure.add_subplot()
    columns = [values[np.isfinite(values[:, r]), r] for r in range(len(names))]
    ax.boxplot(columns, showmeans=True, showfliers=False)  # every patient is drawn as a point
    rng = np.random.default_rng(0)
    for r, column in enumerate(columns):
        ax.plot(r + 1 + rng.uniform(-0.12, 0.12, len(column)), column, ".", alpha=0.5)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.set(ylim=(-0.02, 1.02), ylabel="mean Dice per patient")
    ax.set_title(f"Per-patient Dice ({len(patients)} patients)")
    _save(figure, path)


def plot_roc_overlay(aligned: Aligned, names: list[str], path: Path) -> None:
    """One-vs-rest ROC curves of every run overlaid, one panel per class (one for 2 classes)."""
    known = aligned.truth >= 0
    y = aligned.truth[known]
    classes = list(enumerate(aligned.class_names))
    if len(classes) == 2:
        classes = classes[1:]
    columns = min(len(classes), 3)
    rows = math.ceil(len(classes) / columns)
    figure = Figure(figsize=(4.5 * columns, 4.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (k, c) in zip(axes, classes, strict=False):
        is_positive = y == k
        for name in names:
            scores = aligned.probs[name][known, k]
            if is_positive.all() or not is_positive.any():
                continue
            fpr, tpr, _ = roc_curve(is_positive, scores)
            auc = bootstrap.rank_auc(is_positive, scores)
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate")
        ax.set(ylabel="True positive rate")
        ax.set_title(f"{c} vs rest (n={len(y)}, n+={int(is_positive.sum())})")
        ax.legend(loc="lower right", fontsize="small")
    for ax in axes[len(classes) :]:
        ax.set_axis_off()
    _save(figure, path)


def _plots(aligned: Aligned, classified: list[str], dice: dict | None, outdir: Path) -> dict:
    files = {}
    if dice is not None:
        per_patient = dice["per_patient"]
        names = list(dice["summary"])
        plot_dice_boxplot(
            per_patient["patients"], per_patient["values"], names, outdir / BOXPLOT_FILE
        )
        files["dice_boxplot"] = BOXPLOT_FILE
    if len(classified) >= 2 and (aligned.truth >= 0).any():
        plot_roc_overlay(aligned, classified, outdir / ROC_FILE)
        files["roc_overlay"] = ROC_FILE
    return files

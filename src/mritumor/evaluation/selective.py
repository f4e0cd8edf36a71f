"""Selective prediction: accuracy when the model answers only its most confident share.

Units are sorted by confidence (top-class probability), most confident first; at coverage
k/n the model answers the first k. The risk–coverage curve is the error rate among those k,
and AURC (Geifman & El-Yaniv 2017) its mean over k = 1 … n: lower is better, and the oracle
ordering (every error last) gives the smallest possible value for the same accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike


def risk_coverage(confidence: ArrayLike, correct: ArrayLike) -> dict:
    confidence, correct = _arrays(confidence, correct)
    n = len(correct)
    if n == 0:
        return {"n": 0, "coverage": [], "risk": [], "aurc": None, "accuracy_at": {}}
    # stable sort on -confidence: ties keep input order, so the curve is reproducible
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~correct[order])
    answered = np.arange(1, n + 1)
    risk = errors / answered
    return {
        "n": n,
        "coverage": (answered / n).tolist(),
        "risk": risk.tolist(),
        "aurc": float(risk.mean()),
        "accuracy_at": {f"{c:.2f}": accuracy_at(confidence, correct, c) for c in (0.5, 0.8, 0.9)},
    }


def accuracy_at(confidence: ArrayLike, correct: ArrayLike, coverage: float) -> float:
    """Accuracy over the ⌈coverage · n⌉ most confident units."""
    confidence, correct = _arrays(confidence, correct)
    k = max(1, int(np.ceil(coverage * len(correct) - 1e-9)))
    order = np.argsort(-confidence, kind="stable")
    return float(correct[order[:k]].mean())


def _arrays(confidence: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)


def plot_risk_coverage(curve: dict, path: str | Path, title: str = "Risk–coverage") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 3.5))
    axes.plot(curve["coverage"], curve["risk"], color="C0")
    axes.set_xlabel("coverage (share answered)")
    axes.set_ylabel("risk (error rate of answers)")
    aurc = curve["aurc"]
    axes.set_title(f"{title} (AURC {aurc:.3f})" if aurc is not None else title)
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

"""Calibration: top-label expected/maximum calibration error, reliability diagrams and
temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

A model is calibrated when, among the patients it predicts with confidence ~0.8, about 80 % are
right. ECE is the bin-count-weighted mean gap |accuracy - confidence| over ``n_bins``
equal-width confidence bins; MCE is the largest gap of a non-empty bin. Rows labelled ``-1``
(unknown) are ignored.

Temperature scaling divides the logits by one scalar T > 0 fitted on a validation set by
minimising the negative log-likelihood; it changes confidences but never the arg-max.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from mritumor.evaluation.metrics import UNKNOWN_LABEL, known_rows

log = logging.getLogger(__name__)
# Far outside what real models need; they only keep a degenerate fit finite.
TEMPERATURE_BOUNDS = (1e-2, 1e2)


def _bin_sums(confidence: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> tuple:
    """Count, summed confidence and summed correctness per bin.

    ``np.histogram`` does the binning (bins ``[lo, hi)``, the last one ``[lo, 1]``); sklearn's
    ``calibration_curve`` cannot be used because it is for one binary positive class, drops
    empty bins and returns no counts, which ECE needs as weights. MONAI's
    ``calibration_binning`` works in float32 on edges stretched by machine epsilon.
    """
    counts, _ = np.histogram(confidence, bins=edges)
    confidence_sum, _ = np.histogram(confidence, bins=edges, weights=confidence)
    correct_sum, _ = np.histogram(confidence, bins=edges, weights=correct.astype(np.float64))
    return counts, confidence_sum, correct_sum


def calibration_errors(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """Top-label ECE and MCE (confidence = max probability, correct = arg-max equals label).

    Returns ``{'ece', 'mce', 'n', 'n_bins', 'bins': [{'lo', 'hi', 'confidence', 'accuracy',
    'count'}]}``; an empty bin has ``confidence``/``accuracy`` None, and ``ece``/``mce`` are
    None when no row has a known label.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    probs = np.asarray(probs, dtype=np.float64)
    y, probs = known_rows(y_true, probs, probs.shape[-1])
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, confidence_sum, correct_sum = _bin_sums(confidence, correct, edges)
    bins = []
    for b, count in enumerate(counts):
        filled = count > 0
        bins.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "confidence": float(confidence_sum[b] / count) if filled else None,
                "accuracy": float(correct_sum[b] / count) if filled else None,
                "count": int(count),
            }
        )
    gaps = np.abs(correct_sum - confidence_sum)  # = count × |accuracy - confidence|
    filled = counts > 0
    return {
        "ece": float(gaps.sum() / len(y)) if len(y) else None,
        "mce": float((gaps[filled] / counts[filled]).max()) if len(y) else None,
        "n": int(len(y)),
        "n_bins": int(n_bins),
        "bins": bins,
    }


def plot_reliability_diagram(
    y_true: np.ndarray, probs: np.ndarray, path: str | Path, title: str, n_bins: int = 15
) -> dict:
    """Reliability diagram (accuracy per confidence bin against the diagonal, with the gap to
    each bin's mean confidence) above a histogram of bin counts; saved as a PNG.

    Returns ``calibration_errors(y_true, probs, n_bins)``.
    """
    errors = calibration_errors(y_true, probs, n_bins)
    bins = errors["bins"]
    lows = [b["lo"] for b in bins]
    width = 1.0 / n_bins
    filled = [b for b in bins if b["count"]]
    figure = Figure(figsize=(5.5, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(
        [b["lo"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        [b["lo"] for b in filled],
        [b["confidence"] - b["accuracy"] for b in filled],
        bottom=[b["accuracy"] for b in filled],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.35,
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Accuracy")
    top.legend(loc="upper left", fontsize="small")
    ece, mce = errors["ece"], errors["mce"]
    summary = f"ECE {ece:.3f}, MCE {mce:.3f}" if ece is not None else "no labelled rows"
    top.set_title(f"{title}\n{summary} (n={errors['n']}, {n_bins} bins)")
    bottom.bar(lows, [b["count"] for b in bins], width=width, align="edge", edgecolor="black")
    bottom.set(xlabel="Confidence (top-label probability)", ylabel="Count")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return errors


def _known_logits(logits, y_true) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits).detach().to(torch.float64)
    labels = torch.as_tensor(y_true).detach().long().reshape(-1)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be (N, K) with N = {len(labels)}, got {tuple(logits.shape)}")
    keep = labels != UNKNOWN_LABEL
    if not keep.any():
        raise ValueError("temperature scaling needs at least one row with a known label")
    return logits[keep], labels[keep]


def fit_temperature(logits: torch.Tensor, y_true: torch.Tensor) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (rows with y = -1 ignored).

    Optimises log T with L-BFGS (so T stays positive without constraints) in float64, starting
    from T = 1; T is kept within ``TEMPERATURE_BOUNDS``. T > 1 softens an over-confident model.

    When every row is already classified correctly the NLL keeps falling as T -> 0 and has no
    minimum; T = 1 (no scaling) is returned with a warning instead of an arbitrary tiny T that
    would make the model maximally over-confident.
    """
    logits, labels = _known_logits(logits, y_true)
    if bool((logits.argmax(dim=1) == labels).all()):
        log.warning(
            "temperature scaling skipped (T = 1): the %d calibration rows are all classified "
            "correctly (perfectly separated), so the NLL has no minimum",
            len(labels),
        )
        return 1.0
    log_bounds = tuple(math.log(bound) for bound in TEMPERATURE_BOUNDS)
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_temperature],
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        temperature = log_temperature.clamp(*log_bounds).exp()
        loss = F.cross_entropy(logits / temperature, labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    temperature = float(log_temperature.detach().clamp(*log_bounds).exp())
    if not TEMPERATURE_BOUNDS[0] < temperature < TEMPERATURE_BOUNDS[1]:
        log.warning(
            "fitted temperature hit its bound (%.3g): the calibration logits are nearly "
            "separated and the fit is unreliable",
            temperature,
        )
    return temperature


def apply_temperature(logits: torch.Tensor | np.ndarray, temperature: float):
    """``softmax(logits / temperature)`` over the last axis; a NumPy input gives a NumPy output."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    probs = torch.softmax(torch.as_tensor(logits).to(torch.float64) / temperature, dim=-1)
    if isinstance(logits, np.ndarray):
        return probs.numpy()
    return probs.to(logits.dtype) if torch.is_floating_point(logits) else probs

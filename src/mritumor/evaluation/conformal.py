"""Split conformal prediction sets for class probabilities (Vovk 2005; Angelopoulos & Bates 2021).

Calibrated on held-out units (validation patients): for each unit a *non-conformity score* of
its true class; the threshold is the ⌈(n + 1)(1 − α)⌉-th smallest score. A new input's set holds
every class whose score would not exceed it, so a new unit exchangeable with the calibration
units has its true class in the set with probability ≥ 1 − α (the finite-sample guarantee
needs the ``n + 1``; ``np.quantile(scores, 1 - α)`` alone under-covers on small sets).

Scores (both deterministic, so the same input always gets the same set):

* ``lac`` — 1 − p(true class) (Sadinle et al. 2019): the smallest sets on average;
* ``aps`` — the probability mass of the classes ranked at or above the true one (Romano et al.
  2020, without the random tie-breaking): larger sets that adapt to how spread the
  probabilities are.

Mondrian (class-conditional) sets (Vovk 2012; Angelopoulos & Bates 2021 §4): the guarantee
above is *marginal*, an average over classes, so an easy class can hide a hard one (on real data
0.934 overall hid meningioma at 0.852). With one threshold per class k, computed by the same rule
from the calibration units whose true class is k, a new unit of class k has its true class in
the set with probability ≥ 1 − α for every k. The price: each class needs n_k ≥ 1/α − 1
calibration units, and sets grow for the hard classes. A class with fewer units gets the
marginal threshold of all units instead (the "null cluster" of clustered conformal prediction,
Ding et al. 2023): its own coverage is then not guaranteed, only the average. Putting such a
class in every set instead would make every set of a site without one of the classes (a
hospital that sends no pituitary tumour to ``adapt``) at least two classes wide.

The predicted class (arg-max) is always in the set, so a set is never empty. Written here
rather than through MAPIE/TorchCP because those calibrate an estimator over rows, while the
units here are patients whose probabilities come from a model trained elsewhere; the core is
a quantile and a comparison, tested against hand-computed cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

METHODS = ("lac", "aps")


def check_options(coverage: float, method: str) -> None:
    """The training and re-fitting commands' ``--coverage`` and ``--conformal_method``, checked
    before any work (a recipe or ``--config`` value is not checked by argparse)."""
    from mritumor.errors import MritumorError

    if not 0 < coverage < 1:
        raise MritumorError(f"--coverage must be a share between 0 and 1 (e.g. 0.9), not {coverage}")  # fmt: skip
    if method not in METHODS:
        raise MritumorError(f"--conformal_method must be one of {', '.join(METHODS)}, not {method!r}")  # fmt: skip


def class_scores(probs: np.ndarray, method: str) -> np.ndarray:
    """(N, K) non-conformity score of every class for every unit."""
    probs = np.asarray(probs, dtype=float)
    if method == "lac":
        return 1.0 - probs
    if method == "aps":
        order = np.argsort(-probs, axis=1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=1)
        cumulative = np.cumsum(ranked, axis=1)
        scores = np.empty_like(probs)
        np.put_along_axis(scores, order, cumulative, axis=1)
        return scores
    raise ValueError(f"unknown conformal method {method!r}; choose one of {METHODS}")


def calibration_scores(probs: np.ndarray, labels: ArrayLike, method: str = "lac") -> np.ndarray:
    """Sorted scores of the true class of every labelled calibration unit: all a checkpoint
    needs to give the threshold for any coverage later (:func:`threshold_from_scores`)."""
    truth = np.asarray(labels, dtype=int)
    known = truth >= 0
    probs, truth = np.asarray(probs, dtype=float)[known], truth[known]
    return np.sort(class_scores(probs, method)[np.arange(len(truth)), truth])


def calibration_scores_by_class(
    probs: np.ndarray, labels: ArrayLike, method: str = "lac"
) -> list[np.ndarray]:
    """Mondrian calibration: for every class k (one per column of ``probs``), the sorted scores
    of class k of the calibration units whose true class is k (possibly empty)."""
    probs = np.asarray(probs, dtype=float)
    truth = np.asarray(labels, dtype=int)
    mine = [truth == k for k in range(probs.shape[1])]
    return [calibration_scores(probs[rows], truth[rows], method) for rows in mine]


def threshold_from_scores(scores: np.ndarray, coverage: float = 0.9) -> float:
    """The ⌈(n + 1)·coverage⌉-th smallest calibration score; ``inf`` (every class) when there
    are too few units for the requested coverage (n < 1/α − 1)."""
    if not 0 < coverage < 1:
        raise ValueError("coverage must be in (0, 1)")
    scores = np.sort(np.asarray(scores, dtype=float))
    n = len(scores)
    rank = math.ceil((n + 1) * coverage)
    return math.inf if n == 0 or rank > n else float(scores[rank - 1])


def min_calibration_units(coverage: float) -> int:
    """The fewest calibration units (of a class, for Mondrian sets) whose threshold for
    ``coverage`` is finite: the rule of :func:`threshold_from_scores`, so 9 for 0.9."""
    n = 1
    while math.ceil((n + 1) * coverage) > n:
        n += 1
    return n


def class_thresholds(
    scores_by_class: Sequence[ArrayLike], coverage: float = 0.9, fallback: float = math.inf
) -> np.ndarray:
    """(K,) Mondrian thresholds: :func:`threshold_from_scores` of each class's own calibration
    scores; a class with too few units for ``coverage`` gets ``fallback`` (the marginal
    threshold, see the module docstring; ``inf`` puts it in every set)."""
    own = np.array([threshold_from_scores(np.asarray(s), coverage) for s in scores_by_class])
    return np.where(np.isinf(own), fallback, own)


def conformal_threshold(
    probs: np.ndarray, labels: ArrayLike, coverage: float = 0.9, method: str = "lac"
) -> float:
    """The calibrated score threshold of these calibration units."""
    return threshold_from_scores(calibration_scores(probs, labels, method), coverage)


def prediction_sets(
    probs: np.ndarray, threshold: float | ArrayLike, method: str = "lac"
) -> np.ndarray:
    """(N, K) boolean membership: classes whose score ≤ threshold, plus the arg-max.
    ``threshold``: one number (marginal) or K, one per class (Mondrian: class k is compared with
    its own threshold, :func:`class_thresholds`)."""
    probs = np.asarray(probs, dtype=float)
    limit = np.asarray(threshold, dtype=float)
    if limit.ndim and limit.shape != (probs.shape[1],):
        raise ValueError(f"thresholds of shape {limit.shape} for {probs.shape[1]} classes")
    members = class_scores(probs, method) <= limit + 1e-12  # (K,) broadcasts along the rows
    members[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return members


def set_metrics(sets: np.ndarray, labels: ArrayLike, class_names: Sequence[str]) -> dict:
    """Empirical coverage and mean set size, overall and per true class (units with a label)."""
    truth = np.asarray(labels, dtype=int)
    known = truth >= 0
    sets, truth = sets[known], truth[known]
    covered: np.ndarray = sets[np.arange(len(truth)), truth] if len(truth) else np.zeros(0, bool)
    sizes = sets.sum(axis=1)
    per_class = {}
    for k, name in enumerate(class_names):
        mine = truth == k
        per_class[name] = {
            "n": int(mine.sum()),
            "coverage": float(covered[mine].mean()) if mine.any() else None,
            "mean_set_size": float(sizes[mine].mean()) if mine.any() else None,
        }
    return {
        "n": int(len(truth)),
        "coverage": float(covered.mean()) if len(truth) else None,
        "mean_set_size": float(sizes.mean()) if len(truth) else None,
        "singleton_share": float((sizes == 1).mean()) if len(truth) else None,
        "per_class": per_class,
    }


def set_names(members: np.ndarray, class_names: Sequence[str]) -> list[list[str]]:
    """Each unit's set as class names, in class order."""
    return [[class_names[int(k)] for k in np.flatnonzero(row)] for row in members]

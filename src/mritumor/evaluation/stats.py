"""Paired statistical tests for comparing models.

Pure NumPy/SciPy functions, used by ``mritumor compare``. Each test returns a plain dict of
Python floats/ints (NaN where a value is undefined) that names the test that produced its
p-value, so a report can say which test stands behind which number.

* ``mcnemar_exact``: accuracy of two classifiers on the same items; the exact test is a
  two-sided binomial test (p = 1/2) on the discordant pairs.
* ``delong_test``: AUC of two correlated ROC curves (same cases, two scorers); the fast
  midrank algorithm of Sun & Xu (2014), O(n log n).
* ``wilcoxon_paired``: Wilcoxon signed-rank test on paired values (e.g. per-patient Dice).
* ``friedman_test``: Friedman test of k ≥ 3 related samples (blocks × treatments).
* ``holm_correction``: Holm's step-down adjusted p-values.

The patient-clustered bootstrap (intervals, paired differences, its p-value) and the rank AUC
live in ``mritumor.evaluation.bootstrap``, shared with ``mritumor evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

MCNEMAR_TEST = "exact McNemar (two-sided binomial test on the discordant pairs)"
DELONG_TEST = "DeLong (two correlated ROC curves, fast midrank algorithm of Sun & Xu 2014)"
WILCOXON_TEST = "Wilcoxon signed-rank (two-sided, zero differences dropped)"
FRIEDMAN_TEST = "Friedman chi-square (scipy.stats.friedmanchisquare)"


# --------------------------------------------------------------------------- McNemar


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test of two classifiers' correctness on the same items.

    Only discordant pairs carry information: ``a_only`` items that A gets right and B wrong,
    ``b_only`` the reverse. Under H0 each discordant pair is A's with probability 1/2, so the
    p-value is the two-sided binomial test of ``a_only`` successes in ``a_only + b_only`` trials.
    With no discordant pair the p-value is 1. Items are assumed independent.
    """
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in length: {a.size} vs {b.size}")
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
    return {
        "test": MCNEMAR_TEST,
        "n": int(a.size),
        "accuracy_a": float(a.mean()) if a.size else float("nan"),
        "accuracy_b": float(b.mean()) if b.size else float("nan"),
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "discordant": discordant,
        "p_value": p_value,
    }


# --------------------------------------------------------------------------- DeLong


def delong_covariance(y_true_binary: Sequence, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k scorers on the same cases and the DeLong covariance matrix of those AUCs.

    ``scores`` has shape (k, n) (or (n,) for one scorer); ``y_true_binary`` marks positives.
    Midranks of the positives among themselves (T_x), the negatives among themselves (T_y) and
    all cases together (T_z) give the structural components (placement values)
    V10_i = (T_z,i − T_x,i) / n_neg and V01_j = 1 − (T_z,j − T_y,j) / n_pos, whose sample
    covariances make S = S10 / n_pos + S01 / n_neg (Sun & Xu 2014). The covariance is NaN when
    there are fewer than two positives or two negatives.
    """
    y = np.asarray(y_true_binary).astype(bool).reshape(-1)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != y.size:
        raise ValueError(f"scores must have shape (k, {y.size}), got {scores.shape}")
    positives, negatives = scores[:, y], scores[:, ~y]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("AUC needs at least one positive and one negative case")
    t_x = stats.rankdata(positives, axis=1)
    t_y = stats.rankdata(negatives, axis=1)
    t_z = stats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aucs = (t_z[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    k = scores.shape[0]
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    v10 = (t_z[:, :m] - t_x) / n
    v01 = 1.0 - (t_z[:, m:] - t_y) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_test(y_true_binary: Sequence, scores_a: Sequence, scores_b: Sequence) -> dict:
    """DeLong test of AUC(A) = AUC(B) for two scorers on the same cases (paired ROC curves).

    Returns the AUCs, ``difference`` = AUC(A) − AUC(B), its variance and standard error,
    ``z`` = difference / se and the two-sided normal p-value. When the variance is zero
    (e.g. identical scorers), z and p are 0 and 1 for a zero difference, NaN otherwise;
    they are NaN when there are fewer than two positives or negatives.
    """
    aucs, cov = delong_covariance(y_true_binary, np.vstack([scores_a, scores_b]))
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if np.isnan(variance):
        z, p_value = float("nan"), float("nan")
    elif variance <= 1e-15:
        zero = abs(difference) < 1e-12
        z, p_value = (0.0, 1.0) if zero else (float("nan"), float("nan"))
        variance = max(variance, 0.0)
    else:
        z = difference / np.sqrt(variance)
        p_value = float(2 * stats.norm.sf(abs(z)))
    y = np.asarray(y_true_binary).astype(bool)
    return {
        "test": DELONG_TEST,
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": difference,
        "variance": variance,
        "se": float(np.sqrt(variance)) if variance >= 0 else float("nan"),
        "z": float(z),
        "p_value": p_value,
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
    }


# --------------------------------------------------------------------------- Wilcoxon


def wilcoxon_paired(values_a: Sequence[float], values_b: Sequence[float]) -> dict:
    """Wilcoxon signed-rank test of paired values (two-sided, ``scipy.stats.wilcoxon`` defaults).

    Pairs with a NaN on either side are dropped (``n`` counts the pairs kept). Zero differences
    are dropped by the test itself ("wilcox" method); when every difference is zero the
    p-value is 1 and the statistic 0; with no pair left both are NaN.
    """
    a = np.asarray(values_a, dtype=np.float64).reshape(-1)
    b = np.asarray(values_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"values_a and values_b differ in length: {a.size} vs {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    differences = a - b
    result = {
        "test": WILCOXON_TEST,
        "n": int(a.size),
        "n_nonzero": int((differences != 0).sum()),
        "mean_a": float(a.mean()) if a.size else float("nan"),
        "mean_b": float(b.mean()) if b.size else float("nan"),
        "mean_difference": float(differences.mean()) if a.size else float("nan"),
        "median_difference": float(np.median(differences)) if a.size else float("nan"),
    }
    if a.size == 0:
        return {**result, "statistic": float("nan"), "p_value": float("nan")}
    if result["n_nonzero"] == 0:
        return {**result, "statistic": 0.0, "p_value": 1.0}
    test = stats.wilcoxon(a, b)
    return {**result, "statistic": float(test.statistic), "p_value": float(test.pvalue)}


# --------------------------------------------------------------------------- Friedman, Holm


def friedman_test(matrix: np.ndarray) -> dict:
    """Friedman test of k ≥ 3 related samples: ``matrix`` is blocks (patients) × treatments (runs).

    Rows with a NaN are dropped. ``mean_ranks`` are the treatments' average within-block ranks
    (1 = lowest value). When every block is tied throughout, the statistic is 0 and p is 1
    (scipy divides by zero there).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 3:
        raise ValueError(f"the Friedman test needs a (blocks, k ≥ 3) matrix, got {matrix.shape}")
    matrix = matrix[np.isfinite(matrix).all(axis=1)]
    n_blocks, k = matrix.shape
    result = {"test": FRIEDMAN_TEST, "n_blocks": int(n_blocks), "k": int(k)}
    if n_blocks == 0:
        return {**result, "statistic": float("nan"), "p_value": float("nan"), "mean_ranks": []}
    mean_ranks = stats.rankdata(matrix, axis=1).mean(axis=0).tolist()
    result["mean_ranks"] = [float(r) for r in mean_ranks]
    if (matrix == matrix[:, :1]).all():
        return {**result, "statistic": 0.0, "p_value": 1.0}
    test = stats.friedmanchisquare(*matrix.T)
    return {**result, "statistic": float(test.statistic), "p_value": float(test.pvalue)}


def holm_correction(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    With the m defined p-values sorted ascending, p_(i) becomes max_{j ≤ i} (m − j + 1) p_(j),
    capped at 1. NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full(p.shape, np.nan)
    defined = np.flatnonzero(np.isfinite(p))
    m = defined.size
    if m == 0:
        return adjusted
    order = defined[np.argsort(p[defined], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted

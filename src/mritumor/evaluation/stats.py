"""Paired statistical tests and patient-clustered bootstrap intervals for comparing models.

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
* ``cluster_draws``, ``clustered_bootstrap_means``, ``clustered_bootstrap_auc``,
  ``clustered_bootstrap_macro_auc``, ``clustered_bootstrap_samples``,
  ``clustered_bootstrap_difference``: bootstrap that resamples clusters (patients) with
  replacement, keeping every unit of a drawn patient together. Every function with the same
  cluster labels, ``n_boot`` and ``seed`` uses the same resamples, so per-run distributions
  can be subtracted to give paired differences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

MCNEMAR_TEST = "exact McNemar (two-sided binomial test on the discordant pairs)"
DELONG_TEST = "DeLong (two correlated ROC curves, fast midrank algorithm of Sun & Xu 2014)"
WILCOXON_TEST = "Wilcoxon signed-rank (two-sided, zero differences dropped)"
FRIEDMAN_TEST = "Friedman chi-square (scipy.stats.friedmanchisquare)"
BOOTSTRAP_TEST = "patient-clustered bootstrap (two-sided, percentile-interval inversion)"


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


# --------------------------------------------------------------------------- clustered bootstrap


def cluster_codes(clusters: Sequence) -> tuple[np.ndarray, int]:
    """Integer codes 0..C-1 for cluster labels (in sorted label order) and the count C."""
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1 if codes.size else 0


def cluster_draws(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_clusters) cluster indices drawn with replacement: the resamples.

    The only source of randomness of the bootstrap functions below, so they all agree.
    """
    if n_clusters < 1:
        raise ValueError("the bootstrap needs at least one cluster")
    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))


def _draw_counts(draws: np.ndarray, n_clusters: int) -> np.ndarray:
    """How often each cluster was drawn in each resample, (n_boot, n_clusters)."""
    n_boot = draws.shape[0]
    flat = (draws + np.arange(n_boot)[:, None] * n_clusters).ravel()
    return np.bincount(flat, minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)


def clustered_bootstrap_means(
    values: np.ndarray, clusters: Sequence, n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """Unit means of every clustered resample, vectorised: shape (n_boot,) or (n_boot, R).

    ``values`` is (N,) or (N, R) (one column per run, e.g. 0/1 correctness or Dice); NaN units
    are left out of the means. A resample's mean is Σ_c count_c · sum_c / Σ_c count_c · size_c
    over clusters c, which equals the mean over the resample's units (NaN if it has none).
    """
    values = np.asarray(values, dtype=np.float64)
    squeeze = values.ndim == 1
    values = values.reshape(len(values), -1)
    codes, n_clusters = cluster_codes(clusters)
    if codes.size != len(values):
        raise ValueError(f"{len(values)} values but {codes.size} cluster labels")
    defined = np.isfinite(values)
    sums = np.zeros((n_clusters, values.shape[1]))
    sizes = np.zeros((n_clusters, values.shape[1]))
    np.add.at(sums, codes, np.where(defined, values, 0.0))
    np.add.at(sizes, codes, defined.astype(np.float64))
    counts = _draw_counts(cluster_draws(n_clusters, n_boot, seed), n_clusters).astype(np.float64)
    totals, n_units = counts @ sums, counts @ sizes
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n_units > 0, totals / n_units, np.nan)
    return means[:, 0] if squeeze else means


def clustered_bootstrap_samples(
    metric_fn: Callable[[object, np.ndarray], float],
    data: object,
    clusters: Sequence,
    n_boot: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """``metric_fn(data, unit_indices)`` on each clustered resample, shape (n_boot,).

    ``unit_indices`` lists the units of the drawn clusters (a cluster drawn twice appears twice),
    for metrics that are not means (e.g. AUC). ``metric_fn`` may return NaN when undefined.
    """
    codes, n_clusters = cluster_codes(clusters)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    samples = np.empty(n_boot)
    for b, drawn in enumerate(cluster_draws(n_clusters, n_boot, seed)):
        drawn_sizes = sizes[drawn]
        offsets = np.repeat(starts[drawn] - np.cumsum(drawn_sizes) + drawn_sizes, drawn_sizes)
        samples[b] = metric_fn(data, order[offsets + np.arange(drawn_sizes.sum())])
    return samples


def clustered_bootstrap_auc(
    is_positive: Sequence[bool],
    scores: Sequence[float],
    clusters: Sequence,
    n_boot: int = 2000,
    seed: int = 0,
    include: Sequence[bool] | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Mann–Whitney AUC of every clustered resample, vectorised: shape (n_boot,).

    A resample gives each unit the weight w = how often its cluster was drawn; with the units
    sorted by score into tie groups, AUC = Σ_g W+_g (W−_below g + W−_g / 2) / (W+ · W−), which is
    the midrank AUC of the resample (units repeated w times). Units where ``include`` is False
    weigh nothing (their clusters are still drawn, so the resamples stay those of the other
    ``clustered_bootstrap_*`` functions). NaN where a resample has no positive or no negative.
    """
    y = np.asarray(is_positive, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    include = np.ones(y.size, bool) if include is None else np.asarray(include, dtype=bool)
    codes, n_clusters = cluster_codes(clusters)
    if not (y.size == scores.size == codes.size == include.size):
        raise ValueError("is_positive, scores, clusters and include differ in length")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    is_pos = (y & include)[order].astype(np.float64)
    is_neg = (~y & include)[order].astype(np.float64)
    codes_sorted = codes[order]
    counts = _draw_counts(cluster_draws(n_clusters, n_boot, seed), n_clusters)
    aucs = np.empty(n_boot)
    for first in range(0, n_boot, chunk):
        weights = counts[first : first + chunk][:, codes_sorted].astype(np.float64)
        positive = np.add.reduceat(weights * is_pos, starts, axis=1)
        negative = np.add.reduceat(weights * is_neg, starts, axis=1)
        below = np.cumsum(negative, axis=1) - negative
        numerator = (positive * (below + 0.5 * negative)).sum(axis=1)
        denominator = positive.sum(axis=1) * negative.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs[first : first + chunk] = np.where(denominator > 0, numerator / denominator, np.nan)
    return aucs


def clustered_bootstrap_macro_auc(
    y: Sequence[int], probs: np.ndarray, clusters: Sequence, n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """Macro one-vs-rest AUC of every clustered resample: shape (n_boot,).

    The mean over the classes with both outcomes in the resample (as ``macro_auc``); units with
    an unknown label (-1) are left out. Same resamples as the other bootstrap functions.
    """
    y = np.asarray(y).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    known = y >= 0
    per_class = np.column_stack(
        [
            clustered_bootstrap_auc(y == k, probs[:, k], clusters, n_boot, seed, include=known)
            for k in range(probs.shape[1])
        ]
    )
    defined = np.isfinite(per_class)
    n_defined = defined.sum(axis=1)
    totals = np.where(defined, per_class, 0.0).sum(axis=1)
    return np.where(n_defined > 0, totals / np.maximum(n_defined, 1), np.nan)


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 − alpha/2) percentiles of the defined samples; NaN if none is defined."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "difference = 0" by inverting the percentile interval.

    The smallest alpha whose (1 − alpha) percentile interval excludes 0:
    2 · min(P*(d ≤ 0), P*(d ≥ 0)), capped at 1, with a +1 correction so it is never 0.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    tail = min((d <= 0).sum(), (d >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (d.size + 1)))


def summarise_difference(
    estimate: float, samples: np.ndarray, alpha: float = 0.05, with_p: bool = False
) -> dict:
    """``estimate`` with the percentile interval and standard error of its bootstrap samples."""
    samples = np.asarray(samples, dtype=np.float64)
    defined = samples[np.isfinite(samples)]
    low, high = percentile_interval(defined, alpha)
    result = {
        "estimate": float(estimate),
        "low": low,
        "high": high,
        "se": float(defined.std(ddof=1)) if defined.size > 1 else float("nan"),
        "n_boot": int(samples.size),
        "n_defined": int(defined.size),
    }
    if with_p:
        result["p_value"] = bootstrap_p_value(defined)
        result["test"] = BOOTSTRAP_TEST
    return result


def clustered_bootstrap_difference(
    metric_fn: Callable[[object, np.ndarray], float],
    data_a: object,
    data_b: object,
    clusters: Sequence,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Percentile interval of metric(A) − metric(B), resampling clusters (patients) for both.

    ``metric_fn(data, unit_indices)`` evaluates a run on a set of units; A and B are evaluated
    on the same resamples (paired). Returns ``estimate`` (on all units), ``low``, ``high``,
    ``se``, ``n_boot``, ``n_defined`` and a bootstrap ``p_value``.
    """
    n_units = len(np.asarray(clusters))
    everything = np.arange(n_units)
    estimate = metric_fn(data_a, everything) - metric_fn(data_b, everything)
    a = clustered_bootstrap_samples(metric_fn, data_a, clusters, n_boot, seed)
    b = clustered_bootstrap_samples(metric_fn, data_b, clusters, n_boot, seed)
    return summarise_difference(estimate, a - b, alpha, with_p=True)


def clustered_bootstrap_mean_difference(
    values_a: Sequence[float],
    values_b: Sequence[float],
    clusters: Sequence,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Vectorised ``clustered_bootstrap_difference`` for means (accuracy, mean Dice).

    Units with a NaN on either side are left out. Same resamples, so the same numbers, as
    ``clustered_bootstrap_difference`` with a mean metric.
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    differences = np.where(np.isfinite(a) & np.isfinite(b), a - b, np.nan)
    estimate = float(np.nanmean(differences)) if np.isfinite(differences).any() else np.nan
    samples = clustered_bootstrap_means(differences, clusters, n_boot, seed)
    return summarise_difference(estimate, samples, alpha, with_p=True)


# --------------------------------------------------------------------------- AUC helpers


def rank_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann–Whitney AUC (ties count 1/2) from midranks; NaN without both outcomes."""
    is_positive = np.asarray(is_positive, dtype=bool)
    m = int(is_positive.sum())
    n = is_positive.size - m
    if m == 0 or n == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[is_positive].sum() - m * (m + 1) / 2) / (m * n))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes that have both outcomes in ``y`` (NaN if none)."""
    aucs = [rank_auc(y == k, probs[:, k]) for k in range(probs.shape[1])]
    defined = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(defined)) if defined else float("nan")

"""The one patient-clustered bootstrap of mritumor: ``mritumor evaluate`` and ``mritumor compare``.

Both commands resample *clusters* (patients) with replacement, every unit (slice) of a drawn
patient coming along. The resamples come from two functions only:

* ``cluster_codes``: integer codes of the cluster labels, in sorted label order, so the codes
  depend on which patients there are, not on the order of the rows;
* ``cluster_draws``: which clusters each of the ``n_boot`` resamples takes, from a seed.

So for the same patients, ``n_boot`` and ``seed`` every function here (and so both commands)
draws the same resamples and gives the same percentile interval (``percentile_interval``) for
the same metric; per-run distributions can be subtracted to give paired differences.

* ``bootstrap_intervals`` (+ ``by_group`` for clusters): intervals of every metric of a
  ``{name: value}`` function, as ``mritumor evaluate`` reports them;
* ``clustered_bootstrap_means``, ``clustered_bootstrap_auc``, ``clustered_bootstrap_macro_auc``:
  vectorised per-resample means / AUCs, ``clustered_bootstrap_samples`` for any metric;
  ``clustered_bootstrap_difference`` / ``clustered_bootstrap_mean_difference`` and
  ``summarise_difference``: paired differences with a bootstrap p-value (``mritumor compare``);
* ``rank_auc`` / ``macro_auc``: the Mann–Whitney AUC every bootstrapped AUC is checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_TEST = "patient-clustered bootstrap (two-sided, percentile-interval inversion)"


# --------------------------------------------------------------------------- the resamples


def cluster_codes(clusters: Sequence) -> tuple[np.ndarray, int]:
    """Integer codes 0..C-1 for cluster labels (in sorted label order) and the count C."""
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1 if codes.size else 0


def cluster_draws(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_clusters) cluster indices drawn with replacement: the resamples.

    The only source of randomness of every bootstrap in this module, so they all agree.
    """
    if n_clusters < 1:
        raise ValueError("the bootstrap needs at least one cluster")
    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))


def _draw_counts(draws: np.ndarray, n_clusters: int) -> np.ndarray:
    """How often each cluster was drawn in each resample, (n_boot, n_clusters)."""
    n_boot = draws.shape[0]
    flat = (draws + np.arange(n_boot)[:, None] * n_clusters).ravel()
    return np.bincount(flat, minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)


def cluster_units(codes: np.ndarray, n_clusters: int) -> Callable[[np.ndarray], np.ndarray]:
    """``units_of(drawn)``: the unit indices of the clusters ``drawn`` (one resample), in draw
    order, each cluster's units in row order; a cluster drawn twice appears twice."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def units_of(drawn: np.ndarray) -> np.ndarray:
        drawn_sizes = sizes[drawn]
        offsets = np.repeat(starts[drawn] - np.cumsum(drawn_sizes) + drawn_sizes, drawn_sizes)
        return order[offsets + np.arange(drawn_sizes.sum())]

    return units_of


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 − alpha/2) percentiles (linear interpolation) of the defined samples;
    NaN if none is defined."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# --------------------------------------------------------------------------- evaluate's intervals


def _is_defined(value) -> bool:
    return value is not None and not np.isnan(value)


def bootstrap_intervals(
    metric_fn: Callable[[np.ndarray], dict],
    n_items: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Percentile bootstrap over items (patients) for every metric ``metric_fn`` returns.

    ``metric_fn(indices)`` computes a flat ``{name: float | None}`` on the items ``indices``;
    it is called once on all items (the point estimate) and once per resample, the resamples
    being the rows of ``cluster_draws(n_items, n_boot, seed)``.

    Returns ``{name: {'value', 'low', 'high', 'n_boot_valid'}}``. A resample where a metric is
    undefined (``None``/NaN, e.g. a class missing from it) is left out of that metric's
    interval; ``n_boot_valid`` says how many were used, and ``low``/``high`` are ``None`` when
    none was. A percentile interval need not contain ``value`` for very skewed metrics.

    Written by hand rather than with ``scipy.stats.bootstrap`` because scipy resamples data
    arrays for one numeric statistic, whereas we need (a) every metric from the *same*
    resampled patients, computed once per resample, and (b) metrics that may be undefined in a
    resample without aborting the whole interval.
    """
    if n_items < 1:
        raise ValueError("bootstrap needs at least one item")
    point = metric_fn(np.arange(n_items))
    samples: dict[str, list[float]] = {name: [] for name in point}
    for drawn in cluster_draws(n_items, n_boot, seed):
        resampled = metric_fn(drawn)
        for name, value in resampled.items():
            if name in samples and _is_defined(value):
                samples[name].append(float(value))
    intervals = {}
    for name, value in point.items():
        low, high = percentile_interval(samples[name], alpha)
        intervals[name] = {
            "value": float(value) if _is_defined(value) else None,
            "low": None if np.isnan(low) else low,
            "high": None if np.isnan(high) else high,
            "n_boot_valid": len(samples[name]),
        }
    return intervals


def by_group(
    metric_fn: Callable[[np.ndarray], dict], groups: Sequence
) -> tuple[Callable[[np.ndarray], dict], int]:
    """A cluster bootstrap: ``metric_fn`` over rows becomes a function over *groups* (patients),
    each drawn group bringing all its rows. For slice-level metrics whose interval must be
    about patients. Returns ``(group_fn, n_groups)`` for :func:`bootstrap_intervals`; the
    groups are numbered by ``cluster_codes``, so the resamples are those of ``compare``."""
    codes, n_groups = cluster_codes(groups)
    units_of = cluster_units(codes, n_groups)

    def group_fn(group_indices: np.ndarray) -> dict:
        return metric_fn(units_of(np.asarray(group_indices)))

    return group_fn, n_groups


# --------------------------------------------------------------------------- compare's samples


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
    units_of = cluster_units(codes, n_clusters)
    samples = np.empty(n_boot)
    for b, drawn in enumerate(cluster_draws(n_clusters, n_boot, seed)):
        samples[b] = metric_fn(data, units_of(drawn))
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


# --------------------------------------------------------------------------- paired differences


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


# --------------------------------------------------------------------------- AUC


def rank_auc(
    is_positive: np.ndarray, scores: np.ndarray | None, ranks: np.ndarray | None = None
) -> float:
    """Mann–Whitney AUC from midranks; ties count 1/2, like sklearn's trapezoidal rule. NaN
    without both outcomes.

    ``ranks``: the midranks of ``scores`` when the caller already has them (``scores`` is then
    unused): evaluate's bootstrap ranks every class column of a resample in one ``rankdata``
    call, a third faster than one call per class.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    m = int(is_positive.sum())
    n = is_positive.size - m
    if m == 0 or n == 0:
        return float("nan")
    if ranks is None:
        ranks = stats.rankdata(scores)
    return float((ranks[is_positive].sum() - m * (m + 1) / 2) / (m * n))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes that have both outcomes in ``y`` (NaN if none)."""
    aucs = [rank_auc(y == k, probs[:, k]) for k in range(probs.shape[1])]
    defined = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(defined)) if defined else float("nan")

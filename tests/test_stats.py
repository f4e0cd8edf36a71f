"""Paired tests of ``mritumor.evaluation.stats`` and the clustered bootstrap of
``mritumor.evaluation.bootstrap`` against SciPy, statsmodels, scikit-learn and slow,
independently written references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from mritumor.evaluation import bootstrap, stats

# --------------------------------------------------------------------------- McNemar


def test_mcnemar_exact_is_binomial_test_on_discordant_pairs():
    """Exact McNemar = two-sided binomial test (p = 1/2) of A-only-correct among discordant
    pairs; the counts are checked with an explicit loop."""
    rng = np.random.default_rng(1)
    a = rng.random(80) < 0.8
    b = rng.random(80) < 0.6
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    result = stats.mcnemar_exact(a, b)
    assert (result["a_only_correct"], result["b_only_correct"]) == (a_only, b_only)
    expected = sps.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert result["p_value"] == pytest.approx(expected, rel=1e-12)
    assert result["accuracy_a"] == pytest.approx(a.mean())
    # symmetric in A and B
    assert stats.mcnemar_exact(b, a)["p_value"] == pytest.approx(result["p_value"])


def test_mcnemar_exact_edge_cases():
    """No discordant pair: p = 1. All 10 discordant pairs favour A: p = 2 · 0.5^10."""
    same = np.array([True, False, True])
    assert stats.mcnemar_exact(same, same)["p_value"] == 1.0
    a = np.ones(10, bool)
    assert stats.mcnemar_exact(a, ~a)["p_value"] == pytest.approx(2 * 0.5**10)
    with pytest.raises(ValueError):
        stats.mcnemar_exact([True], [True, False])


# --------------------------------------------------------------------------- DeLong


def _psi(x: float, y: float) -> float:
    """Mann–Whitney kernel: 1 if the positive scores higher, 1/2 on a tie."""
    return 1.0 if x > y else 0.5 if x == y else 0.0


def slow_delong(y, scores_a, scores_b) -> tuple[float, float, float, float]:
    """DeLong et al. (1988) written out with loops: structural components
    V10(x_i) = mean_j psi(x_i, y_j) and V01(y_j) = mean_i psi(x_i, y_j) per scorer, their
    sample covariances S10, S01, and Var(AUC_A − AUC_B) = L S10 Lᵀ / m + L S01 Lᵀ / n."""
    positives = [i for i in range(len(y)) if y[i]]
    negatives = [j for j in range(len(y)) if not y[j]]
    m, n = len(positives), len(negatives)
    v10, v01 = [], []
    for s in (scores_a, scores_b):
        v10.append([sum(_psi(s[i], s[j]) for j in negatives) / n for i in positives])
        v01.append([sum(_psi(s[i], s[j]) for i in positives) / m for j in negatives])

    def cov(u, v):
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        return sum((p - mu) * (q - mv) for p, q in zip(u, v, strict=True)) / (len(u) - 1)

    auc_a, auc_b = sum(v10[0]) / m, sum(v10[1]) / m
    var = (cov(v10[0], v10[0]) + cov(v10[1], v10[1]) - 2 * cov(v10[0], v10[1])) / m + (
        cov(v01[0], v01[0]) + cov(v01[1], v01[1]) - 2 * cov(v01[0], v01[1])
    ) / n
    z = (auc_a - auc_b) / math.sqrt(var)
    p = math.erfc(abs(z) / math.sqrt(2))  # two-sided normal tail
    return auc_a, auc_b, var, p


@pytest.mark.parametrize("round_to", [None, 1])  # 1 decimal: many ties within and across groups
def test_delong_matches_slow_structural_components(round_to):
    """Two correlated scorers on the same 70 cases (shared noise); the fast midrank version
    equals the loop reference in AUCs, variance and p-value, ties included."""
    rng = np.random.default_rng(7)
    y = rng.random(70) < 0.4
    shared = rng.normal(size=70)
    a = 1.2 * y + shared + 0.6 * rng.normal(size=70)
    b = 0.6 * y + shared + 0.6 * rng.normal(size=70)
    if round_to is not None:
        a, b = a.round(round_to), b.round(round_to)
    auc_a, auc_b, var, p = slow_delong(y, a, b)
    result = stats.delong_test(y, a, b)
    assert result["auc_a"] == pytest.approx(auc_a, abs=1e-12)
    assert result["auc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result["variance"] == pytest.approx(var, rel=1e-9)
    assert result["p_value"] == pytest.approx(p, rel=1e-7)
    assert result["z"] == pytest.approx((auc_a - auc_b) / math.sqrt(var), rel=1e-9)


def test_delong_identical_scorers_and_degenerate_inputs():
    """Same scores twice: difference 0, p = 1. One class only: error. One positive: NaN p."""
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.8, 0.3, 0.6, 0.2, 0.5])
    result = stats.delong_test(y, s, s)
    assert result["difference"] == 0 and result["p_value"] == 1.0
    with pytest.raises(ValueError):
        stats.delong_test(np.ones(4), s[:4], s[:4])
    assert math.isnan(stats.delong_test([1, 0, 0], [0.9, 0.1, 0.2], [0.3, 0.1, 0.2])["p_value"])


def test_delong_has_nominal_size_under_the_null():
    """Two scorers of equal true AUC (same signal, independent noise): about 5 % of 400
    simulated studies reject at 0.05 (binomial sd ≈ 1.1 %)."""
    rng = np.random.default_rng(11)
    rejections = 0
    for _ in range(400):
        y = rng.random(80) < 0.5
        shared = rng.normal(size=80)
        a = y + shared + rng.normal(size=80)
        b = y + shared + rng.normal(size=80)
        rejections += stats.delong_test(y, a, b)["p_value"] < 0.05
    assert 0.02 <= rejections / 400 <= 0.09


# --------------------------------------------------------------------------- Wilcoxon


def test_wilcoxon_paired_matches_scipy_and_drops_nan_pairs():
    """Same statistic and p as scipy.stats.wilcoxon on the pairs without NaN."""
    rng = np.random.default_rng(3)
    a = rng.beta(8, 2, 40)
    b = np.clip(a - 0.04 + 0.08 * rng.normal(size=40), 0, 1)
    a[[2, 9]] = np.nan
    b[17] = np.nan
    keep = ~(np.isnan(a) | np.isnan(b))
    expected = sps.wilcoxon(a[keep], b[keep])
    result = stats.wilcoxon_paired(a, b)
    assert result["n"] == 37
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert result["median_difference"] == pytest.approx(np.median(a[keep] - b[keep]))


def test_wilcoxon_paired_ties_zeros_and_empty():
    """Tied and zero differences go to scipy's defaults; all-zero differences give p = 1."""
    a = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3, 0.65])
    b = np.array([0.5, 0.5, 0.6, 0.7, 0.7, 0.5, 0.3, 0.60])
    expected = sps.wilcoxon(a, b)
    assert stats.wilcoxon_paired(a, b)["p_value"] == pytest.approx(expected.pvalue)
    assert stats.wilcoxon_paired(a, a)["p_value"] == 1.0
    assert math.isnan(stats.wilcoxon_paired([np.nan], [1.0])["p_value"])


# --------------------------------------------------------------------------- Friedman, Holm


def test_friedman_matches_scipy_and_drops_incomplete_blocks():
    """Friedman chi-square and p as scipy.stats.friedmanchisquare on the complete rows; mean
    ranks checked by hand on a 2-block example."""
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(25, 4)) + np.array([0.0, 0.3, 0.6, 0.1])
    matrix[4, 2] = np.nan
    complete = np.delete(matrix, 4, axis=0)
    expected = sps.friedmanchisquare(*complete.T)
    result = stats.friedman_test(matrix)
    assert result["n_blocks"] == 24 and result["k"] == 4
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    small = stats.friedman_test([[1, 2, 3], [3, 2, 1]])
    assert small["mean_ranks"] == [2.0, 2.0, 2.0]


def test_friedman_binary_ties_and_errors():
    """0/1 correctness (heavy ties) still matches scipy; all-tied blocks give p = 1; k < 3 fails."""
    rng = np.random.default_rng(6)
    matrix = (rng.random((30, 3)) < [0.9, 0.7, 0.5]).astype(float)
    expected = sps.friedmanchisquare(*matrix.T)
    assert stats.friedman_test(matrix)["p_value"] == pytest.approx(expected.pvalue)
    assert stats.friedman_test(np.ones((5, 3)))["p_value"] == 1.0
    with pytest.raises(ValueError):
        stats.friedman_test(np.ones((5, 2)))


def test_holm_hand_computed_example():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    0.04·1 = 0.04 → running max 0.02, 0.03, 0.06, 0.06; back in input order below. A NaN is kept
    and not counted; values are capped at 1."""
    adjusted = stats.holm_correction([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    with_nan = stats.holm_correction([0.2, np.nan, 0.6])
    assert math.isnan(with_nan[1])
    np.testing.assert_allclose(with_nan[[0, 2]], [0.4, 0.6])
    np.testing.assert_allclose(stats.holm_correction([0.5, 0.7, 0.9]), [1.0, 1.0, 1.0])


def test_holm_matches_statsmodels():
    """Against statsmodels' multipletests(method='holm'), an independent implementation."""
    p = np.random.default_rng(2).random(12) ** 3
    expected = multipletests(p, method="holm")[1]
    np.testing.assert_allclose(stats.holm_correction(p), expected)


# --------------------------------------------------------------------------- bootstrap


def _clustered_binary(rng, n_patients: int = 40):
    """Units (slices) nested in patients: a patient's 1–8 slices share a difficulty u and a
    per-model effect v_A, v_B (all N(0, 1)); P(correct) = sigmoid(1 + u + v_A) for A and
    sigmoid(0.3 + u + v_B) for B, so the difference is correlated within a patient (a bootstrap
    of single slices covers only about 86 % here)."""
    sizes = rng.integers(1, 9, n_patients)
    patients = np.repeat(np.arange(n_patients), sizes)
    u, v_a, v_b = rng.normal(size=(3, n_patients))
    a = rng.random(patients.size) < 1 / (1 + np.exp(-(1.0 + u + v_a)[patients]))
    b = rng.random(patients.size) < 1 / (1 + np.exp(-(0.3 + u + v_b)[patients]))
    return a.astype(float), b.astype(float), patients


def _true_accuracy_difference() -> float:
    """E[sigmoid(1 + z) − sigmoid(0.3 + z)], z = u + v ~ N(0, 2), by quadrature: the population
    value of the unit-level accuracy difference (cluster sizes are independent of z)."""

    def integrand(z):
        difference = 1 / (1 + np.exp(-(1 + z))) - 1 / (1 + np.exp(-(0.3 + z)))
        return difference * sps.norm.pdf(z, scale=math.sqrt(2))

    return integrate.quad(integrand, -15, 15)[0]


def test_clustered_bootstrap_covers_true_accuracy_difference():
    """200 simulated datasets of 40 patients, 300 resamples each: the 95 % interval of the
    accuracy difference covers the true value in 88–99 % of them."""
    rng = np.random.default_rng(0)
    truth = _true_accuracy_difference()
    covered = 0
    for k in range(200):
        a, b, patients = _clustered_binary(rng)
        result = bootstrap.clustered_bootstrap_mean_difference(a, b, patients, n_boot=300, seed=k)
        covered += result["low"] <= truth <= result["high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_clustered_bootstrap_covers_true_dice_difference():
    """Per-patient Dice (one unit per patient): A ~ Beta(8, 2) (mean 0.8), B = 0.9 A + 0.05 W,
    W ~ Beta(2, 2) (mean 0.745); the 95 % interval of the mean difference (0.055) covers the
    truth in 88–99 % of 200 datasets of 30 patients."""
    rng = np.random.default_rng(1)
    covered = 0
    for k in range(200):
        a = rng.beta(8, 2, 30)
        b = 0.9 * a + 0.05 * rng.beta(2, 2, 30)
        result = bootstrap.clustered_bootstrap_mean_difference(
            a, b, np.arange(30), n_boot=300, seed=k
        )
        covered += result["low"] <= 0.055 <= result["high"]
    assert 0.88 <= covered / 200 <= 0.99


def _binormal_clustered(rng, n_patients: int = 40, slices: int = 3):
    """Binormal scores with a patient random effect: a patient's slices share its label and a
    N(0, 1) effect, plus N(0, 0.5) slice noise; A's positives are shifted by 1.5, B's by 0.7."""
    patients = np.repeat(np.arange(n_patients), slices)
    y = (rng.random(n_patients) < 0.5)[patients]
    effect = rng.normal(size=n_patients)[patients]
    noise = math.sqrt(0.5)
    a = 1.5 * y + effect + noise * rng.normal(size=patients.size)
    b = 0.7 * y + effect + noise * rng.normal(size=patients.size)
    return y, a, b, patients


def test_clustered_bootstrap_covers_true_auc_difference():
    """Positives and negatives come from different patients, so the population AUC is
    Phi(mu / sqrt(2 · 1.5)); 200 datasets of 40 patients × 3 slices, 300 resamples: the 95 %
    interval of AUC(A) − AUC(B) covers the truth in 88–99 % of them."""
    rng = np.random.default_rng(2)
    truth = sps.norm.cdf(1.5 / math.sqrt(3.0)) - sps.norm.cdf(0.7 / math.sqrt(3.0))
    covered = 0
    for k in range(200):
        y, a, b, patients = _binormal_clustered(rng)
        samples_a = bootstrap.clustered_bootstrap_auc(y, a, patients, n_boot=300, seed=k)
        samples_b = bootstrap.clustered_bootstrap_auc(y, b, patients, n_boot=300, seed=k)
        estimate = bootstrap.rank_auc(y, a) - bootstrap.rank_auc(y, b)
        result = bootstrap.summarise_difference(estimate, samples_a - samples_b)
        covered += result["low"] <= truth <= result["high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_vectorised_auc_bootstrap_equals_the_index_loop():
    """The weighted tie-group AUC equals sklearn's AUC recomputed on each resample's units
    (same resamples); ties (rounded scores) and excluded units (label -1) included, for one
    class and for the macro one-vs-rest AUC."""
    rng = np.random.default_rng(8)
    y, a, _, patients = _binormal_clustered(rng, n_patients=12)
    a = a.round(1)

    def auc(scores, index):
        labels = y[index]
        return roc_auc_score(labels, scores[index]) if 0 < labels.sum() < labels.size else np.nan

    slow = bootstrap.clustered_bootstrap_samples(auc, a, patients, n_boot=60, seed=3)
    fast = bootstrap.clustered_bootstrap_auc(y, a, patients, n_boot=60, seed=3)
    np.testing.assert_allclose(fast, slow, atol=1e-12)

    labels = rng.integers(0, 3, patients.size)
    labels[[0, 5, 6]] = -1
    probs = rng.dirichlet(np.ones(3), patients.size).round(2)

    def macro(_data, index):
        kept = index[labels[index] >= 0]
        return bootstrap.macro_auc(labels[kept], probs[kept])

    slow = bootstrap.clustered_bootstrap_samples(macro, None, patients, n_boot=60, seed=4)
    fast = bootstrap.clustered_bootstrap_macro_auc(labels, probs, patients, n_boot=60, seed=4)
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_generic_and_vectorised_bootstrap_use_the_same_resamples():
    """The index-based bootstrap with a mean metric gives exactly the vectorised numbers."""
    a, b, patients = _clustered_binary(np.random.default_rng(4), n_patients=15)
    fast = bootstrap.clustered_bootstrap_mean_difference(a, b, patients, n_boot=150, seed=9)

    def mean(values, index):
        return float(values[index].mean())

    slow = bootstrap.clustered_bootstrap_difference(mean, a, b, patients, n_boot=150, seed=9)
    for key in ("estimate", "low", "high", "se", "p_value"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-12)


def test_bootstrap_resamples_whole_patients():
    """Every resample holds each drawn patient's units all together (a multiple of its size),
    and as many patients as there are."""
    patients = np.array(["p2", "p1", "p2", "p3", "p2", "p1"])  # sizes p1: 2, p2: 3, p3: 1
    sizes = {"p1": 2, "p2": 3, "p3": 1}
    seen = []

    def record(_data, index):
        counts = {p: int((patients[index] == p).sum()) for p in sizes}
        seen.append(counts)
        return 0.0

    bootstrap.clustered_bootstrap_samples(record, None, patients, n_boot=50, seed=0)
    for counts in seen:
        assert all(counts[p] % sizes[p] == 0 for p in sizes)
        assert sum(counts[p] // sizes[p] for p in sizes) == 3
    assert len({tuple(c.values()) for c in seen}) > 1


def test_bootstrap_p_value_and_interval():
    """Interval inversion: differences all above 0 give p = 2/(B+1); centred ones p ≈ 1."""
    assert bootstrap.bootstrap_p_value(np.linspace(0.1, 1, 99)) == pytest.approx(2 / 100)
    assert bootstrap.bootstrap_p_value(np.linspace(-1, 1, 101)) == 1.0
    low, high = bootstrap.percentile_interval(np.arange(101.0), 0.1)
    assert (low, high) == (5.0, 95.0)


def test_rank_auc_equals_sklearn_with_ties():
    """The one rank AUC (used by evaluate's fast path and by compare) against sklearn's
    trapezoidal ROC AUC: scores on a coarse grid, so most scores are tied; undefined is NaN.
    Ordinal ranks instead of midranks would miss it by the ties' share."""
    rng = np.random.default_rng(11)
    for n, levels in ((7, 3), (40, 5), (300, 11)):
        y = rng.random(n) < 0.4
        y[:2] = [True, False]  # both outcomes
        scores = (rng.integers(0, levels, n) + y * rng.integers(0, 3, n)) / levels
        assert len(np.unique(scores)) < n  # ties present
        expected = roc_auc_score(y, scores)
        assert bootstrap.rank_auc(y, scores) == pytest.approx(expected, rel=0, abs=1e-12)
        ranked = bootstrap.rank_auc(y, None, ranks=sps.rankdata(scores))  # evaluate's fast path
        assert ranked == pytest.approx(expected, rel=0, abs=1e-12)
    assert math.isnan(bootstrap.rank_auc(np.ones(5, bool), np.arange(5.0)))


def test_percentile_interval_equals_numpy_percentile_by_hand():
    """(alpha/2, 1 − alpha/2) percentiles of the finite samples: numpy.percentile, and the
    linear interpolation written out (h = (n − 1) q between the sorted neighbours)."""
    rng = np.random.default_rng(12)
    samples = rng.normal(size=257)
    samples[[3, 50, 100]] = [np.nan, np.inf, np.nan]  # undefined resamples are left out
    finite = np.sort(samples[np.isfinite(samples)])
    for alpha in (0.05, 0.1, 0.32):
        low, high = bootstrap.percentile_interval(samples, alpha)
        expected = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        by_hand = []
        for q in (alpha / 2, 1 - alpha / 2):
            h = (finite.size - 1) * q
            below = int(math.floor(h))
            by_hand.append(finite[below] + (h - below) * (finite[below + 1] - finite[below]))
        assert (low, high) == pytest.approx(tuple(expected), rel=0, abs=1e-12)
        assert (low, high) == pytest.approx(tuple(by_hand), rel=0, abs=1e-12)
    assert all(math.isnan(v) for v in bootstrap.percentile_interval([np.nan, np.nan]))

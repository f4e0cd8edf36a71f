"""The paired analyses: classification (McNemar, DeLong, bootstrap) and Dice (Wilcoxon)."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import norm

from mritumor.compare.runs import Aligned
from mritumor.evaluation import bootstrap, stats

CI_METHOD = "patient-clustered percentile bootstrap"


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    return list(combinations(names, 2))


def _interval(value: float, samples: np.ndarray, alpha: float) -> dict:
    low, high = bootstrap.percentile_interval(samples, alpha)
    return {"value": float(value), "low": low, "high": high}


def _per_patient(values: np.ndarray, patients: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mean of the defined values of each patient, in ``order`` (NaN: none defined)."""
    series = pd.Series(values).groupby(patients).mean()  # skips NaN
    return series.reindex(order).to_numpy(dtype=np.float64)


def classification_analysis(
    aligned: Aligned, names: list[str], n_boot: int, seed: int, alpha: float
) -> dict:
    """Per-run accuracy / AUCs with intervals, pairwise McNemar, DeLong and bootstrap tests."""
    known = aligned.truth >= 0
    y = aligned.truth
    correct = np.column_stack(
        [np.where(known, aligned.preds[n] == y, np.nan).astype(np.float64) for n in names]
    )
    accuracy_samples = bootstrap.clustered_bootstrap_means(correct, aligned.patients, n_boot, seed)
    auc_samples = {
        n: bootstrap.clustered_bootstrap_macro_auc(
            y, aligned.probs[n], aligned.patients, n_boot, seed
        )
        for n in names
    }
    summary = {}
    for r, name in enumerate(names):
        probs = aligned.probs[name]
        summary[name] = {
            "n_units": int(known.sum()),
            "accuracy": _interval(np.nanmean(correct[:, r]), accuracy_samples[:, r], alpha),
            "macro_auc": _interval(
                bootstrap.macro_auc(y[known], probs[known]), auc_samples[name], alpha
            ),
            "auc_per_class": {
                c: bootstrap.rank_auc(y[known] == k, probs[known, k])
                for k, c in enumerate(aligned.class_names)
            },
        }
    pairwise = []
    for a, b in _pairs(names):
        ia, ib = names.index(a), names.index(b)
        pairwise.append(
            {
                "run_a": a,
                "run_b": b,
                "accuracy": _accuracy_pair(
                    correct[:, ia], correct[:, ib], accuracy_samples, ia, ib, alpha
                ),
                "macro_auc": _macro_auc_pair(summary, a, b, auc_samples, alpha),
                "auc_per_class": _delong_per_class(aligned, a, b, alpha),
            }
        )
    _holm(pairwise, ["accuracy"], alpha)
    _holm(pairwise, ["macro_auc"], alpha)
    for c in aligned.class_names:
        _holm(pairwise, ["auc_per_class", c], alpha)
    patient_order = np.unique(aligned.patients)
    per_patient = np.column_stack(
        [_per_patient(correct[:, r], aligned.patients, patient_order) for r in range(len(names))]
    )
    friedman = _friedman(per_patient, names, "per-patient accuracy (share of units correct)")
    return {"summary": summary, "pairwise": pairwise, "friedman": friedman}


def _accuracy_pair(correct_a, correct_b, samples, ia, ib, alpha) -> dict:
    keep = np.isfinite(correct_a)
    test = stats.mcnemar_exact(correct_a[keep] > 0, correct_b[keep] > 0)
    estimate = test["accuracy_a"] - test["accuracy_b"]
    interval = bootstrap.summarise_difference(estimate, samples[:, ia] - samples[:, ib], alpha)
    return {
        "a": test["accuracy_a"],
        "b": test["accuracy_b"],
        "difference": estimate,
        "ci_low": interval["low"],
        "ci_high": interval["high"],
        "ci_method": CI_METHOD,
        "test": test["test"],
        "statistic": float(test["a_only_correct"]),
        "statistic_name": "units only A gets right (of the discordant pairs)",
        "n": test["n"],
        "a_only_correct": test["a_only_correct"],
        "b_only_correct": test["b_only_correct"],
        "p_value": test["p_value"],
    }


def _macro_auc_pair(summary, a, b, samples, alpha) -> dict:
    estimate = summary[a]["macro_auc"]["value"] - summary[b]["macro_auc"]["value"]
    interval = bootstrap.summarise_difference(estimate, samples[a] - samples[b], alpha, with_p=True)
    return {
        "a": summary[a]["macro_auc"]["value"],
        "b": summary[b]["macro_auc"]["value"],
        "difference": estimate,
        "ci_low": interval["low"],
        "ci_high": interval["high"],
        "ci_method": CI_METHOD,
        "test": interval["test"],
        "statistic": interval["se"],
        "statistic_name": "bootstrap standard error of the difference",
        "n": summary[a]["n_units"],
        "p_value": interval["p_value"],
    }


def _delong_per_class(aligned: Aligned, a: str, b: str, alpha: float) -> dict:
    known = aligned.truth >= 0
    y = aligned.truth[known]
    z = norm.ppf(1 - alpha / 2)
    result = {}
    for k, c in enumerate(aligned.class_names):
        is_positive = y == k
        if is_positive.all() or not is_positive.any():
            result[c] = {"test": stats.DELONG_TEST, "p_value": math.nan, "note": "one outcome only"}
            continue
        test = stats.delong_test(
            is_positive, aligned.probs[a][known, k], aligned.probs[b][known, k]
        )
        result[c] = {
            "a": test["auc_a"],
            "b": test["auc_b"],
            "difference": test["difference"],
            "ci_low": test["difference"] - z * test["se"],
            "ci_high": test["difference"] + z * test["se"],
            "ci_method": "DeLong normal approximation (difference ± z · se)",
            "se": test["se"],
            "test": test["test"] + ", one-vs-rest",
            "statistic": test["z"],
            "statistic_name": "z",
            "n": test["n_positive"] + test["n_negative"],
            "n_positive": test["n_positive"],
            "p_value": test["p_value"],
        }
    return result


def dice_analysis(aligned: Aligned, names: list[str], n_boot: int, seed: int, alpha: float) -> dict:
    """Per-patient mean Dice: per-run intervals, pairwise Wilcoxon + bootstrap, Friedman."""
    patient_order = np.unique(aligned.patients)
    per_patient = np.column_stack(
        [_per_patient(aligned.dice[n], aligned.patients, patient_order) for n in names]
    )
    samples = bootstrap.clustered_bootstrap_means(per_patient, patient_order, n_boot, seed)
    summary = {
        n: {
            "n_patients": int(np.isfinite(per_patient[:, r]).sum()),
            "mean_dice": _interval(np.nanmean(per_patient[:, r]), samples[:, r], alpha)
            if np.isfinite(per_patient[:, r]).any()
            else {"value": math.nan, "low": math.nan, "high": math.nan},
        }
        for r, n in enumerate(names)
    }
    pairwise = []
    for a, b in _pairs(names):
        ia, ib = names.index(a), names.index(b)
        test = stats.wilcoxon_paired(per_patient[:, ia], per_patient[:, ib])
        interval = bootstrap.clustered_bootstrap_mean_difference(
            per_patient[:, ia], per_patient[:, ib], patient_order, n_boot, seed, alpha
        )
        pairwise.append(
            {
                "run_a": a,
                "run_b": b,
                "dice": {
                    "a": test["mean_a"],
                    "b": test["mean_b"],
                    "difference": test["mean_difference"],
                    "median_difference": test["median_difference"],
                    "ci_low": interval["low"],
                    "ci_high": interval["high"],
                    "ci_method": CI_METHOD,
                    "test": test["test"] + ", per-patient mean Dice",
                    "statistic": test["statistic"],
                    "statistic_name": "W (scipy.stats.wilcoxon)",
                    "n": test["n"],
                    "p_value": test["p_value"],
                },
            }
        )
    _holm(pairwise, ["dice"], alpha)
    friedman = _friedman(per_patient, names, "per-patient mean Dice")
    return {
        "summary": summary,
        "pairwise": pairwise,
        "friedman": friedman,
        "per_patient": {"patients": patient_order, "values": per_patient},
    }


def _holm(pairwise: list[dict], path: list[str], alpha: float) -> None:
    """Add ``p_holm`` (over the pairs) and ``significant`` to the entries at ``path``."""
    entries = [_at(entry, path) for entry in pairwise]
    adjusted = stats.holm_correction([e.get("p_value", math.nan) for e in entries])
    for entry, p in zip(entries, adjusted, strict=True):
        entry["p_holm"] = float(p)
        entry["significant"] = bool(p < alpha) if np.isfinite(p) else None


def _at(entry: dict, path: list[str]) -> dict:
    for key in path:
        entry = entry[key]
    return entry


def _friedman(matrix: np.ndarray, names: list[str], what: str) -> dict | None:
    if len(names) < 3:
        return None
    result = stats.friedman_test(matrix)
    result["test"] = f"{result['test']} on {what}"
    result["runs"] = list(names)
    result["n_blocks_dropped"] = int(len(matrix) - result["n_blocks"])
    result["post_hoc"] = "pairwise tests of this metric with Holm-adjusted p-values (p_holm)"
    return result

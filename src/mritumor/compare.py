"""``mritumor compare``: paired statistical comparison of two or more runs on shared test items.

Each run folder holds a ``predictions.csv`` (``mritumor train-hierarchical``: one row per
patient; ``mritumor train-multitask``: one row per slice, with ``image`` and ``dice``). The unit
of pairing is ``image`` when every run has that column, else ``patient_id`` (slice rows are then
aggregated to patients: mean class probabilities, prediction = their arg-max, mean Dice over the
slices where it is defined). Only units present in every run are compared; the others are
counted as dropped.

Tests, per pair of runs (A − B), and over all runs when there are three or more:

* accuracy (tumour type): exact McNemar on unit correctness; patient-clustered bootstrap
  interval of the accuracy difference.
* AUC: DeLong per class (one-vs-rest); macro AUC difference by the patient-clustered bootstrap
  (interval and a p-value by interval inversion).
* Dice: Wilcoxon signed-rank on per-patient mean Dice; bootstrap interval of the difference of
  mean per-patient Dice.
* three or more runs: Friedman on per-patient accuracy and on per-patient Dice; every pairwise
  p-value also gets a Holm-adjusted one (over the pairs, per test and per class).

Writes ``comparison.json``, ``comparison.csv`` (one row per pair × metric, plus Friedman rows),
``comparison.md``, ``dice_per_patient_boxplot.png`` and ``roc_overlay.png``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import norm
from sklearn.metrics import roc_curve

from mritumor.errors import MritumorError
from mritumor.evaluation import stats

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
PROB_PREFIX = "p_type_"
CI_METHOD = "patient-clustered percentile bootstrap"
BOXPLOT_FILE = "dice_per_patient_boxplot.png"
ROC_FILE = "roc_overlay.png"


# --------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """One run folder's predictions and what they allow."""

    name: str
    path: Path
    table: pd.DataFrame
    class_names: list[str] | None  # from the p_type_* columns; None: no classification
    has_dice: bool
    aggregated: bool = False  # slice rows averaged to patients

    @property
    def has_classification(self) -> bool:
        return self.class_names is not None


def run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names; duplicates become ``parent/name`` (and ``#k`` if that is not enough)."""
    paths = [Path(p).resolve() for p in paths]
    names = [p.name for p in paths]
    duplicated = {n for n in names if names.count(n) > 1}
    names = [f"{p.parent.name}/{p.name}" if p.name in duplicated else p.name for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return unique


def read_run(path: Path, name: str) -> Run:
    """The run's predictions.csv, its class names and whether it has Dice."""
    csv = Path(path) / PREDICTIONS
    if not csv.is_file():
        raise MritumorError(
            f"{path}: no {PREDICTIONS} (give run folders of train-hierarchical or train-multitask)"
        )
    table = pd.read_csv(csv)
    if "patient_id" not in table.columns:
        raise MritumorError(f"{csv}: no patient_id column")
    table["patient_id"] = table["patient_id"].astype(str)
    if "image" in table.columns:
        table["image"] = table["image"].astype(str)
    probs = [c[len(PROB_PREFIX) :] for c in table.columns if c.startswith(PROB_PREFIX)]
    classification = bool(probs) and "true_type" in table.columns
    return Run(
        name=name,
        path=Path(path),
        table=table,
        class_names=probs if classification else None,
        has_dice="dice" in table.columns,
    )


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    if len(paths) < 2:
        raise MritumorError("compare needs at least two run folders")
    runs = [read_run(Path(p), n) for p, n in zip(paths, run_names(paths), strict=True)]
    _check_class_sets(runs)
    if sum(r.has_classification for r in runs) < 2 and sum(r.has_dice for r in runs) < 2:
        kinds = ", ".join(f"{r.name}: {_kind(r)}" for r in runs)
        raise MritumorError(
            "nothing to compare: fewer than two runs have classification columns "
            f"(true_type, p_type_*) and fewer than two have a dice column ({kinds})"
        )
    return runs


def _kind(run: Run) -> str:
    parts = (["classification"] if run.has_classification else []) + (
        ["dice"] if run.has_dice else []
    )
    return " + ".join(parts) or "neither classification nor dice"


def _check_class_sets(runs: list[Run]) -> None:
    classified = [r for r in runs if r.has_classification]
    if not classified:
        return
    reference = classified[0]
    for run in classified[1:]:
        if set(run.class_names) != set(reference.class_names):
            raise MritumorError(
                f"runs predict different tumour types: {reference.name} has "
                f"{sorted(reference.class_names)}, {run.name} has {sorted(run.class_names)}"
            )
        run.class_names = list(reference.class_names)  # one column order for all


# --------------------------------------------------------------------------- aligning


@dataclass
class Aligned:
    """Every run's values on the units all runs share, in one unit order."""

    unit: str  # 'image' or 'patient_id'
    units: np.ndarray  # (N,) unit keys
    patients: np.ndarray  # (N,) patient of each unit (the bootstrap clusters)
    class_names: list[str]
    truth: np.ndarray  # (N,) class index, -1 unknown
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (N, K)
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (N,)
    dice: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (N,)
    dropped: dict = field(default_factory=dict)


def _aggregate_to_patients(run: Run) -> Run:
    """Slice rows → one row per patient: mean probabilities, mean defined Dice."""
    table = run.table
    if not table["patient_id"].duplicated().any():
        return run
    grouped = table.groupby("patient_id", sort=False)
    columns: dict[str, pd.Series] = {}
    if run.has_classification:
        truths = grouped["true_type"].nunique()
        if (truths > 1).any():
            raise MritumorError(
                f"{run.name}: patient {truths[truths > 1].index[0]} has slices of several types"
            )
        columns["true_type"] = grouped["true_type"].first()
        for name in run.class_names:
            columns[PROB_PREFIX + name] = grouped[PROB_PREFIX + name].mean()
    if run.has_dice:
        columns["dice"] = grouped["dice"].mean()  # pandas' mean skips NaN
    aggregated = pd.DataFrame(columns).reset_index()
    return Run(run.name, run.path, aggregated, run.class_names, run.has_dice, aggregated=True)


def _indexed(run: Run, unit: str) -> pd.DataFrame:
    duplicated = run.table[unit].duplicated()
    if duplicated.any():
        raise MritumorError(
            f"{run.name}: {unit} {run.table[unit][duplicated].iloc[0]!r} appears more than once"
        )
    return run.table.set_index(unit)


def _shared_units(runs: list[Run], tables: list[pd.DataFrame], unit: str) -> pd.Index:
    union = pd.Index(sorted(set().union(*(t.index for t in tables))))
    shared = union
    for table in tables:
        shared = shared.intersection(table.index)
    if len(shared) == 0:
        counts = ", ".join(
            f"{r.name}: {len(t)} (e.g. {t.index[0]!r})" if len(t) else f"{r.name}: none"
            for r, t in zip(runs, tables, strict=True)
        )
        raise MritumorError(
            f"the runs share no test items (unit of pairing: {unit}); {counts}. "
            "Were they evaluated on the same split?"
        )
    return shared.sort_values()


def _class_indices(values: pd.Series, class_names: list[str], what: str) -> np.ndarray:
    index = {name: k for k, name in enumerate(class_names)}
    known = values.notna()
    unknown = sorted(set(values[known].astype(str)) - set(index))
    if unknown:
        raise MritumorError(f"{what} has types {unknown} that are not among {class_names}")
    return np.array([index[str(v)] if ok else -1 for v, ok in zip(values, known, strict=True)])


def _combined_truth(runs, tables, class_names) -> np.ndarray:
    truth = None
    for run, table in zip(runs, tables, strict=True):
        if not run.has_classification:
            continue
        labels = _class_indices(table["true_type"], class_names, f"{run.name} true_type")
        if truth is None:
            truth = labels
            continue
        conflict = (truth >= 0) & (labels >= 0) & (truth != labels)
        if conflict.any():
            raise MritumorError(
                f"{run.name} disagrees with the other runs on true_type for "
                f"{int(conflict.sum())} shared item(s), e.g. {table.index[conflict][0]!r}"
            )
        truth = np.where(truth >= 0, truth, labels)
    return truth


def _check_patients(runs, tables, unit) -> np.ndarray:
    patients = tables[0]["patient_id"].to_numpy(dtype=str) if unit == "image" else None
    if patients is None:
        return tables[0].index.to_numpy(dtype=str)
    for run, table in zip(runs[1:], tables[1:], strict=True):
        differs = table["patient_id"].to_numpy(dtype=str) != patients
        if differs.any():
            raise MritumorError(
                f"{run.name} gives another patient_id for image {table.index[differs][0]!r}"
            )
    return patients


def _predictions(run: Run, table: pd.DataFrame, probs: np.ndarray, class_names) -> np.ndarray:
    """The run's pred_type (arg-max of the probabilities where it is absent or aggregated)."""
    argmax = probs.argmax(axis=1)
    if run.aggregated or "pred_type" not in table.columns:
        return argmax
    preds = _class_indices(table["pred_type"], class_names, f"{run.name} pred_type")
    return np.where(preds >= 0, preds, argmax)


def align(runs: list[Run]) -> Aligned:
    """Pair the runs on the units they all have; count and log the units dropped."""
    unit = "image" if all("image" in r.table.columns for r in runs) else "patient_id"
    if unit == "patient_id":
        runs = [_aggregate_to_patients(r) for r in runs]
    indexed = [_indexed(r, unit) for r in runs]
    shared = _shared_units(runs, indexed, unit)
    union = set().union(*(t.index for t in indexed))
    dropped = {
        "n_units_union": len(union),
        "total": len(union) - len(shared),
        "per_run": {
            r.name: int(len(t.index.difference(shared))) for r, t in zip(runs, indexed, strict=True)
        },
        "aggregated_to_patients": [r.name for r in runs if r.aggregated],
    }
    if dropped["total"]:
        log.warning(
            "%d of %d %s units are not in every run and were dropped (per run: %s)",
            dropped["total"],
            len(union),
            unit,
            dropped["per_run"],
        )
    tables = [t.loc[shared] for t in indexed]
    class_names = next((r.class_names for r in runs if r.has_classification), [])
    truth = _combined_truth(runs, tables, class_names)
    aligned = Aligned(
        unit=unit,
        units=shared.to_numpy(dtype=str),
        patients=_check_patients(runs, tables, unit),
        class_names=class_names,
        truth=truth if truth is not None else np.full(len(shared), -1),
        dropped=dropped,
    )
    for run, table in zip(runs, tables, strict=True):
        if run.has_classification:
            probs = table[[PROB_PREFIX + c for c in class_names]].to_numpy(dtype=np.float64)
            if not np.isfinite(probs).all():
                raise MritumorError(f"{run.name}: p_type_* columns contain NaN or inf")
            aligned.probs[run.name] = probs
            aligned.preds[run.name] = _predictions(run, table, probs, class_names)
        if run.has_dice:
            aligned.dice[run.name] = table["dice"].to_numpy(dtype=np.float64)
    return aligned


# --------------------------------------------------------------------------- analyses


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    return list(combinations(names, 2))


def _interval(value: float, samples: np.ndarray, alpha: float) -> dict:
    low, high = stats.percentile_interval(samples, alpha)
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
    accuracy_samples = stats.clustered_bootstrap_means(correct, aligned.patients, n_boot, seed)
    auc_samples = {
        n: stats.clustered_bootstrap_macro_auc(y, aligned.probs[n], aligned.patients, n_boot, seed)
        for n in names
    }
    summary = {}
    for r, name in enumerate(names):
        probs = aligned.probs[name]
        summary[name] = {
            "n_units": int(known.sum()),
            "accuracy": _interval(np.nanmean(correct[:, r]), accuracy_samples[:, r], alpha),
            "macro_auc": _interval(
                stats.macro_auc(y[known], probs[known]), auc_samples[name], alpha
            ),
            "auc_per_class": {
                c: stats.rank_auc(y[known] == k, probs[known, k])
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
    interval = stats.summarise_difference(estimate, samples[:, ia] - samples[:, ib], alpha)
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
    interval = stats.summarise_difference(estimate, samples[a] - samples[b], alpha, with_p=True)
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
    samples = stats.clustered_bootstrap_means(per_patient, patient_order, n_boot, seed)
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
        interval = stats.clustered_bootstrap_mean_difference(
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


# --------------------------------------------------------------------------- the report


def compare_runs(
    paths: Sequence[str | Path],
    outdir: str | Path,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Compare the runs in ``paths``; write the tables and plots to ``outdir``; return the report."""
    if n_boot < 1:
        raise MritumorError("--n_boot must be at least 1")
    if not 0 < alpha < 1:
        raise MritumorError("--alpha must lie between 0 and 1")
    runs = load_runs(paths)
    aligned = align(runs)
    classified = [r.name for r in runs if r.has_classification]
    segmented = [r.name for r in runs if r.has_dice]
    report = _header(runs, aligned, n_boot, seed, alpha)
    report["skipped"] = {
        "classification": _skipped(runs, classified, "no true_type / p_type_* columns"),
        "dice": _skipped(runs, segmented, "no dice column"),
    }
    classification = dice = None
    if len(classified) >= 2:
        classification = classification_analysis(aligned, classified, n_boot, seed, alpha)
    if len(segmented) >= 2:
        dice = dice_analysis(aligned, segmented, n_boot, seed, alpha)
    report["summary"] = _merge_summaries(runs, classification, dice)
    report["pairwise"] = _merge_pairwise(classification, dice)
    report["friedman"] = {
        "accuracy": classification["friedman"] if classification else None,
        "dice": dice["friedman"] if dice else None,
    }
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    report["files"] = _plots(aligned, classified, dice, outdir)
    report["files"].update({k: f"comparison.{k}" for k in ("json", "csv", "md")})
    report = _jsonable(report)
    (outdir / "comparison.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    csv_rows(report).to_csv(outdir / "comparison.csv", index=False)
    (outdir / "comparison.md").write_text(markdown(report))
    return report


def _header(runs: list[Run], aligned: Aligned, n_boot: int, seed: int, alpha: float) -> dict:
    return {
        "runs": [
            {
                "name": r.name,
                "path": str(r.path),
                "n_rows": int(len(r.table)),
                "classification": r.has_classification,
                "dice": r.has_dice,
                "units_dropped": aligned.dropped["per_run"][r.name],
            }
            for r in runs
        ],
        "unit": aligned.unit,
        "n_units": int(len(aligned.units)),
        "n_units_known_type": int((aligned.truth >= 0).sum()),
        "n_patients": int(len(np.unique(aligned.patients))),
        "dropped_units": aligned.dropped,
        "aggregation": (
            "slice rows averaged to patients (mean p_type_*, prediction = arg-max; mean Dice "
            "over the slices where it is defined) for: "
            + ", ".join(aligned.dropped["aggregated_to_patients"])
            if aligned.dropped["aggregated_to_patients"]
            else None
        ),
        "class_names": aligned.class_names,
        "alpha": alpha,
        "n_boot": n_boot,
        "seed": seed,
        "bootstrap": f"{CI_METHOD}: {n_boot} resamples of patients (all units of a patient "
        f"together), the same resamples for every run, {100 * (1 - alpha):g} % intervals",
        "dice_definition": "mean Dice of a patient = mean of its units' defined Dice values; "
        "a run's mean Dice = mean over patients",
        "tests": {
            "accuracy": f"{stats.MCNEMAR_TEST} on unit correctness",
            "macro_auc": f"{stats.BOOTSTRAP_TEST}: 2 · min(P*(d ≤ 0), P*(d ≥ 0)), resolution "
            f"2 / (n_boot + 1)",
            "auc_per_class": f"{stats.DELONG_TEST}, one class against the rest",
            "dice": f"{stats.WILCOXON_TEST} on per-patient mean Dice",
            "friedman": f"{stats.FRIEDMAN_TEST} on per-patient accuracy / per-patient mean Dice "
            "(three or more runs)",
            "multiplicity": "Holm over the pairs, separately per metric and per class (p_holm)",
        },
        "notes": _notes(aligned),
    }


def _notes(aligned: Aligned) -> list[str]:
    if aligned.unit != "image":
        return []
    return [
        "the unit is a slice: McNemar and DeLong treat slices as independent although the "
        "slices of a patient are correlated, so their p-values can be too small; the "
        "patient-clustered bootstrap intervals and the per-patient tests (Wilcoxon, Friedman) "
        "take the clustering into account."
    ]


def _skipped(runs: list[Run], used: list[str], reason: str) -> list[dict]:
    if len(used) < 2:
        return [
            {"run": r.name, "reason": reason if r.name not in used else "no other run to pair with"}
            for r in runs
        ]
    return [{"run": r.name, "reason": reason} for r in runs if r.name not in used]


def _merge_summaries(runs, classification, dice) -> dict:
    summary = {}
    for run in runs:
        entry = {}
        if classification and run.name in classification["summary"]:
            entry.update(classification["summary"][run.name])
        if dice and run.name in dice["summary"]:
            entry.update(dice["summary"][run.name])
        summary[run.name] = entry
    return summary


def _merge_pairwise(classification, dice) -> list[dict]:
    merged: dict[tuple[str, str], dict] = {}
    for analysis in (classification, dice):
        for entry in analysis["pairwise"] if analysis else []:
            merged.setdefault((entry["run_a"], entry["run_b"]), {}).update(entry)
    return list(merged.values())


def _jsonable(value):
    """NaN/inf → None, NumPy scalars and arrays → Python, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- tables

CSV_COLUMNS = [
    "run_a",
    "run_b",
    "metric",
    "value_a",
    "value_b",
    "difference",
    "ci_low",
    "ci_high",
    "test",
    "statistic",
    "p_value",
    "p_holm",
    "significant",
    "n",
]


def _pairwise_rows(report: dict):
    """(run_a, run_b, metric name, entry) for every pairwise test in the report."""
    for pair in report["pairwise"]:
        for metric in ("accuracy", "macro_auc"):
            if metric in pair:
                yield pair["run_a"], pair["run_b"], metric, pair[metric]
        for c, entry in pair.get("auc_per_class", {}).items():
            yield pair["run_a"], pair["run_b"], f"auc[{c}]", entry
        if "dice" in pair:
            yield pair["run_a"], pair["run_b"], "mean_dice", pair["dice"]


def csv_rows(report: dict) -> pd.DataFrame:
    """One row per pair × metric, then one per Friedman test (run_a = 'all')."""
    rows = [
        {
            "run_a": a,
            "run_b": b,
            "metric": metric,
            "value_a": e.get("a"),
            "value_b": e.get("b"),
            "difference": e.get("difference"),
            "ci_low": e.get("ci_low"),
            "ci_high": e.get("ci_high"),
            "test": e.get("test"),
            "statistic": e.get("statistic"),
            "p_value": e.get("p_value"),
            "p_holm": e.get("p_holm"),
            "significant": e.get("significant"),
            "n": e.get("n"),
        }
        for a, b, metric, e in _pairwise_rows(report)
    ]
    for metric, result in report["friedman"].items():
        if result:
            rows.append(
                {
                    "run_a": "all",
                    "run_b": "",
                    "metric": f"friedman_{metric}",
                    "test": result["test"],
                    "statistic": result["statistic"],
                    "p_value": result["p_value"],
                    "significant": None
                    if result["p_value"] is None
                    else result["p_value"] < report["alpha"],
                    "n": result["n_blocks"],
                }
            )
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _fmt_interval(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    return f"{_fmt(entry['value'])} ({_fmt(entry['low'])}–{_fmt(entry['high'])})"


def summary_table(report: dict) -> list[str]:
    """Markdown rows: each run's accuracy, macro AUC and mean Dice with intervals."""
    level = round(100 * (1 - report["alpha"]))
    lines = [
        f"| run | accuracy ({level} % CI) | macro AUC ({level} % CI) | mean Dice ({level} % CI) |",
        "| --- | --- | --- | --- |",
    ]
    for name, entry in report["summary"].items():
        lines.append(
            f"| {name} | {_fmt_interval(entry.get('accuracy'))} | "
            f"{_fmt_interval(entry.get('macro_auc'))} | {_fmt_interval(entry.get('mean_dice'))} |"
        )
    return lines


def _short_test(test: str | None) -> str:
    """'exact McNemar (two-sided …)' → 'exact McNemar'; the full names are in the JSON/CSV."""
    return "–" if not test else test.split(" (")[0]


def pairwise_table(report: dict) -> list[str]:
    """Markdown rows: every pairwise difference with its interval, test and p-values."""
    lines = [
        "| A | B | metric | A | B | A − B (CI) | test | p | p (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a, b, metric, e in _pairwise_rows(report):
        difference = _fmt(e.get("difference"))
        if e.get("ci_low") is not None:
            difference += f" ({_fmt(e['ci_low'])} to {_fmt(e['ci_high'])})"
        mark = " *" if e.get("significant") else ""
        lines.append(
            f"| {a} | {b} | {metric} | {_fmt(e.get('a'))} | {_fmt(e.get('b'))} | {difference} | "
            f"{_short_test(e.get('test'))} | {_fmt(e.get('p_value'))} | "
            f"{_fmt(e.get('p_holm'))}{mark} |"
        )
    return lines


def markdown(report: dict) -> str:
    dropped = report["dropped_units"]
    lines = [
        "# Model comparison",
        "",
        f"Unit of pairing: `{report['unit']}`; {report['n_units']} units shared by every run "
        f"({report['n_units_known_type']} with a known type), {report['n_patients']} patients. "
        f"{dropped['total']} of {dropped['n_units_union']} units dropped because not every run "
        f"has them (per run: {', '.join(f'{k}: {v}' for k, v in dropped['per_run'].items())}).",
        "",
        f"Intervals: {report['bootstrap']}. Seed {report['seed']}, alpha {report['alpha']}.",
        "",
    ]
    if report["aggregation"]:
        lines += [f"Aggregation: {report['aggregation']}.", ""]
    lines += ["## Runs", "", *summary_table(report), ""]
    lines += ["## Pairwise comparisons (A − B)", "", *pairwise_table(report), ""]
    lines += ["`*`: Holm-adjusted p < alpha (Holm over the pairs, per metric and class).", ""]
    lines += [f"Tests: {'; '.join(report['tests'].values())}.", ""]
    lines += [f"Note: {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    for metric, result in report["friedman"].items():
        if result:
            lines += [
                f"## Friedman test ({metric})",
                "",
                f"{result['test']}: chi² = {_fmt(result['statistic'])}, "
                f"p = {_fmt(result['p_value'])}, {result['n_blocks']} patients "
                f"({result['n_blocks_dropped']} dropped for missing values); mean ranks: "
                + ", ".join(
                    f"{n} {_fmt(r, 2)}"
                    for n, r in zip(result["runs"], result["mean_ranks"], strict=True)
                )
                + f". Post-hoc: {result['post_hoc']}.",
                "",
            ]
    skipped = [
        f"- {s['run']}: not in the {test} comparison ({s['reason']})"
        for test, items in report["skipped"].items()
        for s in items
    ]
    if skipped:
        lines += ["## Skipped", "", *skipped, ""]
    return "\n".join(lines)


def text_summary(report: dict) -> str:
    """A short plain-text summary for the terminal."""
    lines = [
        f"{report['n_units']} shared {report['unit']} units, {report['n_patients']} patients "
        f"({report['dropped_units']['total']} units dropped)"
    ]
    for name, entry in report["summary"].items():
        parts = [
            f"{label} {_fmt_interval(entry.get(key))}"
            for key, label in (("accuracy", "acc"), ("macro_auc", "AUC"), ("mean_dice", "Dice"))
            if entry.get(key)
        ]
        lines.append(f"  {name}: " + ("; ".join(parts) or "nothing comparable"))
    for a, b, metric, e in _pairwise_rows(report):
        if metric.startswith("auc["):
            continue
        lines.append(
            f"  {a} − {b} {metric}: {_fmt(e.get('difference'))} "
            f"[{_fmt(e.get('ci_low'))}, {_fmt(e.get('ci_high'))}] "
            f"p={_fmt(e.get('p_value'))} (Holm {_fmt(e.get('p_holm'))})"
        )
    for metric, result in report["friedman"].items():
        if result:
            lines.append(f"  Friedman ({metric}): p={_fmt(result['p_value'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


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
            auc = stats.rank_auc(is_positive, scores)
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

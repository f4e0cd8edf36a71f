"""``compare_runs``: load, align, analyse, and write the comparison files."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mritumor import runfiles
from mritumor.compare.analysis import CI_METHOD, classification_analysis, dice_analysis
from mritumor.compare.plots import _plots
from mritumor.compare.runs import Aligned, Run, align, load_runs
from mritumor.compare.tables import csv_rows, markdown
from mritumor.errors import MritumorError
from mritumor.evaluation import bootstrap, stats


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
    (outdir / runfiles.COMPARISON_JSON).write_text(json.dumps(report, indent=2, allow_nan=False))
    csv_rows(report).to_csv(outdir / runfiles.COMPARISON_CSV, index=False)
    (outdir / runfiles.COMPARISON_MD).write_text(markdown(report))
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
            "macro_auc": f"{bootstrap.BOOTSTRAP_TEST}: 2 · min(P*(d ≤ 0), P*(d ≥ 0)), resolution "
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

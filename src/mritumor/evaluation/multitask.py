"""Evaluation of a multi-task variant on its test slices, and the seed-004 comparison table.

Writes into the variant's folder: ``test_metrics.json`` (headline numbers with 95 % bootstrap
intervals over *patients*: slices of one patient are resampled together), ``test_report.json``
(everything), ``predictions.csv`` (one row per test slice: the file other commands such as
``mritumor compare`` read), and, depending on the variant, ``roc_tumor_type_ovr.png``,
``pr_tumor_type_ovr.png``, ``confusion_tumor_type.png``, ``reliability_tumor_type.png`` and
``overlays.png`` (true mask green, predicted mask red, on a few test slices).

Dice convention: per slice, a slice where both masks are empty scores 1 (see
:mod:`mritumor.evaluation.segmentation`); the headline Dice is the mean over test slices that
have a reference mask, like the seed's table; per-patient Dice averages a patient's slices first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mritumor import runfiles
from mritumor.data.loading.labels import LabelSpace
from mritumor.evaluation.bootstrap import bootstrap_intervals, by_group
from mritumor.evaluation.calibration import (
    apply_temperature,
    calibration_errors,
    plot_reliability_diagram,
)
from mritumor.evaluation.curves import plot_confusion_matrix, plot_pr_ovr, plot_roc_ovr
from mritumor.evaluation.metrics import classification_report_with_ci
from mritumor.evaluation.segmentation import dice_iou, hd95, per_patient_mean

log = logging.getLogger(__name__)

# The seed's results table (004, FCN-ResNet50 on the full Figshare set): Dice, accuracy.
SEED_TABLE = {
    "A": (0.7311, None),
    "B": (None, 0.9052),
    "C": (0.7309, 0.7157),
    "D": (0.7344, 0.9232),
    "E": (0.7482, 0.9461),
    "F": (0.7517, 0.9477),
    "G": (0.7408, 0.9592),
}


def evaluate_multitask(
    prediction: dict,
    labels: LabelSpace,
    outdir: str | Path,
    cache,
    variant: str,
    temperature: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    n_overlays: int = 8,
) -> dict:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = prediction["rows"]
    table = cache.catalog.table.iloc[rows]
    patients = table["patient_id"].astype(str).to_numpy()
    report: dict = {
        "variant": variant,
        "n_slices": len(rows),
        "n_patients": int(len(set(patients))),
        "temperature": float(temperature),
    }
    columns: dict = {"patient_id": patients, "image": table["image"].astype(str).to_numpy()}
    metrics: dict = {"variant": variant}
    if prediction.get("pred_masks") is not None:
        segmentation = segmentation_report(prediction, patients, n_boot, seed)
        report["segmentation"] = segmentation["report"]
        metrics.update(segmentation["headline"])
        columns.update(segmentation["columns"])
        if n_overlays > 0 and prediction["has_mask"].any():
            plot_overlays(prediction, cache, outdir / runfiles.OVERLAYS, n_overlays)
    if prediction.get("class_logits") is not None:
        classification = classification_part(
            prediction, labels, patients, outdir, temperature, n_boot, seed
        )
        report["tumor_type"] = classification["report"]
        report["calibration"] = classification["calibration"]
        metrics.update(classification["headline"])
        columns.update(classification["columns"])
    if "source" in table.columns:
        metrics["per_source"] = per_source_metrics(
            prediction, labels, table["source"].astype(str).to_numpy(), patients,
            temperature, n_boot, seed,
        )  # fmt: skip
    (outdir / runfiles.TEST_METRICS).write_text(json.dumps(metrics, indent=2))
    (outdir / runfiles.TEST_REPORT).write_text(json.dumps(report, indent=2, default=_plain))
    pd.DataFrame(columns).to_csv(outdir / runfiles.PREDICTIONS, index=False)
    return {"metrics": metrics, "report": report}


def per_source_metrics(
    prediction: dict,
    labels: LabelSpace,
    sources: np.ndarray,
    patients: np.ndarray,
    temperature: float,
    n_boot: int,
    seed: int,
) -> dict:
    """The headline numbers of each source's test slices apart (intervals over its patients):
    a model trained on several sources can be good on the sum and poor on one of them."""
    result = {}
    for name in sorted(set(sources)):
        index = np.flatnonzero(sources == name)
        part = {k: _rows_of(v, index, len(sources)) for k, v in prediction.items()}
        entry: dict = {"n_slices": int(len(index)), "n_patients": int(len(set(patients[index])))}
        if part.get("pred_masks") is not None and part["has_mask"].any():
            entry.update(segmentation_report(part, patients[index], n_boot, seed)["headline"])
        if part.get("class_logits") is not None:
            y = np.asarray(part["type_true"])
            probs = apply_temperature(part["class_logits"], temperature).numpy()
            if (y >= 0).any():
                result_ci = classification_report_with_ci(
                    y, probs, labels.types, n_boot=n_boot, seed=seed, groups=patients[index]
                )["intervals"]
                for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
                    if metric in result_ci:
                        entry[f"tumor_type_{metric}"] = _ci(result_ci[metric])
                entry["ece_after_scaling"] = calibration_errors(y, probs)["ece"]
        result[name] = entry
    return result


def _rows_of(value, index: np.ndarray, n: int):
    """The rows ``index`` of a per-slice output (array or tensor of length n); else as is."""
    if value is None or not hasattr(value, "shape") or len(value.shape) == 0:
        return value
    return value[index] if value.shape[0] == n else value


def segmentation_report(prediction: dict, patients: np.ndarray, n_boot: int, seed: int) -> dict:
    with_mask = prediction["has_mask"].astype(bool)
    n = len(with_mask)
    dice, iou, distance = (np.full(n, np.nan) for _ in range(3))
    if with_mask.any():
        pred, true = prediction["pred_masks"][with_mask], prediction["true_masks"][with_mask]
        dice[with_mask], iou[with_mask] = dice_iou(pred, true)
        distance[with_mask] = hd95(pred, true)
    scored = np.flatnonzero(with_mask)
    values = {"dice": dice, "iou": iou, "hd95": distance}
    # Where some true masks are empty (LGG: most slices of a stack have no tumour), Dice over all
    # slices counts every correctly empty prediction as 1 and says little about the outlines:
    # report Dice over the tumour slices and the share of tumour-free slices predicted empty too.
    tumour = np.zeros(n, dtype=bool)
    if with_mask.any():
        tumour[with_mask] = prediction["true_masks"][with_mask].reshape(len(scored), -1).any(1)
    some_empty = bool((~tumour[scored]).any())

    def slice_means(indices: np.ndarray) -> dict:
        chosen = scored[indices]
        means = {name: _nanmean(v[chosen]) for name, v in values.items()}
        if some_empty:
            means["dice_tumour_slices"] = _nanmean(dice[chosen[tumour[chosen]]])
            # an empty true mask scores Dice 1 exactly when the prediction is empty too
            means["empty_slices_predicted_empty"] = _nanmean(dice[chosen[~tumour[chosen]]] == 1)
        return means

    headline, report = {}, {"n_slices_with_mask": int(len(scored))}
    if some_empty:
        report["n_tumour_slices"] = int(tumour[scored].sum())
        report["n_tumour_free_slices"] = int((~tumour[scored]).sum())
    if len(scored):
        fn, n_groups = by_group(slice_means, patients[scored])
        intervals = bootstrap_intervals(fn, n_groups, n_boot=n_boot, seed=seed)
        per_patient = per_patient_mean(dice[scored], patients[scored])
        patient_values = np.array(list(per_patient.values()))
        patient_interval = bootstrap_intervals(
            lambda idx: {"dice_per_patient": _nanmean(patient_values[idx])},
            len(patient_values),
            n_boot=n_boot,
            seed=seed,
        )
        intervals.update(patient_interval)
        for name, interval in intervals.items():
            headline[name] = _ci(interval)
        report.update(
            {
                "intervals": intervals,
                "per_patient_dice": per_patient,
                "hd95_undefined_slices": int(np.isnan(distance[scored]).sum()),
                "convention": "Dice/IoU 1 when both masks are empty; HD95 NaN when either is",
            }
        )
    return {"headline": headline, "report": report, "columns": values}


def classification_part(
    prediction: dict,
    labels: LabelSpace,
    patients: np.ndarray,
    outdir: Path,
    temperature: float,
    n_boot: int,
    seed: int,
) -> dict:
    logits = prediction["class_logits"]
    y = np.asarray(prediction["type_true"])
    probs = apply_temperature(logits, temperature).numpy()
    raw = apply_temperature(logits, 1.0).numpy()
    result = classification_report_with_ci(
        y, probs, labels.types, n_boot=n_boot, seed=seed, groups=patients
    )
    plot_roc_ovr(y, probs, labels.types, outdir / "roc_tumor_type_ovr.png", "Tumour type (slices), one-vs-rest ROC")  # fmt: skip
    plot_pr_ovr(y, probs, labels.types, outdir / "pr_tumor_type_ovr.png", "Tumour type (slices), one-vs-rest precision-recall")  # fmt: skip
    plot_confusion_matrix(
        np.asarray(result["metrics"]["confusion_matrix"]),
        labels.types,
        outdir / "confusion_tumor_type.png",
        "Tumour type, slices (rows: true)",
    )
    calibration = {
        "before_scaling": calibration_errors(y, raw),
        "after_scaling": calibration_errors(y, probs),
    }
    plot_reliability_diagram(
        y, probs, outdir / "reliability_tumor_type.png", f"Tumour type reliability (T = {temperature:.2f})"
    )  # fmt: skip
    # patient level: mean of the patient's slice probabilities
    frame = pd.DataFrame(probs).assign(patient=patients, y=y)
    grouped = frame.groupby("patient", sort=False)
    patient_probs = grouped[list(range(len(labels.types)))].mean().to_numpy()
    patient_y = grouped["y"].first().to_numpy()
    by_patient = classification_report_with_ci(
        patient_y, patient_probs, labels.types, n_boot=n_boot, seed=seed
    )
    result["patient_level"] = by_patient
    intervals = result["intervals"]
    headline = {
        f"tumor_type_{name}": _ci(intervals[name])
        for name in ("accuracy", "macro_f1", "macro_auc", "macro_average_precision")
        if name in intervals
    }
    if "accuracy" in by_patient["intervals"]:
        headline["tumor_type_patient_accuracy"] = _ci(by_patient["intervals"]["accuracy"])
    headline["ece_before_scaling"] = calibration["before_scaling"]["ece"]
    headline["ece_after_scaling"] = calibration["after_scaling"]["ece"]
    headline["mce_before_scaling"] = calibration["before_scaling"]["mce"]
    headline["mce_after_scaling"] = calibration["after_scaling"]["mce"]
    columns = {
        "true_type": [labels.types[k] if k >= 0 else None for k in y],
        "pred_type": [labels.types[k] for k in probs.argmax(axis=1)],
    }
    columns.update({f"p_type_{t}": probs[:, k] for k, t in enumerate(labels.types)})
    return {
        "report": result,
        "calibration": calibration,
        "headline": headline,
        "columns": columns,
    }


def plot_overlays(prediction: dict, cache, path: Path, count: int) -> None:
    """A grid of test slices (evenly spaced among those with a mask): image in gray (first
    channel), reference outline green, predicted outline red."""
    candidates = np.flatnonzero(prediction["has_mask"].astype(bool))
    chosen = candidates[
        np.linspace(0, len(candidates) - 1, min(count, len(candidates))).astype(int)
    ]
    columns = min(4, len(chosen))
    rows = int(np.ceil(len(chosen) / columns))
    figure = Figure(figsize=(3 * columns, 3.2 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, index in zip(axes, chosen, strict=False):
        row = int(prediction["rows"][index])
        ax.imshow(cache.image(row)[0].float().numpy(), cmap="gray", vmin=0, vmax=1)
        for mask, colour in (
            (prediction["true_masks"][index], "lime"),
            (prediction["pred_masks"][index], "red"),
        ):
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(str(cache.catalog.table.at[row, "patient_id"])[:24], fontsize=8)
    figure.suptitle("green: reference mask, red: prediction", fontsize=9)
    figure.savefig(path, dpi=100)


def write_comparison(reports: dict, outdir: str | Path) -> pd.DataFrame:
    """The seed's table (variant, Dice, accuracy) with our intervals and the seed's numbers."""
    from mritumor.models.multitask import VARIANT_NAMES

    rows = []
    for variant, result in reports.items():
        metrics = result.get("metrics", {})
        dice, accuracy = metrics.get("dice", {}), metrics.get("tumor_type_accuracy", {})
        seed_dice, seed_accuracy = SEED_TABLE.get(variant, (None, None))
        rows.append(
            {
                "variant": variant,
                "model": VARIANT_NAMES[variant],
                "dice": dice.get("value"),
                "dice_low": dice.get("low"),
                "dice_high": dice.get("high"),
                "accuracy": accuracy.get("value"),
                "accuracy_low": accuracy.get("low"),
                "accuracy_high": accuracy.get("high"),
                "seed_dice": seed_dice,
                "seed_accuracy": seed_accuracy,
            }
        )
    frame = pd.DataFrame(rows)
    outdir = Path(outdir)
    frame.to_csv(outdir / runfiles.COMPARISON_CSV, index=False)
    lines = [
        "| Model | Seg. Dice (95 % CI) | Classification accuracy (95 % CI) | seed Dice | seed accuracy |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} ({row['variant']}) | {_cell(row, 'dice')} | {_cell(row, 'accuracy')} "
            f"| {_number(row['seed_dice'])} | {_number(row['seed_accuracy'])} |"
        )
    (outdir / runfiles.COMPARISON_MD).write_text("\n".join(lines) + "\n")
    return frame


def write_loso_summary(reports: dict, outdir: str | Path) -> dict:
    """``loso_summary.json`` and ``loso.md``: per held-out source, Dice and accuracy with their
    intervals, patient accuracy, ECE, and (where fitted) set coverage and the share flagged."""
    rows = {}
    for source, result in reports.items():
        metrics, uncertainty = result.get("metrics", {}), result.get("uncertainty") or {}
        conformal, ood = uncertainty.get("conformal", {}), uncertainty.get("ood", {})
        rows[source] = {
            "n_patients": result.get("report", {}).get("n_patients"),
            "n_slices": result.get("report", {}).get("n_slices"),
            "dice": metrics.get("dice"),
            "tumor_type_accuracy": metrics.get("tumor_type_accuracy"),
            "tumor_type_patient_accuracy": metrics.get("tumor_type_patient_accuracy"),
            "ece_after_scaling": metrics.get("ece_after_scaling"),
            "set_coverage": conformal.get("coverage"),
            "ood_flagged_share": ood.get("flagged_share"),
        }
    outdir = Path(outdir)
    (outdir / "loso_summary.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| held-out source | patients | slices | Dice (95 % CI) | slice accuracy (95 % CI) "
        "| patient accuracy | ECE | 90 % set coverage | OOD flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for source, row in rows.items():
        lines.append(
            f"| {source} | {row['n_patients']} | {row['n_slices']} | {_interval(row['dice'])} "
            f"| {_interval(row['tumor_type_accuracy'])} "
            f"| {_interval(row['tumor_type_patient_accuracy'])} | {_number(row['ece_after_scaling'])} "
            f"| {_number(row['set_coverage'])} | {_number(row['ood_flagged_share'])} |"
        )
    (outdir / "loso.md").write_text("\n".join(lines) + "\n")
    return rows


def _interval(value: dict | None) -> str:
    if not value or value.get("value") is None:
        return "–"
    low, high = value.get("low"), value.get("high")
    return f"{value['value']:.3f}" + (f" ({low:.3f}–{high:.3f})" if low is not None else "")


def _cell(row: dict, name: str) -> str:
    value = row[name]
    if value is None:
        return "–"
    low, high = row[f"{name}_low"], row[f"{name}_high"]
    interval = f" ({low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"{value:.3f}{interval}"


def _number(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def _ci(interval: dict) -> dict:
    return {k: interval.get(k) for k in ("value", "low", "high")}


def _nanmean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

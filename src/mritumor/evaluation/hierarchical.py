"""Patient-level evaluation of the two-step classifier and the seed's artifacts.

Writes into ``outdir``: ``test_metrics.json`` (headline numbers with 95 % bootstrap intervals
over patients), ``test_report.json`` (everything: per-class metrics, confusion matrices,
calibration, skipped parts with reasons), ``roc_tumor_type_ovr.png``, ``pr_tumor_type_ovr.png``,
``roc_grade_e2e_ovr.png``, ``pr_grade_e2e_ovr.png``, ``curves_summary.json``,
``confusion_tumor_type.png``, ``confusion_grade_e2e.png``, ``reliability_tumor_type.png`` and
``predictions.csv`` (one row per patient).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mritumor import runfiles
from mritumor.data.loading.labels import LabelSpace
from mritumor.evaluation.bootstrap import bootstrap_intervals
from mritumor.evaluation.calibration import calibration_errors, plot_reliability_diagram
from mritumor.evaluation.curves import plot_confusion_matrix, plot_pr_ovr, plot_roc_ovr
from mritumor.evaluation.metrics import classification_report_with_ci
from mritumor.models.hierarchical import hierarchical_probabilities

log = logging.getLogger(__name__)


def evaluate_hierarchical(
    prediction: dict,
    labels: LabelSpace,
    outdir: str | Path,
    temperature: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    catalog=None,
) -> dict:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    probs = {
        k: v.numpy()
        for k, v in hierarchical_probabilities(
            prediction["type_logits"], prediction["grade_logits"], temperature
        ).items()
    }
    raw = {
        k: v.numpy()
        for k, v in hierarchical_probabilities(
            prediction["type_logits"], prediction["grade_logits"], 1.0
        ).items()
    }
    y_type, y_grade = prediction["type_true"], prediction["grade_true"]
    n_patients = len(y_type)
    report: dict = {"n_patients": int(n_patients), "temperature": float(temperature), "skipped": {}}
    curves: dict = {}

    type_report = classification_report_with_ci(
        y_type, probs["type"], labels.types, n_boot=n_boot, seed=seed
    )
    report["tumor_type"] = type_report
    curves["tumor_type"] = {
        "roc": plot_roc_ovr(
            y_type,
            probs["type"],
            labels.types,
            outdir / "roc_tumor_type_ovr.png",
            "Tumour type, one-vs-rest ROC",
        ),
        "pr": plot_pr_ovr(
            y_type,
            probs["type"],
            labels.types,
            outdir / "pr_tumor_type_ovr.png",
            "Tumour type, one-vs-rest precision-recall",
        ),
    }
    plot_confusion_matrix(
        np.asarray(type_report["metrics"]["confusion_matrix"]),
        labels.types,
        outdir / "confusion_tumor_type.png",
        "Tumour type (rows: true)",
    )
    report["calibration"] = {
        "before_scaling": calibration_errors(y_type, raw["type"]),
        "after_scaling": calibration_errors(y_type, probs["type"]),
    }
    plot_reliability_diagram(
        y_type,
        probs["type"],
        outdir / "reliability_tumor_type.png",
        f"Tumour type reliability (T = {temperature:.2f})",
    )

    known = y_grade >= 0
    if not labels.grades:
        reason = "the training data has no grades: grade metrics and grade curves are not computed"
        report["skipped"]["grade"] = reason
        log.info("grade artifacts skipped: %s", reason)
    elif known.sum() == 0:
        reason = "no test patient has a known grade"
        report["skipped"]["grade"] = reason
    else:
        grade_probs = probs["grade_e2e_normalised"][known]
        grade_report = classification_report_with_ci(
            y_grade[known], grade_probs, labels.grades, n_boot=n_boot, seed=seed
        )
        report["grade_e2e"] = grade_report
        report["grade_conditional"] = conditional_grade_accuracy(
            probs["grade_given_type"][known], y_type[known], y_grade[known], n_boot, seed
        )
        curves["grade_e2e"] = {
            "roc": plot_roc_ovr(
                y_grade[known],
                grade_probs,
                labels.grades,
                outdir / "roc_grade_e2e_ovr.png",
                "End-to-end grade P(g) = Σt P(t) P(g|t), one-vs-rest ROC",
            ),
            "pr": plot_pr_ovr(
                y_grade[known],
                grade_probs,
                labels.grades,
                outdir / "pr_grade_e2e_ovr.png",
                "End-to-end grade, one-vs-rest precision-recall",
            ),
        }
        plot_confusion_matrix(
            np.asarray(grade_report["metrics"]["confusion_matrix"]),
            [f"G{g}" for g in labels.grades],
            outdir / "confusion_grade_e2e.png",
            "End-to-end grade (rows: true)",
        )

    metrics = headline_metrics(report, labels)
    (outdir / runfiles.TEST_METRICS).write_text(json.dumps(metrics, indent=2))
    (outdir / runfiles.TEST_REPORT).write_text(json.dumps(report, indent=2, default=_json_default))
    (outdir / runfiles.CURVES_SUMMARY).write_text(json.dumps(curves, default=_json_default))
    write_predictions(outdir / runfiles.PREDICTIONS, prediction, probs, labels, catalog)
    return {"metrics": metrics, "report": report}


def conditional_grade_accuracy(
    grade_given_type: np.ndarray, y_type: np.ndarray, y_grade: np.ndarray, n_boot: int, seed: int
) -> dict:
    """Grade accuracy under the TRUE type: argmax_g P(g | X, t_true) == g_true."""
    under_true = grade_given_type[np.arange(len(y_type)), y_type]
    correct = (under_true.argmax(axis=1) == y_grade).astype(float)
    intervals = bootstrap_intervals(
        lambda idx: {"accuracy": float(correct[idx].mean())}, len(correct), n_boot=n_boot, seed=seed
    )
    return {
        "accuracy": float(correct.mean()),
        "n": int(len(correct)),
        "interval": intervals["accuracy"],
    }


def headline_metrics(report: dict, labels: LabelSpace) -> dict:
    """The seed's metrics, each as {value, low, high} (95 % bootstrap over patients)."""

    def ci(section: dict, name: str) -> dict:
        interval = section["intervals"].get(name)
        return _interval(interval) if interval else {"value": section["metrics"].get(name)}

    type_section = report["tumor_type"]
    metrics = {
        "n_patients": report["n_patients"],
        "tumor_type_accuracy": ci(type_section, "accuracy"),
        "tumor_type_macro_f1": ci(type_section, "macro_f1"),
        "tumor_type_balanced_accuracy": ci(type_section, "balanced_accuracy"),
        "tumor_type_macro_auc": ci(type_section, "macro_auc"),
        "tumor_type_auc": {t: ci(type_section, f"auc/{t}") for t in labels.types},
        "tumor_type_average_precision": {
            t: ci(type_section, f"average_precision/{t}") for t in labels.types
        },
        "ece_before_scaling": report["calibration"]["before_scaling"]["ece"],
        "ece_after_scaling": report["calibration"]["after_scaling"]["ece"],
        "mce_before_scaling": report["calibration"]["before_scaling"]["mce"],
        "mce_after_scaling": report["calibration"]["after_scaling"]["mce"],
        "temperature": report["temperature"],
    }
    if "grade_e2e" in report:
        grade_section = report["grade_e2e"]
        metrics.update(
            {
                "n_patients_with_grade": grade_section["metrics"]["n"],
                "grade_e2e_accuracy": ci(grade_section, "accuracy"),
                "grade_e2e_macro_f1": ci(grade_section, "macro_f1"),
                "grade_e2e_macro_auc": ci(grade_section, "macro_auc"),
                "grade_e2e_auc": {g: ci(grade_section, f"auc/{g}") for g in labels.grades},
                "grade_e2e_average_precision": {
                    g: ci(grade_section, f"average_precision/{g}") for g in labels.grades
                },
                "grade_conditional_accuracy": {
                    "value": report["grade_conditional"]["accuracy"],
                    **_bounds(report["grade_conditional"]["interval"]),
                },
            }
        )
    else:
        metrics["grade_skipped"] = report["skipped"].get("grade")
    return metrics


def write_predictions(
    path: Path, prediction: dict, probs: dict, labels: LabelSpace, catalog
) -> None:
    rows = []
    for i, patient in enumerate(prediction["patient_ids"]):
        row = {
            "patient_id": patient,
            "true_type": labels.types[prediction["type_true"][i]]
            if prediction["type_true"][i] >= 0
            else None,
            "pred_type": labels.types[int(probs["type"][i].argmax())],
        }
        row.update({f"p_type_{t}": float(probs["type"][i, k]) for k, t in enumerate(labels.types)})
        if labels.grades:
            true_grade = prediction["grade_true"][i]
            row["true_grade"] = labels.grades[true_grade] if true_grade >= 0 else None
            row["pred_grade_e2e"] = labels.grades[int(probs["grade_e2e_normalised"][i].argmax())]
            row.update(
                {
                    f"p_grade_{g}": float(probs["grade_e2e"][i, k])
                    for k, g in enumerate(labels.grades)
                }
            )
        weights, slice_rows = prediction["slice_weights"][i], prediction["slice_rows"][i]
        if len(weights):
            top = int(np.argmax(weights))
            row["top_slice_weight"] = float(weights[top])
            if catalog is not None:
                row["top_slice"] = str(catalog.table.at[int(slice_rows[top]), "image"])
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def _interval(interval: dict) -> dict:
    return {"value": interval.get("value"), **_bounds(interval)}


def _bounds(interval: dict) -> dict:
    return {"low": interval.get("low"), "high": interval.get("high")}


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

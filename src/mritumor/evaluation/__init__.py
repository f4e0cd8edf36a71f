"""Evaluation library shared by every training command.

* ``metrics``: patient-level classification metrics with bootstrap intervals, cross-validation
  summaries.
* ``bootstrap``: the patient-clustered percentile bootstrap (``evaluate`` and ``compare``).
* ``stats``: paired tests for comparing models (McNemar, DeLong, Wilcoxon, Friedman, Holm).
* ``curves``: one-vs-rest ROC / precision-recall curves and confusion matrices (PNG + JSON).
* ``calibration``: top-label ECE/MCE, reliability diagrams, temperature scaling.
* ``segmentation``: per-slice Dice, IoU and HD95, per-patient means.

Labels equal to -1 mean "unknown" everywhere and are ignored; undefined values are ``None``
(JSON ``null``) in the returned dicts, NaN in arrays.
"""

from mritumor.evaluation.bootstrap import bootstrap_intervals
from mritumor.evaluation.calibration import (
    apply_temperature,
    calibration_errors,
    fit_temperature,
    plot_reliability_diagram,
)
from mritumor.evaluation.curves import plot_confusion_matrix, plot_pr_ovr, plot_roc_ovr
from mritumor.evaluation.metrics import (
    classification_metrics,
    classification_report_with_ci,
    cv_summary,
    flatten_for_csv,
)
from mritumor.evaluation.segmentation import dice_iou, hd95, per_patient_mean

__all__ = [
    "apply_temperature",
    "bootstrap_intervals",
    "calibration_errors",
    "classification_metrics",
    "classification_report_with_ci",
    "cv_summary",
    "dice_iou",
    "fit_temperature",
    "flatten_for_csv",
    "hd95",
    "per_patient_mean",
    "plot_confusion_matrix",
    "plot_pr_ovr",
    "plot_roc_ovr",
    "plot_reliability_diagram",
]

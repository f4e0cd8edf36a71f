"""Knowing when not to answer: what a checkpoint stores to flag unusual inputs and to answer
with a set of classes, and how the test split scores it.

Fitted at the end of training (:func:`fit_uncertainty`):

* an :class:`~mritumor.evaluation.ood.OODDetector` on the *training* units' embeddings, its
  threshold set on the *validation* units (95 % of them in distribution);
* split-conformal thresholds (:mod:`mritumor.evaluation.conformal`) on the validation units'
  calibrated probabilities, for ``coverage`` (0.9 by default); with ``mondrian`` one threshold
  per class (``conformal["mondrian"]`` and the per-class sorted scores ``class_scores``; states
  without the key are marginal, one threshold).

A unit is what the model predicts: a patient for the two-step classifier, a slice for the
multi-task model; for the latter a patient-level threshold is also fitted on the validation
patients' mean probabilities and median OOD scores, so ``predict`` can answer per patient.
The state is plain tensors and numbers (``best.pt`` stays loadable with ``weights_only=True``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from mritumor import runfiles
from mritumor.evaluation.conformal import (
    calibration_scores,
    calibration_scores_by_class,
    class_thresholds,
    min_calibration_units,
    prediction_sets,
    set_metrics,
    threshold_from_scores,
)
from mritumor.evaluation.ood import OODDetector, auroc
from mritumor.evaluation.selective import risk_coverage

# 2: the OOD state holds per-block lists, the scored output's name and the validation loc/scale
# (version 1: one embedding block, tensors); both load (OODDetector.from_state)
UNCERTAINTY_VERSION = 2

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=float) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def by_patient(values: np.ndarray, groups: Sequence[str], reduce) -> tuple[list[str], np.ndarray]:
    """Rows grouped by patient (first-appearance order), each group reduced along axis 0."""
    ids = np.asarray(groups)
    order = list(dict.fromkeys(ids.tolist()))
    return order, np.stack([reduce(values[ids == g], axis=0) for g in order])


def mondrian_scores(
    probs: np.ndarray, labels: np.ndarray, method: str, coverage: float, what: str = "units"
) -> list:
    """The per-class sorted calibration scores a Mondrian state stores (a list of 1-D tensors,
    one per class, loadable with ``weights_only=True``); warns about the classes with too few
    calibration units for ``coverage``, which then get the marginal threshold."""
    import torch

    by_class = calibration_scores_by_class(probs, labels, method)
    short = [k for k, t in enumerate(class_thresholds(by_class, coverage)) if np.isinf(t)]
    if short:
        log.warning(
            "Mondrian sets: class(es) %s have fewer than the %d calibration %s needed for "
            "%.0f %% coverage; they get the marginal threshold (their own coverage is not "
            "guaranteed)",
            short, min_calibration_units(coverage), what, 100 * coverage,
        )  # fmt: skip
    return [torch.as_tensor(scores) for scores in by_class]


def stored_thresholds(
    part: Mapping, coverage: float, mondrian: bool, prefix: str = ""
) -> float | np.ndarray:
    """The threshold(s) of one stored conformal part for ``coverage``: one number from
    ``<prefix>scores`` or, Mondrian, one per class from ``<prefix>class_scores`` (the marginal
    one for a class with too few units: :func:`~mritumor.evaluation.conformal.class_thresholds`)."""
    marginal = threshold_from_scores(np.asarray(part[f"{prefix}scores"]), coverage)
    if mondrian:
        by_class = [np.asarray(s) for s in part[f"{prefix}class_scores"]]
        return class_thresholds(by_class, coverage, fallback=marginal)
    return marginal


def fit_uncertainty(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    val_groups: Sequence[str] | None = None,
    coverage: float = 0.9,
    method: str = "lac",
    keep: float = 0.95,
    blocks: list[int] | None = None,
    feature_name: str = "class_embedding",
    mondrian: bool = False,
    used_blocks: list[int] | None = None,
) -> dict:
    """The state stored in ``best.pt`` under ``"uncertainty"``. ``val_groups`` (patient ids of
    slice-level units) adds the patient-level thresholds; ``blocks``/``feature_name``: see
    :meth:`~mritumor.evaluation.ood.OODDetector.fit`; ``mondrian``: also the per-class scores,
    and the sets use one threshold per class (unit and patient level)."""
    import torch  # the fitted state goes into best.pt as tensors; applying it needs no torch

    detector = OODDetector.fit(train_features, train_labels, blocks=blocks, feature_name=feature_name)  # fmt: skip
    detector.standardise(val_features)
    detector.use_blocks(used_blocks)  # which blocks the score sums (None: all)
    val_scores = detector.score(val_features)
    detector.calibrate(val_scores, keep)
    state = {
        "version": UNCERTAINTY_VERSION,
        "ood": detector.to_state(),
        "conformal": {
            "method": method,
            "coverage": coverage,
            "scores": torch.as_tensor(calibration_scores(val_probs, val_labels, method)),
            "mondrian": bool(mondrian),
        },
    }
    if mondrian:  # the marginal scores stay too (what an older reader of the state expects)
        state["conformal"]["class_scores"] = mondrian_scores(
            val_probs, val_labels, method, coverage
        )
    if val_groups is not None:
        _, patient_probs = by_patient(np.asarray(val_probs), val_groups, np.mean)
        _, patient_scores = by_patient(val_scores, val_groups, np.median)
        _, patient_labels = by_patient(np.asarray(val_labels), val_groups, np.max)
        state["patient"] = {
            "ood_threshold": float(
                np.quantile(patient_scores, keep, method="inverted_cdf")
                if len(patient_scores)
                else np.inf
            ),
            "conformal_scores": torch.as_tensor(
                calibration_scores(patient_probs, patient_labels, method)
            ),
        }
        if mondrian:
            state["patient"]["conformal_class_scores"] = mondrian_scores(
                patient_probs, patient_labels, method, coverage, "patients"
            )
    return state


def ood_features(state: dict | None, outputs: dict):
    """The network output the state's OOD detector scores (``ood_features``, or the
    ``class_embedding`` of states written before feature statistics), None when absent."""
    name = (state or {}).get("ood", {}).get("features", "class_embedding")
    return outputs.get(name)


def set_threshold(
    state: dict, coverage: float | None = None, level: str = "unit"
) -> float | np.ndarray:
    """The conformal threshold for ``coverage`` (default: the one fitted for) at the unit or
    the patient level: one number, or one per class (a (K,) array) for a Mondrian state."""
    conformal = state["conformal"]
    coverage = coverage or conformal["coverage"]
    mondrian = bool(conformal.get("mondrian", False))  # absent: written before Mondrian sets
    if level == "unit":
        return stored_thresholds(conformal, coverage, mondrian)
    return stored_thresholds(state["patient"], coverage, mondrian, prefix="conformal_")


def apply_uncertainty(
    state: dict, features: np.ndarray, probs: np.ndarray, coverage: float | None = None
) -> dict:
    """Per unit: OOD score, ``in_distribution`` and the conformal set (boolean membership)."""
    detector = OODDetector.from_state(state["ood"])
    scores = detector.score(features)
    return {
        "ood_score": scores,
        "ood_threshold": detector.threshold,
        "in_distribution": scores <= detector.threshold,
        "sets": prediction_sets(
            probs, set_threshold(state, coverage), state["conformal"]["method"]
        ),
    }


def uncertainty_report(
    state: dict,
    features: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
) -> dict:
    """What ``evaluate`` reports on labelled units: set coverage and size (overall and per
    class), the risk–coverage curve, and the share flagged out of distribution."""
    applied = apply_uncertainty(state, features, probs)
    labels = np.asarray(labels, dtype=int)
    known = labels >= 0
    correct = probs.argmax(axis=1) == labels
    curve = risk_coverage(probs.max(axis=1)[known], correct[known])
    conformal = state["conformal"]
    return {
        "conformal": {
            "method": conformal["method"],
            "nominal_coverage": conformal["coverage"],
            "mondrian": bool(conformal.get("mondrian", False)),
            **set_metrics(applied["sets"], labels, class_names),
        },
        "selective": curve,
        "ood": {
            "threshold": applied["ood_threshold"],
            "flagged_share": float((~applied["in_distribution"]).mean()),
            "accuracy_in_distribution": float(correct[known & applied["in_distribution"]].mean())
            if (known & applied["in_distribution"]).any()
            else None,
        },
        "scores": applied["ood_score"],
    }


def grade_sets(state: dict, grade_probs: np.ndarray, coverage: float | None = None) -> np.ndarray:
    """End-to-end grade sets (from the normalised P(g)) with the stored grade scores (one
    threshold per grade when the state is Mondrian)."""
    grade = state["grade_conformal"]
    mondrian = bool(grade.get("mondrian", False))
    threshold = stored_thresholds(grade, coverage or grade["coverage"], mondrian)
    return prediction_sets(grade_probs, threshold, grade["method"])


def grade_set_report(
    state: dict, grade_probs: np.ndarray, grade_true: np.ndarray, grade_names: Sequence[str]
) -> dict:
    grade = state["grade_conformal"]
    return {
        "method": grade["method"],
        "nominal_coverage": grade["coverage"],
        "mondrian": bool(grade.get("mondrian", False)),
        **set_metrics(grade_sets(state, grade_probs), grade_true, grade_names),
    }


def patient_answer(
    state: dict | None,
    features: np.ndarray,
    probs: np.ndarray,
    class_names,
    slice_level: bool,
    coverage: float | None = None,
) -> dict:
    """The uncertainty fields of one patient's prediction record. ``features``/``probs``: the
    patient's one row (two-step model) or its slices' rows (multi-task: the patient's OOD score
    is the median of its slices', its set comes from the mean probabilities, both against the
    patient-level thresholds)."""
    if not state:
        fix = "mritumor fit-uncertainty fits them" if slice_level else "retrain to get them"
        return {
            "in_distribution": None,
            "uncertainty_note": "this checkpoint was written before out-of-distribution scores "
            f"and prediction sets were fitted: no flag, no set ({fix})",
        }
    detector = OODDetector.from_state(state["ood"])
    scores = detector.score(np.asarray(features, dtype=np.float64))
    # A one-image input is a slice, not a patient: the patient-level threshold (fitted on the
    # medians of validation patients' slices, a narrower distribution) would flag single
    # images from the very source the model was trained on; it gets the slice-level ones.
    if slice_level and "patient" in state and len(scores) > 1:
        score, threshold = float(np.median(scores)), float(state["patient"]["ood_threshold"])
        row = np.asarray(probs).mean(axis=0, keepdims=True)
        level = "patient"
    else:
        score, threshold, row, level = float(scores[0]), detector.threshold, probs[:1], "unit"
    members = prediction_sets(
        row, set_threshold(state, coverage, level), state["conformal"]["method"]
    )[0]
    return {
        "in_distribution": bool(score <= threshold),
        "ood_score": score,
        "ood_threshold": threshold,
        "type_prediction_set": [class_names[k] for k in np.flatnonzero(members)],
        "set_coverage": coverage or float(state["conformal"]["coverage"]),
    }


def write_test_uncertainty(
    state: dict | None,
    outdir,
    features: np.ndarray | None,
    type_probs: np.ndarray,
    type_true: np.ndarray,
    types: Sequence[str],
    grade_probs: np.ndarray | None = None,
    grade_true: np.ndarray | None = None,
    grades: Sequence[str] = (),
) -> dict | None:
    """The test units' sets, risk–coverage and OOD share in ``uncertainty.json`` and
    ``risk_coverage.png`` (training's test part and ``evaluate``); None without a state."""
    if not state or features is None:
        return None
    summary = uncertainty_report(state, features, type_probs, type_true, types)
    if "grade_conformal" in state and grade_probs is not None and grade_true is not None:
        summary["grade_conformal"] = grade_set_report(state, grade_probs, grade_true, grades)
    return write_uncertainty(summary, outdir)


def ood_auroc(state: dict, in_features: np.ndarray, out_features: np.ndarray) -> float:
    detector = OODDetector.from_state(state["ood"])
    return auroc(detector.score(in_features), detector.score(out_features))


def write_uncertainty(report: dict, outdir, title: str = "Risk–coverage") -> dict:
    """``uncertainty.json`` (sets, risk–coverage, OOD share; per-unit scores left out) and
    ``risk_coverage.png`` in ``outdir``; returns what was written to the JSON."""
    import json
    from pathlib import Path

    from mritumor.evaluation.selective import plot_risk_coverage

    outdir = Path(outdir)
    summary = {k: v for k, v in report.items() if k != "scores"}
    (outdir / runfiles.UNCERTAINTY).write_text(json.dumps(summary, indent=2))
    plot_risk_coverage(report["selective"], outdir / runfiles.RISK_COVERAGE, title)
    return summary

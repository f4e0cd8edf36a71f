"""``mritumor explain``: a checkpoint and data → attribution maps, overlays, JSON and CSV.

This module is the command (which patients, the loop, the summary); one patient's maps,
figures and rows are :mod:`mritumor.explain.patients`, the model side
:mod:`mritumor.explain.explainable`.

Per patient (tumour type explained = the model's predicted type for that patient):

1. **which slices mattered** (patient-level models): the bag the model sees at evaluation
   (the checkpoint's bag size; a ``random`` policy becomes ``uniform``), the attention weights
   the model returns (``slice_weights``) and slice occlusion (drop of the predicted type's
   probability when a slice is removed from the bag). Slices are ranked by that drop (ties and
   one-slice bags: by attention weight). Slice-level models rank slices by their own predicted
   probability of the patient's predicted class.
2. **where inside them**, for the ``top_slices`` best-ranked slices: pixel occlusion and/or
   Grad-CAM of the slice classifier (for the hierarchical model: the model on a bag of that one
   slice), scored against the tumour mask where there is one.

Outputs in ``outdir``::

    attribution_summary.json   settings, per-method scores overall and per true class, patients
    slices.csv                 one row per bag slice: weights, drops, ranks, per-map scores
    patients/<id>/slice_importance.png   attention weight and slice-occlusion drop per slice
    patients/<id>/slice_<k>.png          overlays of the explained slice k (k = position in the
                                         patient's stack, as in the catalog)
    patients/<id>/maps.npz               the raw maps, ``<method>_slice_<k>`` (H, W) float32
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from mritumor.data.loading.cache import SliceCache
from mritumor.data.reading.readers import read_catalog
from mritumor.errors import MritumorError
from mritumor.explain.explainable import METHODS, Settings, default_window, explainable_model
from mritumor.explain.metrics import summarise_scores
from mritumor.explain.patients import SLICE_COLUMNS, explain_patient, slice_importance_summary
from mritumor.models.loading import load_model

log = logging.getLogger(__name__)


def choose_patients(
    available: Sequence[str],
    requested: Sequence[str] | None,
    test_patients: Sequence[str],
    max_patients: int,
    types: Mapping[str, str] | None = None,
) -> list[str]:
    """``requested`` (all must exist), else the checkpoint's test patients present in the data,
    else every patient; at most ``max_patients`` (0: no limit). When the cap applies and the
    patients' ``types`` are known, it takes them in turn from each tumour type (data order within
    a type), so a short run still shows every class; otherwise the first ones in data order."""
    present = set(available)
    if requested:
        missing = [p for p in requested if p not in present]
        if missing:
            raise MritumorError(
                f"--patients not found in the data: {', '.join(missing[:10])}"
                + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
            )
        chosen = list(dict.fromkeys(requested))
    else:
        test = set(test_patients)
        chosen = [p for p in available if p in test]
        if not chosen:
            log.info("no test patient of the checkpoint's split is in the data: using all patients")
            chosen = list(available)
        else:
            log.info("explaining the checkpoint's test patients (%d in the data)", len(chosen))
    if max_patients and len(chosen) > max_patients:
        log.info(
            "explaining %d of %d patients (--max_patients; 0 explains all)%s",
            max_patients,
            len(chosen),
            ", taken in turn from each tumour type" if types else "",
        )
        chosen = (
            _interleave_by_type(chosen, types)[:max_patients] if types else chosen[:max_patients]
        )
    return chosen


def _interleave_by_type(patients: Sequence[str], types: Mapping[str, str]) -> list[str]:
    """First patient of each type, then the second of each, …; types in order of appearance."""
    by_type: dict[str, list[str]] = {}
    for patient in patients:
        by_type.setdefault(str(types.get(patient)), []).append(patient)
    queues = list(by_type.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def explain(
    checkpoint: str | Path,
    data_root: str | Path,
    outdir: str | Path,
    patients: Sequence[str] | None = None,
    max_patients: int = 8,
    window: int | None = None,
    stride: int | None = None,
    method: str = "both",
    top_slices: int = 3,
    baseline: str | float = "mean",
    pointing_tolerance: int = 0,
    format: str | None = None,
    strict: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Explain a checkpoint's predictions on the data's patients; returns the summary written
    to ``attribution_summary.json``."""
    if method not in (*METHODS, "both"):
        raise MritumorError(f"--method must be occlusion, gradcam or both, not {method!r}")
    if top_slices < 1:
        raise MritumorError("--top_slices must be ≥ 1")
    outdir = Path(outdir)
    loaded = load_model(checkpoint)
    if not loaded.classifies:
        raise MritumorError(
            f"{checkpoint} is {loaded.describe()} with no classification head (segmentation "
            "only); `mritumor explain` explains class predictions"
        )
    model = explainable_model(loaded)
    size = model.preprocessing.image_size
    window = window or default_window(size)
    stride = stride or max(1, window // 2)
    if not 1 <= window <= size or stride < 1:
        raise MritumorError(
            f"--window must be 1..{size} (the model's image size) and --stride ≥ 1; "
            f"got window {window}, stride {stride}"
        )
    methods = list(METHODS) if method == "both" else [method]
    if "gradcam" in methods and model.gradcam_layer is None:
        log.warning("this model has no convolutional encoder to take Grad-CAM from: skipping it")
        methods.remove("gradcam")
    torch_device = resolve_device(device)
    model.to(torch_device)

    catalog = read_catalog(data_root, format=format, strict=strict)
    types = dict(zip(catalog.table["patient_id"], catalog.table["tumor_type"], strict=True))
    chosen = choose_patients(catalog.patients, patients, model.test_patients, max_patients, types)
    # decode only the chosen patients' slices, with the checkpoint's preprocessing
    cache = SliceCache.build(
        catalog.subset(chosen), model.preprocessing, strict=strict, progress=progress
    )
    settings = Settings(methods, window, stride, baseline, top_slices, pointing_tolerance)

    slice_rows: list[dict] = []
    scores: list[dict] = []
    patient_summaries: list[dict] = []
    decoded = set(cache.catalog.patients)
    for patient in tqdm(chosen, desc="Explaining", unit="patient", disable=not progress):
        if patient not in decoded:
            log.warning("patient %s: no slice could be decoded; skipped", patient)
            continue
        result = explain_patient(model, cache, patient, settings, outdir, torch_device)
        slice_rows += result["slices"]
        scores += result["scores"]
        patient_summaries.append(result["patient"])

    outdir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(slice_rows, columns=SLICE_COLUMNS).to_csv(outdir / "slices.csv", index=False)
    summary = {
        "checkpoint": str(checkpoint),
        "task": model.task,
        "data_root": str(data_root),
        "classes": model.class_names,
        "settings": {
            "methods": methods,
            "window": window,
            "stride": stride,
            "baseline": baseline,
            "top_slices": top_slices,
            "pointing_tolerance": pointing_tolerance,
            "image_size": size,
            "temperature": model.temperature,
            "bag_size": model.bag_size if model.bag_model is not None else None,
            "bag_policy": model.bag_policy if model.bag_model is not None else None,
            "target": "the predicted class of each patient",
            "grouped_by": "true tumour type",
            "occlusion_sign": "drop of the target probability when occluded; > 0 supported it",
        },
        "n_patients": len(patient_summaries),
        "n_explained_slices": sum(1 for r in slice_rows if r["explained"]),
        "attribution": summarise_scores(scores),
        "slice_importance": slice_importance_summary(slice_rows),
        "patients": patient_summaries,
    }
    (outdir / "attribution_summary.json").write_text(json.dumps(summary, indent=2))
    return summary

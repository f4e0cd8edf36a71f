"""``mritumor explain``: a checkpoint and data → attribution maps, overlays, JSON and CSV.

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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mritumor.checkpoints import load_checkpoint
from mritumor.data.cache import Preprocessing, SliceCache
from mritumor.data.datasets import bag_positions
from mritumor.data.readers import read_catalog
from mritumor.errors import MritumorError
from mritumor.explain.attribution import (
    BagClassifier,
    gradcam_maps,
    hierarchical_bag_classifier,
    hierarchical_slice_classifier,
    last_conv_block,
    occlusion_map,
    slice_occlusion,
)
from mritumor.explain.metrics import mask_share, pointing_game_hit, share_in_mask, summarise_scores
from mritumor.explain.plots import draw_overlays, draw_slice_importance

log = logging.getLogger(__name__)
METHODS = ("occlusion", "gradcam")


@dataclass
class ExplainableModel:
    """What explanation needs from a checkpoint, whatever its task."""

    task: str
    class_names: list[str]
    slice_classifier: nn.Module  # (B, C, S, S) -> logits (B, K)
    gradcam_layer: nn.Module | None  # inside slice_classifier; None: no Grad-CAM
    # patient-level models only: (B, N, C, S, S), mask (B, N) -> dict with "type_logits" (B, K)
    # and "slice_weights" (B, N), the contract of TwoStepClassifier
    bag_model: nn.Module | None
    preprocessing: Preprocessing
    bag_size: int = 8
    bag_policy: str = "uniform"
    temperature: float = 1.0
    test_patients: list[str] = field(default_factory=list)

    @property
    def bag_classifier(self) -> BagClassifier | None:
        return None if self.bag_model is None else hierarchical_bag_classifier(self.bag_model)

    def to(self, device: torch.device) -> ExplainableModel:
        self.slice_classifier.to(device)
        if self.bag_model is not None:
            self.bag_model.to(device)
        return self


class ClassLogits(nn.Module):
    """A multi-task model's classification output as a slice classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.model(images)
        logits = outputs.get("class_logits") if isinstance(outputs, dict) else None
        if logits is None:
            raise MritumorError(
                "this multitask checkpoint has no classification head (segmentation only); "
                "`mritumor explain` explains class predictions"
            )
        return logits


def preprocessing_of(checkpoint: dict) -> Preprocessing:
    prep = checkpoint.get("preprocessing") or {}
    known = {k: v for k, v in prep.items() if k in Preprocessing.__dataclass_fields__}
    return Preprocessing(**known)


def load_explainable(checkpoint: dict) -> ExplainableModel:
    """Dispatch on ``checkpoint["task"]``: ``hierarchical`` now, ``multitask`` when its module
    provides ``model_from_checkpoint``."""
    task = checkpoint.get("task")
    split = checkpoint.get("split") or {}
    common = {
        "preprocessing": preprocessing_of(checkpoint),
        "temperature": float(checkpoint.get("temperature", 1.0) or 1.0),
        "test_patients": list(split.get("test") or []),
    }
    if task == "hierarchical":
        from mritumor.tasks.hierarchical import model_from_checkpoint

        model = model_from_checkpoint(checkpoint).eval()
        bag = checkpoint.get("bag") or {}
        policy = bag.get("bag_policy", "uniform")
        return ExplainableModel(
            task=task,
            class_names=list(checkpoint["labels"]["types"]),
            slice_classifier=hierarchical_slice_classifier(model),
            gradcam_layer=last_conv_block(model),
            bag_model=model,
            bag_size=int(bag.get("bag_size", 8)),
            bag_policy="uniform" if policy == "random" else policy,  # deterministic, as in eval
            **common,
        )
    if task == "multitask":
        try:
            from mritumor.tasks.multitask import model_from_checkpoint as multitask_model
        except ImportError as error:
            raise MritumorError(
                "multitask checkpoints are not supported yet by `mritumor explain`"
            ) from error
        model = multitask_model(checkpoint).eval()
        labels = checkpoint.get("labels") or {}
        names = labels.get("types") or labels.get("classes") or []
        return ExplainableModel(
            task=task,
            class_names=list(names),
            slice_classifier=ClassLogits(model),
            gradcam_layer=last_conv_block(model),
            bag_model=None,
            **common,
        )
    raise MritumorError(
        f"cannot explain a checkpoint of task {task!r}; supported: hierarchical, multitask"
    )


# ----------------------------------------------------------------------------- choosing work


def default_window(image_size: int) -> int:
    """An eighth of the slice side (16 px at 128, 28 px at 224): about a small tumour's size."""
    return max(2, round(image_size / 8))


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


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "patient"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------- the command


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
    payload = load_checkpoint(checkpoint)
    model = load_explainable(payload)
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


@dataclass(frozen=True)
class Settings:
    methods: list[str]
    window: int
    stride: int
    baseline: str | float
    top_slices: int
    pointing_tolerance: int


SLICE_COLUMNS = [
    "patient_id",
    "true_type",
    "predicted_type",
    "predicted_probability",
    "slice_index",
    "image",
    "frame",
    "attention_weight",
    "slice_occlusion_drop",
    "slice_probability",
    "rank",
    "explained",
    "tumour_in_mask",
    "mask_share",
    "occlusion_share_in_mask",
    "occlusion_pointing_hit",
    "gradcam_share_in_mask",
    "gradcam_pointing_hit",
    "overlay",
]


@torch.no_grad()
def rank_slices(
    model: ExplainableModel, images: torch.Tensor
) -> tuple[int, float, dict[str, np.ndarray]]:
    """The patient's predicted class, its probability, and per-slice importance columns."""
    n = images.shape[0]
    nan = np.full(n, np.nan)
    if model.bag_model is not None:
        mask = torch.ones(1, n, dtype=torch.bool, device=images.device)
        outputs = model.bag_model(images[None], mask)
        probabilities = torch.softmax(outputs["type_logits"].float() / model.temperature, dim=-1)[0]
        target = int(probabilities.argmax())
        attention = outputs["slice_weights"][0].float().cpu().numpy()
        drops = slice_occlusion(model.bag_classifier, images, target, model.temperature).numpy()
        order_key = np.where(np.isnan(drops), -np.inf, drops)
        order = np.lexsort((-attention, -order_key))
        return (
            target,
            float(probabilities[target]),
            {"attention": attention, "drops": drops, "slice_probability": nan, "order": order},
        )
    logits = torch.cat([model.slice_classifier(chunk) for chunk in images.split(32)])
    per_slice = torch.softmax(logits.float() / model.temperature, dim=-1)
    patient = per_slice.mean(dim=0)
    target = int(patient.argmax())
    own = per_slice[:, target].cpu().numpy()
    return (
        target,
        float(patient[target]),
        {
            "attention": nan,
            "drops": nan,
            "slice_probability": own,
            "order": np.argsort(-own, kind="stable"),
        },
    )


def explain_patient(
    model: ExplainableModel,
    cache: SliceCache,
    patient: str,
    settings: Settings,
    outdir: Path,
    device: torch.device,
) -> dict:
    table = cache.catalog.table
    rows = np.flatnonzero((table["patient_id"] == patient).to_numpy())
    if model.bag_model is not None:
        positions = bag_positions(len(rows), model.bag_size, model.bag_policy)
    else:
        positions = list(range(len(rows)))
    chosen = rows[positions]
    images = torch.stack([cache.image(int(r)) for r in chosen]).to(device)
    true_type = str(table.at[int(rows[0]), "tumor_type"])
    target, probability, importance = rank_slices(model, images)
    predicted = model.class_names[target] if target < len(model.class_names) else str(target)
    top = [int(i) for i in importance["order"][: settings.top_slices]]
    rank = {int(i): r + 1 for r, i in enumerate(importance["order"])}

    folder = outdir / "patients" / safe_name(patient)
    folder.mkdir(parents=True, exist_ok=True)
    maps = compute_maps(model, images[top], target, settings)
    saved: dict[str, np.ndarray] = {}
    records, scores = [], []
    for i, row in enumerate(chosen):
        row = int(row)
        mask = cache.mask(row)
        mask_array = None if mask is None else mask[0].numpy()
        tumour = None if mask_array is None else bool(mask_array.any())
        record = {
            "patient_id": patient,
            "true_type": true_type,
            "predicted_type": predicted,
            "predicted_probability": probability,
            "slice_index": int(positions[i]),
            "image": str(table.at[row, "image"]),
            "frame": int(table.at[row, "frame"]),
            "attention_weight": _number(importance["attention"][i]),
            "slice_occlusion_drop": _number(importance["drops"][i]),
            "slice_probability": _number(importance["slice_probability"][i]),
            "rank": rank[i],
            "explained": i in top,
            "tumour_in_mask": tumour,
            "mask_share": None if mask_array is None else mask_share(mask_array),
        }
        if i in top:
            slice_maps = {name: maps[name][top.index(i)].numpy() for name in maps}
            for name, values in slice_maps.items():
                saved[f"{name}_slice_{positions[i]:03d}"] = values.astype(np.float32)
                share = None if mask_array is None else share_in_mask(values, mask_array)
                hit = (
                    None
                    if mask_array is None
                    else pointing_game_hit(values, mask_array, settings.pointing_tolerance)
                )
                record[f"{name}_share_in_mask"] = share
                record[f"{name}_pointing_hit"] = hit
                scores.append(
                    {
                        "method": name,
                        "true_type": true_type,
                        "share_in_mask": share,
                        "pointing_hit": hit,
                        "mask_share": record["mask_share"],
                    }
                )
            overlay = folder / f"slice_{positions[i]:03d}.png"
            draw_overlays(
                images[i].cpu(),
                slice_maps,
                mask_array,
                f"{patient} slice {positions[i]} — predicted {predicted} "
                f"(p={probability:.2f}, true {true_type}); rank {rank[i]}",
                overlay,
            )
            record["overlay"] = str(overlay.relative_to(outdir))
        records.append(record)
    if saved:
        np.savez_compressed(folder / "maps.npz", **saved)
    bag = model.bag_model is not None
    draw_slice_importance(
        [str(p) for p in positions],
        importance["attention"] if bag else None,
        importance["drops"] if bag else importance["slice_probability"],
        [r["tumour_in_mask"] for r in records],
        f"{patient}: predicted {predicted} (p={probability:.2f}), true {true_type}",
        folder / "slice_importance.png",
        "drop of p when slice removed" if bag else f"p({predicted}) of the slice",
    )
    return {
        "slices": records,
        "scores": scores,
        "patient": {
            "patient_id": patient,
            "true_type": true_type,
            "predicted_type": predicted,
            "predicted_probability": probability,
            "n_slices": len(chosen),
            "top_slices": [int(positions[i]) for i in top],
            "folder": str(folder.relative_to(outdir)),
        },
    }


def compute_maps(
    model: ExplainableModel, images: torch.Tensor, target: int, settings: Settings
) -> dict[str, torch.Tensor]:
    """Per method, (n, H, W) maps of the given slices for class ``target``."""
    maps = {}
    if "occlusion" in settings.methods:
        maps["occlusion"] = torch.stack(
            [
                occlusion_map(
                    model.slice_classifier,
                    image,
                    target,
                    settings.window,
                    settings.stride,
                    settings.baseline,
                    temperature=model.temperature,
                )
                for image in images
            ]
        )
    if "gradcam" in settings.methods:
        maps["gradcam"] = gradcam_maps(
            model.slice_classifier, model.gradcam_layer, images, [target] * len(images)
        )
    return maps


def slice_importance_summary(slice_rows: list[dict]) -> dict:
    """Do the slices ranked most important show tumour more often than the bag's slices do?
    Over slices with a mask only."""
    with_mask = [r for r in slice_rows if r["tumour_in_mask"] is not None]
    top = [r for r in with_mask if r["explained"]]
    first = [r for r in with_mask if r["rank"] == 1]

    def rate(rows):
        return float(np.mean([bool(r["tumour_in_mask"]) for r in rows])) if rows else None

    return {
        "n_slices_with_mask": len(with_mask),
        "tumour_rate_all_slices": rate(with_mask),
        "tumour_rate_explained_slices": rate(top),
        "tumour_rate_rank_1_slices": rate(first),
    }


def _number(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value

"""One patient of ``mritumor explain``: its bag, slice ranking and pixel maps, scored against the
tumour mask; writes the patient's overlays, slice-importance chart and ``maps.npz`` and returns
its rows of ``slices.csv`` (:data:`SLICE_COLUMNS`) and mask scores."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from mritumor.data.loading.cache import SliceCache
from mritumor.data.loading.datasets import bag_positions
from mritumor.explain.explainable import ExplainableModel, Settings, compute_maps, rank_slices
from mritumor.explain.metrics import mask_share, pointing_game_hit, share_in_mask
from mritumor.explain.plots import draw_overlays, draw_slice_importance

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


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "patient"

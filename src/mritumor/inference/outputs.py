"""What ``mritumor predict`` writes: predicted masks at the input's geometry, and the document
as JSON (stdout or a file) or as CSV (one row per patient, one per slice beside it)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from mritumor.data import io
from mritumor.errors import MritumorError
from mritumor.inference.inputs import PatientInput, SliceRef, file_name, slice_stem, stem
from mritumor.inference.predictor import PatientPrediction

OUTPUT_SUFFIXES = (".json", ".csv")


def write_masks(prediction: PatientPrediction, patient: PatientInput, folder: Path) -> list[Path]:
    """The predicted masks at the input's original size: one NIfTI volume (shape, affine and
    header of the input's, uint8 0/1) for a NIfTI patient, else one 0/255 PNG per slice
    (``<slice>_mask.png``; ``_<frame>`` for multi-frame DICOM)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    masks = prediction.masks
    if patient.volume is not None:
        return [_write_mask_volume(patient.volume, prediction.used, masks, folder)]
    written = []
    for ref, mask in zip(prediction.used, masks, strict=True):
        relative = Path(file_name(ref))
        path = folder / relative.parent / f"{slice_stem(ref)}_mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        written.append(path)
    return written


def _write_mask_volume(volume: Path, used: list[SliceRef], masks, folder: Path) -> Path:
    import nibabel as nib

    image = nib.load(str(volume))
    data = np.zeros(image.shape, dtype=np.uint8)
    for ref, mask in zip(used, masks, strict=True):
        # io reads axial plane k as volume[:, :, k].T (rows anterior→posterior): undo it
        if data.ndim == 4:
            data[:, :, ref.frame, 0] = mask.T
        else:
            data[:, :, ref.frame] = mask.T
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    if hasattr(header, "set_slope_inter"):
        header.set_slope_inter(1, 0)  # the input's intensity scaling does not apply to a mask
    result = type(image)(data, image.affine, header)
    suffix = io.suffix_of(volume)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem(volume)}_mask{suffix}"
    nib.save(result, str(path))
    return path


PATIENT_COLUMNS = ("patient_id", "input", "n_slices", "n_slices_used", "predicted_type")


def patient_rows(records: list[dict]) -> list[dict]:
    """One flat row per patient: the CSV of many patients."""
    rows = []
    for record in records:
        row = {k: record.get(k) for k in PATIENT_COLUMNS}
        for name, p in (record.get("type_probabilities") or {}).items():
            row[f"p_type_{name}"] = p
        if "grade_probabilities" in record:
            row["predicted_grade"] = record["predicted_grade"]
            row.update({f"p_grade_{g}": p for g, p in record["grade_probabilities"].items()})
        slices = record.get("slices") or []
        if slices and "attention_weight" in slices[0]:
            top = max(slices, key=lambda s: s["attention_weight"])
            row["top_slice"], row["top_slice_weight"] = top["name"], top["attention_weight"]
        if "tumour_area_px" in record:
            row["tumour_area_px"] = record["tumour_area_px"]
            row["n_slices_with_tumour"] = sum(1 for s in slices if s["tumour_area_px"] > 0)
        rows.append(row)
    return rows


def slice_rows(records: list[dict]) -> list[dict]:
    """One flat row per slice used: the ``*_slices.csv`` beside the patients' CSV."""
    rows = []
    for record in records:
        for entry in record.get("slices") or []:
            row = {"patient_id": record["patient_id"], "slice": entry["name"]}
            for key, value in entry.items():
                if key == "type_probabilities":
                    row.update({f"p_type_{t}": p for t, p in value.items()})
                elif key != "name":
                    row[key] = value
            rows.append(row)
    return rows


def _write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_output(document: dict, output: Path | None) -> Path | None:
    """JSON to ``output`` (or stdout when None), or CSV when ``output`` ends in .csv: the
    patients' rows there and their slices' rows in ``<stem>_slices.csv`` beside it."""
    if output is None:
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        output.write_text(json.dumps(document, indent=2) + "\n")
    else:
        _write_csv(patient_rows(document["patients"]), output)
        _write_csv(slice_rows(document["patients"]), output.with_name(f"{output.stem}_slices.csv"))
    return output


def check_output(output: str | Path | None) -> Path | None:
    if output is None:
        return None
    output = Path(output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise MritumorError(
            f"--output {output}: the extension decides the format; use .json or .csv"
        )
    if output.is_dir():
        raise MritumorError(
            f"--output {output} is a folder; give a file name ending in .json or .csv"
        )
    return output

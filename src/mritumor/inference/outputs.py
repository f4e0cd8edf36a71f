"""What ``mritumor predict`` writes: predicted masks at the input's geometry, and the document
as JSON (stdout or a file), as CSV (one row per patient, one per slice beside it) or as JSON
lines; CSV and JSON lines are written patient by patient as they are predicted
(:class:`ResultStream`), and ``--resume`` continues such a file."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from mritumor.data.reading import io
from mritumor.errors import MritumorError
from mritumor.inference.inputs import PatientInput, SliceRef, file_name, slice_stem, stem

OUTPUT_SUFFIXES = (".json", ".csv", ".jsonl")
STREAMED = (".csv", ".jsonl")  # written as the patients are predicted


def write_masks(prediction, patient: PatientInput, folder: Path) -> list[Path]:
    """The predicted masks at the input's original size: one NIfTI volume (shape, affine and
    header of the input's, uint8 0/1) for a NIfTI patient, else one 0/255 PNG per slice
    (``<slice>_mask.png``; ``_<frame>`` for multi-frame DICOM)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    masks = prediction.masks
    if patient.volume is not None:
        return [_write_mask_volume(patient, prediction.used, masks, folder)]
    written = []
    for ref, mask in zip(prediction.used, masks, strict=True):
        relative = Path(file_name(ref))
        path = folder / relative.parent / f"{slice_stem(ref)}_mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        written.append(path)
    return written


def write_series_segmentation(
    prediction, patient: PatientInput, folder: Path, algorithm: dict
) -> None:
    """A DICOM series' masks as one DICOM Segmentation (``<series>_seg.dcm``, highdicom) and its
    classification as a JSON sidecar beside it (``<series>_seg.json``); the record gets
    ``segmentation_file`` and ``sidecar_file``, or ``segmentation_note`` saying why no SEG could
    be written (sources without patient geometry, e.g. secondary captures): the PNG masks are
    then the only masks. ``algorithm``: :func:`algorithm_identification`."""
    from mritumor.inference.dicom_seg import (
        SegmentationSourceError,
        write_segmentation,
        write_sidecar,
    )

    record = prediction.record
    name = patient.series.name if patient.series and patient.series.name else stem(patient.source)
    path = folder / f"{name}_seg.dcm"
    try:
        write_segmentation(
            [(ref.image, ref.frame) for ref in prediction.used],
            prediction.masks,
            path,
            algorithm_name=algorithm["name"],
            algorithm_version=algorithm["version"],
        )
    except SegmentationSourceError as error:
        record["segmentation_note"] = f"no DICOM SEG written: {error}"
        return
    record["segmentation_file"] = str(path)
    record["sidecar_file"] = str(path.with_suffix(".json"))
    # the sidecar holds the record as it stands, its own name and the SEG's UIDs
    write_sidecar(record, path)


def algorithm_identification(checkpoint, variant: str | None) -> dict:
    """How a SEG names the model: "mritumor multitask <variant>", and the checkpoint's content
    hash as its version (two checkpoints of one variant differ, and a copy is the same)."""
    import hashlib

    with open(checkpoint, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()[:16]
    return {"name": f"mritumor multitask {variant or ''}".strip(), "version": f"sha256:{digest}"}


def _write_mask_volume(patient: PatientInput, used: list[SliceRef], masks, folder: Path) -> Path:
    """The masks as a NIfTI volume over the input's own voxel grid: planes were cut from the
    volume reoriented to LPS (io.read_nifti), so they are put back there and mapped to the
    file's voxel order; shape, affine and voxel sizes are the input's (a 4-D input's chosen
    volume gives a 3-D mask)."""
    import nibabel as nib

    volume = io.read_nifti(patient.volume, patient.volume_index)
    lps = np.zeros(volume.data.shape, dtype=np.uint8)
    for ref, mask in zip(used, masks, strict=True):
        lps[:, :, ref.frame] = mask.T  # an axial plane is data[:, :, k].T: undo it
    data = volume.to_input_geometry(lps)
    header = volume.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(data.shape)
    if hasattr(header, "set_slope_inter"):
        header.set_slope_inter(1, 0)  # the input's intensity scaling does not apply to a mask
    # Nifti2Header derives from Nifti1Header: ask for the second first
    image = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    result = image(data, volume.input_affine, header)
    suffix = io.suffix_of(patient.volume)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem(patient.volume)}_mask{suffix}"
    nib.save(result, str(path))
    return path


PATIENT_COLUMNS = ("patient_id", "input", "n_slices", "n_slices_used", "predicted_type")


def patient_rows(records: list[dict]) -> list[dict]:
    """One flat row per patient: the CSV of many patients."""
    rows = []
    for record in records:
        row = {k: record.get(k) for k in PATIENT_COLUMNS}
        row["series"] = (record.get("series") or {}).get("name") or ""
        row["sequence_warning"] = record.get("sequence_warning", "")
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
            row["tumour_found"] = record.get("tumour_found")
            # every row has these columns (a streamed CSV's header is its first row's keys)
            row["tumour_area_mm2"] = record.get("tumour_area_mm2")
            row["tumour_volume_ml"] = record.get("tumour_volume_ml")
            row["size_note"] = record.get("size_note", "")
            row["segmentation_file"] = record.get("segmentation_file", "")
        if "in_distribution" in record:
            row["in_distribution"] = record["in_distribution"]
            row["ood_score"] = record.get("ood_score")
            row["type_prediction_set"] = "|".join(record.get("type_prediction_set") or [])
            row["abstain_reason"] = record.get("abstain_reason", "")  # a column in every row
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
            f"--output {output}: the extension decides the format; use .json, .csv or .jsonl"
        )
    if output.is_dir():
        raise MritumorError(
            f"--output {output} is a folder; give a file name ending in .json, .csv or .jsonl"
        )
    return output


def slices_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_slices.csv")


class ResultStream:
    """A .csv or .jsonl ``--output`` written as the patients are predicted: every patient is
    on disk (flushed) once :meth:`write` returns, so a killed run loses at most the patient it
    was on. CSV: the slices' rows go to ``<stem>_slices.csv`` before the patient's row, so a
    patient counts as finished only with all its rows. JSON lines: a first line
    ``{"model": ...}``, then one patient record per line, or ``{"patient_id", "skipped"}``.

    ``resume=True`` keeps what a previous run wrote: :attr:`done` holds its finished patients
    (to be skipped), a partly written last line is cut off, and the slices of an unfinished
    patient are dropped. Without it an existing file is replaced."""

    def __init__(self, output: Path, model: dict, resume: bool = False):
        self.output, self.csv = output, output.suffix.lower() == ".csv"
        self.done: set[str] = set()
        output.parent.mkdir(parents=True, exist_ok=True)
        existing = resume and output.is_file() and output.stat().st_size > 0
        if existing:
            self._resume(model)
        mode = "a" if existing else "w"
        self._main = open(output, mode, newline="" if self.csv else None)
        self._writers: dict = {}
        if self.csv:
            self._slices = open(slices_path(output), mode if existing else "w", newline="")
            if existing:
                self._writers = {stream: self._existing_writer(stream) for stream in (self._main, self._slices)}  # fmt: skip
        else:
            self._slices = None
            if not existing:
                self._line({"model": model})

    def _resume(self, model: dict) -> None:
        _cut_partial_line(self.output)
        if self.csv:
            with open(self.output, newline="") as stream:
                self.done = {row["patient_id"] for row in csv.DictReader(stream)}
            sliced = slices_path(self.output)
            if sliced.is_file():
                _cut_partial_line(sliced)
                with open(sliced, newline="") as stream:
                    reader = csv.DictReader(stream)
                    kept = [row for row in reader if row["patient_id"] in self.done]
                    columns = reader.fieldnames or []
                with open(sliced, "w", newline="") as stream:  # unfinished patients' slices out
                    writer = csv.DictWriter(stream, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows(kept)
            return
        lines = [json.loads(line) for line in self.output.read_text().splitlines() if line.strip()]
        previous = lines[0].get("model") if lines else None
        if previous and (previous.get("task"), previous.get("types")) != (model.get("task"), model.get("types")):  # fmt: skip
            raise MritumorError(
                f"--resume: {self.output} holds predictions of another model "
                f"({previous.get('checkpoint')}); give another --output"
            )
        self.done = {r["patient_id"] for r in lines[1:] if "patient_id" in r and "skipped" not in r}

    def _existing_writer(self, stream):
        with open(stream.name, newline="") as reader:
            columns = next(csv.reader(reader), None)
        if not columns:
            return None  # an empty file: the first row writes the header
        return csv.DictWriter(stream, fieldnames=columns, restval="", extrasaction="ignore")

    def _line(self, value: dict) -> None:
        self._main.write(json.dumps(value) + "\n")
        self._main.flush()

    def _rows(self, stream, rows: list[dict]) -> None:
        if not rows:
            return
        writer = self._writers.get(stream)
        if writer is None:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            writer = csv.DictWriter(stream, fieldnames=columns, restval="", extrasaction="ignore")
            writer.writeheader()
            self._writers[stream] = writer
        writer.writerows(rows)
        stream.flush()

    def write(self, record: dict) -> None:
        if self.csv:
            self._rows(self._slices, slice_rows([record]))
            self._rows(self._main, patient_rows([record]))
        else:
            self._line(record)
        self.done.add(record["patient_id"])

    def skip(self, patient_id: str, reason: str) -> None:
        if not self.csv:  # a CSV has no place for it; a resumed run tries the patient again
            self._line({"patient_id": patient_id, "skipped": reason})

    def close(self) -> None:
        self._main.close()
        if self._slices is not None:
            self._slices.close()


def _cut_partial_line(path: Path) -> None:
    """Drop an unfinished last line (a run killed while writing it)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as stream:
            stream.truncate(data.rfind(b"\n") + 1)

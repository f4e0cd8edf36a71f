"""The models a server holds and one upload turned into ``mritumor predict --json``'s document.

:func:`build_predictor` is the one place the server builds a
:class:`~mritumor.inference.predictor.Predictor` (an inference engine is chosen there). The
document is predict's, with what a client far from the server's disk needs on top: each
slice's predicted mask as a PNG data URL (segmenting models), and on request the slice the
model saw (``images``) and an attribution heat map of the most important slices (``explain``),
also as PNG data URLs. ``input`` names what was uploaded, never a path of the server, and
``model.checkpoint`` is the model's name.
"""

from __future__ import annotations

import base64
import io as bytes_io
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mritumor import runfiles
from mritumor.errors import DataError
from mritumor.inference.inputs import discover
from mritumor.inference.outputs import algorithm_identification, write_series_segmentation
from mritumor.inference.predictor import PatientPrediction, Predictor
from mritumor.inference.sequences import add_sequence_warning, trained_sequences
from mritumor.models.loading import LoadedModel, load_model
from mritumor.server.uploads import Limits, UploadError

log = logging.getLogger(__name__)

TOP_SLICES = 3  # slices given a heat map with explain


class Cancelled(Exception):
    """The request's time ran out; the work stops at the next patient."""


def build_predictor(loaded: LoadedModel) -> Predictor:
    """The predictor of every request (the single call of its constructor in the server)."""
    return Predictor(loaded, calibrated=True, all_slices=False)


@dataclass
class ModelEntry:
    name: str
    loaded: LoadedModel
    predictor: Predictor
    card: dict
    explain_lock: threading.Lock = field(default_factory=threading.Lock)
    _explainer: object = None
    _algorithm: dict | None = None

    @property
    def trained_sequences(self) -> list[str]:
        return trained_sequences(self.loaded.checkpoint)

    def algorithm(self) -> dict:
        """How a DICOM SEG names this model (hashed once)."""
        if self._algorithm is None:
            self._algorithm = algorithm_identification(self.loaded.path, self.loaded.variant)
        return self._algorithm

    def explainer(self):
        if self._explainer is None:
            from mritumor.inference.explanations import build_explainer

            self._explainer = build_explainer(self.loaded, self.predictor.temperature)
        return self._explainer


def load_models(paths: list[str | Path]) -> dict[str, ModelEntry]:
    """Each checkpoint loaded once, named by its file (or its run folder for ``best.pt``)."""
    models: dict[str, ModelEntry] = {}
    for path in map(Path, paths):
        loaded = load_model(path)
        base = path.parent.name if path.stem == "best" and path.parent.name else path.stem
        name, k = base, 2
        while name in models:
            name, k = f"{base}-{k}", k + 1
        models[name] = ModelEntry(name, loaded, build_predictor(loaded), model_card(name, loaded))
    return models


def model_card(name: str, loaded: LoadedModel) -> dict:
    """What a user needs to judge a model: classes, input, training data, test metrics with
    their intervals (``test_metrics.json`` of the run folder, when beside the checkpoint) and
    the recipe (the training run's flags)."""
    checkpoint = loaded.checkpoint
    config = dict(checkpoint.get("config") or {})
    split = checkpoint.get("split") or {}
    metrics_file = loaded.path.parent / runfiles.TEST_METRICS
    metrics = None
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            log.warning("%s is unreadable; the model card has no test metrics", metrics_file)
    recipe = {k: v for k, v in config.items() if k not in ("data_root", "outdir", "cache_dir")}
    return {
        "name": name,
        "task": loaded.task,
        "variant": loaded.variant,
        "description": loaded.describe(),
        "types": list(loaded.labels.types) if loaded.classifies else None,
        "grades": list(loaded.labels.grades) if loaded.task == "hierarchical" else None,
        "segments": loaded.segments,
        "input": {
            "image_size": loaded.preprocessing.image_size,
            "channels": loaded.preprocessing.channels,
            "bag_size": loaded.bag_size,
        },
        "temperature": loaded.temperature,
        "training_data": {
            "source": ", ".join(Path(str(root)).name for root in _roots(config)) or None,
            "format": config.get("format"),
            "patients": {part: len(split.get(part) or []) for part in ("train", "val", "test")},
            "split_strategy": split.get("strategy"),
        },
        "test_metrics": metrics,
        "recipe": recipe,
        "metadata": checkpoint.get("metadata"),
    }


def predict_upload(
    entry: ModelEntry,
    path: Path,
    label: str,
    limits: Limits,
    images: bool = False,
    explain: bool = False,
    cancelled: Callable[[], bool] = lambda: False,
) -> dict:
    """predict's JSON document for the upload laid out at ``path`` (see the module docstring)."""
    try:
        patients = discover(path)
    except DataError as error:
        raise UploadError(_scrub(str(error), path, label), 415) from error
    root = path if path.is_dir() else path.parent
    name = Path(label).stem.removesuffix(".nii") or "patient"
    skipped = [
        {
            "patient_id": _renamed(s["patient_id"], root, name),
            "reason": _scrub(s["reason"], root, label, path),
        }  # fmt: skip
        for p in patients
        for s in p.skipped
    ]
    n_slices = sum(len(p.slices) for p in patients)
    if n_slices > limits.max_slices:
        raise UploadError(f"{n_slices} slices in the upload; at most {limits.max_slices}", 413)
    records: list[dict] = []
    for patient in patients:
        if cancelled():
            raise Cancelled()
        patient.patient_id = name if path.is_file() else _renamed(patient.patient_id, root, name)
        try:
            prediction = entry.predictor(patient)
        except DataError as error:
            if len(patients) == 1:
                raise UploadError(_scrub(str(error), root, label, path), 422) from error
            skipped.append(
                {"patient_id": patient.patient_id, "reason": _scrub(str(error), root, label, path)}
            )
            continue
        record = prediction.record
        record["input"] = label if len(patients) == 1 else f"{label}/{patient.patient_id}"
        _add_pictures(entry, prediction, images, explain)
        add_sequence_warning(record, patient.series, entry.trained_sequences)
        if prediction.masks is not None and patient.series is not None:
            _add_segmentation(
                entry, prediction, patient, root.parent / "seg" / str(len(records)),
                lambda text: _scrub(text, root, label, path),
            )  # fmt: skip
        records.append(record)
    if not records:
        raise UploadError(f"no patient could be predicted; first reason: {skipped[0]['reason']}", 422)  # fmt: skip
    model = entry.predictor.header()
    model["checkpoint"] = entry.name
    return {"model": model, "patients": records, "skipped": skipped}


def _renamed(patient_id: str, root: Path, name: str) -> str:
    """A unit named after the server's upload folder (the upload itself, or one of its DICOM
    series ``<folder>/<series>``) named after the upload instead."""
    if patient_id == root.name:
        return name
    if patient_id.startswith(root.name + "/"):
        return name + patient_id[len(root.name) :]
    return patient_id


def _add_segmentation(entry: ModelEntry, prediction, patient, folder: Path, scrub) -> None:
    """A DICOM series' DICOM SEG (as predict --save_masks writes it), handed back as a
    downloadable data URL (``segmentation_dicom``, ``segmentation_name``); the server's own
    paths leave the record."""
    record = prediction.record
    write_series_segmentation(prediction, patient, folder, entry.algorithm())
    if "segmentation_note" in record:  # it may name the server's temporary files
        record["segmentation_note"] = scrub(record["segmentation_note"])
    record.pop("sidecar_file", None)  # the answer itself is the sidecar's content
    written = record.pop("segmentation_file", None)
    if written:
        data = base64.b64encode(Path(written).read_bytes()).decode("ascii")
        record["segmentation_name"] = Path(written).name
        record["segmentation_dicom"] = "data:application/dicom;base64," + data


def _scrub(message: str, folder: Path, label: str, file: Path | None = None) -> str:
    """A message with the upload's name in place of the server's temporary paths."""
    if file is not None:
        message = message.replace(str(file), label)
    return message.replace(str(folder), label)


def _add_pictures(entry: ModelEntry, prediction: PatientPrediction, images: bool, explain: bool):
    slices = prediction.record["slices"]
    if prediction.masks is not None:
        for item, mask in zip(slices, prediction.masks, strict=True):
            item["mask_png"] = png_data_url(mask.astype(np.uint8) * 255)
    if images:
        for item, image in zip(slices, prediction.images, strict=True):
            item["image_png"] = png_data_url(to_uint8(np.asarray(image)))
    if explain and entry.loaded.classifies:
        with entry.explain_lock:  # Grad-CAM's hooks sit on the shared network
            _add_heat_maps(entry, prediction)


def _add_heat_maps(entry: ModelEntry, prediction: PatientPrediction) -> None:
    from dataclasses import replace

    import torch

    from mritumor.explain.explainable import compute_maps, rank_slices

    model, settings = entry.explainer()
    # Grad-CAM where the network has a layer for it: one backward pass, unlike occlusion's
    # hundreds of forward passes, which would hold the queue
    method = "gradcam" if "gradcam" in settings.methods else "occlusion"
    settings = replace(settings, methods=[method])
    images = torch.as_tensor(prediction.images)  # the predictor keeps numpy arrays
    target, _, importance = rank_slices(model, images)
    top = [int(i) for i in importance["order"][:TOP_SLICES]]
    maps = compute_maps(model, images[top], target, settings)[method]
    slices = prediction.record["slices"]
    for j, i in enumerate(top):
        slices[i]["heatmap_png"] = png_data_url(heat_colours(maps[j].numpy()))
        slices[i]["heatmap_method"] = method


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(C, H, W) preprocessed slice → (H, W) or (H, W, 3) uint8, min–max scaled for display."""
    image = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return (scaled * 255).round().astype(np.uint8)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(H, W) map → (H, W, 4) RGBA: red, opacity rising with the normalised value."""
    values = np.nan_to_num(values.astype(np.float32))
    high = float(values.max())
    scaled = np.clip(values / high, 0, 1) if high > 0 else np.zeros_like(values)
    rgba = np.zeros((*values.shape, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = (scaled * 200).astype(np.uint8)
    rgba[..., 3] = (scaled * 180).astype(np.uint8)
    return rgba


def png_data_url(array: np.ndarray) -> str:
    from PIL import Image

    buffer = bytes_io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _roots(config: dict) -> list:
    """The training data's roots: one, or several for a multi-source run."""
    roots = config.get("data_root")
    return [r for r in (roots if isinstance(roots, list) else [roots]) if r]

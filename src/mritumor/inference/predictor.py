"""A model applied to one :class:`~mritumor.inference.inputs.PatientInput`, or a stream of them.

Each slice is decoded and preprocessed exactly as the training cache does
(:func:`mritumor.data.loading.cache.preprocess_image`, float16 storage included; with ONNX Runtime its
numpy twin), so a slice gives the network the tensor it gave it in evaluation. Hierarchical
models see the checkpoint's evaluation bag (``bag_size`` evenly spaced slices; ``all_slices``
for every slice), multi-task models every slice. The network runs in an engine
(:mod:`~mritumor.inference.engines`: PyTorch or ONNX Runtime); the probabilities are computed
here, in numpy, divided by the checkpoint's temperature unless ``calibrated=False``.

Per patient (see :class:`Predictor` for the record's keys): type probabilities; hierarchical:
end-to-end grade probabilities P(g) = Σt P(t) P(g|t) and the attention weight of every bag slice;
multi-task: per-slice type probabilities (the patient's are their mean, as in evaluation) and
the predicted tumour area in pixels of the original image.

Nothing here imports Lightning or MONAI, and nothing imports torch unless the engine is
PyTorch's (or a checkpoint must be exported first).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from mritumor.data.reading import io
from mritumor.errors import DataError
from mritumor.inference import arrays
from mritumor.inference.checks import check_channels
from mritumor.inference.engines import TorchEngine, fold_batchnorm, select_engine
from mritumor.inference.inputs import (
    SUPPORTED,
    PatientInput,
    SliceRef,
    plane,
    read_volume,
    where,
    with_volume_geometry,
)
from mritumor.inference.tta import TTAEngine, check_views

log = logging.getLogger(__name__)

CHUNK = 32  # multi-task slices per forward pass
__all__ = ["Predictor", "PatientPrediction", "mask_at_original_size", "fold_batchnorm"]


@dataclass
class PatientPrediction:
    record: dict  # JSON-ready result (see Predictor)
    images: np.ndarray  # (n, C, S, S) float32: the preprocessed slices the model saw
    used: list[SliceRef]  # the n slices, in order
    sizes: list[tuple[int, int]]  # their original (H, W)
    masks: list[np.ndarray] | None = None  # segmenting models: (H, W) bool, original size


@dataclass
class Prepared:
    """A patient read and preprocessed, waiting for the network (see :meth:`Predictor.stream`)."""

    patient: PatientInput
    images: np.ndarray
    used: list[SliceRef]
    sizes: list[tuple[int, int]]


class Predictor:
    """A model applied to :class:`PatientInput` s by an engine (:mod:`~mritumor.inference.
    engines`). ``Predictor.from_checkpoint(path, engine="auto")`` is the simple way in (a
    server builds one and calls it per request: ``predictor(patient).record``);
    ``Predictor(loaded)`` runs a :class:`~mritumor.models.loading.LoadedModel` with PyTorch.

    The record of a patient holds ``patient_id``, ``input``, ``n_slices`` (found),
    ``n_slices_used`` and ``slices`` (one entry per slice used, with its ``name``), and:

    * hierarchical: ``predicted_type``, ``type_probabilities`` {type: p}, ``predicted_grade``
      and ``grade_probabilities`` {grade: P(g) = Σt P(t) P(g|t)} (these sum to 1 minus the
      probability of types trained without grades), each slice's ``attention_weight`` (the
      pooling's weight; they sum to 1);
    * multi-task with a classifier: ``predicted_type`` and ``type_probabilities`` (mean of the
      slices'), each slice's ``predicted_type`` and ``type_probabilities``;
    * multi-task with a segmenter: ``tumour_area_px`` (all slices) and each slice's
      ``tumour_area_px``, counted on the mask at the image's original size; ``tumour_found``
      (any slice's mask non-empty). With ``abstain``, a patient the model flags out of
      distribution, or (model without a ``no_tumour`` type) with no tumour outlined in any
      slice, gets ``predicted_type`` "uncertain" and an ``abstain_reason``.

    With the PyTorch engine slices are preprocessed by the training cache's own function; with
    ONNX Runtime by its numpy twin (:func:`mritumor.inference.arrays.preprocess_image`), so that
    a cached ONNX model predicts without importing torch.
    """

    def __init__(
        self,
        loaded,
        calibrated: bool = True,
        all_slices: bool = False,
        channels_last: bool = True,
        engine=None,
        coverage: float | None = None,
        abstain: bool = False,
    ):
        """``loaded``: a LoadedModel, or the ModelCard of a cached ONNX model; ``engine``:
        an engine object (default: :class:`TorchEngine` of ``loaded``); ``coverage``: of the
        prediction sets (default: the one fitted); ``abstain``: an input out of distribution
        gets ``predicted_type`` "uncertain" instead of a label."""
        self.loaded = loaded
        self.uncertainty = getattr(loaded, "uncertainty", None)
        self.coverage, self.abstain = coverage, abstain
        self.temperature = loaded.temperature if calibrated else 1.0
        self.all_slices = all_slices
        self.engine = engine if engine is not None else TorchEngine(loaded, channels_last)
        self.model = getattr(self.engine, "model", None)  # the torch network, torch engine only
        if self.engine.name == "torch":
            from mritumor.data.loading.cache import preprocess_image

            self._preprocess = lambda image, prep: preprocess_image(image, prep).float().numpy()
        else:
            self._preprocess = arrays.preprocess_image

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        engine: str = "auto",
        calibrated: bool = True,
        all_slices: bool = False,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        loaded=None,
        coverage: float | None = None,
        abstain: bool = False,
        tta: int = 1,
    ) -> Predictor:
        """The predictor of a checkpoint with ``engine`` ``torch``, ``onnx`` or ``auto`` (see
        :func:`~mritumor.inference.engines.select_engine`); ``threads``: the engine's (None:
        the machine's CPUs); ``loaded``: the checkpoint already loaded, if it is; ``tta``:
        views averaged per slice (:mod:`~mritumor.inference.tta`; 1: none)."""
        runner, model = select_engine(engine, checkpoint, loaded, cache_dir, threads)
        if check_views(tta) > 1:
            runner = TTAEngine(runner, tta)
        return cls(
            model,
            calibrated=calibrated,
            all_slices=all_slices,
            engine=runner,
            coverage=coverage,
            abstain=abstain,
        )

    def header(self) -> dict:
        loaded = self.loaded
        bag = None
        if loaded.task == "hierarchical":
            bag = "all slices" if self.all_slices else {"bag_size": loaded.bag_size, "bag_policy": loaded.bag_policy}  # fmt: skip
        return {
            "checkpoint": str(loaded.path),
            "task": loaded.task,
            "variant": loaded.variant,
            "types": list(loaded.labels.types) if loaded.classifies else None,
            "grades": list(loaded.labels.grades) if loaded.task == "hierarchical" else None,
            "temperature": self.temperature,
            "calibrated": self.temperature != 1.0,
            "image_size": loaded.preprocessing.image_size,
            "channels": loaded.preprocessing.channels,
            "intensity": loaded.preprocessing.intensity,
            "bag": bag,
            "engine": self.engine.name,
            "tta": getattr(self.engine, "n", 1),
        }

    # -- reading

    def _positions(self, n: int) -> list[int]:
        loaded = self.loaded
        if loaded.task != "hierarchical" or self.all_slices:
            return list(range(n))
        return arrays.evaluation_bag(n, loaded.bag_size, loaded.bag_policy)

    def read(self, patient: PatientInput):
        """The slices the model will see, decoded and preprocessed: (n, C, S, S) float32, the
        slices, their original (H, W). Undecodable slices are skipped with a warning and the
        bag is chosen again among the others, as the cache's dropped slices are."""
        candidates = list(patient.slices)
        decoded: dict[SliceRef, tuple] = {}
        volume = None
        if patient.volume is not None:
            volume = read_volume(patient.volume, patient.volume_index)
            if patient.pixel_spacing is None:  # a patient folder's volume: sizes known now
                with_volume_geometry(patient, volume, patient.volume_index)
        decode = partial(self._decode, volume=volume)
        while True:
            chosen = [candidates[i] for i in self._positions(len(candidates))]
            todo = [ref for ref in chosen if ref not in decoded]
            failed = set()
            for ref, result in zip(todo, _map(decode, todo), strict=True):
                if isinstance(result, str):
                    log.warning("%s: %s; slice skipped", where(ref), result)
                    failed.add(ref)
                else:
                    decoded[ref] = result
            if not failed:
                break
            candidates = [ref for ref in candidates if ref not in failed]
        if not chosen:
            raise DataError(f"{patient.source}: no slice could be decoded")
        for ref in chosen:
            check_channels(decoded[ref][0], self.loaded, where(ref))
        images = np.stack([decoded[ref][1] for ref in chosen])
        return images, chosen, [decoded[ref][2] for ref in chosen]

    def _decode(self, ref: SliceRef, volume: io.NiftiVolume | None = None):
        """(raw channels, preprocessed (C, S, S) float32 or None, (H, W)), or the reason the
        slice cannot be read. Runs in threads: decoding and preprocessing release the GIL."""
        try:
            image = io.read_image(ref.image, ref.frame) if volume is None else plane(volume, ref)
        except io.SliceReadError as error:
            return str(error)
        channels, size = image.shape[0], tuple(image.shape[1:])
        if channels != self.loaded.preprocessing.channels:
            return channels, None, size  # refused by read(), with both channel counts
        # the cache's function (torch engine) or its twin, float16 included: the model gets
        # the values it was trained on
        return channels, self._preprocess(image, self.loaded.preprocessing), size

    # -- predicting

    def prepare(self, patient: PatientInput) -> Prepared:
        """The reading half of :meth:`__call__` (raises :class:`DataError` as it does)."""
        for problem in patient.problems:
            log.warning("%s", problem)
        if not patient.slices:
            reason = patient.problems[0] if patient.problems else f"no image slice found ({SUPPORTED})"  # fmt: skip
            raise DataError(f"{patient.source}: {reason}")
        return Prepared(patient, *self.read(patient))

    def predict_prepared(self, prepared: Prepared) -> PatientPrediction:
        """The network half of :meth:`__call__`."""
        patient, images, used, sizes = prepared.patient, prepared.images, prepared.used, prepared.sizes  # fmt: skip
        record = {
            "patient_id": patient.patient_id,
            "input": str(patient.source),
            "n_slices": len(patient.slices),
            "n_slices_used": len(used),
        }
        if patient.series is not None:
            record["series"] = series_record(patient.series)
        if self.loaded.task == "hierarchical":
            record.update(self._hierarchical(images, used))
            return PatientPrediction(record, images, used, sizes)
        extra, masks = self._multitask(images, used, sizes)
        record.update(extra)
        if masks is not None:
            add_physical_sizes(record, patient, len(used) == len(patient.slices))
        return PatientPrediction(record, images, used, sizes, masks)

    def __call__(self, patient: PatientInput) -> PatientPrediction:
        return self.predict_prepared(self.prepare(patient))

    def stream(
        self, patients: Iterable[PatientInput]
    ) -> Iterator[tuple[PatientInput, PatientPrediction | DataError]]:
        """(patient, its prediction or the DataError that stopped it) for each patient in
        order, the next patient read and preprocessed in a thread while the network runs on
        the current one. At most two patients are in memory at a time."""
        iterator = iter(patients)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
            current = next(iterator, None)
            pending = pool.submit(self.prepare, current) if current is not None else None
            while current is not None:
                following = next(iterator, None)
                try:
                    prepared = pending.result()
                except DataError as error:
                    prepared = error
                pending = pool.submit(self.prepare, following) if following is not None else None
                if isinstance(prepared, DataError):
                    yield current, prepared
                else:
                    try:
                        yield current, self.predict_prepared(prepared)
                    except DataError as error:
                        yield current, error
                current = following

    def _hierarchical(self, images: np.ndarray, used: list[SliceRef]) -> dict:
        labels = self.loaded.labels
        outputs = self.engine.run(images[None], np.ones((1, len(used)), dtype=bool))
        probs = arrays.hierarchical_probabilities(
            outputs["type_logits"], outputs["grade_logits"], self.temperature
        )
        types = probs["type"][0].tolist()
        result: dict = {
            "predicted_type": labels.types[int(np.argmax(types))],
            "type_probabilities": dict(zip(labels.types, types, strict=True)),
        }
        if labels.grades:
            normalised = probs["grade_e2e_normalised"][0]
            result["predicted_grade"] = labels.grades[int(normalised.argmax())]
            result["grade_probabilities"] = dict(
                zip(labels.grades, probs["grade_e2e"][0].tolist(), strict=True)
            )
        if labels.grades and self.uncertainty and "grade_conformal" in self.uncertainty:
            from mritumor.evaluation.uncertainty import grade_sets

            members = grade_sets(self.uncertainty, normalised[None], self.coverage)[0]
            result["grade_prediction_set"] = [labels.grades[k] for k in np.flatnonzero(members)]
        result.update(self._answer(outputs.get("patient_embedding"), probs["type"], False))
        weights = outputs["slice_weights"][0].astype(np.float32).tolist()
        result["slices"] = [
            {"name": ref.name, "attention_weight": w} for ref, w in zip(used, weights, strict=True)
        ]
        return result

    def _answer(self, features, probs, slice_level: bool) -> dict:
        """OOD flag and prediction set (:func:`~mritumor.evaluation.uncertainty.patient_answer`);
        with ``abstain`` an out-of-distribution input's label becomes "uncertain"."""
        from mritumor.evaluation.uncertainty import patient_answer

        labels = self.loaded.labels.types
        if self.uncertainty and features is None:  # an engine without the scored output
            name = self.uncertainty.get("ood", {}).get("features", "class_embedding")
            return {
                "in_distribution": None,
                "uncertainty_note": f"the network gives no '{name}' output for its "
                "out-of-distribution detector: no flag, no set (delete the checkpoint's "
                ".mritumor_onnx cache or run with --engine torch)",
            }
        fields = patient_answer(
            self.uncertainty, features, probs, labels, slice_level, self.coverage
        )
        if self.abstain and fields.get("in_distribution") is False:
            fields["predicted_type"] = "uncertain"
            fields["abstain_reason"] = "out of distribution"
        return fields

    def _multitask(self, images, used, sizes) -> tuple[dict, list[np.ndarray] | None]:
        labels = self.loaded.labels
        from mritumor.evaluation.uncertainty import ood_features

        logits, masks, features = [], [], []
        for start in range(0, len(images), CHUNK):
            outputs = self.engine.run(images[start : start + CHUNK])
            if "class_logits" in outputs:
                logits.append(outputs["class_logits"].astype(np.float32))
            chunk_features = ood_features(self.uncertainty, outputs)  # what the detector scores
            if chunk_features is not None:
                features.append(chunk_features)
            if "mask_logits" in outputs:
                masks.append(outputs["mask_logits"][:, 0].astype(np.float32))
        slices = [{"name": ref.name} for ref in used]
        result: dict = {}
        if logits:
            probs = arrays.softmax(np.concatenate(logits) / np.float32(self.temperature))
            patient = probs.mean(axis=0).tolist()
            result["predicted_type"] = labels.types[int(np.argmax(patient))]
            result["type_probabilities"] = dict(zip(labels.types, patient, strict=True))
            for entry, row in zip(slices, probs.tolist(), strict=True):
                entry["predicted_type"] = labels.types[int(np.argmax(row))]
                entry["type_probabilities"] = dict(zip(labels.types, row, strict=True))
            result.update(self._answer(np.concatenate(features) if features else None, probs, True))
        originals = None
        if masks:
            originals = [
                mask_at_original_size(m, *size)
                for m, size in zip(np.concatenate(masks), sizes, strict=True)
            ]
            areas = [int(m.sum()) for m in originals]
            result["tumour_area_px"] = int(sum(areas))
            # a model without a no_tumour type names a tumour type for every input; when its
            # own segmenter outlines nothing in any slice that name has nothing behind it — a
            # second "not what I know" signal beside the OOD score (bench_shift: tumour-free
            # LGG slices shown to a figshare model)
            result["tumour_found"] = any(area > 0 for area in areas)
            for entry, area in zip(slices, areas, strict=True):
                entry["tumour_area_px"] = area
            if self.abstain and not result["tumour_found"] and "predicted_type" in result:
                if "no_tumour" not in labels.types and result["predicted_type"] != "uncertain":
                    result["predicted_type"] = "uncertain"
                    result["abstain_reason"] = "no tumour segmented in any slice"
        result["slices"] = slices
        return result, originals


def series_record(series) -> dict:
    """What a DICOM series is, for the record: its name, UIDs, modality and acquisition tags."""
    return {
        "name": series.name,
        "series_instance_uid": series.series_uid,
        "study_instance_uid": series.study_uid,
        "modality": series.modality,
        **{_snake(k): v for k, v in series.tags.items()},
    }


def _snake(keyword: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in keyword).lstrip("_")


def add_physical_sizes(record: dict, patient: PatientInput, whole_stack: bool) -> None:
    """Tumour areas in mm² (pixel spacing of the original image) and, for a stack of slices
    with a known spacing that the model saw whole, the tumour volume in mL (area × slice
    spacing, summed: each slice stands for the slab between its neighbours). Unknown spacing:
    the pixel counts stay the only measure and ``size_note`` says why."""
    spacing = patient.pixel_spacing
    if spacing is None:
        record["tumour_area_mm2"] = None
        record["size_note"] = "pixel spacing unknown (an image file without it, or a DICOM/NIfTI header that does not give it): sizes in pixels only"  # fmt: skip
        return
    pixel_mm2 = float(spacing[0]) * float(spacing[1])
    areas = []
    for entry in record["slices"]:
        entry["tumour_area_mm2"] = round(entry["tumour_area_px"] * pixel_mm2, 3)
        areas.append(entry["tumour_area_mm2"])
    record["tumour_area_mm2"] = round(record["tumour_area_px"] * pixel_mm2, 3)
    record["pixel_spacing_mm"] = [float(spacing[0]), float(spacing[1])]
    if patient.slice_spacing and whole_stack:
        record["slice_spacing_mm"] = float(patient.slice_spacing)
        record["tumour_volume_ml"] = round(sum(areas) * patient.slice_spacing / 1000.0, 4)
    else:
        record["tumour_volume_ml"] = None
        record["size_note"] = "no volume: the slices do not form one stack with a known spacing (a single slice, repeated positions, or not every slice analysed)"  # fmt: skip


def mask_at_original_size(logits, height: int, width: int) -> np.ndarray:
    """(S, S) mask logits (array or CPU tensor) → (height, width) bool: the inverse of the
    cache's :func:`~mritumor.data.loading.cache.resize_square` (zero-pad to a centred square, resize):
    the logits are resized back to the square bilinearly, the padding is cropped, then > 0."""
    return arrays.mask_at_original_size(np.asarray(logits, dtype=np.float32), height, width)


def _map(function, items: list):
    """Decoding in threads (PIL, zlib and pydicom's decoders release the GIL) when it pays."""
    if len(items) < 4:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))

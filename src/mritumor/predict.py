"""``mritumor predict``: a trained checkpoint applied to unlabelled images.

Input (``--input PATH``), found by :func:`discover`:

* one image file (PNG/JPG/TIFF/BMP/NPY, or a DICOM file: one slice, or one per frame);
* a NIfTI volume (``.nii``/``.nii.gz``): one patient, one slice per axial plane;
* a patient folder: its 2-D slices, a DICOM series (ordered by slice position) or one NIfTI
  volume, read exactly as the data layer reads a patient folder (mask files are set aside);
* a folder of patient folders (any depth: every folder that directly holds image files is a
  patient, named by its path relative to PATH; a labelled ``<type>/<patient>/`` tree works too).

Each slice is decoded and preprocessed with the training cache's own functions
(:func:`mritumor.data.cache.preprocess_image`, including its float16 storage), so a slice gives
the network the very tensor it gave it in evaluation. Hierarchical models see the checkpoint's
evaluation bag (``bag_size`` evenly spaced slices; ``all_slices`` for every slice), multi-task
models every slice. Probabilities are divided by the checkpoint's temperature unless
``calibrated=False``.

Per patient (see :class:`Predictor` for the record's keys): type probabilities; hierarchical:
end-to-end grade probabilities P(g) = Σt P(t) P(g|t) and the attention weight of every bag slice;
multi-task: per-slice type probabilities (the patient's are their mean, as in evaluation) and
the predicted tumour area in pixels of the original image.

Nothing here imports Lightning or MONAI: one patient is read, preprocessed and predicted in
well under a second after start-up.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mritumor.data import io
from mritumor.data.cache import preprocess_image
from mritumor.data.catalog import natural_key
from mritumor.data.datasets import bag_positions
from mritumor.errors import DataError, MritumorError
from mritumor.inference import LoadedModel, check_channels, fold_batchnorm, load_model

log = logging.getLogger(__name__)

SLICE_SUFFIXES = io.RASTER_SUFFIXES | io.NUMPY_SUFFIXES | io.DICOM_SUFFIXES
SUPPORTED = "PNG/JPG/TIFF/BMP/NPY/DICOM slices, NIfTI volumes (.nii, .nii.gz)"
OUTPUT_SUFFIXES = (".json", ".csv")
MAX_DEPTH = 6  # how deep a folder of patients is searched for patient folders
CHUNK = 32  # multi-task slices per forward pass


# ----------------------------------------------------------------------------- input discovery


@dataclass(frozen=True)
class SliceRef:
    image: str  # file holding the slice
    frame: int  # axial index in a NIfTI volume / frame of a multi-frame DICOM; -1 otherwise
    name: str  # shown in outputs: path relative to the patient folder, [frame] when there is one


@dataclass
class PatientInput:
    patient_id: str
    source: Path  # the file or folder the patient was read from
    slices: list[SliceRef]
    volume: Path | None = None  # the NIfTI volume, when every slice comes from one
    problems: list[str] = field(default_factory=list)


def discover(path: str | Path) -> list[PatientInput]:
    """The patients of ``--input`` (see the module docstring), in natural order. Raises
    :class:`DataError` for a missing path, an empty folder or a file type that is not an image."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"--input {path} does not exist"
            + (" (broken symbolic link)" if path.is_symlink() else "")
        )
    if path.is_file():
        return [_file_patient(path)]
    if not path.is_dir():
        raise DataError(f"--input {path} is neither a file nor a folder")
    folders = _patient_folders(path)
    if not folders:
        if not any(not p.name.startswith(".") for p in path.iterdir()):
            raise DataError(f"--input {path} is an empty folder")
        raise DataError(f"--input {path}: no image files found in it or below it ({SUPPORTED})")
    patients = []
    for folder in folders:
        patient_id = path.name if folder == path else folder.relative_to(path).as_posix()
        patients.append(_folder_patient(folder, patient_id))
    return patients


def _is_slice_file(path: Path) -> bool:
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = io.suffix_of(path)
    return suffix in SLICE_SUFFIXES | io.NIFTI_SUFFIXES or (not suffix and io.is_dicom_file(path))


def _patient_folders(root: Path) -> list[Path]:
    """Folders that directly hold image files, searched breadth-first below ``root``; a patient
    folder's own sub-folders (``masks/``, series) belong to it and are not searched. Links to
    folders are followed once (a loop cannot trap the search)."""
    found, seen = [], set()

    def visit(folder: Path, depth: int) -> None:
        real = folder.resolve()
        if real in seen or depth > MAX_DEPTH:
            return
        seen.add(real)
        try:
            entries = sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
        except OSError as error:
            log.warning("cannot list %s (%s); skipped", folder, error.strerror or error)
            return
        if any(_is_slice_file(e) for e in entries):
            found.append(folder)
            return
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                visit(entry, depth + 1)

    visit(root, 0)
    return found


def _file_patient(path: Path) -> PatientInput:
    suffix = io.suffix_of(path)
    if suffix in io.NIFTI_SUFFIXES:
        try:
            depth = io.nifti_slice_count(path)
        except Exception as error:  # nibabel raises many types on bad headers
            raise DataError(f"--input {path} is not a readable NIfTI volume ({error})") from error
        slices = [SliceRef(str(path), k, f"{path.name}[{k}]") for k in range(depth)]
        return PatientInput(_stem(path), path, slices, volume=path)
    if suffix in io.DICOM_SUFFIXES or (not suffix and io.is_dicom_file(path)):
        rows, problems = _dicom_file_rows([path])
        if not rows:
            reason = problems[0].reason if problems else "no image in it"
            raise DataError(f"--input {path}: {reason}")
        return PatientInput(_stem(path), path, [_slice_ref(r, path.parent) for r in rows])
    if suffix in io.RASTER_SUFFIXES | io.NUMPY_SUFFIXES:
        return PatientInput(_stem(path), path, [SliceRef(str(path), -1, path.name)])
    raise DataError(
        f"--input {path}: unsupported file type {suffix or '(no extension)'}; "
        f"give one of: {SUPPORTED}, a patient folder, or a folder of patient folders"
    )


def _folder_patient(folder: Path, patient_id: str) -> PatientInput:
    rows, problems = _patient_folder_rows(folder)
    return PatientInput(
        patient_id,
        folder,
        [_slice_ref(r, folder) for r in rows],
        volume=_single_volume(rows),
        problems=[str(p) for p in problems],
    )


def _patient_folder_rows(folder: Path):
    """The data layer's reading of one patient folder: 2-D slices in natural order with mask
    files set aside, a DICOM series ordered by slice position, or one NIfTI volume's axial
    slices. A thin wrapper over :mod:`mritumor.data.readers`' private ``_patient_rows``, so
    prediction reads a folder exactly as training did (until readers offers it publicly)."""
    from mritumor.data import readers

    return readers._patient_rows(folder)


def _dicom_file_rows(files: list[Path]):
    """DICOM files → slice rows (one per frame), ordered by position, as the data layer does."""
    from mritumor.data import readers

    return readers._dicom_rows(files)


def _slice_ref(row: dict, base: Path) -> SliceRef:
    image = Path(row["image"])
    try:
        name = image.relative_to(base).as_posix()
    except ValueError:
        name = image.name
    frame = int(row["frame"])
    return SliceRef(str(image), frame, f"{name}[{frame}]" if frame >= 0 else name)


def _single_volume(rows: list[dict]) -> Path | None:
    images = {r["image"] for r in rows}
    if len(images) == 1:
        (image,) = images
        if io.suffix_of(image) in io.NIFTI_SUFFIXES:
            return Path(image)
    return None


def _stem(path: Path | str) -> str:
    name = Path(path).name
    suffix = io.suffix_of(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


# ----------------------------------------------------------------------------- prediction


@dataclass
class PatientPrediction:
    record: dict  # JSON-ready result (see Predictor)
    images: torch.Tensor  # (n, C, S, S) the preprocessed slices the model saw
    used: list[SliceRef]  # the n slices, in order
    sizes: list[tuple[int, int]]  # their original (H, W)
    masks: list[np.ndarray] | None = None  # segmenting models: (H, W) bool, original size


class Predictor:
    """A loaded model applied to :class:`PatientInput` s.

    The record of a patient holds ``patient_id``, ``input``, ``n_slices`` (found),
    ``n_slices_used`` and ``slices`` (one entry per slice used, with its ``name``), and:

    * hierarchical: ``predicted_type``, ``type_probabilities`` {type: p}, ``predicted_grade``
      and ``grade_probabilities`` {grade: P(g) = Σt P(t) P(g|t)} (these sum to 1 minus the
      probability of types trained without grades), each slice's ``attention_weight`` (the
      pooling's weight; they sum to 1);
    * multi-task with a classifier: ``predicted_type`` and ``type_probabilities`` (mean of the
      slices'), each slice's ``predicted_type`` and ``type_probabilities``;
    * multi-task with a segmenter: ``tumour_area_px`` (all slices) and each slice's
      ``tumour_area_px``, counted on the mask at the image's original size.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        calibrated: bool = True,
        all_slices: bool = False,
        channels_last: bool = True,
    ):
        self.loaded = loaded
        self.temperature = loaded.temperature if calibrated else 1.0
        self.all_slices = all_slices
        self.channels_last = channels_last
        if channels_last:  # about twice as fast convolutions on CPU (oneDNN's native layout)
            loaded.model.to_channels_last()
        # the network predict runs: BatchNorm folded into the convolutions (a copy: explain's
        # hooks and the checkpoint's modules stay on loaded.model)
        self.model = fold_batchnorm(loaded.model)

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
            "bag": bag,
        }

    # -- reading

    def _positions(self, n: int) -> list[int]:
        loaded = self.loaded
        if loaded.task != "hierarchical" or self.all_slices:
            return list(range(n))
        return bag_positions(n, loaded.bag_size, loaded.bag_policy)

    def read(self, patient: PatientInput):
        """The slices the model will see, decoded and preprocessed: (n, C, S, S) float32, the
        slices, their original (H, W). Undecodable slices are skipped with a warning and the
        bag is chosen again among the others, as the cache's dropped slices are."""
        candidates = list(patient.slices)
        decoded: dict[SliceRef, tuple] = {}
        decode = partial(self._decode, volume=_volume(patient.volume) if patient.volume else None)
        while True:
            chosen = [candidates[i] for i in self._positions(len(candidates))]
            todo = [ref for ref in chosen if ref not in decoded]
            failed = set()
            for ref, result in zip(todo, _map(decode, todo), strict=True):
                if isinstance(result, str):
                    log.warning("%s: %s; slice skipped", _where(ref), result)
                    failed.add(ref)
                else:
                    decoded[ref] = result
            if not failed:
                break
            candidates = [ref for ref in candidates if ref not in failed]
        if not chosen:
            raise DataError(f"{patient.source}: no slice could be decoded")
        for ref in chosen:
            check_channels(decoded[ref][0], self.loaded, _where(ref))
        images = torch.stack([decoded[ref][1] for ref in chosen])
        return images, chosen, [decoded[ref][2] for ref in chosen]

    def _decode(self, ref: SliceRef, volume: np.ndarray | None = None):
        """(raw channels, preprocessed (C, S, S) float32 or None, (H, W)), or the reason the
        slice cannot be read. Runs in threads: decoding and preprocessing release the GIL."""
        try:
            image = io.read_image(ref.image, ref.frame) if volume is None else _plane(volume, ref)
        except io.SliceReadError as error:
            return str(error)
        channels, size = image.shape[0], tuple(image.shape[1:])
        if channels != self.loaded.preprocessing.channels:
            return channels, None, size  # refused by read(), with both channel counts
        # the cache's function, float16 included: the model gets the values it was trained on
        return channels, preprocess_image(image, self.loaded.preprocessing).float(), size

    # -- predicting

    @torch.inference_mode()
    def __call__(self, patient: PatientInput) -> PatientPrediction:
        for problem in patient.problems:
            log.warning("%s", problem)
        if not patient.slices:
            raise DataError(f"{patient.source}: no image slice found ({SUPPORTED})")
        images, used, sizes = self.read(patient)
        record = {
            "patient_id": patient.patient_id,
            "input": str(patient.source),
            "n_slices": len(patient.slices),
            "n_slices_used": len(used),
        }
        if self.loaded.task == "hierarchical":
            record.update(self._hierarchical(images, used))
            return PatientPrediction(record, images, used, sizes)
        extra, masks = self._multitask(images, used, sizes)
        record.update(extra)
        return PatientPrediction(record, images, used, sizes, masks)

    def _hierarchical(self, images: torch.Tensor, used: list[SliceRef]) -> dict:
        from mritumor.models.hierarchical import hierarchical_probabilities

        labels = self.loaded.labels
        mask = torch.ones(1, len(used), dtype=torch.bool)
        outputs = self.model(images[None], mask)
        probs = hierarchical_probabilities(
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
        weights = outputs["slice_weights"][0].float().tolist()
        result["slices"] = [
            {"name": ref.name, "attention_weight": w} for ref, w in zip(used, weights, strict=True)
        ]
        return result

    def _multitask(self, images, used, sizes) -> tuple[dict, list[np.ndarray] | None]:
        model, labels = self.model, self.loaded.labels
        logits, masks = [], []
        for chunk in images.split(CHUNK):
            if self.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            outputs = model(chunk)
            if "class_logits" in outputs:
                logits.append(outputs["class_logits"].float())
            if "mask_logits" in outputs:
                masks.append(outputs["mask_logits"][:, 0].float())
        slices = [{"name": ref.name} for ref in used]
        result: dict = {}
        if logits:
            probs = torch.softmax(torch.cat(logits) / self.temperature, dim=-1)
            patient = probs.mean(dim=0).tolist()
            result["predicted_type"] = labels.types[int(np.argmax(patient))]
            result["type_probabilities"] = dict(zip(labels.types, patient, strict=True))
            for entry, row in zip(slices, probs.tolist(), strict=True):
                entry["predicted_type"] = labels.types[int(np.argmax(row))]
                entry["type_probabilities"] = dict(zip(labels.types, row, strict=True))
        originals = None
        if masks:
            originals = [
                mask_at_original_size(m, *size)
                for m, size in zip(torch.cat(masks), sizes, strict=True)
            ]
            areas = [int(m.sum()) for m in originals]
            result["tumour_area_px"] = int(sum(areas))
            for entry, area in zip(slices, areas, strict=True):
                entry["tumour_area_px"] = area
        result["slices"] = slices
        return result, originals


def mask_at_original_size(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(S, S) mask logits → (height, width) bool: the inverse of the cache's
    :func:`~mritumor.data.cache.resize_square` (zero-pad to a centred square, resize): the
    logits are resized back to the square bilinearly, the padding is cropped, then > 0."""
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2  # resize_square's centring
    logits = logits.float()
    if logits.shape[-1] != side:
        logits = F.interpolate(
            logits[None, None], size=(side, side), mode="bilinear", align_corners=False
        )[0, 0]
    return (logits[top : top + height, left : left + width] > 0).cpu().numpy()


def _volume(path: Path) -> np.ndarray:
    """A NIfTI volume's voxels (x, y, z), read once. io.read_image opens the file again for
    every slice, and a .nii.gz is then decompressed again up to that slice: 126 ms a slice
    for a 240×240×155 volume, against 0.3 s for all of it."""
    import nibabel as nib

    try:
        data = np.asarray(nib.load(str(path)).dataobj)  # applies scl_slope/inter, as io does
    except Exception as error:  # nibabel and gzip raise many types on damaged files
        raise DataError(f"{path}: unreadable NIfTI volume ({error})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: NIfTI volume must be 3-D, got shape {data.shape}")
    return data


def _plane(volume: np.ndarray, ref: SliceRef) -> np.ndarray:
    """Axial plane ``ref.frame`` exactly as io.read_image gives it: (1, y, x) float32, the
    transpose of volume[:, :, k] (tests/test_predict.py compares the two through the cache)."""
    plane = np.ascontiguousarray(volume[:, :, ref.frame].T, dtype=np.float32)[None]
    if not np.isfinite(plane).all():
        raise io.SliceReadError("image contains NaN or infinite values")
    return plane


def _map(function, items: list):
    """Decoding in threads (PIL, zlib and pydicom's decoders release the GIL) when it pays."""
    if len(items) < 4:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))


def _file_name(ref: SliceRef) -> str:
    """The slice's file, relative to its patient folder (its name without ``[frame]``)."""
    return ref.name[: ref.name.rfind("[")] if ref.frame >= 0 else ref.name


def _slice_stem(ref: SliceRef) -> str:
    """A file-name stem for outputs about one slice: ``slice_003``, ``t1_012`` (frame 12)."""
    return _stem(Path(_file_name(ref)).name) + (f"_{ref.frame:03d}" if ref.frame >= 0 else "")


def _where(ref: SliceRef) -> str:
    return f"{ref.image}[{ref.frame}]" if ref.frame >= 0 else ref.image


# ----------------------------------------------------------------------------- outputs


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
        relative = Path(_file_name(ref))
        path = folder / relative.parent / f"{_slice_stem(ref)}_mask.png"
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
    path = folder / f"{_stem(volume)}_mask{suffix}"
    nib.save(result, str(path))
    return path


def explain_patient(explainer, prediction: PatientPrediction, folder: Path) -> list[Path]:
    """Heat maps of :mod:`mritumor.explain` for the patient's predicted type: pixel occlusion
    and Grad-CAM overlays of the 3 most important slices, and the slice-importance bars."""
    from mritumor.explain.plots import draw_overlays, draw_slice_importance
    from mritumor.explain.run import compute_maps, rank_slices

    model, settings = explainer
    images = prediction.images
    target, probability, importance = rank_slices(model, images)
    predicted = model.class_names[target]
    top = [int(i) for i in importance["order"][: settings.top_slices]]
    maps = compute_maps(model, images[top], target, settings)
    names = [_slice_stem(ref) for ref in prediction.used]
    folder.mkdir(parents=True, exist_ok=True)
    written, saved = [], {}
    for j, i in enumerate(top):
        slice_maps = {name: values[j].numpy() for name, values in maps.items()}
        saved.update({f"{name}_{names[i]}": v for name, v in slice_maps.items()})
        written.append(
            draw_overlays(
                images[i],
                slice_maps,
                None,
                f"{prediction.record['patient_id']} {prediction.used[i].name}: predicted "
                f"{predicted} (p={probability:.2f})",
                folder / f"{names[i]}_explain.png",
            )
        )
    bars = importance["attention"] if model.bag_model is not None else None
    drops = importance["drops"] if model.bag_model is not None else importance["slice_probability"]
    written.append(
        draw_slice_importance(
            names,
            bars,
            drops,
            [None] * len(names),
            f"{prediction.record['patient_id']}: predicted {predicted} (p={probability:.2f})",
            folder / "slice_importance.png",
        )
    )
    np.savez_compressed(folder / "maps.npz", **saved)
    return written


def build_explainer(loaded: LoadedModel, temperature: float):
    """The loaded model as :mod:`mritumor.explain` wants it (no second load of the weights)."""
    from mritumor.explain.attribution import hierarchical_slice_classifier, last_conv_block
    from mritumor.explain.run import ClassLogits, ExplainableModel, Settings, default_window

    if loaded.task == "hierarchical":
        model = ExplainableModel(
            task=loaded.task,
            class_names=list(loaded.labels.types),
            slice_classifier=hierarchical_slice_classifier(loaded.model),
            gradcam_layer=last_conv_block(loaded.model),
            bag_model=loaded.model,
            preprocessing=loaded.preprocessing,
            bag_size=loaded.bag_size,
            bag_policy=loaded.bag_policy,
            temperature=temperature,
        )
    else:
        model = ExplainableModel(
            task=loaded.task,
            class_names=list(loaded.labels.types),
            slice_classifier=ClassLogits(loaded.model),
            gradcam_layer=last_conv_block(loaded.model),
            bag_model=None,
            preprocessing=loaded.preprocessing,
            temperature=temperature,
        )
    window = default_window(loaded.preprocessing.image_size)
    methods = ["occlusion"] + (["gradcam"] if model.gradcam_layer is not None else [])
    return model, Settings(methods, window, max(1, window // 2), "mean", 3, 0)


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


# ----------------------------------------------------------------------------- the command


def predict(
    checkpoint: str | Path,
    input: str | Path,
    output: str | Path | None = None,
    save_masks: str | Path | None = None,
    explain: str | Path | None = None,
    calibrated: bool = True,
    all_slices: bool = False,
    progress: bool = True,
) -> dict:
    """Predict every patient of ``input``; write the results (see :func:`write_output`):
    ``output`` given → there; else one patient → JSON on stdout, several → ``predictions.csv``
    in the current folder. Returns the document (``model``, ``patients``, ``skipped``) with
    ``output`` (the file written, or None for stdout)."""
    output = check_output(output)
    loaded = load_model(checkpoint)
    if save_masks is not None and not loaded.segments:
        raise MritumorError(
            f"--save_masks needs a multi-task checkpoint with a segmentation head (variants A, "
            f"C–G); {checkpoint} is {loaded.describe()}, which predicts no masks"
        )
    if explain is not None and not loaded.classifies:
        raise MritumorError(
            f"--explain explains class predictions; {checkpoint} is {loaded.describe()}, which "
            "has no classification head"
        )
    patients = discover(input)
    many = len(patients) > 1
    predictor = Predictor(loaded, calibrated=calibrated, all_slices=all_slices)
    explainer = build_explainer(loaded, predictor.temperature) if explain is not None else None
    records, skipped = [], []
    from tqdm.auto import tqdm

    for patient in tqdm(
        patients, desc="Predicting", unit="patient", disable=not (progress and many)
    ):
        try:
            prediction = predictor(patient)
        except DataError as error:
            if not many:
                raise
            log.warning("patient %s skipped: %s", patient.patient_id, error)
            skipped.append({"patient_id": patient.patient_id, "reason": str(error)})
            continue
        if save_masks is not None:
            folder = Path(save_masks) / (patient.patient_id if many else "")
            files = write_masks(prediction, patient, folder)
            prediction.record["mask_files"] = [str(f) for f in files]
        if explainer is not None:
            folder = Path(explain) / (patient.patient_id if many else "")
            files = explain_patient(explainer, prediction, folder)
            prediction.record["explain_files"] = [str(f) for f in files]
        records.append(prediction.record)
    if not records:
        raise DataError(
            f"no patient of --input {input} could be predicted; first reason: {skipped[0]['reason']}"
        )
    if skipped:
        log.warning("%d of %d patient(s) skipped", len(skipped), len(patients))
    document = {"model": predictor.header(), "patients": records, "skipped": skipped}
    if output is None and many:
        output = Path("predictions.csv")
    written = write_output(document, output)
    document["output"] = str(written) if written else None
    return document

"""Reading new, unlabelled input for ``mritumor predict`` (``--input PATH``, see :func:`discover`):

* one image file (PNG/JPG/TIFF/BMP/NPY, or a DICOM file: one slice, or one per frame);
* a NIfTI volume (``.nii``/``.nii.gz``): one patient, one slice per axial plane;
* a patient folder: its 2-D slices, its DICOM series (a study export: each image series is
  one unit, named ``<patient>/<SeriesNumber>_<SeriesDescription>``, slices ordered by position;
  localizers, objects without pixels and other modalities are skipped with their reasons; a
  DICOMDIR's files when it has one) or one NIfTI volume, read exactly as the data layer reads a
  patient folder (mask files are set aside);
* a folder of patient folders (any depth: every folder that directly holds image files is a
  patient, named by its path relative to PATH; a labelled ``<type>/<patient>/`` tree works too).

Also the naming of slices in outputs (:func:`slice_stem`, :func:`where`) and the one-read
NIfTI volume (:func:`read_volume`, :func:`plane`) the predictor decodes slices from.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mritumor.data.reading import io, readers
from mritumor.data.reading.catalog import natural_key
from mritumor.errors import DataError

log = logging.getLogger(__name__)

SLICE_SUFFIXES = io.RASTER_SUFFIXES | io.NUMPY_SUFFIXES | io.DICOM_SUFFIXES
SUPPORTED = "PNG/JPG/TIFF/BMP/NPY/DICOM slices, NIfTI volumes (.nii, .nii.gz)"
MAX_DEPTH = 6  # how deep a folder of patients is searched for patient folders


@dataclass(frozen=True)
class SliceRef:
    image: str  # file holding the slice
    frame: int  # axial index in a NIfTI volume / frame of a multi-frame DICOM; -1 otherwise
    name: str  # shown in outputs: path relative to the patient folder, [frame] when there is one


@dataclass
class PatientInput:
    """One unit of prediction: a patient's slices, or one DICOM series of a patient."""

    patient_id: str
    source: Path  # the file or folder the patient was read from
    slices: list[SliceRef]
    volume: Path | None = None  # the NIfTI volume, when every slice comes from one
    problems: list[str] = field(default_factory=list)
    series: readers.DicomSeries | None = None  # the DICOM series these slices are
    # what was not analysed while reading this input (a localizer, a CT series, …): one
    # {"patient_id": name, "reason": why} each, reported in predict's ``skipped``
    skipped: list[dict] = field(default_factory=list)
    pixel_spacing: tuple[float, float] | None = None  # (row, column) mm of the original image
    slice_spacing: float | None = None  # mm between adjacent slices, when they form a stack
    volume_index: int | None = None  # which volume of a 4-D NIfTI file (--volume_index)


@dataclass(frozen=True)
class InputChoice:
    """What to read of an input: which DICOM series (``pattern``: a SeriesNumber, "5", or a
    case-insensitive pattern of the series description, "*FLAIR*", "t1 post": a plain word
    matches anywhere; ``any_modality``: images of other modalities than MR too) and which
    volume of a 4-D NIfTI file (``volume_index``)."""

    pattern: str | None = None
    any_modality: bool = False
    volume_index: int | None = None  # 4-D NIfTI: which volume (--volume_index)

    def picks(self, series: readers.DicomSeries) -> bool:
        if self.pattern is None:
            return True
        number, _, description = (series.name or "").partition("_")
        if self.pattern.isdigit():
            return number == self.pattern
        wanted = self.pattern.lower()
        text = (series.tags.get("SeriesDescription") or description).lower()
        if any(c in wanted for c in "*?["):
            return fnmatch.fnmatchcase(text, wanted)
        return wanted in text


def discover(path: str | Path, choice: InputChoice | None = None) -> list[PatientInput]:
    """The patients (DICOM: series) of ``--input`` (see the module docstring), in natural
    order; ``choice``: which DICOM series. Raises :class:`DataError` for a missing path, an
    empty folder or a file type that is not an image."""
    choice = choice or InputChoice()
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"--input {path} does not exist"
            + (" (broken symbolic link)" if path.is_symlink() else "")
        )
    if path.is_file() and path.name.upper() == "DICOMDIR":
        path = path.parent  # the folder it indexes, read through it
    if path.is_file():
        return [_file_patient(path, choice)]
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
        patients.extend(_folder_patients(folder, patient_id, choice))
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


def _file_patient(path: Path, choice: InputChoice) -> PatientInput:
    suffix = io.suffix_of(path)
    if suffix in io.NIFTI_SUFFIXES:
        volume = read_volume(path, choice.volume_index)
        slices = [SliceRef(str(path), k, f"{path.name}[{k}]") for k in range(volume.n_axial)]
        patient = PatientInput(stem(path), path, slices, volume=path)
        return with_volume_geometry(patient, volume, choice.volume_index)
    if suffix in io.DICOM_SUFFIXES or (not suffix and io.is_dicom_file(path)):
        series, problems = readers.read_series([path], choice.any_modality)
        if not series:
            reason = problems[0].reason if problems else "no image in it"
            raise DataError(f"--input {path}: {reason}")
        (one,) = series  # one file is one series; its frames ordered by position
        return _series_patient(one, stem(path), path, path.parent)
    if suffix in io.RASTER_SUFFIXES | io.NUMPY_SUFFIXES:
        return PatientInput(stem(path), path, [SliceRef(str(path), -1, path.name)])
    raise DataError(
        f"--input {path}: unsupported file type {suffix or '(no extension)'}; "
        f"give one of: {SUPPORTED}, a patient folder, or a folder of patient folders"
    )


def _folder_patients(folder: Path, patient_id: str, choice: InputChoice) -> list[PatientInput]:
    """A patient folder's units: one per DICOM series picked, else the folder itself. The
    data layer's own reading, so prediction reads a folder exactly as training did."""
    found = readers.patient_series(folder, choice.any_modality)
    if found is None:
        rows, problems = readers.patient_rows(folder, choice.volume_index)
        patient = PatientInput(
            patient_id,
            folder,
            [_slice_ref(r, folder) for r in rows],
            volume=_single_volume(rows),
            problems=[str(p) for p in problems],
            volume_index=choice.volume_index,
        )
        return [patient]
    series, problems = found
    skipped = [_skipped(folder, patient_id, p.path, p.reason) for p in problems]
    picked = []
    for one in series:
        if choice.picks(one):
            picked.append(one)
        else:
            name = f"{patient_id}/{one.name}"
            skipped.append({"patient_id": name, "reason": f"not picked by --series {choice.pattern}"})  # fmt: skip
    if not picked:  # nothing to analyse: a unit without slices that says why
        reasons = "; ".join(f"{s['patient_id']}: {s['reason']}" for s in skipped) or "no image"
        return [PatientInput(patient_id, folder, [], problems=[f"no image series to analyse ({reasons})"])]  # fmt: skip
    units = [
        _series_patient(one, f"{patient_id}/{one.name}" if one.name else patient_id, folder, folder)
        for one in picked
    ]
    units[0].skipped = skipped  # reported once per folder
    return units


def _series_patient(series, patient_id: str, source: Path, base: Path) -> PatientInput:
    return PatientInput(
        patient_id,
        source,
        [_slice_ref(r, base) for r in series.rows],
        series=series,
        pixel_spacing=series.pixel_spacing,
        slice_spacing=series.slice_spacing if len(series.rows) > 1 else None,
    )


def _skipped(folder: Path, patient_id: str, path: str, reason: str) -> dict:
    try:
        name = Path(path).relative_to(folder).as_posix()
    except ValueError:
        name = Path(path).name
    return {"patient_id": f"{patient_id}/{name}", "reason": reason}


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


def stem(path: Path | str) -> str:
    name = Path(path).name
    suffix = io.suffix_of(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def read_volume(path: Path, volume_index: int | None = None) -> io.NiftiVolume:
    """A NIfTI volume read once, reoriented to the data layer's LPS voxel order
    (:func:`mritumor.data.reading.io.read_nifti`: axial planes whatever the storage). io.read_image
    opens the file again for every slice, and a .nii.gz is then decompressed again up to that
    slice: 126 ms a slice for a 240×240×155 volume, against 0.3 s for all of it."""
    try:
        return io.read_nifti(path, volume_index)
    except io.SliceReadError as error:
        raise DataError(f"{path}: {error}") from error
    except Exception as error:  # nibabel and gzip raise many types on damaged files
        raise DataError(f"{path}: unreadable NIfTI volume ({error})") from error


def with_volume_geometry(
    patient: PatientInput, volume: io.NiftiVolume, volume_index: int | None
) -> PatientInput:
    """The patient with its NIfTI volume's voxel sizes: an axial plane's rows run along y and
    its columns along x, the planes are z apart."""
    size_x, size_y, size_z = volume.zooms
    if size_x and size_y:
        patient.pixel_spacing = (float(size_y), float(size_x))
    patient.slice_spacing = float(size_z) if size_z else None
    patient.volume_index = volume_index
    return patient


def plane(volume: io.NiftiVolume, ref: SliceRef) -> np.ndarray:
    """Axial plane ``ref.frame`` exactly as io.read_image gives it: (1, y, x) float32
    (tests/test_predict.py compares the two through the cache)."""
    plane = np.ascontiguousarray(volume.axial(ref.frame), dtype=np.float32)[None]
    if not np.isfinite(plane).all():
        raise io.SliceReadError("image contains NaN or infinite values")
    return plane


def file_name(ref: SliceRef) -> str:
    """The slice's file, relative to its patient folder (its name without ``[frame]``)."""
    return ref.name[: ref.name.rfind("[")] if ref.frame >= 0 else ref.name


def slice_stem(ref: SliceRef) -> str:
    """A file-name stem for outputs about one slice: ``slice_003``, ``t1_012`` (frame 12)."""
    return stem(Path(file_name(ref)).name) + (f"_{ref.frame:03d}" if ref.frame >= 0 else "")


def where(ref: SliceRef) -> str:
    return f"{ref.image}[{ref.frame}]" if ref.frame >= 0 else ref.image

"""The folder tree ``ROOT/<type>[-g<grade>]/<patient>/<slices>``: 2-D slice files, DICOM
series or one NIfTI volume per patient folder."""

from __future__ import annotations

import re
from pathlib import Path

from mritumor.data.reading import io
from mritumor.data.reading.catalog import Catalog, Problem, make_table, natural_key
from mritumor.data.reading.readers.common import file_stem, is_mask_file, walk_files
from mritumor.data.reading.readers.dicom import DicomSeries, dicomdir_files, read_series
from mritumor.errors import DataError

CLASS_FOLDER = re.compile(
    r"^(?P<type>[^\W_][\w .]*?)(?:[-_ ]g(?:rade)?[-_ ]?(?P<grade>\d+))?$", re.I
)


def read_folder_tree(root: Path) -> Catalog:
    """``ROOT/<type>[-g<grade>]/<patient>/<slices>`` (seed 000): 2-D files, a DICOM series, or
    one NIfTI volume per patient. Masks: ``<stem>_mask.<ext>`` beside the slice or a ``masks/``
    sub-folder with the same file name; for NIfTI a volume whose name contains mask/seg.

    Counted and skipped rather than read: class or patient folders whose names are not valid
    UTF-8 (they could not be written to reports), symbolic links that are broken or loop, and
    symbolic links to folders inside the data root, to the root itself or above it, or to a
    folder already read: each folder's slices are read once, under their own class, so a link
    can neither duplicate a patient (train/test leakage) nor give its slices a second label."""
    rows: list[dict] = []
    problems: list[Problem] = []
    root_real = root.resolve()
    seen: set[Path] = set()
    class_dirs = sorted(_subfolders(root, problems), key=lambda d: natural_key(d.name))
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders; expected ROOT/<type>[-g<grade>]/<patient>/<slices>"
        )
    for class_dir in class_dirs:
        trouble = _folder_trouble(class_dir, root_real, seen)
        if trouble:
            problems.append(trouble)
            continue
        match = CLASS_FOLDER.match(class_dir.name)
        if not match:
            problems.append(
                Problem(str(class_dir), "folder name does not parse as <type>[-g<grade>]")
            )
            continue
        tumor_type, grade = match["type"].strip(), match["grade"]
        patient_dirs = sorted(_subfolders(class_dir, problems), key=lambda d: natural_key(d.name))
        stray = [f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith(".")]
        if stray:
            problems.append(
                Problem(
                    str(stray[0]),
                    f"{len(stray)} file(s) directly in a class folder ignored; slices belong in patient folders",
                )
            )
        for patient_dir in patient_dirs:
            trouble = _folder_trouble(patient_dir, root_real, seen)
            if trouble:
                problems.append(trouble)
                continue
            found, trouble = patient_rows(patient_dir)
            problems.extend(trouble)
            if not found and not trouble:
                problems.append(Problem(str(patient_dir), "empty patient folder"))
            several = len({row.get("series") for row in found}) > 1
            for row in found:
                # a study of several series: one unit per series, the patient kept as the
                # family so that its series never fall into different parts of a split
                series = row.pop("series", None)
                unit = f"{patient_dir.name}/{series}" if several and series else patient_dir.name
                row.update(
                    patient_id=unit,
                    patient_family=patient_dir.name,
                    tumor_type=tumor_type,
                    grade=grade,
                    source="folder",
                )
            rows.extend(found)
    if rows and all(row["patient_family"] == row["patient_id"] for row in rows):
        for row in rows:  # no study with several series: the table as it always was
            del row["patient_family"]
    return Catalog(make_table(rows), "folder", root, problems)


def _subfolders(folder: Path, problems: list[Problem]) -> list[Path]:
    """Sub-folders (following links); links that lead nowhere are reported, not dropped silently."""
    found = []
    try:
        entries = list(folder.iterdir())
    except OSError as error:
        problems.append(Problem(str(folder), f"cannot list folder ({error.strerror or error})"))
        return found
    for entry in entries:
        if entry.is_dir():
            found.append(entry)
        elif entry.is_symlink() and not entry.exists():
            problems.append(Problem(str(entry), "broken or looping symbolic link; skipped"))
    return found


def _folder_trouble(folder: Path, root_real: Path, seen: set[Path]) -> Problem | None:
    """Why a class or patient folder must not be read, or None. See :func:`read_folder_tree`."""
    if not _is_utf8(folder.name):
        return Problem(
            str(folder), "folder name is not valid UTF-8; rename it (it names a class or patient)"
        )
    if not folder.is_symlink():
        seen.add(folder.resolve())
        return None
    try:
        real = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return Problem(str(folder), "broken or looping symbolic link; skipped")
    if real == root_real or real in root_real.parents:
        return Problem(
            str(folder), f"symbolic link to {real}, the data root or above it (a loop); skipped"
        )
    if root_real in real.parents:
        return Problem(
            str(folder),
            f"symbolic link to {real} inside the data root; skipped (each folder is read once, "
            "under its own class)",
        )
    if real in seen:
        return Problem(
            str(folder), f"symbolic link to {real}, a folder already read; skipped (no duplicates)"
        )
    seen.add(real)
    return None


def _is_utf8(name: str) -> bool:
    # os.fsdecode keeps undecodable bytes as lone surrogates, which cannot be encoded back.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def patient_rows(folder: Path, volume_index: int | None = None) -> tuple[list[dict], list[Problem]]:
    """One patient folder's slice rows (``image``, ``frame``, ``mask``) and the problems met:
    one NIfTI volume's axial slices, else its DICOM image series (each row's ``series`` names
    its series; see :func:`patient_series`), else 2-D slice files in natural order with their
    masks set aside. Training and prediction both read a folder through this, so they see the
    same slices in the same order. ``volume_index``: which volume of a 4-D NIfTI file."""
    files, skipped = _patient_files(folder)
    niftis = [f for f in files if io.suffix_of(f) in io.NIFTI_SUFFIXES]
    if niftis:
        rows, problems = _nifti_rows(folder, niftis, volume_index)
        return rows, skipped + problems
    dicoms = dicom_files(folder, files)
    if dicoms:
        series, problems = read_series(dicoms)
        rows = [dict(row, series=s.name) for s in series for row in s.rows]
    else:
        rows, problems = _raster_rows(files)
    return rows, skipped + problems


def patient_series(
    folder: Path, any_modality: bool = False
) -> tuple[list[DicomSeries], list[Problem]] | None:
    """A patient folder's DICOM image series and what was skipped (localizers, objects
    without pixels, other modalities unless ``any_modality``: see
    :func:`~mritumor.data.reading.readers.dicom.read_series`); None when the folder holds a NIfTI
    volume or no DICOM file (read it with :func:`patient_rows`)."""
    files, skipped = _patient_files(folder)
    if any(io.suffix_of(f) in io.NIFTI_SUFFIXES for f in files):
        return None
    dicoms = dicom_files(folder, files)
    if not dicoms:
        return None
    series, problems = read_series(dicoms, any_modality)
    return series, skipped + problems


def _patient_files(folder: Path) -> tuple[list[Path], list[Problem]]:
    skipped: list[Problem] = []
    files = sorted(
        walk_files(folder, max_depth=3, skipped=skipped), key=lambda p: natural_key(str(p))
    )
    return [f for f in files if not f.name.startswith(".")], skipped


def dicom_files(folder: Path, files: list[Path]) -> list[Path]:
    """The DICOM files of a patient folder: those a DICOMDIR in it lists, else (no DICOMDIR, or
    one that is damaged or lists no file that exists: a CD mounted with other letter case)
    every file named .dcm/.dicom or without extension that is DICOM."""
    directory = folder / "DICOMDIR"
    if directory.is_file():
        listed = dicomdir_files(directory)
        if listed:
            return listed
    return [
        f
        for f in files
        if io.suffix_of(f) in io.DICOM_SUFFIXES or (not f.suffix and io.is_dicom_file(f))
    ]


def _raster_rows(files: list[Path]) -> tuple[list[dict], list[Problem]]:
    known = io.RASTER_SUFFIXES | io.NUMPY_SUFFIXES
    masks = {(p.parent, file_stem(p)): p for p in files if is_mask_file(p)}
    rows, problems = [], []
    for path in files:
        if is_mask_file(path):
            continue
        if io.suffix_of(path) not in known:
            problems.append(
                Problem(str(path), f"not an image file (extension {io.suffix_of(path) or 'none'})")
            )
            continue
        stem = file_stem(path)
        mask = (
            masks.get((path.parent, f"{stem}_mask"))
            or masks.get((path.parent, f"{stem}-mask"))
            or masks.get((path.parent / "masks", stem))
            or masks.get((path.parent / "mask", stem))
        )
        rows.append({"image": str(path), "frame": -1, "mask": str(mask) if mask else None})
    return rows, problems


def _nifti_rows(
    patient_dir: Path, niftis: list[Path], volume_index: int | None = None
) -> tuple[list[dict], list[Problem]]:
    volumes = [f for f in niftis if not is_mask_file(f)]
    masks = [f for f in niftis if is_mask_file(f)]
    if len(volumes) != 1:
        return [], [
            Problem(
                str(patient_dir), f"expected one NIfTI volume per patient, found {len(volumes)}"
            )
        ]
    volume = volumes[0]
    try:
        depth = io.nifti_slice_count(volume, volume_index)
    except (io.SliceReadError, Exception) as error:  # nibabel raises many types on bad headers
        return [], [Problem(str(volume), f"unreadable NIfTI volume: {error}")]
    mask = None
    problems = []
    if len(masks) == 1:
        try:
            if io.nifti_slice_count(masks[0]) == depth:
                mask = str(masks[0])
            else:
                problems.append(
                    Problem(
                        str(masks[0]),
                        "mask volume depth differs from the image volume; mask ignored",
                    )
                )
        except Exception as error:
            problems.append(Problem(str(masks[0]), f"unreadable mask volume, ignored: {error}"))
    elif len(masks) > 1:
        problems.append(
            Problem(
                str(patient_dir), f"{len(masks)} mask volumes; which one is ambiguous, none used"
            )
        )
    return [{"image": str(volume), "frame": k, "mask": mask} for k in range(depth)], problems

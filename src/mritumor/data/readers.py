"""Readers: one function per data source, each returning a :class:`Catalog`.

Readers only look at structure (which files, which labels, header-level sizes); pixels are
decoded once, later, by the preprocessing cache, which skips and counts undecodable slices.
A problem with one file or patient never stops the others from loading: it is recorded as a
:class:`Problem`, summarised, and fatal only under ``strict``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mritumor.data import io
from mritumor.data.catalog import (
    Catalog,
    Problem,
    check_not_empty,
    drop_conflicting_patients,
    make_table,
    natural_key,
    normalise_grade,
    raise_if_strict,
    summarise_problems,
)
from mritumor.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("folder", "figshare_mat", "lgg_kaggle", "manifest")
FIGSHARE_LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}
LGG_TYPES = {1: "astrocytoma", 2: "oligoastrocytoma", 3: "oligodendroglioma"}
LGG_GRADES = {1: "2", 2: "3"}  # data.csv neoplasm_histologic_grade code → WHO grade
CLASS_FOLDER = re.compile(
    r"^(?P<type>[^\W_][\w .]*?)(?:[-_ ]g(?:rade)?[-_ ]?(?P<grade>\d+))?$", re.I
)
MASK_NAME = re.compile(r"(^|[_\-. ])(mask|seg|label|roi)s?([_\-. ]|$)", re.I)


def read_catalog(data_root: str | Path, format: str | None = None, strict: bool = False) -> Catalog:
    """Read any supported source into a Catalog; ``format`` overrides auto-detection."""
    root = Path(data_root).absolute()
    if not root.exists():
        raise DataError(f"--data_root {root} does not exist")
    format = format or detect_format(root)
    readers = {
        "folder": read_folder_tree,
        "figshare_mat": read_figshare_mat,
        "lgg_kaggle": read_lgg_kaggle,
        "manifest": read_manifest,
    }
    if format not in readers:
        raise DataError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    catalog = readers[format](root)
    table, conflicts = drop_conflicting_patients(catalog.table)
    catalog = Catalog(table, catalog.source, catalog.root, catalog.problems + conflicts)
    if catalog.problems:
        log.warning(
            "%d item(s) skipped while reading %s: %s",
            len(catalog.problems),
            root,
            summarise_problems(catalog.problems),
        )
        for problem in catalog.problems[:10]:
            log.warning("  %s", problem)
    raise_if_strict(catalog.problems, strict)
    check_not_empty(catalog)
    return catalog


def detect_format(root: Path) -> str:
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise DataError(
            f"--data_root {root} is a file; only a manifest .csv can be given as a file"
        )
    if (root / "manifest.csv").is_file():
        return "manifest"
    if _find_lgg_cases(root):
        return "lgg_kaggle"
    if any(p.name.lower() != "cvind.mat" for p in _walk_files(root, max_depth=2, suffix=".mat")):
        return "figshare_mat"
    return "folder"


# ----------------------------------------------------------------------------- folder tree


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
            found, trouble = _patient_rows(patient_dir)
            problems.extend(trouble)
            if not found and not trouble:
                problems.append(Problem(str(patient_dir), "empty patient folder"))
            for row in found:
                row.update(
                    patient_id=patient_dir.name, tumor_type=tumor_type, grade=grade, source="folder"
                )
            rows.extend(found)
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


def _patient_rows(patient_dir: Path) -> tuple[list[dict], list[Problem]]:
    skipped: list[Problem] = []
    files = sorted(
        _walk_files(patient_dir, max_depth=3, skipped=skipped), key=lambda p: natural_key(str(p))
    )
    files = [f for f in files if not f.name.startswith(".")]
    niftis = [f for f in files if io.suffix_of(f) in io.NIFTI_SUFFIXES]
    if niftis:
        rows, problems = _nifti_rows(patient_dir, niftis)
        return rows, skipped + problems
    dicoms = [
        f
        for f in files
        if io.suffix_of(f) in io.DICOM_SUFFIXES or (not f.suffix and io.is_dicom_file(f))
    ]
    if dicoms:
        rows, problems = _dicom_rows(dicoms)
    else:
        rows, problems = _raster_rows(files)
    return rows, skipped + problems


def _is_mask_file(path: Path) -> bool:
    return path.parent.name.lower() in {"mask", "masks"} or bool(MASK_NAME.search(_stem(path)))


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(io.suffix_of(path))] if io.suffix_of(path) else name


def _raster_rows(files: list[Path]) -> tuple[list[dict], list[Problem]]:
    known = io.RASTER_SUFFIXES | io.NUMPY_SUFFIXES
    masks = {(p.parent, _stem(p)): p for p in files if _is_mask_file(p)}
    rows, problems = [], []
    for path in files:
        if _is_mask_file(path):
            continue
        if io.suffix_of(path) not in known:
            problems.append(
                Problem(str(path), f"not an image file (extension {io.suffix_of(path) or 'none'})")
            )
            continue
        stem = _stem(path)
        mask = (
            masks.get((path.parent, f"{stem}_mask"))
            or masks.get((path.parent, f"{stem}-mask"))
            or masks.get((path.parent / "masks", stem))
            or masks.get((path.parent / "mask", stem))
        )
        rows.append({"image": str(path), "frame": -1, "mask": str(mask) if mask else None})
    return rows, problems


def _nifti_rows(patient_dir: Path, niftis: list[Path]) -> tuple[list[dict], list[Problem]]:
    volumes = [f for f in niftis if not _is_mask_file(f)]
    masks = [f for f in niftis if _is_mask_file(f)]
    if len(volumes) != 1:
        return [], [
            Problem(
                str(patient_dir), f"expected one NIfTI volume per patient, found {len(volumes)}"
            )
        ]
    volume = volumes[0]
    try:
        depth = io.nifti_slice_count(volume)
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


def _dicom_rows(files: list[Path]) -> tuple[list[dict], list[Problem]]:
    import pydicom

    entries, problems = [], []
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=False, defer_size=64)
        except Exception as error:
            problems.append(Problem(str(path), f"unreadable DICOM file ({type(error).__name__})"))
            continue
        if "PixelData" not in header:
            problems.append(Problem(str(path), "DICOM file has no pixel data"))
            continue
        position = getattr(header, "ImagePositionPatient", None)
        order = (
            float(position[2])
            if position is not None and len(position) == 3
            else float(getattr(header, "InstanceNumber", 0) or 0)
        )
        frames = int(getattr(header, "NumberOfFrames", 1) or 1)
        for frame in range(frames):
            entries.append(
                (
                    order,
                    frame,
                    {"image": str(path), "frame": frame if frames > 1 else -1, "mask": None},
                )
            )
    entries.sort(key=lambda e: (e[0], e[1]))
    return [row for _, _, row in entries], problems


# ----------------------------------------------------------------------------- Figshare .mat


def read_figshare_mat(root: Path) -> Catalog:
    """The Figshare brain-tumour release: ``N.mat`` (MATLAB v7.3) files with group ``cjdata``
    (image, label 1/2/3, PID as uint16 characters, tumorMask), and optionally ``cvind.mat``."""
    import h5py

    rows, problems = [], []
    mat_files = [
        p
        for p in _walk_files(root, max_depth=3, suffix=".mat", skipped=problems)
        if p.name.lower() != "cvind.mat"
    ]
    for path in sorted(mat_files, key=lambda p: natural_key(p.name)):
        try:
            with h5py.File(path, "r") as handle:
                rows.append(
                    {**_figshare_header(handle, path), "image": str(path), "mask": str(path)}
                )
        except io.SliceReadError as error:
            problems.append(Problem(str(path), str(error)))
        except OSError as error:
            problems.append(Problem(str(path), f"not a MATLAB v7.3 (HDF5) file ({error})"))
        except Exception as error:  # h5py raises TypeError/KeyError/ValueError on odd layouts
            problems.append(
                Problem(
                    str(path),
                    f"not the Figshare 'cjdata' layout ({type(error).__name__}: {error})",
                )
            )
    table = make_table(rows)
    folds = _read_cvind(root, problems)
    if folds is not None and len(table):
        numbers = table["figshare_index"].astype(int)
        in_range = numbers.between(1, len(folds))
        if not in_range.all():
            problems.append(
                Problem(
                    str(root / "cvind.mat"),
                    "cvind.mat is shorter than the slice numbers; folds ignored",
                )
            )
        else:
            table["fold"] = folds[numbers - 1].astype(int)
    if len(table):
        table = table.sort_values(["patient_id", "figshare_index"], kind="stable").reset_index(
            drop=True
        )
    return Catalog(table, "figshare_mat", root, problems)


def _figshare_header(handle, path: Path) -> dict:
    import h5py

    group = handle.get("cjdata")
    if not isinstance(group, h5py.Group):
        raise io.SliceReadError("no 'cjdata' group (not a Figshare slice)")
    for key in ("image", "label", "PID"):
        if key not in group:
            raise io.SliceReadError(f"'cjdata/{key}' missing")
        if not isinstance(group[key], h5py.Dataset):
            raise io.SliceReadError(f"'cjdata/{key}' is a group, not an array")
    label_array = np.asarray(group["label"][()]).ravel()
    if label_array.size != 1 or label_array.dtype.kind not in "biuf":
        raise io.SliceReadError(
            f"'cjdata/label' must be one number, got {label_array.dtype} {label_array.shape}"
        )
    label = float(label_array[0])
    if label not in FIGSHARE_LABELS:
        raise io.SliceReadError(f"label code {label:g} is not 1/2/3 (meningioma/glioma/pituitary)")
    pid_codes = np.asarray(group["PID"][()]).ravel()
    if pid_codes.dtype.kind not in "iu" or pid_codes.size == 0:
        raise io.SliceReadError("'cjdata/PID' must be uint16 character codes")
    patient = "".join(chr(int(c)) for c in pid_codes if int(c) > 0).strip()
    if not patient:
        raise io.SliceReadError("empty patient id in 'cjdata/PID'")
    shape = group["image"].shape
    if len(shape) != 2:
        raise io.SliceReadError(f"'cjdata/image' must be 2-D, got shape {shape}")
    io.check_size(shape, path)
    number = int(path.stem) if path.stem.isdigit() else -1
    return {
        "frame": -1,
        "patient_id": patient,
        "tumor_type": FIGSHARE_LABELS[int(label)],
        "grade": None,
        "source": "figshare_mat",
        "figshare_index": number,
        "label_code": int(label),
    }


def _read_cvind(root: Path, problems: list[Problem]) -> np.ndarray | None:
    """Figshare's 5-fold patient-wise split: one fold number per slice N (1-based)."""
    candidates = list(_walk_files(root, max_depth=3, suffix=".mat"))
    path = next((p for p in candidates if p.name.lower() == "cvind.mat"), None)
    if path is None:
        return None
    try:
        try:
            import h5py

            with h5py.File(path, "r") as handle:
                folds = np.asarray(handle["cvind"][()])
        except OSError:  # not HDF5: an older MATLAB format
            from scipy.io import loadmat

            folds = np.asarray(loadmat(path)["cvind"])
    except Exception as error:
        problems.append(
            Problem(str(path), f"unreadable cvind.mat, predefined folds ignored ({error})")
        )
        return None
    return folds.ravel()


# ----------------------------------------------------------------------------- TCGA-LGG


def _find_lgg_cases(root: Path) -> list[Path]:
    for base in (root, root / "kaggle_3m"):
        if base.is_dir():
            cases = [d for d in base.iterdir() if d.is_dir() and d.name.startswith("TCGA_")]
            if cases:
                return sorted(cases, key=lambda d: d.name)
    return []


def read_lgg_kaggle(root: Path) -> Catalog:
    """Buda et al. ``kaggle_3m``: case folders of ``<case>_<n>.tif`` + ``<case>_<n>_mask.tif``
    and ``data.csv`` (histological_type 1/2/3, neoplasm_histologic_grade 1→G2, 2→G3)."""
    cases = _find_lgg_cases(root)
    if not cases:
        raise DataError(f"no TCGA_* case folders under {root} or {root / 'kaggle_3m'}")
    csv_path = next(
        (p for p in (root / "data.csv", cases[0].parent / "data.csv") if p.is_file()), None
    )
    if csv_path is None:
        raise DataError(f"data.csv (per-patient type and grade) not found in {root}")
    labels = _read_lgg_labels(csv_path)
    rows, problems = [], []
    for case in cases:
        patient = "_".join(case.name.split("_")[:3])
        if patient not in labels.index:
            problems.append(
                Problem(str(case), f"patient {patient} not in data.csv; no label, skipped")
            )
            continue
        entries = labels.loc[[patient]].drop_duplicates()
        if len(entries) > 1:
            problems.append(
                Problem(
                    str(case),
                    f"patient {patient} has {len(entries)} different rows in data.csv; "
                    "which label is right is unknown, skipped",
                )
            )
            continue
        type_code = _lgg_code(entries["histological_type"].iloc[0])
        grade_code = _lgg_code(entries["neoplasm_histologic_grade"].iloc[0])
        if type_code not in LGG_TYPES:
            problems.append(
                Problem(
                    str(case),
                    f"unknown histological_type {entries['histological_type'].iloc[0]!r} in "
                    "data.csv; skipped",
                )
            )
            continue
        raw_grade = entries["neoplasm_histologic_grade"].iloc[0]
        if not pd.isna(raw_grade) and grade_code not in LGG_GRADES:
            problems.append(
                Problem(
                    str(case),
                    f"unknown neoplasm_histologic_grade {raw_grade!r} in data.csv; skipped",
                )
            )
            continue
        grade = LGG_GRADES.get(grade_code) if grade_code is not None else None
        for image in sorted(case.glob("*.tif"), key=lambda p: natural_key(p.name)):
            if image.stem.endswith("_mask"):
                continue
            mask = image.with_name(f"{image.stem}_mask.tif")
            slice_number = image.stem.rsplit("_", 1)[-1]
            rows.append(
                {
                    "image": str(image),
                    "frame": -1,
                    "mask": str(mask) if mask.is_file() else None,
                    "patient_id": patient,
                    "tumor_type": LGG_TYPES[type_code],
                    "grade": grade,
                    "source": "lgg_kaggle",
                    "case_id": case.name,
                    "slice_index": int(slice_number) if slice_number.isdigit() else -1,
                }
            )
    return Catalog(make_table(rows), "lgg_kaggle", root, problems)


def _read_lgg_labels(csv_path: Path) -> pd.DataFrame:
    """data.csv indexed by patient; an unreadable file or missing columns is a clear error."""
    try:
        table = pd.read_csv(csv_path)
    except Exception as error:  # pandas raises parser, encoding and empty-data errors
        raise DataError(f"cannot read {csv_path}: {error}") from error
    needed = ["Patient", "histological_type", "neoplasm_histologic_grade"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} lacks column(s) {missing} (the kaggle_3m data.csv has them)")
    table = table[needed].copy()
    table["Patient"] = table["Patient"].astype(str).str.strip()
    return table.set_index("Patient")


def _lgg_code(value) -> int | None:
    """An integer code from data.csv (1, 1.0, '1'), or None when empty or not a whole number;
    a code that is not one of the known ones is never guessed."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


# ----------------------------------------------------------------------------- manifest CSV


def read_manifest(path: Path) -> Catalog:
    """A CSV with ``image, mask, patient_id, tumor_type, grade`` (+ extra columns, kept).
    Relative paths are resolved against the CSV's folder. ``data_root`` may be the CSV or a
    folder holding ``manifest.csv``. A slice (image and frame) listed on several rows is kept
    once when the rows agree, and dropped altogether when they give it different patients or
    labels (it would leak between splits or carry two labels); both are reported."""
    csv_path = path / "manifest.csv" if path.is_dir() else path
    try:
        table = pd.read_csv(
            csv_path, dtype={"patient_id": str, "patient_family": str}, keep_default_na=True
        )
    except Exception as error:
        raise DataError(f"cannot read manifest {csv_path}: {error}") from error
    missing = [c for c in ("image", "patient_id", "tumor_type") if c not in table.columns]
    if missing:
        raise DataError(f"manifest {csv_path} lacks required column(s) {missing}")
    base = csv_path.parent
    problems: list[Problem] = []
    table["_line"] = np.arange(len(table)) + 2  # header is line 1
    keep = np.ones(len(table), dtype=bool)
    for column in ("image", "patient_id", "tumor_type"):
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        for position in np.flatnonzero(empty & keep):
            problems.append(Problem(f"{csv_path}:{position + 2}", f"empty {column}; row skipped"))
        keep &= ~empty.to_numpy()
    table = table[keep].reset_index(drop=True)
    table["image"] = [str(_resolve(base, p)) for p in table["image"]]
    if "mask" in table.columns:
        table["mask"] = [
            None if pd.isna(p) or not str(p).strip() else str(_resolve(base, p))
            for p in table["mask"]
        ]
    exists = np.array([Path(p).is_file() for p in table["image"]], dtype=bool)
    for position in np.flatnonzero(~exists):
        problems.append(Problem(table.at[position, "image"], "file not found"))
    table = table[exists].reset_index(drop=True)
    if "mask" in table.columns:
        # pandas turns the None of rows without a mask into NaN: test for text, not for None
        given = table["mask"].map(lambda p: isinstance(p, str))
        lost = given & ~table["mask"].map(lambda p: isinstance(p, str) and Path(p).is_file())
        for position in np.flatnonzero(lost.to_numpy()):
            problems.append(
                Problem(table.at[position, "mask"], "mask file not found; slice kept without mask")
            )
        table.loc[lost, "mask"] = None
    table = _drop_repeated_slices(table, csv_path, problems).drop(columns="_line")
    table["source"] = table["source"] if "source" in table.columns else "manifest"
    table = make_table(table.to_dict("records"))
    table = _order_within_patients(table)
    return Catalog(table, "manifest", csv_path.parent, problems)


def _drop_repeated_slices(
    table: pd.DataFrame, csv_path: Path, problems: list[Problem]
) -> pd.DataFrame:
    frame = table["frame"].fillna(-1).astype(int) if "frame" in table.columns else -1
    slice_key = table["image"].astype(str) + "|" + pd.Series(frame, index=table.index).astype(str)
    grade = table["grade"] if "grade" in table.columns else pd.Series(None, index=table.index)
    label_key = (
        table["patient_id"].astype(str).str.strip()
        + "|"
        + table["tumor_type"].astype(str).str.strip()
        + "|"
        + grade.map(lambda g: str(normalise_grade(g)))
    )
    drop = np.zeros(len(table), dtype=bool)
    for _, rows in table.groupby(slice_key, sort=False).groups.items():
        if len(rows) < 2:
            continue
        positions = table.index.get_indexer(rows)
        lines = table["_line"].to_numpy()[positions].tolist()
        image = table.at[rows[0], "image"]
        if label_key[rows].nunique() > 1:
            drop[positions] = True
            problems.append(
                Problem(
                    f"{csv_path}:{lines[0]}",
                    f"{image} is listed on lines {lines} with different patients or labels; "
                    "all these rows skipped (leakage / wrong-label risk)",
                )
            )
        else:
            drop[positions[1:]] = True
            problems.append(
                Problem(
                    f"{csv_path}:{lines[1]}",
                    f"{image} is listed again (lines {lines}); the repeats are skipped",
                )
            )
    return table[~drop].reset_index(drop=True)


def _resolve(base: Path, value) -> Path:
    path = Path(str(value).strip())
    return path if path.is_absolute() else base / path


def _order_within_patients(table: pd.DataFrame) -> pd.DataFrame:
    """Patients in order of first appearance; slices by slice_index when given, else CSV order."""
    first_seen = {p: i for i, p in reversed(list(enumerate(table["patient_id"])))}
    keys = pd.DataFrame(
        {
            "patient_rank": table["patient_id"].map(first_seen),
            "slice": table["slice_index"]
            if "slice_index" in table.columns
            else np.arange(len(table)),
            "row": np.arange(len(table)),
        }
    )
    order = keys.sort_values(["patient_rank", "slice", "row"], kind="stable").index
    return table.loc[order].reset_index(drop=True)


# ----------------------------------------------------------------------------- helpers


def _walk_files(
    root: Path, max_depth: int, suffix: str | None = None, skipped: list[Problem] | None = None
):
    """Regular files under root, at most max_depth folders down; never follows directory
    symlinks, so a symlink loop cannot trap the walk. Entries that are not regular files
    (broken or looping links, FIFOs, sockets: opening a FIFO would block) are not yielded;
    when ``skipped`` is given they are recorded there as problems."""
    root_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        depth = len(Path(folder).parts) - root_depth
        if depth >= max_depth:
            dirs[:] = []
        dirs.sort()
        for name in sorted(files):
            if suffix is None or name.lower().endswith(suffix):
                path = Path(folder) / name
                if path.is_file():
                    yield path
                elif skipped is not None and not name.startswith("."):
                    reason = (
                        "broken or looping symbolic link"
                        if path.is_symlink() and not path.exists()
                        else "not a regular file"
                    )
                    skipped.append(Problem(str(path), f"{reason}; skipped"))


patient_rows = _patient_rows
dicom_rows = _dicom_rows

"""DICOM files → series: grouped by study and series UID, each series' slices (frames of a
multi-frame file) in anatomical order, with the tags that say what the series is (sequence,
spacing). What is not an image series to analyse is skipped with its reason: localizers and
scouts, objects without pixels (SR, RTSTRUCT, presentation states), segmentations, and images
of another modality than MR unless asked for."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mritumor.data.reading import io
from mritumor.data.reading.catalog import Problem

# ImageOrientationPatient when the tag is absent: an axial slice (normal +z), so a series
# with positions but no orientation is ordered by z, as it always was.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORIENTATION_TOLERANCE = 1e-3  # direction cosines of one series' slices agree to this
# The tags that describe the acquisition, kept for the sequence check and shown in outputs.
SEQUENCE_TAGS = (
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "ContrastBolusAgent",
)
_NO_PIXELS = {
    "SR": "a structured report",
    "RTSTRUCT": "an RT structure set",
    "PR": "a presentation state",
    "KO": "a key object selection",
    "REG": "a registration",
    "DOC": "an encapsulated document",
}


@dataclass
class DicomSeries:
    """One series to analyse: its slice rows (``image``, ``frame``, ``mask`` = None) in
    anatomical order and what its tags say."""

    name: str | None  # "<SeriesNumber>_<SeriesDescription>"; None when no series tag exists
    series_uid: str | None
    study_uid: str | None
    modality: str | None
    rows: list[dict]
    tags: dict = field(default_factory=dict)  # SEQUENCE_TAGS present, as strings
    pixel_spacing: tuple[float, float] | None = None  # (row, column) spacing in mm
    slice_spacing: float | None = None  # mm between adjacent slice centres (median)


def read_series(
    files: list[Path], any_modality: bool = False
) -> tuple[list[DicomSeries], list[Problem]]:
    """DICOM files → the image series among them, in series-number order, and the files or
    series skipped with their reasons. Files are grouped by (StudyInstanceUID,
    SeriesInstanceUID); files without these tags form one series together. Slices are sorted
    by :func:`slice_position`; ties keep the order of ``files`` (a stable sort), so a series
    without position or instance tags stays in the (natural) file-name order."""
    groups: dict[tuple, list] = defaultdict(list)
    refused: dict[tuple, list] = defaultdict(list)  # one problem per series and reason
    problems: list[Problem] = []
    for path in files:
        header = _read_header(path)
        if isinstance(header, str):
            problems.append(Problem(str(path), header))
            continue
        key = (_text(header, "StudyInstanceUID"), _text(header, "SeriesInstanceUID"))
        reason = _not_an_image(header, any_modality)
        if reason:
            refused[(*key, reason)].append((path, header))
        else:
            groups[key].append((path, header))
    for (_, series_uid, reason), members in refused.items():
        path, header = members[0]
        if series_uid and len(members) > 1:
            reason = f"series {_series_name(header)} ({len(members)} files): {reason}"
        elif series_uid:
            reason = f"series {_series_name(header)}: {reason}"
        problems.append(Problem(str(path), reason))
    series = []
    for (study_uid, series_uid), members in groups.items():
        found = _series(study_uid, series_uid, members)
        if isinstance(found, Problem):
            problems.append(found)
        else:
            series.append(found)
    series.sort(key=lambda s: (_number(s.name), s.name or ""))
    _name_duplicates(series)
    return series, problems


def dicom_rows(files: list[Path]) -> tuple[list[dict], list[Problem]]:
    """The rows of every image series among ``files`` (see :func:`read_series`), series after
    series, and the problems met: for a caller that wants one list of slices."""
    series, problems = read_series(files)
    return [row for s in series for row in s.rows], problems


def dicomdir_files(path: Path) -> list[Path]:
    """The files a DICOMDIR lists (pydicom's File-set reader), those that exist; [] when it
    cannot be read (the caller then finds nothing and says so)."""
    import pydicom
    from pydicom.fileset import FileSet

    try:
        file_set = FileSet(pydicom.dcmread(path))
    except Exception:  # a damaged or foreign DICOMDIR: pydicom raises many types
        return []
    files = [Path(instance.path) for instance in file_set]
    return [f for f in files if f.is_file()]


def _read_header(path: Path):
    """The dataset (pixels deferred), or the reason it cannot be read; a file without the
    128-byte preamble is read when it is otherwise valid DICOM (io.read_dicom_dataset)."""
    try:
        return io.read_dicom_dataset(path, defer_size=64)
    except io.SliceReadError as error:
        return f"unreadable DICOM file ({error})"
    except Exception as error:  # pydicom raises many types on damaged files
        return f"unreadable DICOM file ({type(error).__name__})"


def _not_an_image(header, any_modality: bool) -> str | None:
    """Why this object is not a slice to analyse, or None."""
    modality = _text(header, "Modality")
    if "DirectoryRecordSequence" in header:
        return "a DICOMDIR (its series are read from the files it lists)"
    if modality == "SEG":
        return "a DICOM Segmentation object, not an image; skipped"
    if "PixelData" not in header and "FloatPixelData" not in header:
        kind = _NO_PIXELS.get(modality or "", "an object")
        return f"no pixel data ({kind}, Modality {modality or 'unknown'}); skipped"
    image_type = [str(v).upper() for v in _values(header, "ImageType")]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "a localizer/scout image (ImageType LOCALIZER); skipped"
    if modality and modality != "MR" and not any_modality:
        return (
            f"Modality {modality}, not MR: this model reads brain MRI (--any_modality analyses "
            "it anyway); skipped"
        )
    return None


def _series(study_uid, series_uid, members: list) -> DicomSeries | Problem:
    headers = [header for _, header in members]
    first = headers[0]
    name = _series_name(first) if series_uid else None
    orientations = [_numbers(h, "ImageOrientationPatient", 6) for h in headers]
    known = [o for o in orientations if o is not None]
    if known and any(np.abs(o - known[0]).max() > ORIENTATION_TOLERANCE for o in known):
        label = name or str(members[0][0].parent)
        return Problem(
            str(members[0][0]),
            f"series {label}: its slices change orientation (a localizer or scout); skipped",
        )
    entries = []
    for (path, header), order in zip(members, [slice_position(h) for h in headers], strict=True):
        frames = int(getattr(header, "NumberOfFrames", 1) or 1)
        for frame in range(frames):
            row = {"image": str(path), "frame": frame if frames > 1 else -1, "mask": None}
            entries.append((order, frame, row))
    entries.sort(key=lambda e: (e[0], e[1]))
    spacing = _pixel_spacing(first)
    return DicomSeries(
        name=name,
        series_uid=series_uid,
        study_uid=study_uid,
        modality=_text(first, "Modality"),
        rows=[row for _, _, row in entries],
        tags={k: _text(first, k) for k in SEQUENCE_TAGS if _text(first, k)},
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
        slice_spacing=_slice_spacing(headers),
    )


def _pixel_spacing(header) -> np.ndarray | None:
    """PixelSpacing (row, column) in mm: the top-level tag, or an enhanced multi-frame file's
    shared functional groups."""
    spacing = _numbers(header, "PixelSpacing", 2)
    if spacing is not None:
        return spacing
    try:
        measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    except (AttributeError, IndexError, KeyError):
        return None
    return _numbers(measures, "PixelSpacing", 2)


def _slice_spacing(headers: list) -> float | None:
    """The median distance between adjacent slice positions along the normal; for one file,
    SpacingBetweenSlices or SliceThickness; None when nothing says, or when positions repeat
    (echoes, b-values, repeated acquisitions: the slices are not one stack, so no volume)."""
    positions = sorted(
        slice_position(h) for h in headers if _numbers(h, "ImagePositionPatient", 3) is not None
    )
    if len(positions) >= 2:
        gaps = np.diff(positions)
        if (gaps <= 1e-6).any():
            return None
        return float(np.median(gaps))
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _numbers(headers[0], keyword, 1)
        if value is not None and value[0] > 0:
            return float(value[0])
    return None


def _series_name(header) -> str:
    """``<SeriesNumber>_<SeriesDescription>``, made safe as one folder name."""
    number = _text(header, "SeriesNumber") or "x"
    description = _text(header, "SeriesDescription") or _text(header, "ProtocolName") or ""
    name = f"{number}_{description}" if description else number
    return re.sub(r"[^\w.+-]+", "_", name).strip("_.") or "series"


def _name_duplicates(series: list[DicomSeries]) -> None:
    """Two series can share a number and description (a repeated acquisition): suffix them."""
    seen: dict[str, int] = defaultdict(int)
    for s in series:
        if s.name is None:
            continue
        seen[s.name] += 1
        if seen[s.name] > 1:
            s.name = f"{s.name}_{seen[s.name]}"


def _number(name: str | None) -> float:
    head = (name or "").split("_", 1)[0]
    return float(head) if head.isdigit() else float("inf")


def slice_position(header) -> float:
    """Where a slice lies along its series' stacking axis: ImagePositionPatient projected on
    the slice normal, row cosines × column cosines (the first and last three values of
    ImageOrientationPatient). z alone is right only for axial slices: it is the same for every
    slice of a sagittal or coronal series and mis-orders oblique ones. Without a usable
    position the InstanceNumber is used, and without that 0 (the caller's order decides)."""
    position = _numbers(header, "ImagePositionPatient", 3)
    if position is not None:
        orientation = _numbers(header, "ImageOrientationPatient", 6)
        normal = np.cross(*np.reshape(orientation if orientation is not None else AXIAL, (2, 3)))
        length = float(np.linalg.norm(normal))
        if not length > 1e-6:  # parallel or zero cosines: no plane, so assume axial
            normal, length = np.cross(AXIAL[:3], AXIAL[3:]), 1.0
        return float(np.dot(position, normal) / length)
    instance = _numbers(header, "InstanceNumber", 1)
    return float(instance[0]) if instance is not None else 0.0


def _text(header, keyword: str) -> str | None:
    """A tag's value as stripped text, or None (absent, empty or unreadable)."""
    try:
        value = header.get(keyword)
    except Exception:  # a malformed value raises on conversion
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _values(header, keyword: str) -> list:
    """A multi-valued tag's values (one value is a list of one; absent or unreadable: [])."""
    try:
        value = header.get(keyword)
    except Exception:
        return []
    if value is None:
        return []
    return [value] if isinstance(value, (str, bytes)) else list(value)


def _numbers(header, keyword: str, count: int) -> np.ndarray | None:
    """A tag's ``count`` finite numbers, or None when it is absent, empty or malformed (a
    hostile header must cost its slice its place in the order, never the whole patient)."""
    try:
        value = header.get(keyword)
        if value is None or value == "":
            return None
        values = np.asarray(value if count > 1 else [value], dtype=float).ravel()
    except Exception:  # pydicom converts values lazily and raises many types on bad ones
        return None
    return values if values.size == count and np.isfinite(values).all() else None

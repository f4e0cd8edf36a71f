"""DICOM series: one row per slice (per frame of a multi-frame file), in anatomical order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mritumor.data.catalog import Problem

# ImageOrientationPatient when the tag is absent: an axial slice (normal +z), so a series
# with positions but no orientation is ordered by z, as it always was.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def dicom_rows(files: list[Path]) -> tuple[list[dict], list[Problem]]:
    """DICOM files → slice rows (one per frame) in slice order, and the files skipped. Slices
    are sorted by :func:`slice_position`; ties keep the order of ``files`` (a stable sort), so
    a series without position or instance tags stays in the (natural) file-name order."""
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
        order = slice_position(header)
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

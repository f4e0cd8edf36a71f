"""DICOM series: one row per slice (per frame of a multi-frame file), in anatomical order."""

from __future__ import annotations

from pathlib import Path

from mritumor.data.catalog import Problem


def dicom_rows(files: list[Path]) -> tuple[list[dict], list[Problem]]:
    """DICOM files → slice rows (one per frame) in slice order, and the files skipped."""
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

"""A DICOM series' predicted tumour masks as a DICOM Segmentation (what PACS viewers, OHIF and
3D Slicer overlay on the series), and the series' classification as a JSON sidecar beside it.

:func:`write_segmentation` writes one binary SEG per series with ``highdicom``: one segment,
"tumour" (category Morphologically Abnormal Structure, SCT 49755003, the concept DICOM once
named "Morphologically Altered Structure"; type Neoplasm, SCT 108369006), algorithm type
AUTOMATIC, the model named in its Algorithm Identification. :func:`write_sidecar` writes the
caller's JSON record with the SEG's file name and UIDs, so that the two can be matched.

Choices, and why:

* **One SEG frame per analysed source frame**, empty ones included (``omit_empty_frames=False``).
  A reader can then tell "analysed, no tumour" from "not analysed", and a series with no tumour
  at all gives a SEG of the same shape as any other rather than a special case. Binary frames
  are packed 1 bit per pixel: 30 slices of 512×512 take 1 MB.
* **Sources must carry patient geometry** (FrameOfReferenceUID, and ImagePositionPatient,
  ImageOrientationPatient and PixelSpacing; for a multi-frame image a plane position per frame
  and a shared orientation and pixel spacing in its functional groups). Without it a
  SEG can be tied to its image by reference only, which highdicom allows for one frame; a
  series gets the same answer whatever its length: :class:`SegmentationSourceError`, on which
  the caller writes PNG masks only. highdicom's own refusals become that error too, with its
  message, never a bare traceback.
* **Multi-frame sources**: one multi-frame image per series (highdicom takes a list of
  single-frame images or exactly one multi-frame image), with its per-frame functional groups
  (Enhanced / Legacy Converted Enhanced MR). A file of another class with NumberOfFrames > 1
  has no per-frame positions: :class:`SegmentationSourceError`.
* **Empty type-2 attributes**: anonymised exports often drop type-2 tags (AccessionNumber,
  PatientBirthDate, SliceThickness, ...) that highdicom reads unconditionally; they are set
  empty, as the standard allows, on the in-memory headers only (the source files are never
  written).

**No DICOM Structured Report.** A TID 1500 Comprehensive 3D SR that references the SEG's
segment (``VolumetricROIMeasurementsAndQualitativeEvaluations``) was built and read back while
writing this module; it works, but not without strain, so it is not shipped:

* only the top label has standard codes (glioma SCT 393564001, intracranial meningioma SCT
  302820008, pituitary adenoma SCT 254956000). The type and grade probabilities, the conformal
  prediction set and the out-of-distribution flag, which are what make the label safe to read,
  have no standard concepts; a PACS would show a bare "Glioma" while the model's own set says
  {glioma, meningioma} or its OOD check says not to trust it. "uncertain", "no_tumour" and other
  label vocabularies (astrocytoma, ...) have no code either;
* highdicom 0.28's ``ReferencedSegment.from_segmentation`` fails on a one-segment SEG (it looks
  for SegmentIdentificationSequence per frame; highdicom puts it in the shared group), and a
  qualitative evaluation named "Finding" collides with TID 1411's finding type, so the report
  needs hand-built references and a concept name chosen for the purpose.

The JSON sidecar carries the whole record; an SR can be added once a coding for the
uncertainty outputs is agreed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from mritumor import __version__
from mritumor.data.reading import io
from mritumor.errors import DataError

MANUFACTURER = "mritumor"
SEGMENT_LABEL = "tumour"
CONTENT_LABEL = "TUMOUR"  # CS: upper case, at most 16 characters
SERIES_DESCRIPTION = "mritumor tumour segmentation"
SERIES_NUMBER_OFFSET = 1000  # SEG series number = source series number + this (a PACS habit)
SIDECAR_KEY = "dicom_segmentation"  # the record's key holding the links to the SEG

SourceFrame = tuple[str | Path, int]  # (file, 0-based frame of a multi-frame file, else -1)

# Read as attributes by highdicom whatever their presence; type 2 (may be empty) in the source.
_TYPE2_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName", "SliceThickness",
)  # fmt: skip
_SINGLE_FRAME_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


class SegmentationSourceError(DataError):
    """The source images cannot carry a DICOM Segmentation (no patient geometry, an unsupported
    multi-frame layout, or a refusal by highdicom); the masks can still be written as PNG."""


@dataclass
class _Arrangement:
    """What highdicom's Segmentation takes: the source datasets, the masks stacked, and, for a
    multi-frame source, each mask's plane position (single-frame sources are paired by order)."""

    source_images: list[Dataset]
    pixel_array: np.ndarray
    plane_positions: list[hd.PlanePositionSequence] | None = None


def write_segmentation(
    sources: Sequence[SourceFrame],
    masks: Sequence[np.ndarray],
    path: str | Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    series_number: int | None = None,
    series_description: str = SERIES_DESCRIPTION,
    device_serial_number: str | None = None,
) -> Path:
    """Write ``masks`` (one binary (Rows, Columns) array per entry of ``sources``, at the source
    image's own size) as a binary DICOM Segmentation of their series to ``path``, atomically.

    ``algorithm_name`` (e.g. "mritumor multitask") and ``algorithm_version`` (e.g. the
    checkpoint's hash) identify the model in the segment's Algorithm Identification;
    ``series_number`` defaults to the source's plus 1000; ``device_serial_number`` to
    ``algorithm_version``. Raises ValueError for inconsistent arguments (lengths, repeated or
    out-of-range frames, mask shapes, sources of several series) and
    :class:`SegmentationSourceError` for sources that cannot carry a SEG."""
    path = Path(path)
    _check_arguments(sources, masks)
    headers = _read_headers(sorted({Path(file) for file, _ in sources}))
    _check_one_series(headers)
    arrangement = _arrange(sources, masks, headers)
    first = arrangement.source_images[0]
    segmentation = _build_segmentation(
        arrangement,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        series_number=series_number if series_number is not None else _derived_number(first),
        series_description=series_description,
        device_serial_number=device_serial_number or algorithm_version,
    )
    return _write_atomically(
        path, lambda stream: pydicom.dcmwrite(stream, segmentation, enforce_file_format=True)
    )


def write_sidecar(record: dict, segmentation: str | Path, path: str | Path | None = None) -> Path:
    """Write ``record`` (the series' JSON-ready prediction: type and grade probabilities,
    prediction sets, OOD flag, tumour area, whatever it holds) to ``path`` (default: the SEG's
    name with ``.json``), atomically, with one more key, ``dicom_segmentation``: the SEG's
    ``file`` name, ``sop_instance_uid`` and ``series_instance_uid``, and the source's
    ``source_series_instance_uid`` and ``study_instance_uid`` (read from the SEG on disk, so
    they are what a PACS will see). Raises ValueError if the record already has that key."""
    segmentation = Path(segmentation)
    path = Path(path) if path is not None else segmentation.with_suffix(".json")
    if SIDECAR_KEY in record:
        raise ValueError(f"the record already has a {SIDECAR_KEY!r} key; it is the sidecar's own")
    header = pydicom.dcmread(segmentation, stop_before_pixels=True)
    links = {
        "file": segmentation.name,
        "sop_instance_uid": str(header.SOPInstanceUID),
        "series_instance_uid": str(header.SeriesInstanceUID),
        "source_series_instance_uid": str(header.ReferencedSeriesSequence[0].SeriesInstanceUID),
        "study_instance_uid": str(header.StudyInstanceUID),
    }
    text = json.dumps({**record, SIDECAR_KEY: links}, indent=2) + "\n"
    return _write_atomically(path, lambda stream: stream.write(text.encode()))


def _check_arguments(sources: Sequence[SourceFrame], masks: Sequence[np.ndarray]) -> None:
    if len(sources) == 0:
        raise ValueError("no source frames: a segmentation needs at least one")
    if len(sources) != len(masks):
        raise ValueError(f"{len(sources)} source frames but {len(masks)} masks")
    keys = [(Path(file).resolve(), frame) for file, frame in sources]
    if len(set(keys)) != len(keys):
        raise ValueError("a source frame is given twice")
    for (file, frame), mask in zip(sources, masks, strict=True):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"the mask of {file} [{frame}] has shape {mask.shape}; 2-D expected")
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"the mask of {file} [{frame}] is not binary (bool or 0/1)")


def _read_headers(files: list[Path]) -> dict[Path, Dataset]:
    """Each file's header, read once (no pixel data: highdicom needs the metadata only), with
    absent type-2 attributes set empty."""
    headers: dict[Path, Dataset] = {}
    for file in files:
        try:
            # io's reader: a file without the 128-byte preamble, predicted, gets its SEG too
            header = io.read_dicom_dataset(file, defer_size=64)
        except (OSError, InvalidDicomError, io.SliceReadError) as error:
            raise SegmentationSourceError(f"cannot read {file} as DICOM ({error})") from error
        for keyword in _TYPE2_ATTRIBUTES:
            if keyword not in header:
                setattr(header, keyword, None)
        headers[file] = header
    return headers


def _check_one_series(headers: dict[Path, Dataset]) -> None:
    series = {str(header.get("SeriesInstanceUID", "")) for header in headers.values()}
    if len(series) > 1:
        raise ValueError(
            f"the source frames come from {len(series)} series ({', '.join(sorted(series))}); "
            "one segmentation covers one series"
        )
    if "" in series or not all("StudyInstanceUID" in h for h in headers.values()):
        raise SegmentationSourceError("a source image has no SeriesInstanceUID or StudyInstanceUID")


def _arrange(
    sources: Sequence[SourceFrame], masks: Sequence[np.ndarray], headers: dict[Path, Dataset]
) -> _Arrangement:
    multi_frame = [file for file, header in headers.items() if _is_multi_frame(header)]
    if not multi_frame:
        return _arrange_single_frames(sources, masks, headers)
    if len(headers) > 1:
        raise SegmentationSourceError(
            f"the series is in {len(headers)} files, {len(multi_frame)} of them multi-frame; a "
            "segmentation is derived from single-frame images or from one multi-frame image"
        )
    return _arrange_multi_frame(sources, masks, headers[multi_frame[0]])


def _is_multi_frame(header: Dataset) -> bool:
    """Several frames in the file, or per-frame functional groups (an enhanced image, even of
    one frame): the image's geometry is then per frame, not at the top level."""
    return (
        int(header.get("NumberOfFrames") or 1) > 1 or "PerFrameFunctionalGroupsSequence" in header
    )


def _arrange_single_frames(
    sources: Sequence[SourceFrame], masks: Sequence[np.ndarray], headers: dict[Path, Dataset]
) -> _Arrangement:
    """highdicom pairs ``pixel_array[i]`` with ``source_images[i]``: the given order is kept."""
    images = []
    for (file, frame), mask in zip(sources, masks, strict=True):
        header = headers[Path(file)]
        if frame not in (-1, 0):
            raise ValueError(f"{file} holds one frame; frame {frame} does not exist")
        _require_single_frame_geometry(Path(file), header)
        _check_mask_shape(mask, header, f"{file}")
        images.append(header)
    return _Arrangement(images, _stack(masks))


def _arrange_multi_frame(
    sources: Sequence[SourceFrame], masks: Sequence[np.ndarray], header: Dataset
) -> _Arrangement:
    """The frames' plane positions are passed with the masks: highdicom finds the source frame
    of each by position, so any subset of the frames, in any order, is placed right."""
    file = Path(sources[0][0])
    positions = _multi_frame_positions(file, header)
    # -1 ("no frame index") names the only frame of a one-frame enhanced image
    frames = [0 if frame == -1 and len(positions) == 1 else frame for _, frame in sources]
    for frame, mask in zip(frames, masks, strict=True):
        if not 0 <= frame < len(positions):
            raise ValueError(f"{file} has {len(positions)} frames; frame {frame} does not exist")
        _check_mask_shape(mask, header, f"{file} [{frame}]")
    return _Arrangement([header], _stack(masks), [positions[frame] for frame in frames])


def _require_single_frame_geometry(file: Path, header: Dataset) -> None:
    missing = [k for k in ("FrameOfReferenceUID", *_SINGLE_FRAME_GEOMETRY) if not header.get(k)]
    if missing:
        raise SegmentationSourceError(
            f"{file} has no {', '.join(missing)}: a segmentation cannot be placed on it "
            f"({header.get('SOPClassUID', 'unknown SOP class')!s})"
        )


def _multi_frame_positions(file: Path, header: Dataset) -> list[hd.PlanePositionSequence]:
    """Each frame's plane position from the per-frame functional groups (which, with a shared
    orientation and pixel spacing, highdicom needs to derive a SEG from a multi-frame image)."""
    shared = header.get("SharedFunctionalGroupsSequence") or [Dataset()]
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    frames = int(header.get("NumberOfFrames") or 1)
    problems = []
    if not header.get("FrameOfReferenceUID"):
        problems.append("no FrameOfReferenceUID")
    if len(per_frame) != frames or not all("PlanePositionSequence" in g for g in per_frame):
        problems.append("no plane position per frame (PerFrameFunctionalGroupsSequence)")
    for shared_group in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        if shared_group not in shared[0]:
            problems.append(f"no shared {shared_group}")
    if problems:
        raise SegmentationSourceError(
            f"{file} ({frames} frames) cannot carry a segmentation: {'; '.join(problems)}"
        )
    return [hd.PlanePositionSequence.from_sequence(g.PlanePositionSequence) for g in per_frame]


def _check_mask_shape(mask: np.ndarray, header: Dataset, where: str) -> None:
    expected = (int(header.Rows), int(header.Columns))
    if np.shape(mask) != expected:
        raise ValueError(
            f"the mask of {where} has shape {np.shape(mask)}; the image is {expected} "
            "(Rows, Columns): masks must be at the source image's own size"
        )


def _stack(masks: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(mask).astype(bool) for mask in masks])


def _derived_number(source: Dataset) -> int:
    number = source.get("SeriesNumber")
    return SERIES_NUMBER_OFFSET + (int(number) if number not in (None, "") else 0)


def _segment_description(algorithm_name: str, algorithm_version: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name,
            family=codes.cid7162.ArtificialIntelligence,
            version=algorithm_version,
        ),
    )


def _build_segmentation(
    arrangement: _Arrangement,
    *,
    algorithm_name: str,
    algorithm_version: str,
    series_number: int,
    series_description: str,
    device_serial_number: str,
) -> hd.seg.Segmentation:
    try:
        return hd.seg.Segmentation(
            source_images=arrangement.source_images,
            pixel_array=arrangement.pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(algorithm_name, algorithm_version)],
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm_name,
            software_versions=__version__,
            device_serial_number=device_serial_number,
            plane_positions=arrangement.plane_positions,
            omit_empty_frames=False,  # one frame per analysed source frame (module docstring)
            content_label=CONTENT_LABEL,
            content_description=f"{SEGMENT_LABEL} segmented by {algorithm_name}",
            series_description=series_description,
        )
    except (ValueError, AttributeError, KeyError) as error:
        # highdicom's checks of the sources (orientations, duplicate positions, tags it reads)
        raise SegmentationSourceError(
            f"highdicom cannot derive a segmentation from these images: {error}"
        ) from error


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(stream)`` into a temporary file beside ``path``, fsync, then rename over it: a
    kill or a full disk leaves no half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path

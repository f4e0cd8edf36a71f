"""DICOM files written by the tests: single MR slices with the tags a PACS export carries, and a
study folder of several series (what ``predict`` must separate). Imported by test modules;
pydicom only, so the files are independent of the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def write_mr_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    frame_of_reference: str,
    series_number: int,
    description: str,
    instance: int,
    position: list[float],
    orientation: list[float] = AXIAL,
    image_type: list[str] | None = None,
    modality: str = "MR",
    pixel_spacing: tuple[float, float] | None = (0.5, 0.5),
    slice_thickness: float | None = 5.0,
    contrast_agent: str | None = None,
    patient_id: str = "anon",
) -> pydicom.Dataset:
    """One uint16 MR (or ``modality``) image slice, Explicit VR Little Endian, with study,
    series, frame-of-reference, position, orientation and spacing tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = modality, patient_id, "Test^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "O"
    ds.Manufacturer = "test"
    ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, description, instance
    ds.ImageType = image_type or ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = slice_thickness
    if contrast_agent is not None:
        ds.ContrastBolusAgent = contrast_agent
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return ds


def write_series(
    folder: Path,
    images: list[np.ndarray],
    *,
    study_uid: str,
    series_number: int,
    description: str,
    frame_of_reference: str | None = None,
    spacing: float = 5.0,
    orientation: list[float] = AXIAL,
    prefix: str = "IM",
    **tags,
) -> list[Path]:
    """A stack of slices ``spacing`` mm apart along the slice normal, one file each
    (``<prefix>_<series>_<k>.dcm``). Returns the files in slice order."""
    series_uid = generate_uid()
    frame_of_reference = frame_of_reference or generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    files = []
    for k, pixels in enumerate(images):
        path = folder / f"{prefix}_{series_number:02d}_{k:03d}.dcm"
        write_mr_slice(
            path,
            pixels,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference=frame_of_reference,
            series_number=series_number,
            description=description,
            instance=k + 1,
            position=list(normal * spacing * k),
            orientation=orientation,
            slice_thickness=spacing,
            **tags,
        )
        files.append(path)
    return files


def write_study(folder: Path, images: list[np.ndarray]) -> dict[str, list[Path]]:
    """A PACS-like study export in one folder: a T1 post-contrast series and a FLAIR series of
    ``images`` (same frame of reference and slice positions: read as one series they would be
    interleaved) and a 3-plane localizer.
    Returns the files of each series by name."""
    study, frame = generate_uid(), generate_uid()
    t1c = write_series(
        folder, images, study_uid=study, series_number=3, description="T1 AX POST GAD",
        frame_of_reference=frame, contrast_agent="Gadobutrol",
    )  # fmt: skip
    flair = write_series(
        folder, images, study_uid=study, series_number=4, description="AX FLAIR",
        frame_of_reference=frame,
    )  # fmt: skip
    localizer_uid = generate_uid()
    localizer = []
    for k, orientation in enumerate((AXIAL, SAGITTAL, CORONAL)):
        path = folder / f"IM_01_{k:03d}.dcm"
        write_mr_slice(
            path, images[0], study_uid=study, series_uid=localizer_uid,
            frame_of_reference=frame, series_number=1, description="3-PLANE LOC",
            instance=k + 1, position=[0.0, 0.0, 0.0], orientation=orientation,
            image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        )  # fmt: skip
        localizer.append(path)
    return {"t1c": t1c, "flair": flair, "localizer": localizer}

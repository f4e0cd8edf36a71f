"""DICOM Segmentation and JSON sidecar of a series' predicted masks
(``mritumor.inference.dicom_seg``): written from pydicom-made series (``dicom_factory``), read
back with highdicom and with plain pydicom."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

import mritumor
from dicom_factory import write_series, write_study
from mritumor.inference.dicom_seg import (
    SIDECAR_KEY,
    SegmentationSourceError,
    write_segmentation,
    write_sidecar,
)

ROWS, COLUMNS = 32, 24  # not square: a transposed mask cannot pass
NAME, VERSION = "mritumor multitask", "sha256:0123abcd"


def _masks(count: int = 4) -> list[np.ndarray]:
    """A different shape on each slice (a rectangle, an L, a single pixel...), slice 1 empty."""
    masks = [np.zeros((ROWS, COLUMNS), bool) for _ in range(count)]
    masks[0][2:9, 3:20] = True
    if count > 2:
        masks[2][10:30, 1:4] = True
        masks[2][27:30, 1:15] = True
    if count > 3:
        masks[3][31, 23] = True
    return masks


def _images(count: int = 4) -> list[np.ndarray]:
    return [np.full((ROWS, COLUMNS), 100 * (k + 1), np.uint16) for k in range(count)]


@pytest.fixture
def series(tmp_path) -> list[Path]:
    return write_series(
        tmp_path / "study", _images(), study_uid=generate_uid(), series_number=3,
        description="T1 AX POST GAD",
    )  # fmt: skip


def _write(files, masks, path, frames=None, **options) -> Path:
    frames = frames if frames is not None else [-1] * len(files)
    return write_segmentation(
        list(zip(files, frames, strict=True)), masks, path,
        algorithm_name=NAME, algorithm_version=VERSION, **options,
    )  # fmt: skip


def _uids(files) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def _frame_references(seg: pydicom.Dataset) -> list[tuple[str, int | None]]:
    """Each SEG frame's source (SOP Instance UID, referenced frame number or None), in frame
    order, from the per-frame Derivation Image Sequence."""
    references = []
    for group in seg.PerFrameFunctionalGroupsSequence:
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        frame = source.get("ReferencedFrameNumber")
        references.append(
            (str(source.ReferencedSOPInstanceUID), None if frame is None else int(frame))
        )
    return references


# --- round trip ------------------------------------------------------------------------------


def test_highdicom_reads_back_the_masks_per_source_instance(series, tmp_path):
    masks = _masks()
    path = _write(series, masks, tmp_path / "seg.dcm")

    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(_uids(series), segment_numbers=[1])

    assert pixels.shape == (4, ROWS, COLUMNS, 1)
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), np.stack(masks))


def test_pydicom_reads_frames_references_and_descriptions(series, tmp_path):
    masks = _masks()
    path = _write(series, masks, tmp_path / "seg.dcm", series_number=42)
    sources = [pydicom.dcmread(f) for f in series]
    source_of = {str(s.SOPInstanceUID): k for k, s in enumerate(sources)}

    seg = pydicom.dcmread(path)

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert int(seg.NumberOfFrames) == 4  # the empty slice has its frame
    assert (seg.Rows, seg.Columns) == (ROWS, COLUMNS)
    # every frame names one source slice, each slice once; its pixels and position are that slice's
    references = _frame_references(seg)
    assert sorted(uid for uid, _ in references) == sorted(source_of)
    frames = seg.pixel_array.reshape(4, ROWS, COLUMNS)
    for k, (uid, frame_number) in enumerate(references):
        source = sources[source_of[uid]]
        assert frame_number is None
        np.testing.assert_array_equal(frames[k].astype(bool), masks[source_of[uid]])
        position = seg.PerFrameFunctionalGroupsSequence[k].PlanePositionSequence[0]
        assert [float(v) for v in position.ImagePositionPatient] == pytest.approx(
            [float(v) for v in source.ImagePositionPatient]
        )
    # the series, its instances and its frame of reference
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.PatientID == sources[0].PatientID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert sorted(
        i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence
    ) == sorted(source_of)
    # the segment: coded tumour, automatic, named model
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "tumour"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == NAME
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == (
        "108369006",
        "SCT",
        "Neoplasm",
    )
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (NAME, VERSION)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    # the equipment and the series
    assert seg.Manufacturer == "mritumor" and seg.ManufacturerModelName == NAME
    assert seg.SoftwareVersions == mritumor.__version__
    assert seg.DeviceSerialNumber == VERSION
    assert seg.ContentLabel == "TUMOUR"
    assert int(seg.SeriesNumber) == 42


def test_series_number_defaults_to_the_sources_plus_1000(series, tmp_path):
    seg = pydicom.dcmread(_write(series, _masks(), tmp_path / "seg.dcm"), stop_before_pixels=True)
    assert int(seg.SeriesNumber) == 1003


def test_masks_are_paired_with_their_source_whatever_the_order(series, tmp_path):
    order = [2, 0, 3, 1]
    masks = _masks()
    path = _write([series[k] for k in order], [masks[k] for k in order], tmp_path / "seg.dcm")

    pixels = hd.seg.segread(path).get_pixels_by_source_instance(_uids(series), segment_numbers=[1])

    np.testing.assert_array_equal(pixels[..., 0].astype(bool), np.stack(masks))


def test_a_subset_of_the_series_gives_frames_for_those_slices_only(series, tmp_path):
    masks = _masks()
    path = _write([series[0], series[3]], [masks[0], masks[3]], tmp_path / "seg.dcm")

    seg = pydicom.dcmread(path)

    assert int(seg.NumberOfFrames) == 2
    assert sorted(uid for uid, _ in _frame_references(seg)) == sorted(_uids([series[0], series[3]]))


def test_a_series_without_tumour_gives_a_valid_seg_with_every_frame(series, tmp_path):
    empty = [np.zeros((ROWS, COLUMNS), bool) for _ in series]
    path = _write(series, empty, tmp_path / "seg.dcm")

    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(_uids(series), segment_numbers=[1])

    assert int(seg.NumberOfFrames) == 4
    assert pixels.shape == (4, ROWS, COLUMNS, 1) and not pixels.any()


def test_integer_masks_of_zeros_and_ones_are_accepted(series, tmp_path):
    masks = [m.astype(np.uint8) for m in _masks()]
    path = _write(series, masks, tmp_path / "seg.dcm")
    pixels = hd.seg.segread(path).get_pixels_by_source_instance(_uids(series), segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0], np.stack(masks))


def test_absent_type2_attributes_of_an_anonymised_export_do_not_stop_it(series, tmp_path):
    for file in series:
        dataset = pydicom.dcmread(file)
        for keyword in (
            "AccessionNumber",
            "PatientBirthDate",
            "PatientSex",
            "StudyID",
            "SliceThickness",
        ):
            delattr(dataset, keyword)
        dataset.save_as(file)

    seg = pydicom.dcmread(_write(series, _masks(), tmp_path / "seg.dcm"))

    assert int(seg.NumberOfFrames) == 4 and seg.AccessionNumber == ""


# --- multi-frame sources ---------------------------------------------------------------------


def _write_enhanced_mr(path: Path, frames: int = 4) -> pydicom.Dataset:
    """A minimal Enhanced MR image (one file, ``frames`` axial frames 5 mm apart) with the shared
    and per-frame functional groups that carry its geometry; pydicom only."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "MR", "anon", "Test^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "O"
    ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "test", 7, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = frames
    orientation, measures = pydicom.Dataset(), pydicom.Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 5.0
    shared = pydicom.Dataset()
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in range(frames):
        position, group = pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        group.PlanePositionSequence = DicomSequence([position])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.stack(_images(frames)).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return ds


def test_a_multi_frame_source_gives_one_seg_frame_per_source_frame(tmp_path):
    source = _write_enhanced_mr(tmp_path / "enhanced.dcm")
    masks = _masks()
    order = [3, 1, 0, 2]  # the caller's order need not be the frames'
    path = _write(
        [tmp_path / "enhanced.dcm"] * 4,
        [masks[k] for k in order],
        tmp_path / "seg.dcm",
        frames=order,
    )

    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_frame(
        str(source.SOPInstanceUID), source_frame_numbers=[1, 2, 3, 4], segment_numbers=[1]
    )

    np.testing.assert_array_equal(pixels[..., 0].astype(bool), np.stack(masks))
    raw = pydicom.dcmread(path)
    assert sorted(_frame_references(raw)) == [(str(source.SOPInstanceUID), n) for n in (1, 2, 3, 4)]
    assert raw.FrameOfReferenceUID == source.FrameOfReferenceUID


def test_some_frames_of_a_multi_frame_source_are_found_by_position(tmp_path):
    source = _write_enhanced_mr(tmp_path / "enhanced.dcm")
    masks = _masks()
    used = [0, 2, 3]
    path = _write(
        [tmp_path / "enhanced.dcm"] * 3, [masks[k] for k in used], tmp_path / "seg.dcm", frames=used
    )

    raw = pydicom.dcmread(path)
    pixels = hd.seg.segread(path).get_pixels_by_source_frame(
        str(source.SOPInstanceUID), source_frame_numbers=[1, 3, 4], segment_numbers=[1]
    )

    assert sorted(_frame_references(raw)) == [(str(source.SOPInstanceUID), n) for n in (1, 3, 4)]
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), np.stack([masks[k] for k in used]))


def test_a_one_frame_enhanced_image_without_frame_index_is_its_frame_1(tmp_path):
    source = _write_enhanced_mr(tmp_path / "enhanced.dcm", frames=1)
    path = _write([tmp_path / "enhanced.dcm"], _masks(1), tmp_path / "seg.dcm", frames=[-1])

    raw = pydicom.dcmread(path)

    assert _frame_references(raw) == [(str(source.SOPInstanceUID), 1)]
    np.testing.assert_array_equal(raw.pixel_array.astype(bool), _masks(1)[0])


def test_a_multi_frame_file_without_per_frame_geometry_is_refused(tmp_path):
    """An MR Image Storage file with NumberOfFrames > 1 (no functional groups): no frame has a
    position of its own."""
    path = tmp_path / "legacy.dcm"
    dataset = _write_enhanced_mr(path, frames=3)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = MRImageStorage
    del dataset.PerFrameFunctionalGroupsSequence, dataset.SharedFunctionalGroupsSequence
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)

    with pytest.raises(SegmentationSourceError, match="no plane position per frame"):
        _write([path] * 3, _masks(3), tmp_path / "seg.dcm", frames=[0, 1, 2])
    assert not (tmp_path / "seg.dcm").exists()


def test_a_frame_outside_the_multi_frame_image_is_a_value_error(tmp_path):
    _write_enhanced_mr(tmp_path / "enhanced.dcm")
    with pytest.raises(ValueError, match="frame 4 does not exist"):
        _write([tmp_path / "enhanced.dcm"], _masks(1), tmp_path / "seg.dcm", frames=[4])


# --- sources that cannot carry a SEG, and caller mistakes --------------------------------------


def test_missing_frame_of_reference_is_a_segmentation_source_error(series, tmp_path):
    for file in series:
        dataset = pydicom.dcmread(file)
        del dataset.FrameOfReferenceUID
        dataset.save_as(file)

    with pytest.raises(SegmentationSourceError, match="FrameOfReferenceUID"):
        _write(series, _masks(), tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_missing_pixel_spacing_is_a_segmentation_source_error(tmp_path):
    files = write_series(
        tmp_path, _images(2), study_uid=generate_uid(), series_number=5, description="SC",
        pixel_spacing=None,
    )  # fmt: skip
    with pytest.raises(SegmentationSourceError, match="PixelSpacing"):
        _write(files, _masks(2), tmp_path / "seg.dcm")


def test_highdicom_refusals_become_segmentation_source_errors(tmp_path):
    """Every slice at the same position (a series that is really several acquisitions)."""
    files = write_series(
        tmp_path,
        _images(2),
        study_uid=generate_uid(),
        series_number=5,
        description="x",
        spacing=0.0,
    )
    with pytest.raises(SegmentationSourceError, match="highdicom cannot derive"):
        _write(files, _masks(2), tmp_path / "seg.dcm")


def test_sources_of_two_series_are_a_value_error(tmp_path):
    study = write_study(tmp_path, _images(2))
    with pytest.raises(ValueError, match="2 series"):
        _write([study["t1c"][0], study["flair"][1]], _masks(2), tmp_path / "seg.dcm")


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ([m.T for m in _masks()], r"shape \(24, 32\); the image is \(32, 24\)"),  # transposed
        (_masks(3), "4 source frames but 3 masks"),
        ([m.astype(np.uint8) * 255 for m in _masks()], "not binary"),
        ([m[None] for m in _masks()], "2-D expected"),
    ],
)
def test_masks_that_do_not_fit_the_sources_are_value_errors(series, tmp_path, masks, message):
    with pytest.raises(ValueError, match=message):
        _write(series, masks, tmp_path / "seg.dcm")


def test_a_source_frame_given_twice_is_a_value_error(series, tmp_path):
    with pytest.raises(ValueError, match="given twice"):
        _write([series[0], series[0]], _masks(2), tmp_path / "seg.dcm")


def test_an_unreadable_source_is_a_segmentation_source_error(tmp_path):
    bad = tmp_path / "not_dicom.dcm"
    bad.write_bytes(b"not a DICOM file")
    with pytest.raises(SegmentationSourceError, match="cannot read"):
        _write([bad], _masks(1), tmp_path / "seg.dcm")


# --- atomic writing ----------------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(series, tmp_path, monkeypatch):
    path = tmp_path / "out" / "seg.dcm"
    path.parent.mkdir()
    path.write_bytes(b"previous")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pydicom, "dcmwrite", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _write(series, _masks(), path)

    assert path.read_bytes() == b"previous"
    assert [p.name for p in path.parent.iterdir()] == ["seg.dcm"]


def test_a_rewrite_replaces_the_file_and_leaves_no_temporary(series, tmp_path):
    path = tmp_path / "out" / "seg.dcm"
    first = pydicom.dcmread(_write(series, _masks(), path), stop_before_pixels=True)
    second = pydicom.dcmread(_write(series, _masks(), path), stop_before_pixels=True)

    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert [p.name for p in path.parent.iterdir()] == ["seg.dcm"]


# --- sidecar -----------------------------------------------------------------------------------


RECORD = {
    "patient_id": "anon",
    "predicted_type": "glioma",
    "type_probabilities": {"glioma": 0.8, "meningioma": 0.15, "pituitary": 0.05},
    "type_prediction_set": ["glioma", "meningioma"],
    "in_distribution": True,
    "tumour_area_px": 201,
}


def test_the_sidecar_is_the_record_plus_the_links_to_the_seg(series, tmp_path):
    seg_path = _write(series, _masks(), tmp_path / "seg.dcm")
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    source = pydicom.dcmread(series[0], stop_before_pixels=True)

    sidecar = write_sidecar(RECORD, seg_path)

    assert sidecar == tmp_path / "seg.json"
    assert json.loads(sidecar.read_text()) == {
        **RECORD,
        SIDECAR_KEY: {
            "file": "seg.dcm",
            "sop_instance_uid": seg.SOPInstanceUID,
            "series_instance_uid": seg.SeriesInstanceUID,
            "source_series_instance_uid": source.SeriesInstanceUID,
            "study_instance_uid": source.StudyInstanceUID,
        },
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_sidecar_goes_where_it_is_asked_and_keeps_the_record_unchanged(series, tmp_path):
    seg_path = _write(series, _masks(), tmp_path / "seg.dcm")
    record = json.loads(json.dumps(RECORD))

    sidecar = write_sidecar(record, seg_path, tmp_path / "other" / "classification.json")

    assert sidecar.is_file() and sidecar.parent.name == "other"
    assert record == RECORD


def test_a_record_with_the_sidecars_key_is_refused(series, tmp_path):
    seg_path = _write(series, _masks(), tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match=SIDECAR_KEY):
        write_sidecar({**RECORD, SIDECAR_KEY: {}}, seg_path)

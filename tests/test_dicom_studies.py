"""DICOM studies as hospitals export them: series grouped by UID, one result per image series,
localizers / non-MR / pixel-less objects skipped with their reasons, ``--series``, the
sequence check, a DICOMDIR, physical sizes — in predict, the data layer's readers (what
evaluate and training read) and serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_factory import write_mr_slice, write_series, write_study
from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.data.loading.splits import make_split
from mritumor.data.reading.readers import read_catalog, read_series
from mritumor.inference.inputs import InputChoice, PatientInput, discover
from mritumor.inference.predictor import Predictor
from mritumor.inference.sequences import sequence_warning, series_sequence
from mritumor.models.loading import load_model

SIZE = 32


def images(seed: int, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((SIZE, SIZE)) * 800 + 100).astype(np.uint16) for _ in range(n)]


@pytest.fixture()
def study(tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "P1"
    return folder, write_study(folder, images(1))


def run_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["-q", "predict", "--engine", "torch", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_study_folder_gives_one_result_per_series_and_skips_the_localizer(
    multitask_checkpoint, study, tmp_path, capsys
):
    folder, files = study
    document = run_json(capsys, "--checkpoint", str(multitask_checkpoint), "--input", str(folder))
    names = [p["patient_id"] for p in document["patients"]]
    assert names == ["P1/3_T1_AX_POST_GAD", "P1/4_AX_FLAIR"]
    (skip,) = document["skipped"]
    assert "1_3-PLANE_LOC" in skip["reason"] and "localizer" in skip["reason"]
    # each series alone, in a folder of its own, gives exactly the same answer: nothing of
    # the other series was mixed in (3 slices each, not 6 or 9 interleaved)
    for record, key in zip(document["patients"], ("t1c", "flair"), strict=True):
        alone = tmp_path / f"alone_{key}"
        alone.mkdir()
        for path in files[key]:
            shutil.copy(path, alone / path.name)
        (single,) = run_json(
            capsys, "--checkpoint", str(multitask_checkpoint), "--input", str(alone)
        )["patients"]
        assert record["n_slices"] == 3 == single["n_slices"]
        assert record["type_probabilities"] == pytest.approx(single["type_probabilities"])
        assert [s["name"] for s in record["slices"]] == [p.name for p in files[key]]
        assert record["series"]["series_instance_uid"] == pydicom.dcmread(files[key][0]).SeriesInstanceUID  # fmt: skip


def test_series_flag_picks_by_number_or_description(multitask_checkpoint, study, capsys):
    folder, _ = study
    base = ("--checkpoint", str(multitask_checkpoint), "--input", str(folder))
    by_number = run_json(capsys, *base, "--series", "4")
    assert [p["patient_id"] for p in by_number["patients"]] == ["P1/4_AX_FLAIR"]
    assert any("not picked by --series 4" in s["reason"] for s in by_number["skipped"])
    for pattern in ("*post*", "gad", "T1 AX"):
        picked = run_json(capsys, *base, "--series", pattern)
        assert [p["patient_id"] for p in picked["patients"]] == ["P1/3_T1_AX_POST_GAD"], pattern
    capsys.readouterr()
    assert main(["-q", "predict", "--engine", "torch", *base, "--series", "99"]) == 2
    assert "not picked by --series 99" in capsys.readouterr().err


def test_other_modality_refused_with_its_reason_unless_asked(multitask_checkpoint, tmp_path, capsys):  # fmt: skip
    ct = tmp_path / "ct.dcm"
    write_mr_slice(
        ct, images(2, 1)[0], study_uid=generate_uid(), series_uid=generate_uid(),
        frame_of_reference=generate_uid(), series_number=2, description="HEAD CT",
        instance=1, position=[0, 0, 0], modality="CT",
    )  # fmt: skip
    capsys.readouterr()
    base = ["-q", "predict", "--engine", "torch", "--checkpoint", str(multitask_checkpoint)]
    assert main([*base, "--input", str(ct)]) == 2
    assert "Modality CT, not MR" in capsys.readouterr().err
    (record,) = run_json(
        capsys, "--checkpoint", str(multitask_checkpoint), "--input", str(ct), "--any_modality"
    )["patients"]
    assert record["series"]["modality"] == "CT" and record["n_slices"] == 1


def test_objects_without_pixels_and_segmentations_are_skipped(tmp_path):
    folder = tmp_path / "P2"
    series = write_series(folder, images(3, 2), study_uid=generate_uid(), series_number=5, description="T2 AX")  # fmt: skip
    report = pydicom.dcmread(series[0])
    del report.PixelData
    report.Modality, report.SOPInstanceUID = "SR", generate_uid()
    report.SeriesInstanceUID = generate_uid()
    report.save_as(folder / "report.dcm")
    segmentation = pydicom.dcmread(series[1])
    segmentation.Modality, segmentation.SeriesInstanceUID = "SEG", generate_uid()
    segmentation.save_as(folder / "seg.dcm")
    found, problems = read_series(sorted(folder.iterdir()))
    assert [s.name for s in found] == ["5_T2_AX"] and len(found[0].rows) == 2
    reasons = {Path(p.path).name: p.reason for p in problems}
    assert "no pixel data (a structured report" in reasons["report.dcm"]
    assert "Segmentation" in reasons["seg.dcm"]


def test_series_whose_slices_change_orientation_is_skipped(tmp_path):
    """A 3-plane scout without the LOCALIZER image type: caught by its orientations."""
    files = write_study(tmp_path / "P3", images(4))
    for path in files["localizer"]:
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        ds.save_as(path)
    found, problems = read_series(sorted((tmp_path / "P3").iterdir()))
    assert [s.name for s in found] == ["3_T1_AX_POST_GAD", "4_AX_FLAIR"]
    assert any("change orientation" in p.reason for p in problems)


def test_data_layer_reads_a_study_as_one_unit_per_series_kept_together_in_splits(tmp_path):
    """What evaluate and training read: a labelled tree whose patient folders are studies."""
    root = tmp_path / "data"
    for k in range(6):
        write_study(root / ("glioma" if k % 2 else "meningioma") / f"P{k}", images(10 + k))
    catalog = read_catalog(root)
    units = sorted(catalog.table["patient_id"].unique())
    assert len(units) == 12 and "P0/3_T1_AX_POST_GAD" in units and "P0/4_AX_FLAIR" in units
    assert catalog.table.groupby("patient_id").size().eq(3).all()  # no localizer slice
    assert sum("localizer" in p.reason for p in catalog.problems) == 6
    families = catalog.table.groupby("patient_family")["patient_id"].nunique()
    assert families.eq(2).all()
    split = make_split(catalog.table, val_frac=0.34, test_frac=0.34, seed=0)
    parts = {
        pid.split("/")[0]: name for name in ("train", "val", "test") for pid in getattr(split, name)
    }
    for name in ("train", "val", "test"):  # both series of a patient in the same part
        for pid in getattr(split, name):
            assert parts[pid.split("/")[0]] == name


def test_dicomdir_lists_the_study(multitask_checkpoint, tmp_path, capsys):
    from pydicom.fileset import FileSet

    loose = tmp_path / "loose"
    files = write_study(loose, images(5))
    file_set = FileSet()
    for path in files["t1c"] + files["flair"]:
        file_set.add(pydicom.dcmread(path))
    media = tmp_path / "media"
    file_set.write(media)  # DICOMDIR + files under nested folders without extensions
    assert (media / "DICOMDIR").is_file()
    patients = discover(media)
    assert [p.patient_id for p in patients] == ["media/3_T1_AX_POST_GAD", "media/4_AX_FLAIR"]
    assert [len(p.slices) for p in patients] == [3, 3]


def test_sequence_warning_from_the_series_tags(multitask_checkpoint, study, tmp_path, capsys):
    payload = load_checkpoint(multitask_checkpoint)
    payload["training_data"] = {"sequences": ["T1C+"]}  # as a manifest names it
    checkpoint = tmp_path / "t1c.pt"
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, checkpoint)
    folder, _ = study
    t1c, flair = run_json(capsys, "--checkpoint", str(checkpoint), "--input", str(folder))["patients"]  # fmt: skip
    assert "sequence_warning" not in t1c
    assert "looks like FLAIR" in flair["sequence_warning"]
    assert "T1 post-contrast" in flair["sequence_warning"]
    # a checkpoint that recorded no sequence warns about nothing
    plain = run_json(capsys, "--checkpoint", str(multitask_checkpoint), "--input", str(folder))
    assert not any("sequence_warning" in p for p in plain["patients"])


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"SeriesDescription": "T1 AX POST GAD"}, "T1 post-contrast"),
        (
            {"SeriesDescription": "Ax T1 MPRAGE", "ContrastBolusAgent": "Dotarem"},
            "T1 post-contrast",
        ),  # fmt: skip
        ({"SeriesDescription": "T1 SE AX"}, "T1"),
        ({"SeriesDescription": "AX T2 FLAIR"}, "FLAIR"),
        ({"SeriesDescription": "T2 AX", "ScanningSequence": "IR"}, "FLAIR"),
        ({"SeriesDescription": "T2 TSE AX"}, "T2"),
        ({"SeriesDescription": "AX DWI b1000"}, "DWI"),
        ({"SeriesDescription": "T2* GRE"}, "SWI"),
        ({"SeriesDescription": "T1 AX PRE GAD"}, "T1"),
        ({"SeriesDescription": "AX T1 NON CONTRAST"}, "T1"),
        ({"SeriesDescription": "T1 pre-contrast"}, "T1"),
        ({"SeriesDescription": "T1 POSTERIOR FOSSA"}, "T1"),
        ({"SeriesDescription": "T1 FLAIR +C"}, "T1 post-contrast"),
        ({"SeriesDescription": "AX 5mm"}, None),
        ({}, None),
    ],
)
def test_series_sequence_from_tags(tags, expected):
    assert series_sequence(tags) == expected
    if expected not in (None, "T1 post-contrast"):
        assert sequence_warning(["T1 post-contrast"], tags) is not None
    else:
        assert sequence_warning(["T1 post-contrast"], tags) is None


class PhantomEngine:
    """Outputs a mask that is exactly the phantom's bright rectangle (the upper half of each
    preprocessed image's range) and flat class logits: sizes then have a known answer."""

    name = "phantom"

    def __init__(self, n_types: int):
        self.n_types = n_types

    def run(self, images: np.ndarray, mask=None) -> dict:
        low = images.min(axis=(1, 2, 3), keepdims=True)
        high = images.max(axis=(1, 2, 3), keepdims=True)
        bright = images[:, :1] > (low + high) / 2
        return {
            "class_logits": np.zeros((len(images), self.n_types), np.float32),
            "mask_logits": np.where(bright, 10.0, -10.0).astype(np.float32),
        }


def test_area_and_volume_on_a_phantom_of_known_spacing(multitask_checkpoint, tmp_path):
    loaded = load_model(multitask_checkpoint)
    size = loaded.preprocessing.image_size  # no resizing: the mask is the rectangle exactly
    pixels = []
    for height in (4, 6, 0):  # rectangles of 4×5, 6×5 and no tumour
        image = np.full((size, size), 100, np.uint16)
        image[10 : 10 + height, 8:13] = 900
        pixels.append(image)
    write_series(
        tmp_path / "P", pixels, study_uid=generate_uid(), series_number=7,
        description="T1 POST", spacing=3.0, pixel_spacing=(0.5, 0.8),
    )  # fmt: skip
    (patient,) = discover(tmp_path / "P")
    assert isinstance(patient, PatientInput) and patient.pixel_spacing == (0.5, 0.8)
    predictor = Predictor(loaded, engine=PhantomEngine(len(loaded.labels.types)))
    record = predictor(patient).record
    assert [s["tumour_area_px"] for s in record["slices"]] == [20, 30, 0]
    # by hand: 20 px × 0.4 mm² = 8 mm², 30 px → 12 mm²; volume (8 + 12 + 0) mm² × 3 mm = 60 mm³
    assert [s["tumour_area_mm2"] for s in record["slices"]] == pytest.approx([8.0, 12.0, 0.0])
    assert record["tumour_area_mm2"] == pytest.approx(20.0)
    assert record["tumour_volume_ml"] == pytest.approx(0.060)
    assert record["slice_spacing_mm"] == pytest.approx(3.0)
    # without PixelSpacing: pixels only, with the note saying why
    for path in (tmp_path / "P").iterdir():
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.save_as(path)
    (patient,) = discover(tmp_path / "P")
    record = predictor(patient).record
    assert record["tumour_area_mm2"] is None and "pixel spacing unknown" in record["size_note"]
    assert "tumour_volume_ml" not in record


def test_series_choice_patterns():
    from mritumor.data.reading.readers import DicomSeries

    series = DicomSeries("12_T1_AX_POST", "1", "2", "MR", [], {"SeriesDescription": "T1 AX POST"})
    assert InputChoice("12").picks(series) and not InputChoice("1").picks(series)
    assert InputChoice("t1 ax").picks(series) and InputChoice("*POST").picks(series)
    assert not InputChoice("*FLAIR*").picks(series) and not InputChoice("T1").picks(
        DicomSeries("3_AX_FLAIR", "1", "2", "MR", [], {"SeriesDescription": "AX FLAIR"})
    )


@pytest.mark.parametrize("mask_bias", [None, 50.0])
def test_save_masks_writes_a_seg_per_series_that_equals_the_png_masks(
    multitask_checkpoint, study, tmp_path, capsys, mask_bias
):
    """Round trip: series → predict --save_masks → the SEG read back with highdicom and with
    pydicom: its frames equal the PNG masks, its references the source SOP Instance UIDs. With
    the mask head's bias at +50 every pixel is tumour, so the masks cannot all be empty."""
    import highdicom as hd
    import torch
    from PIL import Image

    checkpoint = multitask_checkpoint
    if mask_bias is not None:
        payload = load_checkpoint(checkpoint)
        state = dict(payload["model_state"])
        for key in ("seg_out.bias", "skip_score.bias"):
            if key in state:
                state[key] = torch.full_like(state[key], mask_bias)
        payload["model_state"] = state
        checkpoint = tmp_path / "boosted.pt"
        save_checkpoint({k: v for k, v in payload.items() if k != "format"}, checkpoint)
    folder, files = study
    out = tmp_path / "masks"
    document = run_json(
        capsys, "--checkpoint", str(checkpoint), "--input", str(folder),
        "--save_masks", str(out),
    )  # fmt: skip
    for record, key in zip(document["patients"], ("t1c", "flair"), strict=True):
        seg_path = Path(record["segmentation_file"])
        assert seg_path.parent == out / record["patient_id"]
        pngs = [np.asarray(Image.open(f)) > 0 for f in record["mask_files"]]
        if mask_bias is not None:
            assert all(png.all() for png in pngs)
        sources = [pydicom.dcmread(f) for f in files[key]]
        uids = [ds.SOPInstanceUID for ds in sources]
        segmentation = hd.seg.segread(seg_path)
        pixels = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[1]
        )[..., 0]
        np.testing.assert_array_equal(pixels > 0, np.stack(pngs))
        raw = pydicom.dcmread(seg_path)
        assert raw.Modality == "SEG" and int(raw.NumberOfFrames) == len(uids)
        referenced = [
            frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for frame in raw.PerFrameFunctionalGroupsSequence
        ]
        assert sorted(referenced) == sorted(uids)
        assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
        assert raw.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        sidecar = json.loads(Path(record["sidecar_file"]).read_text())
        assert sidecar["type_probabilities"] == pytest.approx(record["type_probabilities"])
        assert sidecar["dicom_segmentation"]["sop_instance_uid"] == raw.SOPInstanceUID


def test_csv_rows_carry_series_sizes_and_warnings(multitask_checkpoint, study, tmp_path, capsys):
    import pandas as pd

    payload = load_checkpoint(multitask_checkpoint)
    payload["training_data"] = {"sequences": ["T1 post-contrast"]}
    checkpoint = tmp_path / "t1c.pt"
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, checkpoint)
    folder, _ = study
    out = tmp_path / "out.csv"
    capsys.readouterr()
    assert main(["-q", "predict", "--engine", "torch", "--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(out)]) == 0  # fmt: skip
    rows = pd.read_csv(out).fillna("")
    assert rows["series"].tolist() == ["3_T1_AX_POST_GAD", "4_AX_FLAIR"]
    assert rows["sequence_warning"].tolist()[0] == "" and "FLAIR" in rows["sequence_warning"].tolist()[1]  # fmt: skip
    # write_study's slices: PixelSpacing 0.5 × 0.5 mm, 5 mm apart
    np.testing.assert_allclose(rows["tumour_area_mm2"], rows["tumour_area_px"] * 0.25)
    np.testing.assert_allclose(rows["tumour_volume_ml"], rows["tumour_area_px"] * 0.25 * 5 / 1000)
    slices = pd.read_csv(tmp_path / "out_slices.csv")
    np.testing.assert_allclose(slices["tumour_area_mm2"], slices["tumour_area_px"] * 0.25)


def test_a_file_without_preamble_is_predicted_and_ct_refused(multitask_checkpoint, capsys):
    """pydicom's no_meta.dcm (CT_small's data set, no preamble, no file meta): read — and then
    refused for its modality, as CT_small itself is; with --any_modality both give one answer."""
    from pydicom.data import get_testdata_file

    no_meta, ct_small = get_testdata_file("no_meta.dcm"), get_testdata_file("CT_small.dcm")
    base = ["-q", "predict", "--engine", "torch", "--checkpoint", str(multitask_checkpoint)]
    for path in (no_meta, ct_small):
        capsys.readouterr()
        assert main([*base, "--input", path]) == 2
        assert "Modality CT, not MR" in capsys.readouterr().err
    answers = [
        run_json(
            capsys, "--checkpoint", str(multitask_checkpoint), "--input", path, "--any_modality"
        )["patients"][0]  # fmt: skip
        for path in (no_meta, ct_small)
    ]
    assert answers[0]["type_probabilities"] == pytest.approx(answers[1]["type_probabilities"])


def test_a_damaged_dicomdir_falls_back_to_the_files(tmp_path):
    folder = tmp_path / "P5"
    write_study(folder, images(6))
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    patients = discover(folder)
    assert [p.patient_id for p in patients] == ["P5/3_T1_AX_POST_GAD", "P5/4_AX_FLAIR"]


def test_repeated_positions_give_no_slice_spacing(tmp_path):
    """Two echoes at each position: the slices are not one stack, so no volume is computed."""
    study = generate_uid()
    write_series(tmp_path / "E", images(7, 4), study_uid=study, series_number=9, description="T1 ME", spacing=5.0)  # fmt: skip
    for k, path in enumerate(sorted((tmp_path / "E").iterdir())):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * (k // 2)]
        ds.save_as(path)
    (series,), _ = read_series(sorted((tmp_path / "E").iterdir()))
    assert series.slice_spacing is None and len(series.rows) == 4

"""Readers: every source gives the same Catalog, with labels, masks and order right."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from conftest import blob_slice, shared_data, write_png
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.reading import io
from mritumor.data.reading.catalog import REQUIRED_COLUMNS, natural_key, normalise_grade
from mritumor.data.reading.readers import (
    detect_format,
    dicom_rows,
    patient_rows,
    read_catalog,
    slice_position,
)
from mritumor.errors import DataError


def test_folder_tree_labels_masks_and_order(folder_tree: Path):
    catalog = read_catalog(folder_tree)
    table = catalog.table
    assert catalog.source == "folder" and detect_format(folder_tree) == "folder"
    assert list(table.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert len(table) == 36 and table["patient_id"].nunique() == 9
    grades = table.groupby("tumor_type")["grade"].agg(lambda s: sorted(set(s.dropna())))
    assert grades["astrocytoma"] == ["2", "3"] and grades["meningioma"] == []
    assert table.loc[table["tumor_type"] == "meningioma", "grade"].isna().all()
    assert table["mask"].notna().all()
    for image, mask in table[["image", "mask"]].itertuples(index=False):
        assert mask == image.replace(".png", "_mask.png")
    assert not catalog.problems


def test_folder_tree_natural_slice_order(tmp_path: Path):
    rng = np.random.default_rng(1)
    for k in (10, 2, 1):
        write_png(tmp_path / "glioma" / "P1" / f"s{k}.png", blob_slice(rng)[0])
    names = [Path(p).name for p in read_catalog(tmp_path).table["image"]]
    assert names == ["s1.png", "s2.png", "s10.png"]


def test_masks_folder_and_npy_slices(tmp_path: Path):
    rng = np.random.default_rng(2)
    patient = tmp_path / "pituitary-g1" / "P7"
    patient.mkdir(parents=True)
    image, mask = blob_slice(rng)
    np.save(patient / "a.npy", image.astype(np.float32))
    write_png(patient / "b.png", image)
    write_png(patient / "masks" / "b.png", mask)
    table = read_catalog(tmp_path).table
    assert list(map(lambda p: Path(p).name, table["image"])) == ["a.npy", "b.png"]
    assert table["mask"].iloc[0] is None and table["mask"].iloc[1].endswith("masks/b.png")
    np.testing.assert_array_equal(io.read_image(table["image"].iloc[0])[0], image)


def test_nifti_volume_sliced_axially_with_mask(tmp_path: Path):
    volume = np.random.default_rng(3).random((20, 24, 5)).astype(np.float32)
    mask = np.zeros((20, 24, 5), np.uint8)
    mask[5:9, 6:10, 1:4] = 1
    patient = tmp_path / "glioma-g4" / "NP1"
    patient.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), patient / "t1.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), patient / "t1_seg.nii.gz")
    table = read_catalog(tmp_path).table
    assert list(table["frame"]) == [0, 1, 2, 3, 4]
    assert table["grade"].unique().tolist() == ["4"]
    assert table["mask"].str.endswith("t1_seg.nii.gz").all()
    # The identity affine makes the voxel axes R, A, S: in LPS order x and y run backwards.
    np.testing.assert_allclose(io.read_image(table["image"][2], 2)[0], volume[::-1, ::-1, 2].T)
    assert (
        io.read_mask(table["mask"][2], 2).sum() == 16
        and io.read_mask(table["mask"][0], 0).sum() == 0
    )


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    instance: int | None,
    z: float | None,
    with_pixels: bool = True,
    position: list[float] | None = None,
    orientation: list[float] | None = None,
):
    """A one-slice MR file; ``position`` replaces ``[0, 0, z]``; None leaves a tag out."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MR", "anon"
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None or z is not None:
        ds.ImagePositionPatient = position if position is not None else [0.0, 0.0, z]
    if orientation is not None:
        ds.ImageOrientationPatient = orientation
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_dicom_series_ordered_by_position_and_rescaled(tmp_path: Path):
    rng = np.random.default_rng(4)
    slices = [rng.integers(0, 1000, (16, 16)).astype(np.uint16) for _ in range(3)]
    patient = tmp_path / "meningioma-g1" / "D1"
    # file names deliberately out of anatomical order; position z decides
    for name, index, z in (("b.dcm", 0, -5.0), ("a.dcm", 2, 5.0), ("c", 1, 0.0)):
        write_dicom(patient / name, slices[index], instance=index + 1, z=z)
    write_dicom(patient / "empty.dcm", slices[0], instance=9, z=9.0, with_pixels=False)
    catalog = read_catalog(tmp_path)
    names = [Path(p).name for p in catalog.table["image"]]
    assert names == ["b.dcm", "c", "a.dcm"]  # extension-less file found by its DICM magic
    np.testing.assert_allclose(io.read_image(patient / "c")[0], slices[1] * 2.0 - 10)
    assert [Path(p.path).name for p in catalog.problems] == ["empty.dcm"]
    assert "no pixel data" in catalog.problems[0].reason


def write_series(
    patient: Path, origin, row, column, spacing: float, count: int, seed: int
) -> list[Path]:
    """``count`` slices stacked along normal = row × column, slice k at origin + k·spacing·normal
    and filled with the value k + 1, so any reader can tell which slice it was handed. File
    names and instance numbers are shuffled (independently), so neither gives the true order."""
    normal = np.cross(row, column)
    rng = np.random.default_rng(seed)
    names, instances = rng.permutation(count), rng.permutation(count)
    assert (names != np.arange(count)).any() and (instances != np.arange(count)).any()
    paths = []
    for k in rng.permutation(count):  # files written in a shuffled order too
        position = np.asarray(origin, float) + k * spacing * normal
        path = patient / f"im{names[k]:02d}.dcm"
        write_dicom(
            path,
            np.full((8, 8), k + 1, np.uint16),
            instance=int(instances[k]) + 1,
            z=None,
            position=[float(v) for v in position],
            orientation=[float(v) for v in (*row, *column)],
        )
        paths.append(path)
    return paths


def true_indices(rows: list[dict]) -> list[int]:
    """Slice k stores k + 1, which the reader rescales (slope 2, intercept -10)."""
    return [
        int(round((io.read_image(r["image"], r["frame"])[0].mean() + 10) / 2)) - 1 for r in rows
    ]


def test_dicom_sagittal_series_ordered_along_the_slice_normal(tmp_path: Path):
    """Sagittal: every slice has the same z (the old z key tied and fell back to file names);
    row (0, 1, 0) × column (0, 0, -1) = normal (-1, 0, 0), so the series runs towards -x."""
    patient = tmp_path / "glioma" / "S1"
    paths = write_series(
        patient,
        origin=(40.0, -90.0, 100.0),
        row=(0, 1, 0),
        column=(0, 0, -1),
        spacing=3.5,
        count=7,
        seed=11,
    )
    catalog = read_catalog(tmp_path)
    assert not catalog.problems
    rows = catalog.table[["image", "frame"]].to_dict("records")
    assert true_indices(rows) == list(range(7))
    xs = [float(pydicom.dcmread(r["image"]).ImagePositionPatient[0]) for r in rows]
    assert xs == sorted(xs, reverse=True)  # the geometry itself, read back independently
    # the public per-folder and per-file entry points give the same order, whatever the
    # order of the files they are handed
    assert true_indices(patient_rows(patient)[0]) == list(range(7))
    assert true_indices(dicom_rows(paths)[0]) == list(range(7))


def test_dicom_oblique_series_ordered_along_the_slice_normal(tmp_path: Path):
    """Coronal tilted by -30° about x: the normal (0, cos 30°, -sin 30°) makes z fall as the
    series goes on, so ordering by z would reverse it; in-plane offsets must not matter."""
    angle = np.deg2rad(-30.0)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    row, column = rotation @ [1, 0, 0], rotation @ [0, 0, -1]
    normal = np.cross(row, column)
    np.testing.assert_allclose(normal, [0, np.cos(np.deg2rad(30)), -np.sin(np.deg2rad(30))])
    patient = tmp_path / "meningioma" / "O1"
    paths = write_series(
        patient, origin=(-100.0, 20.0, 60.0), row=row, column=column, spacing=5.0, count=6, seed=3
    )
    # shift each slice within its own plane (along the row and column directions): the
    # projection on the normal, and so the order, stays the same
    rng = np.random.default_rng(5)
    for path in paths:
        ds = pydicom.dcmread(path)
        shift = rng.uniform(-20, 20) * row + rng.uniform(-20, 20) * column
        ds.ImagePositionPatient = (np.asarray(ds.ImagePositionPatient, float) + shift).tolist()
        ds.save_as(path)
    rows = read_catalog(tmp_path).table[["image", "frame"]].to_dict("records")
    assert true_indices(rows) == list(range(6))
    assert true_indices(dicom_rows(list(reversed(paths)))[0]) == list(range(6))


def test_dicom_order_falls_back_to_instance_number_then_file_name(tmp_path: Path):
    """Without ImagePositionPatient the instance number orders the slices; without that too,
    the (natural) file-name order handed in is kept."""
    patient = tmp_path / "glioma" / "F1"
    for name, instance, k in (("a.dcm", 3, 2), ("b.dcm", 1, 0), ("c.dcm", 2, 1)):
        write_dicom(patient / name, np.full((8, 8), k + 1, np.uint16), instance=instance, z=None)
    rows = read_catalog(tmp_path).table[["image", "frame"]].to_dict("records")
    assert true_indices(rows) == [0, 1, 2]
    bare = tmp_path / "bare"
    for k, name in enumerate(("s2.dcm", "s10.dcm", "s1.dcm")):
        write_dicom(bare / name, np.full((8, 8), k + 1, np.uint16), instance=None, z=None)
    rows, problems = dicom_rows(sorted(bare.iterdir(), key=lambda p: natural_key(p.name)))
    assert not problems and [Path(r["image"]).name for r in rows] == ["s1.dcm", "s2.dcm", "s10.dcm"]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"ImagePositionPatient": [1, 2, 3]}, 3.0),  # no orientation: axial assumed, z
        ({"ImagePositionPatient": [1, 2, 3], "ImageOrientationPatient": [0] * 6}, 3.0),
        ({"ImagePositionPatient": [7, 2, 3], "ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, -7),
        ({"ImagePositionPatient": [1, 2], "InstanceNumber": 4}, 4.0),  # two values: not a point
        ({"ImagePositionPatient": b"x\\2\\3", "InstanceNumber": 5}, 5.0),  # malformed in file
        ({"ImagePositionPatient": b"1\\2\\3", "ImageOrientationPatient": b"1\\0"}, 3.0),
        ({"InstanceNumber": "6"}, 6.0),
        ({}, 0.0),
    ],
)
def test_slice_position_fallbacks(tags: dict, expected: float):
    header = pydicom.Dataset()
    for keyword, value in tags.items():
        if isinstance(value, bytes):  # as read from a file: converted (or not) on first use
            tag = pydicom.tag.Tag(keyword)
            vr = pydicom.datadict.dictionary_VR(tag)
            header[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
        else:
            setattr(header, keyword, value)
    assert slice_position(header) == pytest.approx(expected)


def write_figshare_mat(path: Path, image: np.ndarray, label: int, pid: str, mask: np.ndarray):
    """The documented v7.3 layout: MATLAB arrays are stored transposed by h5py's view."""
    with h5py.File(path, "w") as handle:
        group = handle.create_group("cjdata")
        group["image"] = image.T
        group["label"] = np.array([[float(label)]])
        group["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
        group["tumorMask"] = mask.T
        group["tumorBorder"] = np.zeros((1, 8))


@pytest.mark.parametrize("size", [512, 256])
def test_figshare_mat_transposed_pid_and_labels(tmp_path: Path, size: int):
    rng = np.random.default_rng(size)
    images, masks = {}, {}
    for number, (label, pid) in enumerate(
        [(1, "100360"), (2, "MR040237"), (3, "100360"), (2, "MR040237")], 1
    ):
        image = rng.integers(0, 3000, (size, size)).astype(np.int16)
        image[: size // 4, :] = 0  # asymmetric, so a missing transpose would show
        mask = np.zeros((size, size), np.uint8)
        mask[10:30, 40:90] = 1
        images[number], masks[number] = image, mask
        write_figshare_mat(
            tmp_path / f"{number}.mat", image, label if number != 3 else 1, pid, mask
        )
    with h5py.File(tmp_path / "cvind.mat", "w") as handle:
        handle["cvind"] = np.array([[1, 2, 1, 2]], dtype=np.float64)
    assert detect_format(tmp_path) == "figshare_mat"
    catalog = read_catalog(tmp_path)
    table = catalog.table
    assert sorted(table["patient_id"].unique()) == ["100360", "MR040237"]
    by_number = table.set_index("figshare_index")
    assert (
        by_number.loc[1, "tumor_type"] == "meningioma"
        and by_number.loc[2, "tumor_type"] == "glioma"
    )
    assert by_number.loc[3, "fold"] == 1 and by_number.loc[4, "fold"] == 2
    np.testing.assert_array_equal(io.read_image(by_number.loc[2, "image"])[0], images[2])
    np.testing.assert_array_equal(io.read_mask(by_number.loc[2, "mask"]), masks[2] > 0)
    assert table["grade"].isna().all()


def test_figshare_bad_mat_files_are_counted(tmp_path: Path):
    write_figshare_mat(
        tmp_path / "1.mat", np.ones((256, 256), np.int16), 2, "P1", np.zeros((256, 256), np.uint8)
    )
    with h5py.File(tmp_path / "2.mat", "w") as handle:
        handle.create_group("other")
    with h5py.File(tmp_path / "3.mat", "w") as handle:
        group = handle.create_group("cjdata")
        group["image"], group["PID"] = np.ones((4, 4)), np.array([[80]], np.uint16)
        group["label"] = np.array([b"glioma"])  # wrong-typed field
    (tmp_path / "4.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    catalog = read_catalog(tmp_path)
    assert len(catalog) == 1
    reasons = {Path(p.path).name: p.reason for p in catalog.problems}
    assert (
        "no 'cjdata'" in reasons["2.mat"]
        and "label" in reasons["3.mat"]
        and "HDF5" in reasons["4.mat"]
    )
    with pytest.raises(DataError, match="3 problem"):
        read_catalog(tmp_path, strict=True)


def make_kaggle_tree(tmp_path: Path, originals: Path) -> Path:
    root = tmp_path / "lgg_release"
    for image in sorted(originals.glob("*.tif")):
        if image.stem.endswith("_mask"):
            continue
        case = "_".join(image.stem.split("_")[:4])
        for source in (image, image.with_name(image.stem + "_mask.tif")):
            (root / "kaggle_3m" / case).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / "kaggle_3m" / case / source.name)
    return root


def test_lgg_kaggle_reader_on_original_tifs(tmp_path: Path):
    originals = shared_data("lgg") / "originals"
    root = make_kaggle_tree(tmp_path, originals)
    patients = sorted({"_".join(p.name.split("_")[:3]) for p in (root / "kaggle_3m").iterdir()})
    labels = pd.read_csv(shared_data("lgg") / "data.csv").set_index("Patient")
    labels.loc[patients[:-1]].reset_index().to_csv(
        root / "data.csv", index=False
    )  # last one unlabelled
    assert detect_format(root) == "lgg_kaggle"
    catalog = read_catalog(root)
    table = catalog.table
    assert sorted(table["patient_id"]) == patients[:-1]
    assert any(patients[-1] in p.reason for p in catalog.problems)
    types = {1: "astrocytoma", 2: "oligoastrocytoma", 3: "oligodendroglioma"}
    for row in table.itertuples():
        assert row.tumor_type == types[int(labels.at[row.patient_id, "histological_type"])]
        assert (
            row.grade
            == {1: "2", 2: "3"}[int(labels.at[row.patient_id, "neoplasm_histologic_grade"])]
        )
        assert row.mask.endswith("_mask.tif")
        pixels = io.read_image(row.image)
        assert pixels.shape == (3, 256, 256)
        assert io.read_mask(row.mask).shape == (256, 256)


def test_manifest_resolves_paths_keeps_extra_columns_and_reports_missing(tmp_path: Path):
    rng = np.random.default_rng(5)
    rows = []
    for p in range(3):
        for k in range(2):
            image, mask = blob_slice(rng)
            write_png(tmp_path / "img" / f"{p}_{k}.png", image)
            write_png(tmp_path / "msk" / f"{p}_{k}.png", mask)
            rows.append(
                {
                    "image": f"img/{p}_{k}.png",
                    "mask": f"msk/{p}_{k}.png",
                    "patient_id": f"00{p}",
                    "tumor_type": "glioma" if p else "meningioma",
                    "grade": "" if p else 1.0,
                    "site": f"S{p}",
                    "slice_index": 1 - k,
                }
            )
    rows.append(
        {"image": "img/missing.png", "mask": "", "patient_id": "009", "tumor_type": "glioma"}
    )
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    catalog = read_catalog(tmp_path)
    table = catalog.table
    assert len(table) == 6 and "site" in table.columns
    assert table["patient_id"].tolist()[:2] == ["000", "000"]  # leading zeros kept as text
    assert [Path(p).name for p in table["image"][:2]] == ["0_1.png", "0_0.png"]  # slice_index order
    assert table["grade"].tolist()[:2] == ["1", "1"] and table["grade"][2] is None
    assert [Path(p.path).name for p in catalog.problems] == ["missing.png"]


def test_manifest_without_required_columns_is_a_clear_error(tmp_path: Path):
    pd.DataFrame({"image": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"lacks required column.*patient_id"):
        read_catalog(tmp_path / "m.csv")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", "2"),
        (2, "2"),
        (3.0, "3"),
        ("g4", "4"),
        ("G1", "1"),
        ("", None),
        (float("nan"), None),
        (None, None),
        ("II", "II"),
    ],
)
def test_grade_normalisation(value, expected):
    assert normalise_grade(value) == expected


def test_bad_inputs_are_named_counted_and_skipped(tmp_path: Path, folder_tree: Path):
    rng = np.random.default_rng(6)
    bad = folder_tree / "astrocytoma-g2" / "astrocytoma-g2-P0"
    good_png = (bad / "slice_0.png").read_bytes()
    (bad / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (bad / "zero.png").write_bytes(b"")
    (bad / "notes.txt").write_text("not an image")
    write_png(bad / "small.png", blob_slice(rng)[0])
    write_png(bad / "small_mask.png", np.zeros((10, 10), np.uint8))  # wrong size
    (folder_tree / "meningioma" / "empty-patient").mkdir()
    (folder_tree / "no-such-grade-format!").mkdir()
    write_png(
        folder_tree / "glioma" / "astrocytoma-g3-P1" / "x.png", blob_slice(rng)[0]
    )  # two types
    catalog = read_catalog(folder_tree)
    reasons = {Path(p.path).name: p.reason for p in catalog.problems}
    assert "not an image" in reasons["notes.txt"]
    assert "empty patient folder" in reasons["empty-patient"]
    assert "does not parse" in reasons["no-such-grade-format!"]
    assert "several tumor_type" in next(r for n, r in reasons.items() if "astrocytoma-g3-P1" in r)
    assert "astrocytoma-g3-P1" not in set(catalog.table["patient_id"])  # dropped, never relabelled
    cache = SliceCache.build(catalog, Preprocessing(image_size=32, channels=1), progress=False)
    decode_reasons = {
        Path(p.path).name: p.reason for p in cache.catalog.problems[len(catalog.problems) :]
    }
    assert set(decode_reasons) == {"truncated.png", "zero.png", "small.png"}
    assert (
        "0 bytes" in decode_reasons["zero.png"] and "differ in size" in decode_reasons["small.png"]
    )
    assert len(cache) == len(catalog) - 3
    with pytest.raises(DataError, match="--strict"):
        read_catalog(folder_tree, strict=True)


def test_missing_root_and_unknown_format_are_clear_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        read_catalog(tmp_path / "nope")
    with pytest.raises(DataError, match="unknown --format"):
        read_catalog(tmp_path, format="xyz")
    with pytest.raises(DataError, match="no class folders"):
        read_catalog(tmp_path)

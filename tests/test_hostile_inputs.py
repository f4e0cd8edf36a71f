"""Hostile-input corpus: malformed and adversarial inputs for every reader.

Each case builds a small dataset holding one hostile item (usually beside good data) and states
the documented outcome:

* ``skip``: the item is named (its path) in the catalog's problems with the reason, and
  skipped; everything else still loads;
* ``error``: reading stops with a :class:`~mritumor.errors.MritumorError` whose message names
  the file or folder and the problem;
* ``flagged``: valid but suspicious data that is kept and reported (constant images);
* ``ok``: valid but unusual data that must simply load (odd file names, links that must not
  be followed).

Whatever the outcome, no label may change silently: every row left in the catalog carries the
label its source gives it (checked against the source independently of the readers). Every case
also goes through the command line (``mritumor data inspect``), which must exit 0 naming the item
among its problems, or 2 with ``mritumor: error:`` — never with an uncaught exception.
"""

from __future__ import annotations

import json
import os
import struct
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from conftest import blob_slice, write_png
from mritumor.cli import main
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.reading import io
from mritumor.data.reading.readers import CLASS_FOLDER, FIGSHARE_LABELS, read_catalog
from mritumor.errors import MritumorError

SIZE = 16
CLASSES = ("astrocytoma-g2", "meningioma-g1")


# ----------------------------------------------------------------------------- good data


def good_tree(root: Path, classes=CLASSES, patients: int = 2, slices: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for class_name in classes:
        for p in range(patients):
            for k in range(slices):
                image, mask = blob_slice(rng, size=SIZE + 16)
                folder = root / class_name / f"{class_name}-P{p}"
                write_png(folder / f"s{k}.png", image)
                write_png(folder / f"s{k}_mask.png", mask)
    return root


def patient(root: Path, name: str = "hostile", class_name: str = CLASSES[0]) -> Path:
    folder = root / class_name / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def png_bytes(size: int = 32, seed: int = 1) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR promising width × height pixels, with almost no data:
    the shape of a decompression bomb, without the memory a real one would take to write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def npy_header_only(path: Path, shape: tuple, descr: str = "<f4", data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": descr, "fortran_order": False, "shape": shape}
        )
        handle.write(data)
    return path


def write_dicom(path: Path, pixels: np.ndarray | None, rows=None, columns=None) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.InstanceNumber = "MR", 1
    shape = pixels.shape if pixels is not None else (SIZE, SIZE)
    ds.Rows, ds.Columns = rows or shape[0], columns or shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if pixels is not None:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_mat(
    path: Path, label=2.0, pid: str | None = "P3", image=None, mask=None, extra=None
) -> Path:
    """Figshare's v7.3 layout (h5py sees MATLAB's arrays transposed)."""
    if image is None:
        image = np.random.default_rng(len(str(path))).integers(0, 3000, (SIZE, SIZE), np.int16)
    mask = np.zeros(image.shape, np.uint8) if mask is None else mask
    with h5py.File(path, "w") as handle:
        group = handle.create_group("cjdata")
        group["image"] = image.T
        if label is not None:
            group["label"] = label if isinstance(label, np.ndarray) else np.array([[label]])
        if pid is not None:
            group["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
        group["tumorMask"] = mask.T
        for key, value in (extra or {}).items():
            if value is None:
                del group[key]
            else:
                group[key] = value
    return path


def figshare_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_mat(root / "1.mat", label=1.0, pid="P1")
    write_mat(root / "2.mat", label=2.0, pid="P2")
    return root


def lgg_root(root: Path, csv_rows: list[dict] | None = None, csv_text: str | None = None) -> Path:
    rng = np.random.default_rng(3)
    cases = ("TCGA_AA_0001_19990101", "TCGA_AA_0002_19990101")
    for case in cases:
        for k in (1, 2):
            image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[2:6, 2:6] = 255
            Image.fromarray(image).save(root / "kaggle_3m" / case / f"{case}_{k}.tif")
            Image.fromarray(mask).save(root / "kaggle_3m" / case / f"{case}_{k}_mask.tif")
    default = [
        {"Patient": "TCGA_AA_0001", "histological_type": 1, "neoplasm_histologic_grade": 1},
        {"Patient": "TCGA_AA_0002", "histological_type": 3, "neoplasm_histologic_grade": 2},
    ]
    if csv_text is not None:
        (root / "data.csv").write_text(csv_text)
    else:
        pd.DataFrame(csv_rows or default).to_csv(root / "data.csv", index=False)
    return root


def _lgg_dirs(root: Path) -> Path:
    for case in ("TCGA_AA_0001_19990101", "TCGA_AA_0002_19990101"):
        (root / "kaggle_3m" / case).mkdir(parents=True, exist_ok=True)
    return root


def manifest_root(root: Path, extra_rows: list[dict] = ()) -> Path:
    rng = np.random.default_rng(4)
    rows = []
    for p, tumor_type in enumerate(("glioma", "meningioma")):
        for k in range(2):
            image, mask = blob_slice(rng, size=SIZE + 16)
            write_png(root / "img" / f"{p}_{k}.png", image)
            write_png(root / "msk" / f"{p}_{k}.png", mask)
            rows.append(
                {
                    "image": f"img/{p}_{k}.png",
                    "mask": f"msk/{p}_{k}.png",
                    "patient_id": f"M{p}",
                    "tumor_type": tumor_type,
                    "grade": "2",
                }
            )
    pd.DataFrame([*rows, *extra_rows]).to_csv(root / "manifest.csv", index=False)
    return root


class Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


# ----------------------------------------------------------------------------- builders
# Each returns (data_root, target): target is a path fragment the problem or error must name.


def b_png_truncated(tmp: Path):
    good_tree(tmp)
    data = png_bytes(64)
    (patient(tmp) / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp, "cut.png"


def b_tiff_truncated(tmp: Path):
    good_tree(tmp)
    path = patient(tmp) / "cut.tif"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return tmp, "cut.tif"


def b_png_zero_bytes(tmp: Path):
    good_tree(tmp)
    (patient(tmp) / "zero.png").write_bytes(b"")
    return tmp, "zero.png"


def b_npy_zero_bytes(tmp: Path):
    good_tree(tmp)
    (patient(tmp) / "zero.npy").write_bytes(b"")
    return tmp, "zero.npy"


def b_dcm_zero_bytes(tmp: Path):
    good_tree(tmp)
    (patient(tmp) / "zero.dcm").write_bytes(b"")
    return tmp, "zero.dcm"


def b_png_is_text(tmp: Path):
    good_tree(tmp)
    (patient(tmp) / "fake.png").write_text("this is not a PNG")
    return tmp, "fake.png"


def b_not_an_image(tmp: Path):
    good_tree(tmp)
    (patient(tmp) / "notes.txt").write_text("radiologist notes")
    return tmp, "notes.txt"


def b_png_bomb_pil_limit(tmp: Path):
    good_tree(tmp)
    png_header_only(patient(tmp) / "bomb.png", 100_000, 100_000)
    return tmp, "bomb.png"


def b_png_bomb_our_limit(tmp: Path):
    """9000² = 81 M pixels: below PIL's own warning threshold (89 M), above ours (67 M)."""
    good_tree(tmp)
    png_header_only(patient(tmp) / "big.png", 9000, 9000)
    return tmp, "big.png"


def b_tiff_multipage(tmp: Path):
    good_tree(tmp)
    frames = [Image.fromarray(np.full((SIZE, SIZE), v, np.uint8)) for v in (10, 200)]
    frames[0].save(patient(tmp) / "pages.tif", save_all=True, append_images=frames[1:])
    return tmp, "pages.tif"


def b_npy_bomb(tmp: Path):
    good_tree(tmp)
    npy_header_only(patient(tmp) / "bomb.npy", (200_000, 200_000), data=b"\0" * 64)
    return tmp, "bomb.npy"


def b_npy_truncated(tmp: Path):
    good_tree(tmp)
    npy_header_only(patient(tmp) / "cut.npy", (32, 32), data=b"\0" * (32 * 32 * 2))
    return tmp, "cut.npy"


def b_npy_pickled_objects(tmp: Path):
    good_tree(tmp)
    sentinel = tmp / "PWNED"
    array = np.empty((2, 2), dtype=object)
    array[0, 0] = Evil(sentinel)
    np.save(patient(tmp) / "objects.npy", array, allow_pickle=True)
    return tmp, "objects.npy"


def b_npy_4d(tmp: Path):
    good_tree(tmp)
    np.save(patient(tmp) / "volume4d.npy", np.ones((2, 2, SIZE, SIZE), np.float32))
    return tmp, "volume4d.npy"


def b_npy_too_many_channels(tmp: Path):
    good_tree(tmp)
    np.save(patient(tmp) / "channels.npy", np.ones((32, 32, 40), np.float32))
    return tmp, "channels.npy"


def b_npy_nan(tmp: Path):
    good_tree(tmp)
    array = np.random.default_rng(5).random((SIZE, SIZE)).astype(np.float32)
    array[3, 4] = np.nan
    np.save(patient(tmp) / "nan.npy", array)
    return tmp, "nan.npy"


def b_npy_inf(tmp: Path):
    good_tree(tmp)
    array = np.random.default_rng(6).random((SIZE, SIZE)).astype(np.float32)
    array[0, 0] = -np.inf
    np.save(patient(tmp) / "inf.npy", array)
    return tmp, "inf.npy"


def b_npy_complex(tmp: Path):
    good_tree(tmp)
    np.save(patient(tmp) / "complex.npy", np.ones((SIZE, SIZE), np.complex64))
    return tmp, "complex.npy"


def b_npy_one_dimensional(tmp: Path):
    good_tree(tmp)
    np.save(patient(tmp) / "line.npy", np.arange(SIZE, dtype=np.float32))
    return tmp, "line.npy"


def b_png_constant(tmp: Path):
    good_tree(tmp)
    write_png(patient(tmp) / "blank.png", np.zeros((SIZE, SIZE), np.uint8))
    return tmp, "blank.png"


def b_npy_constant(tmp: Path):
    good_tree(tmp)
    np.save(patient(tmp) / "flat.npy", np.full((SIZE, SIZE), 3.5, np.float32))
    return tmp, "flat.npy"


def b_mask_wrong_size(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    write_png(folder / "a.png", blob_slice(np.random.default_rng(7), size=32)[0])
    write_png(folder / "a_mask.png", np.zeros((10, 12), np.uint8))
    return tmp, "a.png"


def b_mask_values(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    image, mask = blob_slice(np.random.default_rng(8), size=32)
    write_png(folder / "a.png", image)
    write_png(folder / "a_mask.png", (mask > 0).astype(np.uint8) * 128)  # a probability map
    return tmp, "a.png"


def b_mask_colour(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    write_png(folder / "a.png", blob_slice(np.random.default_rng(9), size=32)[0])
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[4:8, 4:8, 0] = 255  # red only: not a gray mask stored as RGB
    write_png(folder / "a_mask.png", colour)
    return tmp, "a.png"


def b_mask_truncated(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    write_png(folder / "a.png", blob_slice(np.random.default_rng(10), size=32)[0])
    data = png_bytes(32)
    (folder / "a_mask.png").write_bytes(data[: len(data) // 2])
    return tmp, "a.png"


def b_dicom_without_pixels(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    write_dicom(folder / "ok.dcm", np.arange(SIZE * SIZE).reshape(SIZE, SIZE))
    write_dicom(folder / "nopixels.dcm", None)
    return tmp, "nopixels.dcm"


def b_dicom_truncated(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    write_dicom(folder / "ok.dcm", np.arange(SIZE * SIZE).reshape(SIZE, SIZE))
    path = write_dicom(folder / "cut.dcm", np.arange(64 * 64).reshape(64, 64))
    path.write_bytes(path.read_bytes()[:-3000])
    return tmp, "cut.dcm"


def b_dicom_bomb(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    write_dicom(folder / "ok.dcm", np.arange(SIZE * SIZE).reshape(SIZE, SIZE))
    write_dicom(folder / "bomb.dcm", np.zeros((4, 4)), rows=65535, columns=65535)
    return tmp, "bomb.dcm"


def b_nifti_4d(tmp: Path):
    good_tree(tmp)
    volume = np.random.default_rng(11).random((SIZE, SIZE, 3, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), patient(tmp) / "dwi.nii.gz")
    return tmp, "dwi.nii.gz"


def b_nifti_zero_size(tmp: Path):
    good_tree(tmp)
    nib.save(
        nib.Nifti1Image(np.zeros((SIZE, SIZE, 0), np.float32), np.eye(4)), patient(tmp) / "e.nii"
    )
    return tmp, "e.nii"


def b_nifti_bomb(tmp: Path):
    good_tree(tmp)
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 2))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    (patient(tmp) / "bomb.nii").write_bytes(header.binaryblock + b"\0" * 68)
    return tmp, "bomb.nii"


def b_nifti_truncated(tmp: Path):
    good_tree(tmp)
    volume = np.random.default_rng(12).random((SIZE, SIZE, 3)).astype(np.float32)
    path = patient(tmp) / "cut.nii"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    path.write_bytes(path.read_bytes()[: 352 + SIZE * SIZE * 4])  # the first slice only
    return tmp, "cut.nii"


def b_nifti_nan(tmp: Path):
    good_tree(tmp)
    volume = np.random.default_rng(13).random((SIZE, SIZE, 2)).astype(np.float32)
    volume[:, :, 1] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), patient(tmp) / "nan.nii.gz")
    return tmp, "nan.nii.gz[1]"


def b_nifti_two_volumes(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    for name in ("t1.nii.gz", "t2.nii.gz"):
        volume = np.random.default_rng(14).random((SIZE, SIZE, 2)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / name)
    return tmp, "hostile"


def b_nifti_mask_depth(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    volume = np.random.default_rng(15).random((SIZE, SIZE, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "t1.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((SIZE, SIZE, 2), np.uint8), np.eye(4)), folder / "t1_seg.nii.gz"
    )
    return tmp, "t1_seg.nii.gz"


def b_nonutf8_slice_name(tmp: Path):
    good_tree(tmp)
    name = os.fsdecode(b"sl\xffice.png")
    write_png(patient(tmp) / name, blob_slice(np.random.default_rng(16), size=32)[0])
    return tmp, name


def b_nonutf8_patient_folder(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp, os.fsdecode(b"P\xe9\xff"))
    write_png(folder / "a.png", blob_slice(np.random.default_rng(17), size=32)[0])
    return tmp, os.fsdecode(b"P\xe9\xff")


def b_nonutf8_class_folder(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp, "P1", class_name=os.fsdecode(b"gli\xffoma"))
    write_png(folder / "a.png", blob_slice(np.random.default_rng(18), size=32)[0])
    return tmp, os.fsdecode(b"gli\xffoma")


def b_long_file_name(tmp: Path):
    good_tree(tmp)
    name = "s" * 240 + ".png"  # near the 255-byte limit of most file systems
    write_png(patient(tmp) / name, blob_slice(np.random.default_rng(19), size=32)[0])
    return tmp, name


def b_symlink_loop_inside_patient(tmp: Path):
    good_tree(tmp)
    folder = tmp / CLASSES[0] / f"{CLASSES[0]}-P0"
    (folder / "again").symlink_to(folder, target_is_directory=True)
    (folder / "up").symlink_to(tmp, target_is_directory=True)
    return tmp, f"{CLASSES[0]}-P0"


def b_symlink_patient_to_class(tmp: Path):
    good_tree(tmp)
    (tmp / CLASSES[0] / "everyone").symlink_to(tmp / CLASSES[0], target_is_directory=True)
    return tmp, "everyone"


def b_symlink_class_to_root(tmp: Path):
    good_tree(tmp)
    (tmp / "glioma-g4").symlink_to(tmp, target_is_directory=True)
    return tmp, "glioma-g4"


def b_symlink_patient_into_other_class(tmp: Path):
    good_tree(tmp)
    target = tmp / CLASSES[1] / f"{CLASSES[1]}-P0"
    (tmp / CLASSES[0] / "borrowed").symlink_to(target, target_is_directory=True)
    return tmp, "borrowed"


def b_symlink_file_loop(tmp: Path):
    good_tree(tmp)
    folder = patient(tmp)
    write_png(folder / "real.png", blob_slice(np.random.default_rng(20), size=32)[0])
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    return tmp, "a.png"


def b_symlink_broken_patient(tmp: Path):
    good_tree(tmp)
    (tmp / CLASSES[0] / "gone").symlink_to(tmp / "nowhere", target_is_directory=True)
    return tmp, "gone"


def b_fifo_named_png(tmp: Path):
    good_tree(tmp)
    os.mkfifo(patient(tmp) / "pipe.png")  # opening it would block forever
    return tmp, "pipe.png"


def b_patient_two_types(tmp: Path):
    good_tree(tmp)
    write_png(
        tmp / CLASSES[1] / f"{CLASSES[0]}-P1" / "x.png",
        blob_slice(np.random.default_rng(21), size=32)[0],
    )
    return tmp, f"{CLASSES[0]}-P1"


def b_patient_two_grades(tmp: Path):
    good_tree(tmp)
    write_png(
        tmp / "astrocytoma-g3" / f"{CLASSES[0]}-P1" / "x.png",
        blob_slice(np.random.default_rng(22), size=32)[0],
    )
    return tmp, f"{CLASSES[0]}-P1"


def b_unparseable_class_folder(tmp: Path):
    good_tree(tmp)
    write_png(tmp / "no-such-grade-format!" / "P" / "x.png", np.ones((SIZE, SIZE), np.uint8))
    return tmp, "no-such-grade-format!"


def b_empty_patient_folder(tmp: Path):
    good_tree(tmp)
    patient(tmp, "empty-patient")
    return tmp, "empty-patient"


def b_stray_file_in_class_folder(tmp: Path):
    good_tree(tmp)
    write_png(tmp / CLASSES[0] / "stray.png", np.ones((SIZE, SIZE), np.uint8))
    return tmp, "stray.png"


def b_class_with_one_patient(tmp: Path):
    good_tree(tmp)
    good_tree(tmp, classes=("pituitary-g1",), patients=1)
    return tmp, "pituitary-g1"


def b_dataset_with_one_class(tmp: Path):
    good_tree(tmp, classes=("astrocytoma-g2",), patients=3)
    return tmp, "astrocytoma-g2"


def b_empty_root(tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp, tmp.name


def b_root_is_not_csv(tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "data.bin"
    path.write_bytes(b"\0\1\2")
    return path, "data.bin"


def b_root_missing(tmp: Path):
    return tmp / "nothing-here", "nothing-here"


def b_all_slices_bad(tmp: Path):
    for class_name in CLASSES:
        folder = patient(tmp, "P", class_name=class_name)
        (folder / "a.png").write_bytes(b"")
    return tmp, "a.png"


# --- Figshare .mat


def b_mat_no_cjdata(tmp: Path):
    figshare_root(tmp)
    with h5py.File(tmp / "3.mat", "w") as handle:
        handle.create_group("other")
    return tmp, "3.mat"


def b_mat_label_text(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", label=np.array([b"glioma"]))
    return tmp, "3.mat"


def b_mat_label_out_of_range(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", label=7.0)
    return tmp, "3.mat"


def b_mat_label_is_group(tmp: Path):
    figshare_root(tmp)
    path = write_mat(tmp / "3.mat", label=None)
    with h5py.File(path, "a") as handle:
        handle["cjdata"].create_group("label")
    return tmp, "3.mat"


def b_mat_not_hdf5(tmp: Path):
    figshare_root(tmp)
    (tmp / "3.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + b"\0" * 200)
    return tmp, "3.mat"


def b_mat_zero_bytes(tmp: Path):
    figshare_root(tmp)
    (tmp / "3.mat").write_bytes(b"")
    return tmp, "3.mat"


def b_mat_image_3d(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", extra={"image": None})
    with h5py.File(tmp / "3.mat", "a") as handle:
        handle["cjdata"]["image"] = np.ones((2, SIZE, SIZE))
    return tmp, "3.mat"


def b_mat_image_strings(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", extra={"image": None})
    with h5py.File(tmp / "3.mat", "a") as handle:
        handle["cjdata"]["image"] = np.full((SIZE, SIZE), b"x", dtype="S1")
    return tmp, "3.mat"


def b_mat_mask_wrong_size(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", mask=np.zeros((4, 4), np.uint8))
    return tmp, "3.mat"


def b_mat_mask_values(tmp: Path):
    figshare_root(tmp)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[2:5, 2:5] = 2
    write_mat(tmp / "3.mat", mask=mask)
    return tmp, "3.mat"


def b_mat_pid_empty(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", pid="\0\0")
    return tmp, "3.mat"


def b_mat_pid_float(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", pid=None, extra={"PID": np.array([[80.5]])})
    return tmp, "3.mat"


def b_mat_bomb(tmp: Path):
    figshare_root(tmp)
    path = write_mat(tmp / "3.mat", extra={"image": None})
    with h5py.File(path, "a") as handle:  # chunked and never written: a few KB on disk
        handle["cjdata"].create_dataset(
            "image", shape=(100_000, 100_000), dtype="i2", chunks=(64, 64)
        )
    return tmp, "3.mat"


def b_mat_patient_two_types(tmp: Path):
    figshare_root(tmp)
    write_mat(tmp / "3.mat", label=3.0, pid="P1")  # P1 is meningioma in 1.mat
    return tmp, "1.mat"


def b_mat_broken_link(tmp: Path):
    figshare_root(tmp)
    (tmp / "3.mat").symlink_to(tmp / "gone.mat")
    return tmp, "3.mat"


def b_mat_cvind_garbage(tmp: Path):
    figshare_root(tmp)
    (tmp / "cvind.mat").write_bytes(b"not a matlab file at all")
    return tmp, "cvind.mat"


# --- TCGA-LGG kaggle_3m


def b_lgg_no_data_csv(tmp: Path):
    lgg_root(_lgg_dirs(tmp))
    (tmp / "data.csv").unlink()
    return tmp, str(tmp.name)


def b_lgg_patient_not_in_csv(tmp: Path):
    rows = [{"Patient": "TCGA_AA_0001", "histological_type": 1, "neoplasm_histologic_grade": 1}]
    lgg_root(_lgg_dirs(tmp), rows)
    return tmp, "TCGA_AA_0002_19990101"


def b_lgg_type_text(tmp: Path):
    rows = [
        {"Patient": "TCGA_AA_0001", "histological_type": 1, "neoplasm_histologic_grade": 1},
        {"Patient": "TCGA_AA_0002", "histological_type": "abc", "neoplasm_histologic_grade": 2},
    ]
    lgg_root(_lgg_dirs(tmp), rows)
    return tmp, "TCGA_AA_0002_19990101"


def b_lgg_grade_unknown_code(tmp: Path):
    rows = [
        {"Patient": "TCGA_AA_0001", "histological_type": 1, "neoplasm_histologic_grade": 1},
        {"Patient": "TCGA_AA_0002", "histological_type": 2, "neoplasm_histologic_grade": "G9"},
    ]
    lgg_root(_lgg_dirs(tmp), rows)
    return tmp, "TCGA_AA_0002_19990101"


def b_lgg_patient_twice_in_csv(tmp: Path):
    rows = [
        {"Patient": "TCGA_AA_0001", "histological_type": 1, "neoplasm_histologic_grade": 1},
        {"Patient": "TCGA_AA_0002", "histological_type": 2, "neoplasm_histologic_grade": 1},
        {"Patient": "TCGA_AA_0002", "histological_type": 3, "neoplasm_histologic_grade": 1},
    ]
    lgg_root(_lgg_dirs(tmp), rows)
    return tmp, "TCGA_AA_0002_19990101"


def b_lgg_csv_without_columns(tmp: Path):
    lgg_root(_lgg_dirs(tmp), [{"id": "TCGA_AA_0001", "type": 1}])
    return tmp, "data.csv"


def b_lgg_csv_binary(tmp: Path):
    lgg_root(_lgg_dirs(tmp), csv_text="\0\0\0\0")
    return tmp, "data.csv"


def b_lgg_tif_truncated(tmp: Path):
    lgg_root(_lgg_dirs(tmp))
    path = tmp / "kaggle_3m" / "TCGA_AA_0001_19990101" / "TCGA_AA_0001_19990101_2.tif"
    path.write_bytes(path.read_bytes()[:200])
    return tmp, "TCGA_AA_0001_19990101_2.tif"


# --- manifest CSV


def b_manifest_missing_column(tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image": ["a.png"], "label": ["glioma"]}).to_csv(tmp / "manifest.csv")
    return tmp, "manifest.csv"


def b_manifest_missing_file(tmp: Path):
    extra = {"image": "img/ghost.png", "patient_id": "M9", "tumor_type": "glioma", "grade": "2"}
    manifest_root(tmp, [extra])
    return tmp, "ghost.png"


def b_manifest_patient_two_types(tmp: Path):
    write_png(tmp / "img" / "other.png", blob_slice(np.random.default_rng(24), size=32)[0])
    extra = {"image": "img/other.png", "patient_id": "M1", "tumor_type": "glioma", "grade": "2"}
    manifest_root(tmp, [extra])  # M1 is meningioma elsewhere
    return tmp, "img/"


def b_manifest_binary(tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "manifest.csv").write_bytes(b"\xff\xfe\0\0\x89PNG" * 20)
    return tmp, "manifest.csv"


def b_manifest_zero_bytes(tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "manifest.csv").write_bytes(b"")
    return tmp, "manifest.csv"


def b_manifest_empty_patient(tmp: Path):
    extra = {"image": "img/0_0.png", "patient_id": " ", "tumor_type": "glioma", "grade": "2"}
    manifest_root(tmp, [extra])
    return tmp, "manifest.csv:6"


def b_manifest_repeated_row(tmp: Path):
    extra = {"image": "img/1_1.png", "patient_id": "M1", "tumor_type": "meningioma", "grade": 2}
    manifest_root(tmp, [extra])
    return tmp, "manifest.csv:6"


def b_manifest_slice_for_two_patients(tmp: Path):
    extra = {"image": "img/1_1.png", "patient_id": "M7", "tumor_type": "meningioma", "grade": "2"}
    manifest_root(tmp, [extra])
    return tmp, "1_1.png"


def b_manifest_mask_missing(tmp: Path):
    write_png(tmp / "img" / "extra.png", blob_slice(np.random.default_rng(23), size=32)[0])
    extra = {
        "image": "img/extra.png",
        "mask": "msk/ghost.png",
        "patient_id": "M1",
        "tumor_type": "meningioma",
        "grade": "2",
    }
    manifest_root(tmp, [extra])
    return tmp, "ghost.png"


# ----------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], tuple[Path, str]]
    outcome: str  # skip | error | flagged | ok
    reason: str = ""  # a regular expression the problem reason or error message must match


CASES = [
    # 2-D slices in a folder tree
    Case("png truncated", b_png_truncated, "skip", r"cannot decode|truncated"),
    Case("tiff truncated", b_tiff_truncated, "skip", r"cannot decode|truncated"),
    Case("png zero bytes", b_png_zero_bytes, "skip", r"0 bytes"),
    Case("npy zero bytes", b_npy_zero_bytes, "skip", r"0 bytes"),
    Case("dcm zero bytes", b_dcm_zero_bytes, "skip", r"unreadable DICOM"),
    Case("text named .png", b_png_is_text, "skip", r"cannot decode"),
    Case("not an image file", b_not_an_image, "skip", r"not an image file"),
    Case("png bomb (PIL limit)", b_png_bomb_pil_limit, "skip", r"decompression bomb|exceeds"),
    Case("png bomb (our limit)", b_png_bomb_our_limit, "skip", r"exceeds the limit"),
    Case("tiff multi-page", b_tiff_multipage, "skip", r"multi-page"),
    Case("npy bomb header", b_npy_bomb, "skip", r"exceeds the limit"),
    Case("npy truncated", b_npy_truncated, "skip", r"truncated \.npy"),
    Case("npy pickled objects", b_npy_pickled_objects, "skip", r"Python objects"),
    Case("npy 4-D", b_npy_4d, "skip", r"2-D slice"),
    Case("npy 40 channels", b_npy_too_many_channels, "skip", r"channels"),
    Case("npy 1-D", b_npy_one_dimensional, "skip", r"2-D slice"),
    Case("npy NaN", b_npy_nan, "skip", r"NaN or infinite"),
    Case("npy -Inf", b_npy_inf, "skip", r"NaN or infinite"),
    Case("npy complex", b_npy_complex, "skip", r"dtype"),
    Case("png constant", b_png_constant, "flagged"),
    Case("npy constant", b_npy_constant, "flagged"),
    Case("mask wrong size", b_mask_wrong_size, "skip", r"differ in size"),
    Case("mask values 0/128", b_mask_values, "skip", r"mask values"),
    Case("mask in colour", b_mask_colour, "skip", r"single-channel"),
    Case("mask truncated", b_mask_truncated, "skip", r"cannot decode"),
    # DICOM and NIfTI
    Case("dicom without pixel data", b_dicom_without_pixels, "skip", r"no pixel data"),
    Case("dicom truncated", b_dicom_truncated, "skip", r"cannot decode|DICOM"),
    Case("dicom bomb header", b_dicom_bomb, "skip", r"exceeds the limit"),
    Case("nifti 4-D", b_nifti_4d, "skip", r"must be 3-D"),
    Case("nifti zero-size", b_nifti_zero_size, "skip", r"empty image|no slices"),
    Case("nifti bomb header", b_nifti_bomb, "skip", r"exceeds the limit"),
    Case("nifti truncated", b_nifti_truncated, "skip", r"cannot decode"),
    Case("nifti NaN slice", b_nifti_nan, "skip", r"NaN or infinite"),
    Case("nifti two volumes", b_nifti_two_volumes, "skip", r"one NIfTI volume"),
    Case("nifti mask depth", b_nifti_mask_depth, "skip", r"depth differs"),
    # names and links
    Case("non-UTF-8 slice name", b_nonutf8_slice_name, "ok"),
    Case("non-UTF-8 patient folder", b_nonutf8_patient_folder, "skip", r"not valid UTF-8"),
    Case("non-UTF-8 class folder", b_nonutf8_class_folder, "skip", r"not valid UTF-8"),
    Case("240-character file name", b_long_file_name, "ok"),
    Case("symlink loops inside a patient", b_symlink_loop_inside_patient, "ok"),
    Case(
        "symlink patient → its class", b_symlink_patient_to_class, "skip", r"inside the data root"
    ),
    Case("symlink class → root", b_symlink_class_to_root, "skip", r"a loop"),
    Case("symlink patient → other class", b_symlink_patient_into_other_class, "skip", r"inside"),
    Case("symlink file loop", b_symlink_file_loop, "skip", r"looping symbolic link"),
    Case("symlink patient broken", b_symlink_broken_patient, "skip", r"broken"),
    Case("FIFO named .png", b_fifo_named_png, "skip", r"not a regular file"),
    # labels and structure
    Case("patient under two types", b_patient_two_types, "skip", r"several tumor_type"),
    Case("patient under two grades", b_patient_two_grades, "skip", r"several grade"),
    Case("unparseable class folder", b_unparseable_class_folder, "skip", r"does not parse"),
    Case("empty patient folder", b_empty_patient_folder, "skip", r"empty patient folder"),
    Case("file in a class folder", b_stray_file_in_class_folder, "skip", r"class folder"),
    Case("class with one patient", b_class_with_one_patient, "ok"),
    Case("dataset with one class", b_dataset_with_one_class, "ok"),
    Case("empty data root", b_empty_root, "error", r"no class folders"),
    Case("data root a non-CSV file", b_root_is_not_csv, "error", r"is a file"),
    Case("data root missing", b_root_missing, "error", r"does not exist"),
    Case("every slice undecodable", b_all_slices_bad, "error", r"no usable slices"),
    # Figshare .mat
    Case("mat without cjdata", b_mat_no_cjdata, "skip", r"no 'cjdata'"),
    Case("mat label is text", b_mat_label_text, "skip", r"'cjdata/label' must be one number"),
    Case("mat label 7", b_mat_label_out_of_range, "skip", r"not 1/2/3"),
    Case("mat label is a group", b_mat_label_is_group, "skip", r"is a group"),
    Case("mat not HDF5", b_mat_not_hdf5, "skip", r"HDF5"),
    Case("mat zero bytes", b_mat_zero_bytes, "skip", r"HDF5|0 bytes"),
    Case("mat image 3-D", b_mat_image_3d, "skip", r"must be 2-D"),
    Case("mat image of strings", b_mat_image_strings, "skip", r"numeric"),
    Case("mat mask wrong size", b_mat_mask_wrong_size, "skip", r"differ in size"),
    Case("mat mask values 0/2", b_mat_mask_values, "skip", r"mask values"),
    Case("mat empty PID", b_mat_pid_empty, "skip", r"empty patient id"),
    Case("mat PID not characters", b_mat_pid_float, "skip", r"PID"),
    Case("mat bomb dataset", b_mat_bomb, "skip", r"exceeds the limit"),
    Case("mat patient under two types", b_mat_patient_two_types, "skip", r"several tumor_type"),
    Case("cvind.mat garbage", b_mat_cvind_garbage, "skip", r"unreadable cvind"),
    Case("mat broken symlink", b_mat_broken_link, "skip", r"broken or looping"),
    # TCGA-LGG
    Case("lgg without data.csv", b_lgg_no_data_csv, "error", r"data\.csv"),
    Case("lgg patient not in data.csv", b_lgg_patient_not_in_csv, "skip", r"not in data\.csv"),
    Case("lgg type is text", b_lgg_type_text, "skip", r"unknown histological_type"),
    Case("lgg grade code unknown", b_lgg_grade_unknown_code, "skip", r"unknown neoplasm"),
    Case("lgg patient twice in data.csv", b_lgg_patient_twice_in_csv, "skip", r"different rows"),
    Case("lgg data.csv without columns", b_lgg_csv_without_columns, "error", r"lacks column"),
    Case("lgg data.csv binary", b_lgg_csv_binary, "error", r"cannot read|lacks column"),
    Case("lgg tif truncated", b_lgg_tif_truncated, "skip", r"cannot decode"),
    # manifest CSV
    Case("manifest missing column", b_manifest_missing_column, "error", r"lacks required"),
    Case("manifest file missing", b_manifest_missing_file, "skip", r"file not found"),
    Case("manifest patient two types", b_manifest_patient_two_types, "skip", r"several tumor"),
    Case("manifest binary", b_manifest_binary, "error", r"cannot read manifest|lacks required"),
    Case("manifest zero bytes", b_manifest_zero_bytes, "error", r"cannot read manifest"),
    Case("manifest empty patient id", b_manifest_empty_patient, "skip", r"empty patient_id"),
    Case("manifest mask missing", b_manifest_mask_missing, "skip", r"mask file not found"),
    Case("manifest repeated row", b_manifest_repeated_row, "skip", r"listed again"),
    Case("manifest slice, two patients", b_manifest_slice_for_two_patients, "skip", r"different"),
]


# ----------------------------------------------------------------------------- running a case


@dataclass
class Result:
    outcome: str  # skip | error | flagged | ok | crash
    message: str = ""
    problems: list = None
    table: pd.DataFrame | None = None


def run_reader(root: Path) -> Result:
    """Read and decode as training does (read_catalog, then the preprocessing cache)."""
    try:
        catalog = read_catalog(root)
        cache = SliceCache.build(
            catalog, Preprocessing(image_size=16, channels=1), progress=False, workers=2
        )
    except MritumorError as error:
        return Result("error", str(error))
    except Exception:  # anything else is a crash: what the corpus exists to find
        return Result("crash", traceback.format_exc())
    problems = cache.catalog.problems
    constant = sum(bool(cache.images[i].min() == cache.images[i].max()) for i in range(len(cache)))
    outcome = "skip" if problems else ("flagged" if constant else "ok")
    return Result(outcome, problems=problems, table=cache.catalog.table)


def source_label(row, root: Path) -> tuple[str, str | None]:
    """The label a row's source gives it, worked out without the readers' code."""
    if row.source == "folder":
        class_folder = Path(row.image).relative_to(root).parts[0]
        match = CLASS_FOLDER.match(class_folder)
        return match["type"], match["grade"]
    if row.source == "figshare_mat":
        with h5py.File(row.image, "r") as handle:
            return FIGSHARE_LABELS[int(handle["cjdata"]["label"][()].ravel()[0])], None
    if row.source == "lgg_kaggle":
        csv = pd.read_csv(root / "data.csv").set_index("Patient")
        entry = csv.loc[row.patient_id]
        types = {1: "astrocytoma", 2: "oligoastrocytoma", 3: "oligodendroglioma"}
        return types[int(entry["histological_type"])], str(
            int(entry["neoplasm_histologic_grade"]) + 1
        )
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    given = manifest[manifest["image"].map(lambda p: str(root / p) == row.image)]
    assert len(given) >= 1
    return given["tumor_type"].iloc[0], given["grade"].iloc[0]


def check_case(case: Case, tmp: Path) -> tuple[Result, Path, str]:
    root, target = case.build(tmp)
    result = run_reader(root)
    assert result.outcome != "crash", f"{case.name}: crashed\n{result.message}"
    assert result.outcome == case.outcome, (
        f"{case.name}: expected {case.outcome}, got {result.outcome}: "
        f"{result.message or [str(p) for p in result.problems or []]}"
    )
    if case.outcome == "error":
        assert target in result.message, (case.name, result.message)
        assert pd.Series([result.message]).str.contains(case.reason).all(), result.message
    if case.outcome == "skip":
        named = [p for p in result.problems if target in p.path or target in p.reason]
        assert named, f"{case.name}: {target} not named in {[str(p) for p in result.problems]}"
        assert any(pd.Series([p.reason]).str.contains(case.reason).all() for p in named), (
            case.name,
            [p.reason for p in named],
        )
    if result.table is not None:
        assert len(result.table) > 0
        # a slice reached through a link is never counted twice (train/test leakage)
        real = result.table["image"].map(os.path.realpath) + result.table["frame"].astype(str)
        assert not real.duplicated().any(), (case.name, result.table[real.duplicated()])
        for row in result.table.itertuples():
            assert (row.tumor_type, row.grade) == source_label(row, root), (case.name, row)
    return result, root, target


def check_cli(root: Path, target: str, capsys) -> tuple[int, str]:
    """``mritumor data inspect``: 0 with the item named, or 2 with a one-line error."""
    capsys.readouterr()
    try:
        code = main(["-q", "data", "inspect", "--data_root", str(root), "--json"])
    except SystemExit as exit_:  # argparse: still no traceback
        code = exit_.code
    captured = capsys.readouterr()
    assert code in (0, 2), (code, captured.err)
    if code == 2:
        assert "mritumor: error:" in captured.err and "Traceback" not in captured.err
        return code, captured.err
    report = json.loads(captured.out)
    return code, json.dumps(report["problems"], ensure_ascii=False)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path, capsys):
    result, root, target = check_case(case, tmp_path / "data")
    code, text = check_cli(root, target, capsys)
    if case.outcome in ("skip", "error"):
        escaped = target.encode("utf-8", "backslashreplace").decode("utf-8")
        assert target in text or escaped in text, (case.name, text[:500])
    else:
        assert code == 0, text
    assert not (tmp_path / "data" / "PWNED").exists()  # pickled payloads never ran
    assert result.outcome == case.outcome


def test_corpus_counts(tmp_path: Path):
    """Every input through the readers once more, counted: at least 30 tried, no crash, and
    every outcome the one the table documents."""
    counts = Counter()
    for number, case in enumerate(CASES):
        result = run_reader(case.build(tmp_path / str(number))[0])
        counts["tried"] += 1
        counts[result.outcome] += 1
        counts["as documented"] += result.outcome == case.outcome
    print(
        f"\nhostile inputs: {counts['tried']} tried, {counts['error']} clean errors, "
        f"{counts['skip']} counted skips, {counts['flagged']} flagged, {counts['ok']} loaded as "
        f"valid, {counts['crash']} crashes"
    )
    assert counts["tried"] == len(CASES) >= 30
    assert counts["crash"] == 0
    assert counts["as documented"] == len(CASES)
    expected = Counter(case.outcome for case in CASES)
    assert all(counts[kind] == expected[kind] for kind in ("error", "skip", "flagged", "ok"))


# ----------------------------------------------------------------------------- beyond reading


def test_decompression_bomb_is_refused_before_any_pixel_is_decoded(tmp_path: Path, monkeypatch):
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for width, height in ((9000, 9000), (100_000, 100_000), (70_000, 1000)):
        path = png_header_only(tmp_path / f"{width}x{height}.png", width, height)
        with pytest.raises(io.SliceReadError, match=r"exceeds|decompression bomb") as caught:
            io.read_image(path)
        assert "pixels were decoded" not in str(caught.value)
    path = npy_header_only(tmp_path / "bomb.npy", (90_000, 90_000))
    with pytest.raises(io.SliceReadError, match="exceeds the limit"):
        io.read_image(path)


def test_pickled_npy_payload_never_runs(tmp_path: Path):
    sentinel = tmp_path / "PWNED"
    array = np.empty(2, dtype=object)
    array[0] = Evil(sentinel)
    np.save(tmp_path / "evil.npy", array, allow_pickle=True)
    with pytest.raises(io.SliceReadError, match="Python objects"):
        io.read_image(tmp_path / "evil.npy")
    assert not sentinel.exists()
    np.load(tmp_path / "evil.npy", allow_pickle=True)  # the payload is real: unsafe loading runs it
    assert sentinel.exists()


def test_one_patient_class_is_split_without_leakage_and_logged(tmp_path: Path, caplog):
    from mritumor.data.loading.splits import make_split

    root, _ = b_class_with_one_patient(tmp_path / "data")
    good_tree(root, patients=4)
    table = read_catalog(root).table
    split = make_split(table, 0.2, 0.2, seed=0)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == table["patient_id"].nunique()
    assert split.strategy != "stratified:type+grade"  # a one-patient stratum cannot be stratified
    assert "falling back" in caplog.text or "used '" in caplog.text


def test_training_on_one_class_is_a_clean_error(tmp_path: Path, capsys):
    root, _ = b_dataset_with_one_class(tmp_path / "data")
    good_tree(root, classes=("astrocytoma-g3",), patients=3)  # two grades, one type
    code = main(
        [
            "-q",
            "train-hierarchical",
            "--data_root",
            str(root),
            "--outdir",
            str(tmp_path / "run"),
            "--backbone",
            "small_cnn",
            "--image_size",
            "16",
            "--epochs",
            "1",
            "--accelerator",
            "cpu",
            "--num_workers",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "mritumor: error:" in err and "one tumour type" in err


def test_non_utf8_names_do_not_break_the_text_report(tmp_path: Path, capsys):
    root, _ = b_nonutf8_patient_folder(tmp_path / "data")
    b_nonutf8_slice_name(root)
    (patient(root) / os.fsdecode(b"bad\xff.png")).write_bytes(b"")
    assert main(["-q", "data", "inspect", "--data_root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "not valid UTF-8" in out and "0 bytes" in out


def test_reading_never_modifies_the_data(tmp_path: Path):
    root, _ = b_symlink_loop_inside_patient(tmp_path / "data")
    before = sorted((str(p), p.lstat().st_mtime_ns) for p in root.rglob("*"))
    result = run_reader(root)
    assert len(result.table) == len(CLASSES) * 2 * 2  # the links added no slice
    after = sorted((str(p), p.lstat().st_mtime_ns) for p in root.rglob("*"))
    assert before == after

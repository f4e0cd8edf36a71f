"""`data convert`: Figshare `.mat` and LGG `.tif` sources → the normalised folder tree, read back
by the folder-tree and the manifest readers with the same labels, patients and pixels."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import shared_data, write_png
from mritumor.cli import main
from mritumor.data.acquire.convert import class_folder, convert_catalog
from mritumor.data.reading import io
from mritumor.data.reading.catalog import Catalog, make_table
from mritumor.data.reading.readers import read_catalog
from mritumor.errors import DataError
from test_readers import make_kaggle_tree, write_figshare_mat

FIGSHARE_SLICES = [(1, "100360"), (1, "100360"), (2, "MR040237"), (3, "MR024780B"), (2, "MR040237")]
LGG_PATIENTS = {  # patient → (histological_type, neoplasm_histologic_grade)
    "TCGA_CS_4941": (1, 1),
    "TCGA_DU_5851": (3, 2),
    "TCGA_HT_7680": (2, None),  # no grade: a class folder without -g
}


def write_figshare_release(root: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for number, (label, pid) in enumerate(FIGSHARE_SLICES, 1):
        image = rng.integers(-200, 3000, (size, size)).astype(np.int16)
        image[: size // 4] = 0  # asymmetric: a transposed copy would show
        mask = np.zeros((size, size), np.uint8)
        mask[5 + number : 20 + number, 10:30] = 1
        write_figshare_mat(root / f"{number}.mat", image, label, pid, mask)
    with h5py.File(root / "cvind.mat", "w") as handle:
        handle["cvind"] = np.array([[1, 1, 2, 3, 2]], dtype=np.float64)
    return root


def write_lgg_release(root: Path, size: int = 64) -> Path:
    """kaggle_3m/<case>/<case>_<n>.tif (RGB) + _mask.tif, and kaggle_3m/data.csv."""
    rng = np.random.default_rng(4)
    base = root / "kaggle_3m"
    for patient in LGG_PATIENTS:
        case = base / f"{patient}_19960909"
        case.mkdir(parents=True)
        for n in (1, 2, 10):  # natural order 1, 2, 10
            image = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if n != 2:
                mask[n : n + 12, 20:40] = 255
            Image.fromarray(image).save(case / f"{case.name}_{n}.tif")
            Image.fromarray(mask).save(case / f"{case.name}_{n}_mask.tif")
    pd.DataFrame(
        [
            {"Patient": p, "histological_type": t, "neoplasm_histologic_grade": g}
            for p, (t, g) in LGG_PATIENTS.items()
        ]
    ).to_csv(base / "data.csv", index=False)
    return root


def expected_pixels(image: np.ndarray) -> np.ndarray:
    """The documented normalisation, computed here channel by channel."""
    out = np.empty(image.shape, np.float64)
    for c, channel in enumerate(image.astype(np.float64)):
        low, high = np.percentile(channel, 0.5), np.percentile(channel, 99.5)
        out[c] = np.clip((channel - low) / max(high - low, 1e-6), 0, 1)
    return out


def assert_same_catalog(source: Catalog, copy: Catalog, tolerance: float, scale: float) -> None:
    assert sorted(copy.patients) == sorted(source.patients)
    for patient, rows in source.table.groupby("patient_id", sort=False):
        got = copy.table[copy.table["patient_id"] == patient]
        assert len(got) == len(rows)
        assert set(got["tumor_type"]) == set(rows["tumor_type"])
        assert set(got["grade"].map(str)) == set(rows["grade"].map(str))
        for original, converted in zip(rows.itertuples(), got.itertuples(), strict=True):
            want = expected_pixels(io.read_image(original.image, original.frame))
            have = io.read_image(converted.image) / scale
            assert have.shape == want.shape
            assert np.abs(have - want).max() <= tolerance
            assert converted.mask is not None
            np.testing.assert_array_equal(
                io.read_mask(converted.mask), io.read_mask(original.mask, original.frame)
            )


def test_figshare_mat_round_trip_png(tmp_path: Path):
    source = read_catalog(write_figshare_release(tmp_path / "figshare"))
    result = convert_catalog(source, tmp_path / "copy", progress=False)
    assert (result.slices, result.patients, result.masks) == (5, 3, 5)
    assert (tmp_path / "copy/meningioma/100360/slice_0001_mask.png").is_file()
    as_manifest = read_catalog(tmp_path / "copy")
    as_tree = read_catalog(tmp_path / "copy", format="folder")
    assert (as_manifest.source, as_tree.source) == ("manifest", "folder")
    for copy in (as_manifest, as_tree):  # PNG rounding: at most half a grey level
        assert_same_catalog(source, copy, tolerance=0.5 / 255 + 1e-6, scale=255)
    folds = as_manifest.table.groupby("patient_id")["fold"].first().to_dict()
    assert folds == {"100360": 1, "MR040237": 2, "MR024780B": 3}
    assert set(as_manifest.table["original_image"]) == {f"{n}.mat" for n in range(1, 6)}


def test_npy_keeps_the_normalised_values_exactly(tmp_path: Path):
    source = read_catalog(write_figshare_release(tmp_path / "figshare"))
    convert_catalog(source, tmp_path / "copy", format="npy", progress=False)
    copy = read_catalog(tmp_path / "copy", format="folder")
    assert_same_catalog(source, copy, tolerance=1e-6, scale=1)
    assert np.load(copy.table["image"][0]).dtype == np.float32


def test_lgg_tif_round_trip_keeps_rgb_grades_and_order(tmp_path: Path):
    source = read_catalog(write_lgg_release(tmp_path / "lgg"))
    assert source.source == "lgg_kaggle"
    convert_catalog(source, tmp_path / "copy", progress=False)
    classes = sorted(p.name for p in (tmp_path / "copy").iterdir() if p.is_dir())
    assert classes == ["astrocytoma-g2", "oligoastrocytoma", "oligodendroglioma-g3"]
    for copy in (read_catalog(tmp_path / "copy"), read_catalog(tmp_path / "copy", format="folder")):
        assert_same_catalog(source, copy, tolerance=0.5 / 255 + 1e-6, scale=255)
        assert io.read_image(copy.table["image"][0]).shape[0] == 3
    manifest = pd.read_csv(tmp_path / "copy/manifest.csv")
    assert (
        manifest.groupby("patient_id")["original_slice_index"].apply(list).tolist()
        == [[1, 2, 10]] * 3
    )


def test_original_lgg_tifs_round_trip(tmp_path: Path):
    root = make_kaggle_tree(tmp_path, shared_data("lgg") / "originals")
    patients = sorted({"_".join(p.name.split("_")[:3]) for p in (root / "kaggle_3m").iterdir()})
    labels = pd.read_csv(shared_data("lgg") / "data.csv").set_index("Patient")
    labels.loc[patients].reset_index().to_csv(root / "data.csv", index=False)
    source = read_catalog(root)
    convert_catalog(source, tmp_path / "copy", progress=False)
    assert_same_catalog(source, read_catalog(tmp_path / "copy"), 0.5 / 255 + 1e-6, 255)


def test_image_size_resizes_images_bilinear_and_masks_nearest(tmp_path: Path):
    source = read_catalog(write_figshare_release(tmp_path / "figshare", size=64))
    convert_catalog(source, tmp_path / "copy", format="npy", image_size=32, progress=False)
    copy = read_catalog(tmp_path / "copy", format="folder")
    for original, converted in zip(
        source.table.sort_values(["patient_id"]).itertuples(),
        copy.table.sort_values(["patient_id"]).itertuples(),
        strict=True,
    ):
        assert io.read_image(converted.image).shape == (1, 32, 32)
        # nearest-neighbour halving keeps every second pixel, starting at the first
        np.testing.assert_array_equal(
            io.read_mask(converted.mask), io.read_mask(original.mask)[::2, ::2]
        )
        # antialiased bilinear, as PIL resizes a float image
        want = expected_pixels(io.read_image(original.image))[0].astype(np.float32)
        want = np.asarray(Image.fromarray(want, mode="F").resize((32, 32), Image.BILINEAR))
        assert np.abs(io.read_image(converted.image)[0] - want).max() < 1e-5


def test_undecodable_slices_are_skipped_and_listed(tmp_path: Path, folder_tree: Path):
    broken = folder_tree / "meningioma/meningioma-P0/slice_1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG: the reader accepts its name
    source = read_catalog(folder_tree)
    result = convert_catalog(source, tmp_path / "copy", progress=False)
    assert result.slices == len(source) - 1
    settings = json.loads((tmp_path / "copy/conversion.json").read_text())
    assert settings["slices"] == len(source) - 1 and "slice_1.png" in settings["skipped"][0]
    assert len(read_catalog(tmp_path / "copy")) == len(source) - 1


def test_refusals_name_the_reason(tmp_path: Path, folder_tree: Path):
    source = read_catalog(folder_tree)
    (tmp_path / "used").mkdir()
    (tmp_path / "used/keep.txt").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        convert_catalog(source, tmp_path / "used", progress=False)
    with pytest.raises(DataError, match="class folder"):
        class_folder("glioma", "IV")
    image = write_png(tmp_path / "src/a.png", np.zeros((20, 20), np.uint8))
    rows = [
        {"image": str(image), "patient_id": pid, "tumor_type": "glioma", "grade": "2"}
        for pid in ("a/b", "a_b")
    ]
    colliding = Catalog(make_table(rows), "manifest", tmp_path / "src")
    with pytest.raises(DataError, match="share the folder"):
        convert_catalog(colliding, tmp_path / "out2", progress=False)


def test_convert_command(tmp_path: Path, capsys):
    root = write_lgg_release(tmp_path / "lgg")
    out = tmp_path / "copy"
    command = ["-q", "data", "convert", "--data_root", str(root), "--out", str(out)]
    assert main(command + ["--format", "npy", "--image_size", "32"]) == 0
    assert "9 slices (9 with masks) of 3 patients" in capsys.readouterr().out
    settings = json.loads((out / "conversion.json").read_text())
    assert (settings["format"], settings["image_size"], settings["source_format"]) == (
        "npy",
        32,
        "lgg_kaggle",
    )
    assert main(command) == 2  # the folder is no longer empty

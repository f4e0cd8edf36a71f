"""Tests of the synthetic phantom generator: files on disk, anatomy, and class information.

The expensive datasets are written once per module; each test then checks one property of what
the generator promises (layout, masks, determinism, where tumours sit, what carries the class).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mritumor.data.acquire.synthetic import DEFAULT_CLASSES, render_slice, write_synthetic_dataset

SMALL = {"patients_per_class": 1, "slices_per_patient": 2, "image_size": 32}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _class_folder(tumor_type: str, grade: str) -> str:
    return f"{tumor_type}-g{grade}"


def _load_gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def _tumour_slices(root: Path) -> list[dict]:
    """Every slice with a non-empty mask: class folder, type, patient, image, mask."""
    records = []
    for mask_path in sorted(root.glob("*/*/slice_*_mask.png")):
        mask = np.asarray(Image.open(mask_path)) > 0
        if not mask.any():
            continue
        image_path = mask_path.with_name(mask_path.name.replace("_mask", ""))
        class_folder = mask_path.parent.parent.name
        records.append(
            {
                "class": class_folder,
                "type": class_folder.split("-g")[0],
                "patient": mask_path.parent.name,
                "image": _load_gray(image_path),
                "mask": mask,
            }
        )
    return records


def _head_mask(image: np.ndarray) -> np.ndarray:
    """The head (skull and everything inside) found from the image alone, like a user would."""
    smooth = ndimage.gaussian_filter(image, 1.5)
    return ndimage.binary_fill_holes(smooth > 0.5 * np.percentile(smooth, 90))


def _tumour_geometry(record: dict) -> dict:
    """Tumour position relative to the head, in units of the head's equivalent radius."""
    head = _head_mask(record["image"])
    head_radius = np.sqrt(head.sum() / np.pi)
    head_row, head_col = np.argwhere(head).mean(axis=0)
    rows, cols = np.nonzero(record["mask"])
    gap_to_outside = ndimage.distance_transform_edt(head)[record["mask"]].min()
    return {
        "centre_distance": np.hypot(rows.mean() - head_row, cols.mean() - head_col) / head_radius,
        "gap_to_head_edge": gap_to_outside / head_radius,
        "lateral_offset": abs(cols.mean() - head_col) / head_radius,
        "vertical_offset": (rows.mean() - head_row) / head_radius,
        "tissue_level": np.median(record["image"][head & ~record["mask"]]),
    }


def _files_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.png"))
    }


def _grouped_accuracy(features: np.ndarray, labels: list[str], groups: list[str]) -> float:
    """Cross-validated accuracy with whole patients held out (no slice of a test patient is
    seen in training, so a classifier cannot win by recognising the patient)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(model, features, labels, groups=groups, cv=GroupKFold(n_splits=5))
    return float(scores.mean())


# --------------------------------------------------------------------------------------------
# Datasets written once per module
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default") / "synthetic"
    returned = write_synthetic_dataset(out)
    assert returned == out
    return out


@pytest.fixture(scope="module")
def default_tumours(default_root) -> list[dict]:
    return _tumour_slices(default_root)


@pytest.fixture(scope="module")
def cohort_tumours(tmp_path_factory) -> list[dict]:
    """More patients at a smaller size: enough for cross-validated accuracies."""
    out = tmp_path_factory.mktemp("cohort")
    write_synthetic_dataset(out, patients_per_class=10, slices_per_patient=4, image_size=64, seed=1)
    return _tumour_slices(out)


# --------------------------------------------------------------------------------------------
# Files on disk
# --------------------------------------------------------------------------------------------


def test_tree_layout_and_file_names(default_root):
    class_dirs = sorted(p.name for p in default_root.iterdir())
    assert class_dirs == sorted(_class_folder(t, g) for t, g in DEFAULT_CLASSES)
    expected_files = sorted(
        name for k in range(8) for name in (f"slice_{k:03d}.png", f"slice_{k:03d}_mask.png")
    )
    for tumor_type, grade in DEFAULT_CLASSES:
        class_dir = default_root / _class_folder(tumor_type, grade)
        patients = sorted(p.name for p in class_dir.iterdir())
        assert patients == [f"syn-{tumor_type}-g{grade}-p{k:03d}" for k in range(4)]
        for patient in patients:
            assert sorted(p.name for p in (class_dir / patient).iterdir()) == expected_files


def test_patient_ids_are_unique_and_carry_the_prefix(default_root, tmp_path):
    default_ids = [p.name for p in default_root.glob("*/*")]
    assert len(default_ids) == len(set(default_ids)) == 5 * 4
    other = write_synthetic_dataset(tmp_path, patient_prefix="cohortB", seed=3, **SMALL)
    other_ids = {p.name for p in other.glob("*/*")}
    assert all(pid.startswith("cohortB-") for pid in other_ids)
    assert other_ids.isdisjoint(default_ids)


def test_masks_match_their_images_and_hold_only_0_and_255(default_root):
    mask_paths = sorted(default_root.glob("*/*/slice_*_mask.png"))
    assert len(mask_paths) == 5 * 4 * 8
    for mask_path in mask_paths:
        image = Image.open(mask_path.with_name(mask_path.name.replace("_mask", "")))
        mask = Image.open(mask_path)
        assert image.mode == "L" and image.size == (128, 128)
        assert mask.mode == "L" and mask.size == image.size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


@pytest.mark.parametrize("slices_per_patient", [1, 2, 3, 8])
def test_at_least_half_of_each_patients_slices_show_a_tumour(
    default_root, tmp_path, slices_per_patient
):
    root = default_root
    if slices_per_patient != 8:
        root = write_synthetic_dataset(
            tmp_path,
            patients_per_class=3,
            slices_per_patient=slices_per_patient,
            image_size=32,
            seed=5,
        )
    for patient_dir in root.glob("*/*"):
        masks = sorted(patient_dir.glob("*_mask.png"))
        assert len(masks) == slices_per_patient
        with_tumour = sum(np.asarray(Image.open(m)).any() for m in masks)
        assert 2 * with_tumour >= slices_per_patient, patient_dir.name


def test_three_channels_are_rgb_and_behave_like_t1_flair_postcontrast(tmp_path):
    root = write_synthetic_dataset(
        tmp_path, channels=3, patients_per_class=2, slices_per_patient=3, seed=2
    )
    oedema_flair_excess, meningioma_enhancement = [], []
    for mask_path in sorted(root.glob("*/*/slice_*_mask.png")):
        image = Image.open(mask_path.with_name(mask_path.name.replace("_mask", "")))
        assert image.mode == "RGB"
        mask = np.asarray(Image.open(mask_path)) > 0
        if not mask.any():
            continue
        t1, flair, post = np.moveaxis(np.asarray(image, dtype=np.float64) / 255, -1, 0)
        tumour_type = mask_path.parent.parent.name.split("-g")[0]
        if tumour_type == "astrocytoma":
            # Oedema around an astrocytoma: bright on FLAIR, dark on T1, compared to the brain.
            around = ndimage.binary_dilation(mask, iterations=3) & ~mask
            brain = _head_mask(t1 + flair + post) & ~ndimage.binary_dilation(mask, iterations=12)
            excess = (flair - t1)[around].mean() - (flair - t1)[brain].mean()
            oedema_flair_excess.append(excess)
        elif tumour_type == "meningioma":
            meningioma_enhancement.append(post[mask].mean() - t1[mask].mean())
    assert np.mean(oedema_flair_excess) > 0.15
    assert np.mean(meningioma_enhancement) > 0.1


def test_single_channel_images_are_grayscale(tmp_path):
    root = write_synthetic_dataset(tmp_path, channels=1, **SMALL)
    images = [p for p in root.rglob("slice_*.png") if not p.name.endswith("_mask.png")]
    assert len(images) == 5 * 2
    assert {Image.open(p).mode for p in images} == {"L"}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    first = _files_digest(write_synthetic_dataset(tmp_path / "a", seed=11, **SMALL))
    again = _files_digest(write_synthetic_dataset(tmp_path / "b", seed=11, **SMALL))
    other = _files_digest(write_synthetic_dataset(tmp_path / "c", seed=12, **SMALL))
    assert first == again
    assert first.keys() == other.keys()
    images = [name for name in first if not name.endswith("_mask.png")]
    assert all(first[name] != other[name] for name in images)


@pytest.mark.parametrize(
    "bad_arguments, message",
    [
        ({"patients_per_class": 0}, "patients_per_class"),
        ({"slices_per_patient": 0}, "slices_per_patient"),
        ({"image_size": 31}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"classes": (("glioblastoma", "4"),)}, "unknown tumor type"),
        ({"classes": (("astrocytoma", "two"),)}, "grade"),
    ],
)
def test_invalid_arguments_raise_before_writing(tmp_path, bad_arguments, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(out, **bad_arguments)
    assert not out.exists()


def test_render_slice_contract_and_depth_behaviour():
    image, mask = render_slice("meningioma", "2", np.random.default_rng(0), image_size=96)
    assert image.dtype == np.float32 and image.shape == (96, 96)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert mask.dtype == bool and mask.shape == (96, 96) and mask.any()

    def at_depth(depth: float) -> tuple[np.ndarray, np.ndarray]:
        # The same rng seed draws the same patient; only the depth changes.
        return render_slice(
            "astrocytoma",
            "3",
            np.random.default_rng(4),
            patient_params={"tumour_extent": 0.8},
            depth=depth,
        )

    centre_image, centre_mask = at_depth(0.0)
    edge_image, edge_mask = at_depth(0.6)
    outside_image, outside_mask = at_depth(0.95)
    assert centre_mask.sum() > edge_mask.sum() > 0
    assert not outside_mask.any()
    assert _head_mask(centre_image).sum() > _head_mask(outside_image).sum()
    with pytest.raises(ValueError, match="unknown tumor type"):
        render_slice("glioblastoma", "4", np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# Where tumours are and how big, by type and grade
# --------------------------------------------------------------------------------------------


def test_pituitary_tumours_sit_on_the_midline_in_the_lower_half(default_tumours):
    pituitary = [r for r in default_tumours if r["type"] == "pituitary"]
    assert len(pituitary) >= 16
    size = pituitary[0]["mask"].shape[0]
    centroids = np.array([np.argwhere(r["mask"]).mean(axis=0) for r in pituitary]) / size
    mean_row, mean_col = centroids.mean(axis=0)
    assert abs(mean_col - 0.5) < 0.06
    assert mean_row > 0.6
    lateral = [_tumour_geometry(r)["lateral_offset"] for r in pituitary]
    assert max(lateral) < 0.15


def test_meningiomas_touch_the_skull_and_lie_farther_out_than_astrocytomas(default_tumours):
    geometry = {"astrocytoma": [], "meningioma": []}
    for record in default_tumours:
        if record["type"] in geometry:
            geometry[record["type"]].append(_tumour_geometry(record))
    meningioma_gap = [g["gap_to_head_edge"] for g in geometry["meningioma"]]
    astrocytoma_gap = [g["gap_to_head_edge"] for g in geometry["astrocytoma"]]
    # Only the skull ring separates a meningioma from the outside of the head.
    assert max(meningioma_gap) < 0.15
    assert min(astrocytoma_gap) > max(meningioma_gap)
    meningioma_distance = np.mean([g["centre_distance"] for g in geometry["meningioma"]])
    astrocytoma_distance = np.mean([g["centre_distance"] for g in geometry["astrocytoma"]])
    assert meningioma_distance > astrocytoma_distance + 0.3


def test_grade_3_astrocytomas_are_larger_than_grade_2(default_tumours):
    def mean_area(class_folder: str) -> float:
        return np.mean([r["mask"].sum() for r in default_tumours if r["class"] == class_folder])

    assert mean_area("astrocytoma-g3") > 1.3 * mean_area("astrocytoma-g2")


# --------------------------------------------------------------------------------------------
# The class is in the tumour, not in global image statistics
# --------------------------------------------------------------------------------------------


def _image_mean_accuracy(records: list[dict]) -> float:
    features = np.array([[r["image"].mean()] for r in records])
    return _grouped_accuracy(
        features, [r["type"] for r in records], [r["patient"] for r in records]
    )


def _tumour_feature_accuracy(records: list[dict]) -> float:
    rows = []
    for record in records:
        geometry = _tumour_geometry(record)
        inside = record["image"][record["mask"]]
        level = geometry["tissue_level"]  # divides out the per-patient gain
        rows.append(
            [
                inside.mean() / level,
                inside.std() / level,
                np.log(record["mask"].sum()),
                geometry["lateral_offset"],
                geometry["vertical_offset"],
                geometry["centre_distance"],
            ]
        )
    labels = [r["type"] for r in records]
    return _grouped_accuracy(np.array(rows), labels, [r["patient"] for r in records])


def test_image_mean_alone_does_not_identify_the_tumour_type(cohort_tumours):
    assert _image_mean_accuracy(cohort_tumours) < 0.7


def test_tumour_features_identify_the_tumour_type(cohort_tumours):
    tumour_accuracy = _tumour_feature_accuracy(cohort_tumours)
    assert tumour_accuracy > 0.9
    assert tumour_accuracy > _image_mean_accuracy(cohort_tumours) + 0.25

"""NIfTI through ``predict``: the same volume stored canonically, sagittally and with flipped
axes gives the same slices, probabilities and (mapped back to each file's grid) the same mask
voxels; 4-D volumes with ``--volume_index``; areas and volumes from the voxel sizes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.cli import main
from test_nifti_geometry import LPS_AFFINE, STORAGES, stored_as

SHAPE = (36, 28, 3)  # x, y, z in LPS voxel order; rows (y) ≠ columns (x) catches a transpose


def run_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["-q", "predict", "--engine", "torch", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def volume() -> np.ndarray:
    rng = np.random.default_rng(11)
    data = (rng.random(SHAPE) * 300).astype(np.float32)
    data[8:20, 5:15, :] += 500  # a bright block, so masks are not uniform
    return data


@pytest.fixture(scope="module")
def half_tumour(multitask_checkpoint, tmp_path_factory) -> Path:
    """A copy of the tiny checkpoint whose mask head is sharpened around its median logit on
    ``volume()``: about half of the voxels are tumour, in a pattern that follows the image (so
    a plane read in the wrong orientation gives another mask). The tiny network's logits are
    nearly flat (spread ~0.01): scaled ×1000 around the median."""
    import torch

    from mritumor.inference.inputs import discover
    from mritumor.inference.predictor import Predictor
    from mritumor.models.loading import load_model

    folder = tmp_path_factory.mktemp("probe")
    nib.save(nib.Nifti1Image(volume(), LPS_AFFINE), str(folder / "v.nii"))
    predictor = Predictor(load_model(multitask_checkpoint))
    images, _, _ = predictor.read(discover(folder / "v.nii")[0])
    median = float(np.median(predictor.engine.run(images)["mask_logits"]))
    payload = load_checkpoint(multitask_checkpoint)
    state = dict(payload["model_state"])
    weight, bias = state["seg_out.weight"], state["seg_out.bias"]
    state["seg_out.weight"] = weight * 1000.0
    state["seg_out.bias"] = (bias - median) * 1000.0 + torch.zeros_like(bias)
    payload["model_state"] = state
    path = folder / "half.pt"
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, path)
    return path


def test_any_storage_gives_the_same_prediction_and_mask_voxels(half_tumour, tmp_path, capsys):
    lps = volume()
    results = {}
    for name, (order, flipped) in sorted(STORAGES.items()):
        data, affine = stored_as(lps, LPS_AFFINE, order, flipped)
        path = tmp_path / name / "t1c.nii.gz"
        path.parent.mkdir()
        nib.save(nib.Nifti1Image(data, affine), str(path))
        masks = tmp_path / f"masks_{name}"
        (record,) = run_json(
            capsys, "--checkpoint", str(half_tumour), "--input", str(path), "--save_masks", str(masks)
        )["patients"]  # fmt: skip
        written = nib.load(str(masks / "t1c_mask.nii.gz"))
        assert written.shape == data.shape
        np.testing.assert_allclose(written.affine, affine)
        mask = np.asarray(written.dataobj)
        # back to LPS by inverting the storage by hand: the transpose, then the flips
        back = np.transpose(mask, np.argsort(order))
        for axis in flipped:
            back = np.flip(back, axis)
        results[name] = (record, back)
    reference, reference_mask = results["as_is"]
    assert 0.2 < reference_mask.mean() < 0.8  # a real, partial mask
    for name, (record, mask) in results.items():
        assert record["n_slices"] == SHAPE[2]
        for mine, theirs in zip(record["slices"], reference["slices"], strict=True):
            assert mine["type_probabilities"] == pytest.approx(theirs["type_probabilities"], abs=1e-6), name  # fmt: skip
        np.testing.assert_array_equal(mask, reference_mask, err_msg=name)


def test_voxel_sizes_give_mm2_and_ml(half_tumour, tmp_path, capsys):
    """LPS_AFFINE's voxel sizes are (1, 2, 3) mm: a plane's pixel is 2 mm (rows, y) × 1 mm
    (columns, x) = 2 mm², the planes 3 mm apart."""
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(volume(), LPS_AFFINE), str(path))
    (record,) = run_json(capsys, "--checkpoint", str(half_tumour), "--input", str(path))["patients"]
    assert record["pixel_spacing_mm"] == [2.0, 1.0] and record["slice_spacing_mm"] == 3.0
    for entry in record["slices"]:
        assert entry["tumour_area_mm2"] == pytest.approx(2.0 * entry["tumour_area_px"])
    assert record["tumour_volume_ml"] == pytest.approx(record["tumour_area_px"] * 2.0 * 3.0 / 1000)


def test_4d_volume_needs_volume_index(half_tumour, tmp_path, capsys):
    first, second = volume(), volume()[::-1].copy()
    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([first, second], axis=-1), LPS_AFFINE), str(path))
    base = ["-q", "predict", "--engine", "torch", "--checkpoint", str(half_tumour), "--input", str(path)]  # fmt: skip
    capsys.readouterr()
    assert main(base) == 2
    assert "--volume_index" in capsys.readouterr().err
    assert main([*base, "--volume_index", "2"]) == 2
    capsys.readouterr()
    for index, alone in ((0, first), (1, second)):
        single = tmp_path / f"v{index}.nii.gz"
        nib.save(nib.Nifti1Image(alone, LPS_AFFINE), str(single))
        (picked,) = run_json(capsys, "--checkpoint", str(half_tumour), "--input", str(path), "--volume_index", str(index))["patients"]  # fmt: skip
        (want,) = run_json(capsys, "--checkpoint", str(half_tumour), "--input", str(single))["patients"]  # fmt: skip
        assert picked["type_probabilities"] == pytest.approx(want["type_probabilities"], abs=1e-6)
        assert [s["tumour_area_px"] for s in picked["slices"]] == [s["tumour_area_px"] for s in want["slices"]]  # fmt: skip


def test_volume_index_applies_to_a_patient_folder(half_tumour, tmp_path, capsys):
    folder = tmp_path / "P1"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.stack([volume(), volume()[::-1].copy()], -1), LPS_AFFINE), str(folder / "dwi.nii.gz"))  # fmt: skip
    nib.save(nib.Nifti1Image(volume()[::-1].copy(), LPS_AFFINE), str(tmp_path / "second.nii.gz"))
    (picked,) = run_json(capsys, "--checkpoint", str(half_tumour), "--input", str(folder), "--volume_index", "1")["patients"]  # fmt: skip
    (want,) = run_json(capsys, "--checkpoint", str(half_tumour), "--input", str(tmp_path / "second.nii.gz"))["patients"]  # fmt: skip
    assert picked["type_probabilities"] == pytest.approx(want["type_probabilities"], abs=1e-6)

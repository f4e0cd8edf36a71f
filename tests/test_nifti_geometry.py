"""NIfTI geometry: whatever voxel order a file stores, ``io`` reads the same axial planes (LPS
voxel order, radiological display), and ``to_input_geometry`` goes back to the file's own grid.

The storages are built here by hand (axes permuted and flipped, the affine changed so that every
voxel keeps its world position), so the expectations never come from nibabel's orientation code.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mritumor.data.reading import io

SHAPE = (6, 7, 5)  # x (right → left), y (anterior → posterior), z (inferior → superior)
ZOOMS = (1.0, 2.0, 3.0)
# LPS voxel axes: voxel x runs towards the patient's left = world (RAS) x decreasing, etc.
LPS_AFFINE = np.array([[-1.0, 0, 0, 12.5], [0, -2.0, 0, 30.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])


def lps_volume() -> np.ndarray:
    """Distinct values, so any misplaced voxel shows."""
    rng = np.random.default_rng(7)
    return (rng.permutation(int(np.prod(SHAPE))) + 1).reshape(SHAPE).astype(np.float32)


def stored_as(
    volume: np.ndarray, affine: np.ndarray, order: tuple[int, int, int], flipped: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with the file's axis m holding the LPS axis ``order[m]``, the LPS
    axes in ``flipped`` reversed; the affine follows so that each voxel keeps its world point."""
    data = volume
    to_lps = np.eye(4)  # file voxel → LPS voxel, built as (flip) @ (permutation)
    for axis in flipped:
        data = np.flip(data, axis)
        to_lps[axis, axis], to_lps[axis, 3] = -1, volume.shape[axis] - 1
    data = np.ascontiguousarray(np.transpose(data, order))
    permutation = np.zeros((4, 4))
    permutation[3, 3] = 1
    for m, axis in enumerate(order):
        permutation[axis, m] = 1
    return data, affine @ to_lps @ permutation


STORAGES = {
    "as_is": ((0, 1, 2), ()),
    "sagittal": ((1, 2, 0), ()),  # slices along x; in-plane y, z (a sagittal acquisition)
    "sagittal_head_first": ((1, 2, 0), (2,)),  # ... with superior at the top row
    "y_flipped": ((0, 1, 2), (1,)),
    "coronal_flipped": ((0, 2, 1), (0, 2)),
}


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(params=sorted(STORAGES))
def stored(request, tmp_path: Path):
    order, flipped = STORAGES[request.param]
    data, affine = stored_as(lps_volume(), LPS_AFFINE, order, flipped)
    path = save(tmp_path / f"{request.param}.nii.gz", data, affine)
    return path, data, affine, order


def test_every_storage_gives_the_same_axial_planes(stored):
    path, _, _, _ = stored
    volume = lps_volume()
    read = io.read_nifti(path)
    assert read.n_axial == io.nifti_slice_count(path) == SHAPE[2]
    np.testing.assert_array_equal(read.data, volume)
    for k in range(SHAPE[2]):
        expected = volume[:, :, k].T  # rows anterior → posterior, columns right → left
        np.testing.assert_array_equal(read.axial(k), expected)
        np.testing.assert_array_equal(io.read_image(path, k)[0], expected)


def test_to_input_geometry_gives_back_the_stored_array(stored):
    path, data, _, _ = stored
    read = io.read_nifti(path)
    back = read.to_input_geometry(read.data)
    assert back.shape == data.shape
    np.testing.assert_array_equal(back, data)
    mask = (read.data > read.data.mean()).astype(np.uint8)
    stored_mask = read.to_input_geometry(mask)
    assert stored_mask.dtype == np.uint8
    np.testing.assert_array_equal(stored_mask, (data > read.data.mean()).astype(np.uint8))


@pytest.mark.parametrize("voxel", [(0, 0, 0), (5, 1, 3), (2, 6, 4)])
def test_a_marked_voxel_keeps_its_world_position(stored, voxel):
    path, _, affine, _ = stored
    read = io.read_nifti(path)
    np.testing.assert_allclose(read.affine, LPS_AFFINE)
    mask = np.zeros(SHAPE, np.uint8)
    mask[voxel] = 1
    (in_file,) = np.argwhere(read.to_input_geometry(mask))
    world_in_file = affine @ np.append(in_file, 1)
    np.testing.assert_allclose(world_in_file, LPS_AFFINE @ np.append(voxel, 1))
    np.testing.assert_allclose(world_in_file, read.affine @ np.append(voxel, 1))


def test_voxel_sizes_follow_the_axes(stored):
    path, _, _, order = stored
    assert nib.load(str(path)).header.get_zooms() == tuple(ZOOMS[axis] for axis in order)
    assert io.read_nifti(path).zooms == ZOOMS


def test_masks_are_read_through_the_same_reorientation(stored, tmp_path: Path):
    """The data layer reads a mask volume plane by plane with read_mask: the planes it gets are
    the image's planes (here the mask marks values above the median)."""
    path, data, affine, _ = stored
    mask_path = save(tmp_path / "mask.nii.gz", (data > np.median(data)).astype(np.uint8), affine)
    volume = lps_volume()
    for k in range(SHAPE[2]):
        np.testing.assert_array_equal(
            io.read_mask(mask_path, k), volume[:, :, k].T > np.median(volume)
        )


def test_ras_identity_volume_is_flipped_in_x_and_y(tmp_path: Path):
    """Identity affine: voxel axes run towards Right, Anterior, Superior. In LPS order x and y
    are reversed, so plane k is raw[::-1, ::-1, k].T: its top-left pixel is the most anterior,
    most right voxel, raw[-1, -1, k]."""
    raw = lps_volume()
    path = save(tmp_path / "ras.nii", raw, np.eye(4))
    for k in range(SHAPE[2]):
        plane = io.read_image(path, k)[0]
        np.testing.assert_array_equal(plane, raw[::-1, ::-1, k].T)
        assert plane[0, 0] == raw[-1, -1, k] and plane[-1, -1] == raw[0, 0, k]
    np.testing.assert_array_equal(
        io.read_nifti(path).to_input_geometry(io.read_nifti(path).data), raw
    )


def test_brats_style_volume_reads_as_it_always_did(tmp_path: Path):
    """BraTS volumes carry diag(-1, -1, 1): already LPS, so plane k stays raw[:, :, k].T."""
    raw = lps_volume()
    path = save(tmp_path / "brats.nii.gz", raw, np.diag([-1.0, -1.0, 1.0, 1.0]))
    for k in range(SHAPE[2]):
        np.testing.assert_array_equal(io.read_image(path, k)[0], raw[:, :, k].T)


def test_intensity_scaling_is_applied(tmp_path: Path):
    """float data stored as int16 with scl_slope / scl_inter: values come back scaled, as
    np.asarray(dataobj) gives them, reoriented like the rest (here: the RAS x, y flip)."""
    raw = lps_volume() * 0.37 - 20
    image = nib.Nifti1Image(raw, np.eye(4))
    image.set_data_dtype(np.int16)
    path = tmp_path / "scaled.nii"
    nib.save(image, str(path))
    proxy = nib.load(str(path)).dataobj
    slope = float(proxy.slope)
    assert slope != 1.0 and float(proxy.inter) != 0.0  # the file really is scaled
    stored = np.asarray(proxy).astype(np.float32)
    np.testing.assert_allclose(stored, raw, atol=abs(slope))
    read = io.read_nifti(path)
    np.testing.assert_array_equal(read.data, stored[::-1, ::-1, :])
    np.testing.assert_array_equal(io.read_image(path, 2)[0], stored[::-1, ::-1, 2].T)


def four_d(tmp_path: Path, volumes: int) -> tuple[Path, list[np.ndarray]]:
    """``volumes`` volumes stored sagittally in one 4-D file (the fourth axis untouched)."""
    contents = [lps_volume() * (t + 1) + t for t in range(volumes)]
    stored = [stored_as(v, LPS_AFFINE, (1, 2, 0), ())[0] for v in contents]
    _, affine = stored_as(contents[0], LPS_AFFINE, (1, 2, 0), ())
    path = save(tmp_path / f"four_d_{volumes}.nii.gz", np.stack(stored, axis=-1), affine)
    return path, contents


def test_4d_file_needs_a_volume_index(tmp_path: Path):
    path, contents = four_d(tmp_path, 3)
    for read_it in (
        lambda: io.read_nifti(path),
        lambda: io.read_image(path, 0),
        lambda: io.nifti_slice_count(path),
    ):
        with pytest.raises(io.SliceReadError, match=r"3 volumes.*--volume_index N \(0 to 2\)"):
            read_it()
    for index in range(3):
        read = io.read_nifti(path, volume_index=index)
        assert read.volume_index == index
        np.testing.assert_array_equal(read.data, contents[index])
        np.testing.assert_array_equal(read.axial(1), contents[index][:, :, 1].T)
    for index in (3, -1):
        with pytest.raises(io.SliceReadError, match=rf"volume index {index} outside .* 3 volume"):
            io.read_nifti(path, volume_index=index)


def test_4d_file_with_one_volume_is_read_as_3d(tmp_path: Path):
    path, (volume,) = four_d(tmp_path, 1)
    read = io.read_nifti(path)
    assert read.input_shape == (7, 5, 6, 1) and read.volume_index is None
    np.testing.assert_array_equal(read.data, volume)
    assert io.nifti_slice_count(path) == SHAPE[2]
    np.testing.assert_array_equal(io.read_image(path, 4)[0], volume[:, :, 4].T)
    np.testing.assert_array_equal(
        read.to_input_geometry(read.data), np.asarray(nib.load(str(path)).dataobj)[..., 0]
    )


def test_singular_affine_keeps_the_stored_order(tmp_path: Path):
    """An sform of zeros says nothing of the orientation: the voxels are read as stored."""
    raw = lps_volume()
    header = nib.Nifti1Header()
    header.set_data_shape(raw.shape)
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code="scanner")
    path = tmp_path / "singular.nii"
    nib.save(nib.Nifti1Image(raw, None, header), str(path))
    np.testing.assert_array_equal(io.read_image(path, 3)[0], raw[:, :, 3].T)
    np.testing.assert_array_equal(io.read_nifti(path).data, raw)


def test_unknown_voxel_sizes_are_none():
    identity = np.array([[0, 1], [1, 1], [2, 1]])
    assert io._reoriented_zooms((0.0, 2.5, float("nan")), identity) == (None, 2.5, None)
    assert io._reoriented_zooms((1.5, 2.5), identity) == (1.5, 2.5, None)


def test_axial_plane_outside_the_volume_is_refused(tmp_path: Path):
    path = save(tmp_path / "v.nii", lps_volume(), LPS_AFFINE)
    with pytest.raises(io.SliceReadError, match="axial slice 5 outside the volume's 5 slices"):
        io.read_image(path, 5)
    with pytest.raises(io.SliceReadError, match="axial slice 5 outside"):
        io.read_nifti(path).axial(5)

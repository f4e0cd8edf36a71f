"""Decoding one slice (image or mask) from any supported file, with size checks before allocation.

Every function raises :class:`SliceReadError` with a reason a user can act on; callers turn
it into a counted, skipped :class:`~mritumor.data.catalog.Problem`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# Refuse anything larger before decoding: a 16k × 16k slice is far beyond any MRI and is the
# signature of a decompression bomb. (PIL's own guard only warns below 2× its limit.)
MAX_PIXELS = 8192 * 8192
MAX_CHANNELS = 16

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
NUMPY_SUFFIXES = {".npy"}
NIFTI_SUFFIXES = {".nii", ".nii.gz"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
MAT_SUFFIXES = {".mat"}


class SliceReadError(Exception):
    """A file could not be decoded as a slice; the message says why."""


def suffix_of(path: str | Path) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their extension."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def check_size(shape: tuple[int, ...], path) -> None:
    if any(int(s) <= 0 for s in shape):
        raise SliceReadError(f"empty image of shape {tuple(shape)}")
    pixels = int(np.prod([int(s) for s in shape[:2]], dtype=np.int64))
    if pixels > MAX_PIXELS:
        raise SliceReadError(
            f"image of {shape[0]}×{shape[1]} pixels exceeds the limit of {MAX_PIXELS} "
            "(refused before decoding: possible decompression bomb)"
        )


def read_image(path: str | Path, frame: int = -1) -> np.ndarray:
    """The slice as float32 (C, H, W). Grayscale gives C = 1, RGB C = 3 (alpha dropped)."""
    array = _read_raw(Path(path), frame, kind="image")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)  # (H, W, C) → (C, H, W)
    else:
        raise SliceReadError(f"expected a 2-D slice, got an array of shape {array.shape}")
    if array.shape[0] > MAX_CHANNELS:
        raise SliceReadError(f"{array.shape[0]} channels (at most {MAX_CHANNELS} supported)")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise SliceReadError("image contains NaN or infinite values")
    return array


def read_mask(path: str | Path, frame: int = -1) -> np.ndarray:
    """The mask as bool (H, W). Values must be 0/1 or 0/255; anything else is refused so that a
    probability map or a JPEG-damaged mask is never silently binarised."""
    array = _read_raw(Path(path), frame, kind="mask")
    if array.ndim == 3:
        if array.shape[-1] in (3, 4) and np.array_equal(array[..., 0], array[..., 1]):
            array = array[..., 0]
        else:
            raise SliceReadError(f"mask must be single-channel, got shape {array.shape}")
    if array.ndim != 2:
        raise SliceReadError(f"mask must be 2-D, got shape {array.shape}")
    values = np.unique(array)
    if not set(values.tolist()) <= {0, 1, 255}:
        shown = values[:6].tolist()
        raise SliceReadError(f"mask values must be 0/1 or 0/255, found {shown}")
    return array > 0


def image_header_shape(path: str | Path, frame: int = -1) -> tuple[int, int]:
    """(H, W) from the file header when cheap, else from decoding."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in RASTER_SUFFIXES:
        from PIL import Image

        with Image.open(path) as image:
            return image.height, image.width
    return tuple(read_image(path, frame).shape[1:])


def _read_raw(path: Path, frame: int, kind: str) -> np.ndarray:
    # A FIFO or device named like an image would block or stream forever in open(): refused
    # without opening it, as is a symbolic link that is broken or loops.
    if not path.exists():
        raise SliceReadError(
            "broken or looping symbolic link" if path.is_symlink() else "file not found"
        )
    if not path.is_file():
        raise SliceReadError("not a regular file")
    if path.stat().st_size == 0:
        raise SliceReadError("empty file (0 bytes)")
    suffix = suffix_of(path)
    try:
        if suffix in RASTER_SUFFIXES:
            return _read_raster(path)
        if suffix in NUMPY_SUFFIXES:
            return _read_npy(path)
        if suffix in NIFTI_SUFFIXES:
            return _read_nifti_slice(path, frame)
        if suffix in MAT_SUFFIXES:
            return _read_figshare_mat(path, kind)
        if suffix in DICOM_SUFFIXES or is_dicom_file(path):
            return _read_dicom(path, frame)
    except SliceReadError:
        raise
    except MemoryError as error:
        raise SliceReadError("not enough memory to decode") from error
    except Exception as error:  # decoder libraries raise many types; the reason is what matters
        raise SliceReadError(f"cannot decode ({type(error).__name__}: {error})") from error
    raise SliceReadError(f"unsupported file type {suffix or '(no extension)'}")


def _read_raster(path: Path) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            check_size((image.height, image.width), path)
            if getattr(image, "n_frames", 1) > 1:
                raise SliceReadError(
                    f"multi-page image ({image.n_frames} pages); one slice expected"
                )
            image.load()  # a truncated file fails here, not later
            if image.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "HSV", "1"):
                image = image.convert("L" if image.mode in ("LA", "1") else "RGB")
            array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 3 and _channels_equal(array):
        array = array[..., 0]  # gray stored as RGB: one channel is the truth
    return array


def _channels_equal(array: np.ndarray) -> bool:
    return np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
        array[..., 0], array[..., 2]
    )


def _read_npy(path: Path) -> np.ndarray:
    """The header is read and checked first (shape, dtype, whether the file holds all the bytes
    it promises), so a huge or truncated array is refused with its reason before mapping it.
    Pickled object arrays are never loaded."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise SliceReadError(f"unsupported .npy format version {version[0]}.{version[1]}")
        offset = handle.tell()
    if dtype.hasobject:
        raise SliceReadError("array of Python objects (pickled data is never loaded)")
    if dtype.kind not in "biuf":
        raise SliceReadError(f"unsupported array dtype {dtype}")
    if len(shape) not in (2, 3):
        raise SliceReadError(f"expected a 2-D slice, got an array of shape {tuple(shape)}")
    check_size(shape, path)
    if int(np.prod(shape, dtype=np.int64)) > MAX_PIXELS * MAX_CHANNELS:
        raise SliceReadError(f"array of shape {tuple(shape)} exceeds the size limit")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < expected:
        raise SliceReadError(
            f"truncated .npy file ({path.stat().st_size} bytes, the header promises {expected})"
        )
    header = np.load(path, mmap_mode="r", allow_pickle=False)
    if header.ndim == 3 and header.shape[0] <= MAX_CHANNELS and header.shape[-1] > MAX_CHANNELS:
        return np.moveaxis(np.asarray(header), 0, -1)  # stored channel-first
    return np.asarray(header)


def _read_nifti_slice(path: Path, frame: int) -> np.ndarray:
    import nibabel as nib

    volume = nib.load(str(path))
    shape = volume.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise SliceReadError(f"NIfTI volume must be 3-D, got shape {volume.shape}")
    check_size(shape, path)
    if not 0 <= frame < shape[2]:
        raise SliceReadError(f"axial slice {frame} outside the volume's {shape[2]} slices")
    data = np.asarray(
        volume.dataobj[:, :, frame] if len(volume.shape) == 3 else volume.dataobj[:, :, frame, 0]
    )
    # NIfTI stores (x, y): transpose so rows run anterior→posterior as in radiological views.
    return np.ascontiguousarray(data.T)


def nifti_slice_count(path: Path) -> int:
    import nibabel as nib

    shape = nib.load(str(path)).shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise SliceReadError(f"NIfTI volume must be 3-D, got shape {shape}")
    check_size(shape, path)
    if shape[2] == 0:
        raise SliceReadError("NIfTI volume has no slices")
    return int(shape[2])


def _read_dicom(path: Path, frame: int) -> np.ndarray:
    import pydicom

    dataset = pydicom.dcmread(path)
    if "PixelData" not in dataset:
        raise SliceReadError("DICOM file has no pixel data")
    check_size((int(dataset.Rows), int(dataset.Columns)), path)
    pixels = dataset.pixel_array
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[max(frame, 0)]
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


def _read_figshare_mat(path: Path, kind: str) -> np.ndarray:
    """Figshare brain-tumour release: MATLAB v7.3 (HDF5) with group ``cjdata``."""
    import h5py

    with h5py.File(path, "r") as handle:
        if "cjdata" not in handle:
            raise SliceReadError("MATLAB file has no 'cjdata' group (not a Figshare slice)")
        group = handle["cjdata"]
        key = "image" if kind == "image" else "tumorMask"
        if key not in group or not isinstance(group[key], h5py.Dataset):
            raise SliceReadError(f"'cjdata/{key}' missing")
        dataset = group[key]
        if dataset.dtype.kind not in "biuf" or dataset.ndim != 2:
            raise SliceReadError(
                f"'cjdata/{key}' must be a 2-D numeric array, got {dataset.dtype} {dataset.shape}"
            )
        check_size(dataset.shape, path)
        # h5py returns MATLAB's column-major arrays transposed.
        return np.ascontiguousarray(dataset[()].T)

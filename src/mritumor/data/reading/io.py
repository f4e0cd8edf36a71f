"""Decoding one slice (image or mask) from any supported file, with size checks before allocation.

Every function raises :class:`SliceReadError` with a reason a user can act on; callers turn
it into a counted, skipped :class:`~mritumor.data.reading.catalog.Problem`.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

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
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their extension. A data set saved
    without that header is recognised by its first element and confirmed by pydicom; any other
    file (text, random bytes) is not DICOM. Cheap: called on every file without an extension."""
    head = _read_head(path, 132)
    if head is None:
        return False
    if _has_dicom_prefix(head):
        return True
    if not any(
        _plausible_first_element(head[o : o + 8]) for o in range(RAW_DATASET_MAX_OFFSET + 1)
    ):
        return False  # the usual non-DICOM file stops here, without reading further
    return _raw_dataset_offset(_read_head(path, RAW_DATASET_PROBE_BYTES) or b"") is not None


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


# --- NIfTI --------------------------------------------------------------------------------------

# Voxels are reoriented to the closest LPS order (x towards the patient's left, y posterior,
# z superior), not to nibabel's RAS canonical: in LPS order ``data[:, :, k].T`` is the axial plane
# with anterior at the top and the patient's right on the image's left (radiological, DICOM's
# display convention). BraTS-style volumes (affine diag(-1, -1, 1)) are already LPS, so every
# plane read from them is the plane this module read before it reoriented anything.
LPS_AXES = ("L", "P", "S")
# A whole volume is loaded (as float32) only below this many voxels: 1024³, 4 GiB.
MAX_VOXELS = 1024**3


@dataclass(frozen=True, eq=False)
class NiftiVolume:
    """A NIfTI volume with its voxels in LPS order, and what is needed to go back to the input's
    own voxel grid (to write a mask that overlays the input)."""

    data: np.ndarray  # (x, y, z) float32 in LPS order, scl_slope/scl_inter applied
    input_shape: tuple[int, ...]  # the shape stored in the file (4-D included)
    input_affine: np.ndarray  # the file's voxel → world (RAS mm) affine
    header: Any  # the file's nibabel header
    transform: np.ndarray  # nibabel orientation transform: the file's voxel axes → LPS
    zooms: tuple[float | None, float | None, float | None]  # mm along x, y, z (LPS); None if unset
    volume_index: int | None = None  # which volume of a 4-D file, None for a 3-D one

    @property
    def n_axial(self) -> int:
        return int(self.data.shape[2])

    def axial(self, k: int) -> np.ndarray:
        """Axial plane ``k`` (inferior → superior) as (H, W), exactly as :func:`read_image`
        returns it: rows anterior → posterior, columns patient's right → left."""
        if not 0 <= k < self.n_axial:
            raise SliceReadError(f"axial slice {k} outside the volume's {self.n_axial} slices")
        return np.ascontiguousarray(self.data[:, :, k].T)

    @property
    def affine(self) -> np.ndarray:
        """Voxel → world affine of :attr:`data` (the reoriented grid)."""
        from nibabel.orientations import inv_ornt_aff

        return self.input_affine @ inv_ornt_aff(self.transform, self.input_shape[:3])

    def to_input_geometry(self, volume_lps: np.ndarray) -> np.ndarray:
        """An (x, y, z) array in :attr:`data`'s LPS order → the file's own voxel order and 3-D
        shape, so that saved with :attr:`input_affine` it overlays the input (a 4-D input's
        fourth axis is left to the caller)."""
        from nibabel.orientations import apply_orientation

        if volume_lps.shape != self.data.shape:
            raise ValueError(
                f"expected an array of shape {self.data.shape}, got {volume_lps.shape}"
            )
        back = _inverse_orientation(self.transform)
        return np.ascontiguousarray(apply_orientation(volume_lps, back))


def read_nifti(path: str | Path, volume_index: int | None = None) -> NiftiVolume:
    """The whole volume reoriented to LPS voxel order. A 4-D file with several volumes needs
    ``volume_index``; one with a single volume is read as 3-D."""
    from nibabel.orientations import apply_orientation

    path = Path(path)
    image = _load_nifti(path)
    shape = _spatial_shape(image.shape, volume_index)
    transform = _lps_transform(image.affine)
    lps_shape = _reoriented_shape(shape, transform)
    check_size(lps_shape, path)
    if int(np.prod(lps_shape, dtype=np.int64)) > MAX_VOXELS:
        raise SliceReadError(f"volume of shape {shape} exceeds the limit of {MAX_VOXELS} voxels")
    stored = image.dataobj if len(image.shape) == 3 else image.dataobj[..., volume_index or 0]
    data = apply_orientation(np.asarray(stored), transform).astype(np.float32)
    return NiftiVolume(
        data=np.ascontiguousarray(data),
        input_shape=tuple(int(s) for s in image.shape),
        input_affine=np.asarray(image.affine, dtype=np.float64),
        header=image.header,
        transform=transform,
        zooms=_reoriented_zooms(image.header.get_zooms(), transform),
        volume_index=volume_index if len(image.shape) == 4 else None,
    )


def nifti_slice_count(path: Path, volume_index: int | None = None) -> int:
    """The number of axial planes (along LPS z, whatever axis the file stores it on); a 4-D
    file with several volumes needs ``volume_index``."""
    image = _load_nifti(path)
    shape = _spatial_shape(image.shape, volume_index)
    lps_shape = _reoriented_shape(shape, _lps_transform(image.affine))
    check_size(lps_shape, path)
    return lps_shape[2]


def _read_nifti_slice(path: Path, frame: int) -> np.ndarray:
    """Axial plane ``frame`` as :meth:`NiftiVolume.axial` gives it, reading only that plane's
    voxels from the file (the data layer reads one plane at a time)."""
    from nibabel.orientations import apply_orientation

    image = _load_nifti(path)
    shape = _spatial_shape(image.shape, None)
    transform = _lps_transform(image.affine)
    lps_shape = _reoriented_shape(shape, transform)
    check_size(lps_shape, path)
    if not 0 <= frame < lps_shape[2]:
        raise SliceReadError(f"axial slice {frame} outside the volume's {lps_shape[2]} slices")
    z_axis = int(np.flatnonzero(transform[:, 0] == 2)[0])  # the file's axis that becomes z
    index = frame if transform[z_axis, 1] > 0 else shape[z_axis] - 1 - frame
    slicer: list[int | slice] = [slice(None)] * len(image.shape)
    slicer[z_axis] = index
    if len(image.shape) == 4:
        slicer[3] = 0
    plane = np.asarray(image.dataobj[tuple(slicer)])  # the two other axes, in the file's order
    in_plane = transform[[axis for axis in range(3) if axis != z_axis]]  # → targets x, y
    xy = apply_orientation(plane, in_plane).astype(np.float32)
    return np.ascontiguousarray(xy.T)


def _load_nifti(path: Path) -> Any:
    """The NIfTI image (header read, voxels not yet: ``dataobj`` reads them on demand)."""
    import nibabel as nib

    return nib.load(str(path))


def _spatial_shape(shape: tuple[int, ...], volume_index: int | None) -> tuple[int, int, int]:
    """The (x, y, z) shape of the volume to read; refuses what is not one 3-D volume."""
    volumes = int(shape[3]) if len(shape) == 4 else 1
    if len(shape) not in (3, 4):
        raise SliceReadError(f"NIfTI volume must be 3-D, got shape {tuple(shape)}")
    if volume_index is None and volumes > 1:
        raise SliceReadError(
            f"NIfTI volume must be 3-D: this 4-D file holds {volumes} volumes (shape "
            f"{tuple(shape)}); pick one with --volume_index N (0 to {volumes - 1})"
        )
    if volume_index is not None and not 0 <= volume_index < volumes:
        raise SliceReadError(
            f"volume index {volume_index} outside the file's {volumes} volume(s) "
            f"(0 to {volumes - 1})"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])


def _lps_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the file's voxel axes to the closest LPS axes."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    stored = io_orientation(affine)
    if np.isnan(stored).any():
        # A singular affine (voxel sizes of 0, no qform/sform) says nothing of the orientation:
        # the voxels are taken as stored, as they always were.
        return np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    return ornt_transform(stored, axcodes2ornt(LPS_AXES))


def _inverse_orientation(transform: np.ndarray) -> np.ndarray:
    """The transform that undoes ``transform``: LPS axis ``target`` goes back to the file's
    axis, flipped the same way."""
    inverse = np.zeros_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inverse[int(target)] = (axis, flip)
    return inverse


def _reoriented_shape(shape: tuple[int, int, int], transform: np.ndarray) -> tuple[int, int, int]:
    lps = [0, 0, 0]
    for axis, (target, _) in enumerate(transform):
        lps[int(target)] = shape[axis]
    return lps[0], lps[1], lps[2]


def _reoriented_zooms(
    zooms: tuple[float, ...], transform: np.ndarray
) -> tuple[float | None, float | None, float | None]:
    """Voxel sizes along the LPS axes; a size the header leaves at 0 (or gives no value, or not a
    finite one) is None: unknown, not zero."""
    lps: list[float | None] = [None, None, None]
    for axis, (target, _) in enumerate(transform):
        size = float(zooms[axis]) if axis < len(zooms) else 0.0
        lps[int(target)] = size if np.isfinite(size) and size > 0 else None
    return lps[0], lps[1], lps[2]


# --- DICOM --------------------------------------------------------------------------------------

DICOM_PREFIX = b"DICM"  # at byte 128, after the preamble, in DICOM Part 10 files
# A data set written without preamble and File Meta Information (ACR-NEMA style exports, raw
# data sets from some tools) starts with a group-0x0002 or 0x0008 element. pydicom's own
# no_meta.dcm has one stray byte before the data set: the first few offsets are tried.
RAW_DATASET_MAX_OFFSET = 4
RAW_DATASET_GROUPS = (0x0002, 0x0008)
# pydicom parses the header from at most this many bytes when it checks a raw data set: a header
# is far smaller, and a large non-DICOM file whose first bytes look right is never read whole.
RAW_DATASET_PROBE_BYTES = 1 << 20
_VALUE_REPRESENTATIONS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)

# Which package decodes each compressed transfer syntax (pydicom's decoder plugins).
_PYLIBJPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pip install pylibjpeg pylibjpeg-openjpeg"
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.50": _PYLIBJPEG,  # JPEG Baseline (also Pillow)
    "1.2.840.10008.1.2.4.51": _PYLIBJPEG,  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": _PYLIBJPEG,  # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70": _PYLIBJPEG,  # JPEG Lossless, process 14, SV1
    "1.2.840.10008.1.2.4.80": "pip install pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pip install pyjpegls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _OPENJPEG,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # HTJ2K
}
_CONVERT_FIRST = (
    "convert the file to an uncompressed transfer syntax first (e.g. `gdcmconv --raw` or "
    "DCMTK's `dcmdjpeg`)"
)


def _read_head(path: Path, size: int) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def _has_dicom_prefix(head: bytes) -> bool:
    return head[128:132] == DICOM_PREFIX


def _raw_dataset_offset(head: bytes) -> int | None:
    """Where a DICOM data set without preamble starts in ``head`` (the file's first bytes), or
    None: a plausible first element header, confirmed by pydicom finding an SOP Class UID or an
    image size in it."""
    for offset in range(RAW_DATASET_MAX_OFFSET + 1):
        if _plausible_first_element(head[offset : offset + 8]) and _confirmed_dataset(
            head[offset:]
        ):
            return offset
    return None


def _plausible_first_element(header: bytes) -> bool:
    """A group-0x0002/0x0008 tag followed by an explicit VR or, for implicit VR (always little
    endian), a short value length."""
    if len(header) < 8:
        return False
    for order in "<>":
        group, _ = struct.unpack(f"{order}HH", header[:4])
        if group not in RAW_DATASET_GROUPS:
            continue
        if header[4:6] in _VALUE_REPRESENTATIONS:
            return True
        if order == "<" and struct.unpack("<I", header[4:8])[0] < 0x10000:
            return True
    return False


def _confirmed_dataset(buffer: bytes) -> bool:
    import pydicom
    from pydicom.uid import UID

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(BytesIO(buffer), force=True, stop_before_pixels=True)
            sop_class = dataset.get("SOPClassUID")
            if sop_class is not None and UID(str(sop_class)).is_valid:
                return True
            return int(dataset.get("Rows") or 0) > 0 and int(dataset.get("Columns") or 0) > 0
    except Exception:  # whatever pydicom makes of a file that is not DICOM
        return False


def _read_dicom(path: Path, frame: int) -> np.ndarray:
    """One frame as modality values (rescale or Modality LUT applied), MONOCHROME1 turned into
    MONOCHROME2 (brighter = more signal), YBR colour converted to RGB by pydicom."""
    dataset = read_dicom_dataset(path)
    if "PixelData" not in dataset:
        raise SliceReadError("DICOM file has no pixel data")
    check_size((int(dataset.Rows), int(dataset.Columns)), path)
    index = _frame_index(dataset, frame)
    pixels, photometric = _decode_frame(dataset, index)
    values = _modality_values(pixels, dataset, index)
    if photometric == "MONOCHROME1":
        values = _as_monochrome2(values, dataset, index)
    return values


def read_dicom_dataset(path: Path, defer_size: int | None = None):
    """The DICOM data set of a file with or without the 128-byte preamble (raises
    SliceReadError when it is neither); ``defer_size``: values larger than this many bytes
    (pixel data) are read only when used, as pydicom's dcmread does."""
    import pydicom

    if _has_dicom_prefix(_read_head(path, 132) or b""):
        return pydicom.dcmread(path, defer_size=defer_size)
    offset = _raw_dataset_offset(_read_head(path, RAW_DATASET_PROBE_BYTES) or b"")
    if offset is None:
        raise SliceReadError(
            "not a DICOM file: no 'DICM' marker at byte 128 and no DICOM data set at its start"
        )
    # force=True only now that a data set was recognised: it would 'read' any file at all.
    return pydicom.dcmread(BytesIO(path.read_bytes()[offset:]), force=True)


def _frame_index(dataset, frame: int) -> int:
    """Frame ``frame`` of a multi-frame file (-1 = the first); a single-frame file has only one."""
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames <= 1:
        return 0
    index = max(frame, 0)
    if index >= frames:
        raise SliceReadError(f"frame {frame} outside the file's {frames} frames")
    return index


def _decode_frame(dataset, index: int) -> tuple[np.ndarray, str]:
    """The frame's pixels decoded by pydicom's decoder for the file's transfer syntax (only that
    frame is decompressed), and the photometric interpretation after decoding: pydicom converts
    YBR_FULL / YBR_FULL_422 (and JPEG's YCbCr) to RGB by default."""
    from pydicom.pixels import get_decoder

    syntax = _transfer_syntax(dataset)
    known = syntax.name != str(syntax)
    label = f"'{syntax.name}' ({syntax})" if known else f"{syntax} (not a known transfer syntax)"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise SliceReadError(
            f"pydicom has no pixel data decoder for the transfer syntax {label}: {_CONVERT_FIRST}"
        ) from None
    hint = _DECODER_PACKAGES.get(str(syntax), _CONVERT_FIRST)
    if not decoder.is_available:
        raise SliceReadError(f"no decoder installed for the transfer syntax {label}: {hint}")
    try:
        pixels, meta = decoder.as_array(dataset, index=index)
    except MemoryError:
        raise
    except Exception as error:  # the plugins raise many types; the syntax and reason matter
        reason = " ".join(str(error).split())[:400]
        advice = f"; another decoder may read it: {hint}" if syntax.is_compressed else ""
        raise SliceReadError(
            f"cannot decode the {label} pixel data ({type(error).__name__}: {reason}): the file "
            f"may be damaged{advice}"
        ) from error
    photometric = meta.get("photometric_interpretation") or dataset.get("PhotometricInterpretation")
    return pixels, str(photometric or "")


def _transfer_syntax(dataset):
    """The file's transfer syntax; a data set without File Meta Information gets the one pydicom
    found while reading it (native pixel data only: compressed data says nothing of its codec)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return UID(str(meta.TransferSyntaxUID))
    if dataset["PixelData"].is_undefined_length:
        raise SliceReadError(
            "compressed DICOM pixel data without a transfer syntax (no File Meta Information): "
            "its codec is unknown"
        )
    implicit, little_endian = dataset.original_encoding
    if implicit:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax  # pydicom's decoders read it from there
    return syntax


def _modality_values(pixels: np.ndarray, dataset, index: int) -> np.ndarray:
    """Stored values → modality values: the Modality LUT Sequence (by pydicom) when there is
    one, else Rescale Slope / Intercept, looked up as enhanced multi-frame files store them
    (per frame, then shared) before the top level. A missing or zero slope counts as 1."""
    if dataset.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    source = _rescale_source(dataset, index)
    slope = _decimal(source.get("RescaleSlope"), 1.0) or 1.0
    intercept = _decimal(source.get("RescaleIntercept"), 0.0)
    return pixels.astype(np.float32) * slope + intercept


def _rescale_source(dataset, index: int):
    """The item holding the frame's Rescale Slope / Intercept: enhanced multi-frame files keep
    them in the functional groups, other files at the top level."""
    for keyword, item in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        sequence = dataset.get(keyword)
        if not sequence or item >= len(sequence):
            continue
        transformations = sequence[item].get("PixelValueTransformationSequence")
        if transformations and (
            "RescaleSlope" in transformations[0] or "RescaleIntercept" in transformations[0]
        ):
            return transformations[0]
    return dataset


def _decimal(value, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _as_monochrome2(values: np.ndarray, dataset, index: int) -> np.ndarray:
    """MONOCHROME1 displays its lowest value as white. Mirroring the values inside the range the
    stored bits allow, mapped to modality values like the pixels, gives the picture a
    MONOCHROME2 reader expects (brighter = more signal) in the same units."""
    bits = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 16)
    if int(dataset.get("PixelRepresentation") or 0) == 1:
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        stored = np.array([0, 2**bits - 1], dtype=np.int64)
    bounds = _modality_values(stored, dataset, index)
    return (bounds.min() + bounds.max()) - values


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

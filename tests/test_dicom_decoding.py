"""DICOM decoding by ``io.read_image`` on files this project did not write: pydicom's bundled test
files and pydicom-data's, in every common transfer syntax, compared with their uncompressed twins
or with pixels decoded here by hand (numpy on the raw bytes, zlib for deflate). Also: data sets
without preamble, files that are not DICOM, a missing decoder, MONOCHROME1."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pydicom
import pytest
from pydicom.data import data_manager, get_testdata_file, get_testdata_files
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_factory import write_mr_slice
from mritumor.data.reading import io


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not found: pydicom-data must be installed"
    return Path(path)


def bundled_dicom_files() -> list[Path]:
    """Every .dcm pydicom ships or pydicom-data installs, once per name. get_testdata_files
    would also try to download the files of pydicom's online list (seconds per file without a
    network, nothing new with pydicom-data installed): that attempt is switched off."""
    with (
        mock.patch.object(data_manager, "online_test_file_dummy_paths", dict),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        paths = [Path(p) for p in get_testdata_files("*.dcm")]
    by_name: dict[str, Path] = {}
    for path in sorted(paths):
        by_name.setdefault(path.name, path)
    return [by_name[name] for name in sorted(by_name)]


def holds_mr_or_ct_image(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, force=True, defer_size=256)
    except Exception:
        return False
    return header.get("Modality") in ("MR", "CT") and "PixelData" in header


def header_of(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True, stop_before_pixels=True)


def read(path: Path, frame: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's remarks on odd (but readable) headers
        return io.read_image(path, frame)


# pydicom ships this MR file broken on purpose (its Pixel Data is truncated on disk, see the name
# and pydicom's test_files/README.txt): it is left out of the list and must be refused instead.
DELIBERATELY_BROKEN = {"MR_truncated.dcm"}
# Also cut short on purpose, so short that pydicom finds no Pixel Data element: not in the list.
TOO_SHORT = "emri_small_jpeg_2k_lossless_too_short.dcm"
MR_CT_FILES = [p for p in bundled_dicom_files() if holds_mr_or_ct_image(p)]


def test_the_bundled_files_are_there():
    """pydicom-data brings the external files: without it most cases below would vanish."""
    names = {p.name for p in MR_CT_FILES}
    assert len(MR_CT_FILES) >= 25, sorted(names)
    assert {"MR2_J2KI.dcm", "693_J2KR.dcm", "emri_small_RLE.dcm"} <= names  # pydicom-data's
    assert DELIBERATELY_BROKEN <= names and TOO_SHORT not in names


@pytest.mark.parametrize(
    "path", [p for p in MR_CT_FILES if p.name not in DELIBERATELY_BROKEN], ids=lambda p: p.name
)
def test_every_bundled_mr_and_ct_image_decodes(path: Path):
    header = header_of(path)
    image = read(path, 0)
    samples = int(header.get("SamplesPerPixel") or 1)
    assert image.dtype == np.float32
    assert image.shape == (samples, int(header.Rows), int(header.Columns))
    assert np.isfinite(image).all()
    assert np.unique(image).size > 1  # a picture, not a blank frame


@pytest.mark.parametrize("name", [*sorted(DELIBERATELY_BROKEN), TOO_SHORT])
def test_deliberately_broken_files_are_refused_with_a_reason(name: str):
    with pytest.raises(io.SliceReadError, match=r"pixel data"):
        read(bundled(name))


# --- one case per transfer syntax ---------------------------------------------------------------


def assert_syntax(path: Path, syntax: str) -> None:
    """The case really covers ``syntax``: the file says so."""
    assert header_of(path).file_meta.TransferSyntaxUID == syntax, path.name


LOSSLESS_TWINS = [
    # (compressed or re-encoded file, its transfer syntax, uncompressed twin, frames compared)
    ("MR_small_implicit.dcm", ImplicitVRLittleEndian, "MR_small.dcm", [0]),
    ("MR_small_bigendian.dcm", ExplicitVRBigEndian, "MR_small.dcm", [0]),
    ("emri_small_big_endian.dcm", ExplicitVRBigEndian, "emri_small.dcm", [0, 4, 9]),
    ("MR_small_RLE.dcm", RLELossless, "MR_small.dcm", [0]),
    ("emri_small_RLE.dcm", RLELossless, "emri_small.dcm", [0, 4, 9]),
    ("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, "SC_rgb.dcm", [0]),
    ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "MR_small.dcm", [0]),
    ("emri_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "emri_small.dcm", [0, 4, 9]),
    ("MR_small_jp2klossless.dcm", JPEG2000Lossless, "MR_small.dcm", [0]),
    ("emri_small_jpeg_2k_lossless.dcm", JPEG2000Lossless, "emri_small.dcm", [0, 4, 9]),
    ("MR2_J2KR.dcm", JPEG2000Lossless, "MR2_UNCR.dcm", [0]),
    ("693_J2KR.dcm", JPEG2000Lossless, "693_UNCR.dcm", [0]),
]


@pytest.mark.parametrize(
    "name, syntax, twin, frames", LOSSLESS_TWINS, ids=[case[0] for case in LOSSLESS_TWINS]
)
def test_lossless_syntax_decodes_to_the_uncompressed_twin(name, syntax, twin, frames):
    assert_syntax(bundled(name), syntax)
    assert_syntax(bundled(twin), ExplicitVRLittleEndian)
    for frame in frames:
        np.testing.assert_array_equal(read(bundled(name), frame), read(bundled(twin), frame))


def native_pixels(path: Path, frame: int = 0) -> np.ndarray:
    """Frame ``frame`` of an Explicit VR Little Endian file's 16-bit pixels, straight from the
    bytes (no pydicom decoder involved): the low BitsStored bits of each 16-bit word, sign
    extended when PixelRepresentation is 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.BitsAllocated == 16 and dataset.SamplesPerPixel == 1
    assert dataset.HighBit == dataset.BitsStored - 1
    size, bits = dataset.Rows * dataset.Columns, int(dataset.BitsStored)
    words = np.frombuffer(dataset.PixelData, dtype="<u2", count=size, offset=2 * size * frame)
    values = words.astype(np.int64) & (2**bits - 1)
    if dataset.PixelRepresentation == 1:
        values = np.where(values >= 2 ** (bits - 1), values - 2**bits, values)
    return values.reshape(dataset.Rows, dataset.Columns).astype(np.float64)


@pytest.mark.parametrize("name, frame", [("MR_small.dcm", 0), ("emri_small.dcm", 7)])
def test_explicit_little_endian_is_the_stored_bytes(name: str, frame: int):
    path = bundled(name)
    assert_syntax(path, ExplicitVRLittleEndian)
    assert "RescaleSlope" not in header_of(path)
    np.testing.assert_array_equal(read(path, frame)[0], native_pixels(path, frame))


def test_rescale_slope_and_intercept_give_modality_values():
    """CT_small: slope 1, intercept -1024 → Hounsfield units."""
    path = bundled("CT_small.dcm")
    header = header_of(path)
    assert (float(header.RescaleSlope), float(header.RescaleIntercept)) == (1.0, -1024.0)
    np.testing.assert_array_equal(read(path)[0], native_pixels(path) - 1024)


def test_enhanced_multiframe_rescale_comes_from_the_functional_groups():
    """eCT_Supplemental keeps its intercept (-1024) in the shared functional groups only."""
    path = bundled("eCT_Supplemental.dcm")
    header = header_of(path)
    assert "RescaleIntercept" not in header
    shared = header.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    assert (float(shared.RescaleSlope), float(shared.RescaleIntercept)) == (1.0, -1024.0)
    for frame in (0, 1):
        np.testing.assert_array_equal(read(path, frame)[0], native_pixels(path, frame) - 1024)


def test_modality_lut_sequence_is_applied():
    """mlut_18: stored values index a Modality LUT (entries before its first value map to the
    first entry, after the last to the last)."""
    path = bundled("mlut_18.dcm")
    item = header_of(path).ModalityLUTSequence[0]
    entries, first, bits = item.LUTDescriptor
    assert bits == 16 and item["LUTData"].VR == "US"  # a list of numbers
    lut = np.asarray(item.LUTData, dtype=np.int64)
    assert lut.size == (entries or 65536)
    stored = native_pixels(path).astype(np.int64)
    expected = lut[np.clip(stored - first, 0, lut.size - 1)]
    np.testing.assert_array_equal(read(path)[0], expected)


def inflated_pixels(path: Path) -> np.ndarray:
    """A deflated file's pixels by hand: zlib-inflate what follows the File Meta Information
    (raw deflate, RFC 1951), then take the Pixel Data element's bytes (Explicit VR LE, 8-bit)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"  # group length
    meta_end = 132 + 12 + struct.unpack("<I", data[140:144])[0]
    dataset = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    at = dataset.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    assert dataset[at + 4 : at + 6] in (b"OB", b"OW")
    length = struct.unpack("<I", dataset[at + 8 : at + 12])[0]
    pixels = np.frombuffer(dataset[at + 12 : at + 12 + length], dtype=np.uint8)
    header = header_of(path)
    assert header.BitsAllocated == 8 and header.SamplesPerPixel == 1
    return pixels[: header.Rows * header.Columns].reshape(header.Rows, header.Columns)


def test_deflated_explicit_little_endian_is_the_inflated_bytes():
    path = bundled("image_dfl.dcm")
    assert_syntax(path, DeflatedExplicitVRLittleEndian)
    np.testing.assert_array_equal(read(path)[0], inflated_pixels(path))


def max_level_difference(name: str, twin: str) -> float:
    """The largest difference between a file and its twin, in stored levels (undoing the
    rescale slope both share)."""
    slope = float(header_of(bundled(name)).get("RescaleSlope") or 1)
    return float(np.abs(read(bundled(name)) - read(bundled(twin))).max()) / slope


# Lossy streams whose twin is the SAME stream decoded by another implementation (WG04's _UNCI
# files, DCMTK's "_dcmd" files): the two decoders' integer/float approximations of the inverse
# wavelet (JPEG 2000 9/7) or IDCT and YCbCr → RGB (JPEG) may round differently, by a level or two,
# never more. A wrong decode (bit depth, byte order, colour space) is off by tens to thousands.
LOSSY_SAME_STREAM = [
    ("693_J2KI.dcm", JPEG2000, "693_UNCI.dcm", 1),
    ("MR2_J2KI.dcm", JPEG2000, "MR2_UNCI.dcm", 1),
    ("SC_rgb_dcmtk_+eb+cy+n1.dcm", JPEGBaseline8Bit, "SC_rgb_dcmtk_ebcyn1_dcmd.dcm", 2),
    ("SC_rgb_dcmtk_+eb+cy+n2.dcm", JPEGBaseline8Bit, "SC_rgb_dcmtk_ebcyn2_dcmd.dcm", 2),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", JPEGBaseline8Bit, "SC_rgb_dcmtk_ebcynp_dcmd.dcm", 2),
]


@pytest.mark.parametrize(
    "name, syntax, twin, levels", LOSSY_SAME_STREAM, ids=[c[0] for c in LOSSY_SAME_STREAM]
)
def test_lossy_syntax_decodes_like_another_decoder_of_the_same_stream(name, syntax, twin, levels):
    assert_syntax(bundled(name), syntax)
    assert read(bundled(name)).shape == read(bundled(twin)).shape
    assert max_level_difference(name, twin) <= levels


def jpeg_ls_near(path: Path) -> int:
    """The NEAR parameter of the first JPEG-LS scan: the codec's bound on each sample's error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
    stream = next(generate_frames(dataset.PixelData, number_of_frames=1))
    sos = stream.find(b"\xff\xda")
    components = stream[sos + 4]
    return stream[sos + 5 + 2 * components]


NEAR_LOSSLESS_WITH_TWIN = ["SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm"]


@pytest.mark.parametrize("name", NEAR_LOSSLESS_WITH_TWIN)
def test_jpeg_ls_near_lossless_stays_within_its_near_bound(name: str):
    """JPEG-LS near-lossless guarantees |decoded - original| <= NEAR for every sample."""
    path = bundled(name)
    assert_syntax(path, JPEGLSNearLossless)
    near = jpeg_ls_near(path)
    assert near == 2
    difference = np.abs(read(path) - read(bundled("SC_rgb.dcm")))
    assert difference.max() <= near
    assert difference.max() > 0  # it is lossy: identical pixels would mean the twin was read


def test_jpeg_extended_12_bit_is_close_to_the_lossless_original():
    """JPGExtended (WG04's NM1_JPLY, lossy 12-bit) against JPEG-LL (NM1_JPLL, the same image
    losslessly compressed). The difference is the encoder's loss, not decoder rounding: RMSE
    within 2 % of the image's range and correlation >= 0.98 (measured: 1.3 %, 0.987). A 12-bit
    stream read at the wrong precision or as noise fails both by far."""
    lossy, original = bundled("JPGExtended.dcm"), bundled("JPEG-LL.dcm")
    assert_syntax(lossy, JPEGExtended12Bit)
    assert_syntax(original, JPEGLosslessSV1)
    assert int(header_of(lossy).BitsStored) == 12
    got, expected = read(lossy)[0].astype(np.float64), read(original)[0].astype(np.float64)
    rmse = np.sqrt(np.mean((got - expected) ** 2))
    assert rmse <= 0.02 * (expected.max() - expected.min())
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] >= 0.98


WITHOUT_TWIN = [
    ("JPEG-LL.dcm", JPEGLosslessSV1),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", JPEGLosslessSV1),
    ("bad_sequence.dcm", JPEGLosslessSV1),
    ("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless),
    ("JPEGLSNearLossless_08.dcm", JPEGLSNearLossless),
    ("JPEG2000.dcm", JPEG2000),
    ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit),
]


@pytest.mark.parametrize("name, syntax", WITHOUT_TWIN)
def test_files_without_a_twin_decode_within_their_bit_depth(name: str, syntax: str):
    path = bundled(name)
    assert_syntax(path, syntax)
    header = header_of(path)
    image = read(path)
    assert image.shape == (int(header.SamplesPerPixel), int(header.Rows), int(header.Columns))
    bits, signed = int(header.BitsStored), int(header.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(header.get("RescaleSlope") or 1)
    intercept = float(header.get("RescaleIntercept") or 0)
    assert low * slope + intercept <= image.min() < image.max() <= high * slope + intercept


@pytest.mark.parametrize(
    "name", ["SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm"]
)
def test_native_ybr_colour_is_converted_to_rgb(name: str):
    """Both are SC_rgb_dcmtk_+eb+cy+n2 stored as YBR_FULL (4:2:2 sub-sampled for the second);
    DCMTK's RGB decoding of that stream is the reference, within colour conversion rounding."""
    path = bundled(name)
    assert header_of(path).PhotometricInterpretation.startswith("YBR_FULL")
    assert max_level_difference(name, "SC_rgb_dcmtk_ebcyn2_dcmd.dcm") <= 1


def test_every_listed_transfer_syntax_has_a_case():
    """The syntaxes the files of the cases above are really in (read from each file)."""
    names = [case[0] for case in LOSSLESS_TWINS + LOSSY_SAME_STREAM + WITHOUT_TWIN]
    names += ["MR_small.dcm", "image_dfl.dcm", "JPGExtended.dcm", *NEAR_LOSSLESS_WITH_TWIN]
    covered = {str(header_of(bundled(name)).file_meta.TransferSyntaxUID) for name in names}
    listed = {
        ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit, JPEGExtended12Bit,
        JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
    }  # fmt: skip
    assert listed <= covered, listed - covered


# --- MONOCHROME1 --------------------------------------------------------------------------------


def write_slice(path: Path, pixels: np.ndarray, **tags) -> Path:
    """A generated MR slice (dicom_factory), then ``tags`` changed and the pixels stored in the
    signedness PixelRepresentation asks for."""
    write_mr_slice(
        path, np.zeros(pixels.shape, np.uint16), study_uid="1.2.3", series_uid="1.2.3.4",
        frame_of_reference="1.2.3.5", series_number=1, description="test", instance=1,
        position=[0.0, 0.0, 0.0],
    )  # fmt: skip
    dataset = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dtype = "<i2" if dataset.PixelRepresentation == 1 else "<u2"
    dataset.PixelData = pixels.astype(dtype).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


UNSIGNED_12 = np.array([[0, 1, 100], [2000, 4094, 4095]])
SIGNED_12 = np.array([[-2048, -1, 0], [1, 1000, 2047]])


@pytest.mark.parametrize(
    "pixels, tags, expected",
    [
        # 12 bits unsigned: stored range 0..4095, mirrored: 4095 - p
        (UNSIGNED_12, {}, 4095 - UNSIGNED_12),
        # slope 2, intercept -100: range -100..8090, value 2p - 100 → -100 + 8090 - (2p - 100)
        (UNSIGNED_12, {"RescaleSlope": 2, "RescaleIntercept": -100}, 8090 - 2 * UNSIGNED_12),
        # 12 bits signed: range -2048..2047, mirrored: -1 - p
        (SIGNED_12, {"PixelRepresentation": 1}, -1 - SIGNED_12),
    ],
    ids=["unsigned", "rescaled", "signed"],
)
def test_monochrome1_is_inverted_to_monochrome2(tmp_path: Path, pixels, tags, expected):
    common = {"BitsStored": 12, "HighBit": 11, **tags}
    as_m2 = write_slice(
        tmp_path / "m2.dcm", pixels, PhotometricInterpretation="MONOCHROME2", **common
    )
    as_m1 = write_slice(
        tmp_path / "m1.dcm", pixels, PhotometricInterpretation="MONOCHROME1", **common
    )
    slope, intercept = tags.get("RescaleSlope", 1), tags.get("RescaleIntercept", 0)
    np.testing.assert_array_equal(read(as_m2)[0], pixels * slope + intercept)
    np.testing.assert_array_equal(read(as_m1)[0], expected)


def test_real_monochrome1_radiograph_is_inverted():
    """RG3_UNCR (CR, MONOCHROME1, 10 bits unsigned, no rescale): 1023 - stored."""
    path = bundled("RG3_UNCR.dcm")
    header = header_of(path)
    assert header.PhotometricInterpretation == "MONOCHROME1" and header.BitsStored == 10
    assert header.PixelRepresentation == 0 and "RescaleSlope" not in header
    np.testing.assert_array_equal(read(path)[0], 1023 - native_pixels(path))


# --- data sets without preamble, files that are not DICOM ---------------------------------------


def test_pydicoms_no_meta_file_is_recognised_and_read():
    """no_meta.dcm is CT_small.dcm's data set without preamble or File Meta Information (after
    one stray leading byte)."""
    path = bundled("no_meta.dcm")
    assert path.read_bytes()[128:132] != b"DICM"
    assert io.is_dicom_file(path)
    np.testing.assert_array_equal(read(path), read(bundled("CT_small.dcm")))


def without_file_meta(path: Path) -> bytes:
    """The data set alone: the bytes after the preamble, 'DICM' and the File Meta group."""
    data = path.read_bytes()
    return data[132 + 12 + struct.unpack("<I", data[140:144])[0] :]


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"]
)
@pytest.mark.parametrize("keep_file_meta", [False, True], ids=["data_set_only", "no_preamble"])
def test_raw_data_sets_in_each_native_encoding_are_read(tmp_path, name, keep_file_meta):
    """The data set alone (its encoding found by pydicom), or the File Meta Information and the
    data set without the 128-byte preamble and 'DICM'."""
    data = bundled(name).read_bytes()
    raw = tmp_path / "IM0001"  # no extension: found only by is_dicom_file
    raw.write_bytes(data[132:] if keep_file_meta else without_file_meta(bundled(name)))
    assert io.is_dicom_file(raw)
    np.testing.assert_array_equal(read(raw), read(bundled("MR_small.dcm")))


@pytest.mark.parametrize("name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"])
def test_raw_data_sets_without_pixels_are_dicom_without_pixel_data(name: str):
    path = bundled(name)
    assert io.is_dicom_file(path)
    with pytest.raises(io.SliceReadError, match="no pixel data"):
        read(path)


def not_dicom_files(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = {
        "random": rng.bytes(4096),
        "text": b"Patient notes\nT1 post-contrast, 5 mm, axial\n" * 40,
        "empty": b"",
        "short": b"\x08\x00",
        # starts like an element of group 0008 (tag, VR 'CS', length), then noise
        "dicom_like_start": b"\x08\x00\x05\x00CS\x0a\x00" + rng.bytes(4096),
        "implicit_like_start": b"\x08\x00\x16\x00\x1a\x00\x00\x00" + rng.bytes(4096),
        "png": b"\x89PNG\r\n\x1a\n" + rng.bytes(1024),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in files]


def test_files_that_are_not_dicom_are_not_taken_for_dicom(tmp_path: Path):
    for path in not_dicom_files(tmp_path):
        assert not io.is_dicom_file(path), path.name
    assert not io.is_dicom_file(tmp_path / "missing")
    assert not io.is_dicom_file(tmp_path)  # a folder


def test_many_random_files_are_not_dicom(tmp_path: Path):
    rng = np.random.default_rng(1)
    for k in range(300):
        path = tmp_path / f"r{k}"
        path.write_bytes(rng.bytes(int(rng.integers(1, 3000))))
        assert not io.is_dicom_file(path), k


def test_a_dcm_file_that_is_not_dicom_is_refused(tmp_path: Path):
    path = tmp_path / "notes.dcm"
    path.write_bytes(b"This is not a DICOM file at all.\n" * 10)
    with pytest.raises(io.SliceReadError, match="not a DICOM file"):
        read(path)


# --- decoders missing or failing ----------------------------------------------------------------


def test_missing_decoder_names_the_syntax_and_the_package(monkeypatch):
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(io.SliceReadError) as caught:
        read(bundled("MR_small_jp2klossless.dcm"))
    message = str(caught.value)
    assert "JPEG 2000 Image Compression (Lossless Only)" in message
    assert "1.2.840.10008.1.2.4.90" in message
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message


def test_unknown_transfer_syntax_is_named(tmp_path: Path):
    path = write_slice(tmp_path / "a.dcm", UNSIGNED_12)
    uid = b"1.2.840.10008.1.2.1\0"  # Explicit VR Little Endian, padded to an even length
    data = path.read_bytes()
    assert data.count(uid) == 1
    path.write_bytes(data.replace(uid, b"1.2.3.4.5.6.7.8.9.10"))  # made up, same length
    with pytest.raises(io.SliceReadError, match=r"transfer syntax 1\.2\.3\.4\.5\.6\.7\.8\.9\.10"):
        read(path)


def test_failing_decoder_names_the_syntax_and_the_package():
    """JPEG-lossy.dcm is a damaged 12-bit JPEG stream (pydicom's README; JPGExtended.dcm is
    its fixed version)."""
    with pytest.raises(io.SliceReadError) as caught:
        read(bundled("JPEG-lossy.dcm"))
    message = str(caught.value)
    assert "JPEG Extended (Process 2 and 4)" in message and "1.2.840.10008.1.2.4.51" in message
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message


def test_frame_outside_a_multiframe_file_is_refused():
    with pytest.raises(io.SliceReadError, match="frame 10 outside the file's 10 frames"):
        read(bundled("emri_small.dcm"), 10)


def test_size_is_checked_before_decoding(tmp_path: Path):
    """A header promising 65535 × 65535 pixels (4 × 4 stored) is refused by its size, before
    pydicom would notice the missing bytes."""
    path = write_slice(tmp_path / "bomb.dcm", UNSIGNED_12)
    dataset = pydicom.dcmread(path)
    dataset.Rows = dataset.Columns = 65535
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(io.SliceReadError, match="exceeds the limit"):
        read(path)

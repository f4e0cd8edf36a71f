"""An upload, made safe, as files on disk that :func:`mritumor.inference.inputs.discover` reads.

Everything a client sends is untrusted. The checks, in the order they run:

* the size of the whole request and of each file (counted while copying: headers can lie);
* the type of every file by its first bytes (:func:`sniff`), never by its name: an upload is
  saved under the suffix its content implies (the readers choose a decoder by suffix), and a
  file of no supported type is refused;
* a zip archive: entry count, absolute names, ``..``, symbolic links, encryption, the
  uncompressed total and the compressed/uncompressed ratio of every entry and of the whole, all
  before anything is extracted; then each entry is extracted with a byte budget (the sizes in a
  zip's directory can lie too) and sniffed like a loose file (files of other kinds, e.g. a
  notes.txt beside the slices, are left out);
* a NIfTI volume: its header's dimensions (a 10-byte file can announce 10¹² voxels) before
  nibabel allocates anything;
* the number of slices found, after discovery.

Every request gets its own folder under ``root`` (:func:`request_folder`), removed when it ends.
"""

from __future__ import annotations

import gzip
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ZIP = ".zip"
UPLOAD_DIR = "upload"  # the folder discover() reads, inside the request's folder


class UploadError(Exception):
    """An upload refused; ``status`` is the HTTP status to answer with (400, 413, 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 256 * 2**20  # the whole request body
    max_file_bytes: int = 128 * 2**20  # one uploaded or extracted file
    max_files: int = 2000  # loose files in a request, or entries in a zip
    max_slices: int = 1000  # slices found in all the files of a request
    max_unzipped_bytes: int = 512 * 2**20  # all entries of a zip, extracted
    max_zip_ratio: float = 100.0  # uncompressed / compressed, per entry and in total
    max_voxels: int = 512 * 512 * 1024  # a NIfTI volume's x·y·z (·t)


# -- content types


def sniff(head: bytes) -> str | None:
    """The suffix the first bytes imply (``.png`` … ``.zip``; ``.gz`` for any gzip stream, which
    :func:`check_nifti` then looks inside), or None for anything not supported. ``head`` needs
    at least 352 bytes for DICOM and uncompressed NIfTI."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    if head.startswith(b"BM") and len(head) >= 26:
        return ".bmp"
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ZIP
    if head.startswith(b"\x1f\x8b"):
        return ".gz"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ".dcm"
    if _nifti_header(head) is not None:
        return ".nii"
    return None


def _nifti_header(head: bytes) -> tuple[int, ...] | None:
    """The dimensions of a NIfTI-1 or NIfTI-2 header (either byte order), or None."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            if head[344:348] in (b"n+1\x00", b"ni1\x00"):
                dims = struct.unpack(order + "8h", head[40:56])
                return tuple(dims[1 : 1 + max(0, min(dims[0], 7))])
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            if head[4:8] in (b"n+2\x00", b"ni2\x00"):
                dims = struct.unpack(order + "8q", head[16:80])
                return tuple(dims[1 : 1 + max(0, min(dims[0], 7))])
    return None


def check_nifti(path: Path, limits: Limits, name: str) -> None:
    """Refuse a NIfTI file whose header is unreadable or announces too many voxels."""
    with open(path, "rb") as stream:
        opener = gzip.open if stream.read(2) == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as stream:
            head = stream.read(544)
    except (OSError, EOFError) as error:  # truncated or corrupt gzip stream
        raise UploadError(f"{name}: damaged gzip stream ({error})", 415) from error
    dims = _nifti_header(head)
    if dims is None:
        kind = "a gzip file that holds no NIfTI volume" if opener is gzip.open else "not NIfTI"
        raise UploadError(f"{name}: {kind}; supported: {SUPPORTED_UPLOADS}", 415)
    voxels = 1
    for d in dims:
        if d <= 0:
            raise UploadError(f"{name}: NIfTI header with dimension {d} (shape {dims})", 400)
        voxels *= int(d)
    if len(dims) < 3 or voxels > limits.max_voxels:
        raise UploadError(
            f"{name}: NIfTI volume of shape {dims}; at most {limits.max_voxels} voxels in a 3-D "
            "volume are accepted",
            413 if voxels > limits.max_voxels else 400,
        )


SUPPORTED_UPLOADS = (
    "PNG/JPG/TIFF/BMP/NPY or DICOM slices, one NIfTI volume (.nii/.nii.gz), "
    "or one zip of a patient folder or DICOM series"
)


# -- saving


def safe_name(name: str, fallback: str) -> str:
    """A file name (no folder part) of harmless characters."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return base[:120] or fallback


def final_name(name: str, kind: str) -> str:
    """``name`` with the suffix its content (``kind``) implies: readers decode by suffix."""
    lower = name.lower()
    if kind == ".gz":
        stem = name[:-7] if lower.endswith(".nii.gz") else PurePosixPath(name).stem
        return f"{stem or 'volume'}.nii.gz"
    if kind == ".jpg" and lower.endswith((".jpg", ".jpeg")):
        return name
    if kind == ".tif" and lower.endswith((".tif", ".tiff")):
        return name
    if kind == ".dcm" and lower.endswith((".dcm", ".dicom")):
        return name
    if lower.endswith(kind):
        return name
    return f"{PurePosixPath(name).stem or 'file'}{kind}"


@contextmanager
def request_folder(root: Path | None):
    """A fresh folder for one request, removed with everything in it when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prepare(files: list[Path], names: list[str], folder: Path, limits: Limits) -> Path:
    """The uploaded ``files`` (already in ``folder``, as sent under ``names``), checked and laid
    out for :func:`~mritumor.inference.inputs.discover`; returns the path to give it: the one
    NIfTI file, or the folder holding the slices / the extracted archive."""
    if not files:
        raise UploadError(f"no file in the request; send {SUPPORTED_UPLOADS} as form field 'files'")  # fmt: skip
    if len(files) > limits.max_files:
        raise UploadError(f"{len(files)} files in one request; at most {limits.max_files}", 413)
    kinds = []
    for path, name in zip(files, names, strict=True):
        with open(path, "rb") as stream:
            head = stream.read(1024)
        if not head:
            raise UploadError(f"{name}: empty file", 400)
        kind = sniff(head)
        if kind is None:
            raise UploadError(f"{name}: not a supported file type by its content; send {SUPPORTED_UPLOADS}", 415)  # fmt: skip
        kinds.append(kind)
    bulky = [k for k in kinds if k in (ZIP, ".gz", ".nii")]
    if bulky and len(files) > 1:
        raise UploadError("a zip archive or a NIfTI volume must be the only file of a request")
    target = folder / UPLOAD_DIR
    target.mkdir()
    if kinds[0] == ZIP and len(files) == 1:
        extract_zip(files[0], target, limits, names[0])
        return target
    if kinds[0] in (".gz", ".nii"):
        check_nifti(files[0], limits, names[0])
        path = target / final_name(safe_name(names[0], "volume"), kinds[0])
        if not path.name.lower().endswith((".nii", ".nii.gz")):
            path = path.with_name(path.name + ".nii")
        files[0].rename(path)
        return path
    patient = target / "patient"  # loose slices are one patient
    patient.mkdir()
    used = set()
    for k, (path, name, kind) in enumerate(zip(files, names, kinds, strict=True)):
        new = final_name(safe_name(name, f"slice_{k:04d}"), kind)
        if new in used:  # two uploads of one name keep both
            new = f"{k:04d}_{new}"
        used.add(new)
        path.rename(patient / new)
    return patient


def extract_zip(archive: Path, target: Path, limits: Limits, name: str) -> None:
    """Every image entry of ``archive`` into ``target``, after the checks of the module docstring."""
    try:
        zipped = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise UploadError(f"{name}: not a readable zip archive ({error})", 400) from error
    with zipped:
        entries = [e for e in zipped.infolist() if not e.is_dir()]
        if len(entries) > limits.max_files:
            raise UploadError(f"{name}: {len(entries)} entries; at most {limits.max_files}", 413)
        total = compressed = 0
        for entry in zipped.infolist():
            _check_entry(entry, limits, name)
            total += entry.file_size
            compressed += entry.compress_size
        if total > limits.max_unzipped_bytes:
            raise UploadError(f"{name}: {total} bytes uncompressed; at most {limits.max_unzipped_bytes}", 413)  # fmt: skip
        if total > limits.max_zip_ratio * max(compressed, 1) and total > 2**20:
            raise UploadError(f"{name}: compression ratio {total / max(compressed, 1):.0f}; at most {limits.max_zip_ratio:.0f} (zip bomb?)", 413)  # fmt: skip
        budget = limits.max_unzipped_bytes
        for entry in entries:
            parts = PurePosixPath(entry.filename.replace("\\", "/")).parts
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue  # macOS resource forks, hidden files
            budget = _extract_entry(zipped, entry, target, parts, budget, limits, name)
    if not any(p.is_file() for p in target.rglob("*")):
        raise UploadError(f"{name}: no image file in the archive; {SUPPORTED_UPLOADS}", 415)


def _check_entry(entry: zipfile.ZipInfo, limits: Limits, name: str) -> None:
    entry_name = entry.filename.replace("\\", "/")
    if entry_name.startswith("/") or re.match(r"^[A-Za-z]:", entry_name):
        raise UploadError(f"{name}: entry {entry.filename!r} has an absolute path", 400)
    if ".." in PurePosixPath(entry_name).parts:
        raise UploadError(f"{name}: entry {entry.filename!r} leaves the archive's folder (..)", 400)
    if stat.S_ISLNK(entry.external_attr >> 16):
        raise UploadError(f"{name}: entry {entry.filename!r} is a symbolic link", 400)
    if entry.flag_bits & 0x1:
        raise UploadError(f"{name}: entry {entry.filename!r} is encrypted", 400)
    if entry.file_size > limits.max_file_bytes:
        raise UploadError(f"{name}: entry {entry.filename!r} of {entry.file_size} bytes; at most {limits.max_file_bytes}", 413)  # fmt: skip
    if entry.file_size > 2**20 and entry.file_size > limits.max_zip_ratio * max(entry.compress_size, 1):  # fmt: skip
        raise UploadError(f"{name}: entry {entry.filename!r} compressed {entry.file_size / max(entry.compress_size, 1):.0f}:1; at most {limits.max_zip_ratio:.0f}:1 (zip bomb?)", 413)  # fmt: skip


def _extract_entry(zipped, entry, target: Path, parts, budget: int, limits: Limits, name: str) -> int:  # fmt: skip
    """One entry, read with a byte budget; returns the budget left. Entries of unsupported
    content are dropped; zips inside zips are not opened."""
    folders = [safe_name(p, "folder") for p in parts[:-1]]
    destination = target.joinpath(*folders) if folders else target
    head = b""
    out_path = destination / f".part-{id(entry)}"
    allowed = min(limits.max_file_bytes, budget)
    written = 0
    try:
        with zipped.open(entry) as source:
            head = source.read(1024)
            kind = sniff(head)
            if kind is None or kind == ZIP:
                return budget
            destination.mkdir(parents=True, exist_ok=True)
            with open(out_path, "wb") as out:
                chunk = head
                while chunk:
                    written += len(chunk)
                    if written > allowed:
                        raise UploadError(f"{name}: entry {entry.filename!r} inflates beyond its limit ({allowed} bytes)", 413)  # fmt: skip
                    out.write(chunk)
                    chunk = source.read(2**20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as error:
        raise UploadError(f"{name}: damaged entry {entry.filename!r} ({error})", 400) from error
    final = destination / final_name(safe_name(parts[-1], "slice"), kind)
    if final.exists():
        final = final.with_name(f"{len(list(destination.iterdir()))}_{final.name}")
    out_path.rename(final)
    if kind in (".gz", ".nii"):
        check_nifti(final, limits, f"{name}: {entry.filename}")
    return budget - written

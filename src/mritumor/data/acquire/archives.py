"""Unpacking downloaded archives (zip, tar) without letting an entry escape its folder.

Every entry is checked before a single byte is written: an absolute name, a drive letter, a
``..`` component, a symbolic or hard link, or a device/FIFO entry refuses the whole archive,
so a bad archive leaves nothing unpacked. Entries are first written into a hidden staging
folder inside the destination and moved into place only when all of them were written; a
failure half-way (disk full, a corrupt member) removes the staging folder.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mritumor.errors import DataError
from mritumor.resources import check_free_space

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class UnsafeArchiveError(DataError):
    """An archive entry would be written outside its folder, or is a link or device."""


@dataclass(frozen=True)
class _Entry:
    name: str  # normalised relative POSIX path
    is_dir: bool
    size: int
    member: object  # ZipInfo or TarInfo


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def safe_unpack(archive: str | Path, destination: str | Path) -> list[Path]:
    """Unpack ``archive`` into ``destination``; returns the files written (replacing files of
    the same name). Raises :class:`UnsafeArchiveError` before writing anything when an entry is
    unsafe, and :class:`DataError` when the file is not a readable archive."""
    archive, destination = Path(archive), Path(destination)
    opener: Any
    lister: Any
    if str(archive).lower().endswith(".zip"):
        opener, lister = _open_zip, _zip_entries
    else:
        opener, lister = _open_tar, _tar_entries
    with opener(archive) as handle:
        entries = lister(handle, archive)
        files = [e for e in entries if not e.is_dir]
        destination.mkdir(parents=True, exist_ok=True)
        check_free_space(destination, sum(e.size for e in files), f"unpacking {archive.name}")
        _check_targets(destination, files, archive)
        staging = destination / f".unpacking-{archive.name}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for entry in entries:
                target = staging / entry.name
                if entry.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with _member_stream(handle, entry) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, length=1 << 20)
            written = [_move_into_place(staging, destination, e.name) for e in files]
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise DataError(f"cannot unpack {archive.name}: {error}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return written


def check_entry_name(name: str, archive: Path) -> str:
    """The entry's normalised relative path, or :class:`UnsafeArchiveError` naming it."""
    text = name.replace("\\", "/")
    path = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive.name}: entry {name!r} has an absolute path; archive refused, nothing unpacked"
        )
    if ".." in path.parts:
        raise UnsafeArchiveError(
            f"{archive.name}: entry {name!r} climbs out of the folder ('..'); archive refused, "
            "nothing unpacked"
        )
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeArchiveError(f"{archive.name}: entry with an empty name; archive refused")
    return "/".join(parts)


def _open_zip(archive: Path):
    try:
        return zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{archive.name} is not a readable zip archive ({error})") from error


def _open_tar(archive: Path):
    try:
        return tarfile.open(archive)
    except (OSError, tarfile.TarError) as error:
        raise DataError(f"{archive.name} is not a readable tar archive ({error})") from error


def _zip_entries(handle: zipfile.ZipFile, archive: Path) -> list[_Entry]:
    entries = []
    for info in handle.infolist():
        name = check_entry_name(info.filename, archive)
        mode = info.external_attr >> 16  # Unix mode bits, where the zip was made on Unix
        if stat.S_ISLNK(mode) or (
            mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)
        ):
            raise UnsafeArchiveError(
                f"{archive.name}: entry {info.filename!r} is a link or special file; archive "
                "refused, nothing unpacked"
            )
        entries.append(_Entry(name, info.is_dir(), info.file_size, info))
    return entries


def _tar_entries(handle: tarfile.TarFile, archive: Path) -> list[_Entry]:
    entries = []
    for member in handle.getmembers():
        name = check_entry_name(member.name, archive)
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise UnsafeArchiveError(
                f"{archive.name}: entry {member.name!r} is a {kind}; archive refused, nothing "
                "unpacked"
            )
        entries.append(_Entry(name, member.isdir(), member.size, member))
    return entries


def _member_stream(handle, entry: _Entry):
    if isinstance(handle, zipfile.ZipFile):
        return handle.open(entry.member)  # type: ignore[arg-type]  # a ZipInfo here
    stream = handle.extractfile(entry.member)
    if stream is None:
        raise DataError(f"cannot read entry {entry.name}")
    return stream


def _check_targets(destination: Path, files: list[_Entry], archive: Path) -> None:
    """A link already in the destination must not carry an entry elsewhere, and an entry must
    not replace a folder: both are refused before anything is written."""
    root = destination.resolve()
    for entry in files:
        target = destination / entry.name
        parent = target.parent.resolve()
        if parent != root and root not in parent.parents:
            raise UnsafeArchiveError(
                f"{archive.name}: entry {entry.name!r} would be written through a link to {parent}, "
                "outside the folder; archive refused, nothing unpacked"
            )
        if target.is_dir() and not target.is_symlink():
            raise DataError(
                f"{archive.name}: entry {entry.name!r} would replace the folder {target}; "
                "nothing unpacked"
            )


def _move_into_place(staging: Path, destination: Path, name: str) -> Path:
    target = destination / name
    target.parent.mkdir(parents=True, exist_ok=True)
    (staging / name).replace(target)
    return target

"""Helpers the readers share: walking a folder safely and telling mask files from images."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mritumor.data.reading import io
from mritumor.data.reading.catalog import Problem

MASK_NAME = re.compile(r"(^|[_\-. ])(mask|seg|label|roi)s?([_\-. ]|$)", re.I)


def is_mask_file(path: Path) -> bool:
    return path.parent.name.lower() in {"mask", "masks"} or bool(MASK_NAME.search(file_stem(path)))


def file_stem(path: Path) -> str:
    name = path.name
    return name[: -len(io.suffix_of(path))] if io.suffix_of(path) else name


def walk_files(
    root: Path, max_depth: int, suffix: str | None = None, skipped: list[Problem] | None = None
):
    """Regular files under root, at most max_depth folders down; never follows directory
    symlinks, so a symlink loop cannot trap the walk. Entries that are not regular files
    (broken or looping links, FIFOs, sockets: opening a FIFO would block) are not yielded;
    when ``skipped`` is given they are recorded there as problems."""
    root_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        depth = len(Path(folder).parts) - root_depth
        if depth >= max_depth:
            dirs[:] = []
        dirs.sort()
        for name in sorted(files):
            if suffix is None or name.lower().endswith(suffix):
                path = Path(folder) / name
                if path.is_file():
                    yield path
                elif skipped is not None and not name.startswith("."):
                    reason = (
                        "broken or looping symbolic link"
                        if path.is_symlink() and not path.exists()
                        else "not a regular file"
                    )
                    skipped.append(Problem(str(path), f"{reason}; skipped"))

"""Refusing, before any work, a run that could not finish: an output folder that cannot be
written, or a disk that would clearly not hold what is about to be written there.

Both raise :class:`ResourceError` (a :class:`~mritumor.errors.MritumorError`: the command line
prints the message, which names the folder, and exits with status 2).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mritumor.errors import MritumorError

GIB = 2**30


class ResourceError(MritumorError):
    """The machine cannot provide what the run needs (a writable folder, disk space)."""


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed, then write and remove a probe file in it. Permissions alone
    do not tell (read-only mounts, full disks, ACLs, a path under a regular file): the probe
    does, for every user, root included."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".mritumor-write-test-", dir=folder)
        try:
            os.write(handle, b"ok")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ResourceError(
            f"the {what} {folder} is not writable ({reason}); choose another folder or fix its "
            "permissions"
        ) from error
    return folder


def check_free_space(folder: str | Path, needed_bytes: int, what: str) -> int:
    """Refuse when the file system of ``folder`` (or of its nearest existing parent) has less
    than ``needed_bytes`` free; returns the free bytes. Needed and free are given in GiB."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return -1  # cannot be measured here (e.g. some network file systems): do not block
    if needed_bytes > free:
        raise ResourceError(
            f"{what} needs {needed_bytes / GIB:.2f} GiB but {folder} has only {free / GIB:.2f} GiB "
            "free; free some space or choose another folder"
        )
    return free

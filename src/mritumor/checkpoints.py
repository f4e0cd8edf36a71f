"""Saving and loading checkpoints safely.

* Saving is atomic: temporary file in the same folder, fsync, rename. A kill or a full disk
  at any moment leaves the previous checkpoint intact.
* Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` accepts only
  tensors and plain containers, so a checkpoint shared by another group cannot run code.
* Every checkpoint records the versions and the date it was made with (:func:`run_metadata`).
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

from mritumor import __version__
from mritumor.errors import MritumorError

CHECKPOINT_FORMAT = 1  # bump when the stored layout changes incompatibly


class CheckpointError(MritumorError):
    """A checkpoint cannot be loaded (missing, unsafe, corrupt, or from an incompatible version)."""


def save_checkpoint(payload: dict, path: str | Path) -> Path:
    """``payload`` plus its ``format``, written atomically (:func:`atomic_save`)."""
    return atomic_save({"format": CHECKPOINT_FORMAT, **payload}, path)


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the target's folder, fsync, then rename over the
    target (and fsync the folder, so the rename itself survives a power cut). A kill, an
    exception or a full disk at any moment leaves the previous file intact; errors of the
    file system become a :class:`CheckpointError` that says so."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as error:
        raise CheckpointError(f"could not write {path} ({error})") from error
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would hide it
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(
                f"could not write {path} ({error}); the previous file is intact"
            ) from error
        raise
    _fsync_folder(path.parent)
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only
    read it by setting it, which races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows); the rename is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _safe_load(path: Path, mmap: bool = False):
    """``torch.load(weights_only=True)`` with its failures turned into clear CheckpointErrors."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it contains Python objects other than tensors and plain "
            "containers, and loading it could run code. Refused. (Only load checkpoints written by "
            f"mritumor.) Detail: {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({error})") from error


def check_resume_checkpoint(path: str | Path) -> Path:
    """Lightning's ``last.ckpt`` before ``--resume`` hands it to Lightning: loaded once with
    ``weights_only=True`` (memory-mapped) so that an unsafe, truncated or foreign file is
    refused with a clear message instead of a traceback from inside the trainer."""
    path = Path(path)
    payload = _safe_load(path, mmap=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "loops" not in payload:
        raise CheckpointError(
            f"{path} is not a Lightning training checkpoint of mritumor; --resume needs the "
            "checkpoints/last.ckpt an interrupted run left in its --outdir"
        )
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded without unpickling code; one of
    another ``format`` (an older or newer mritumor) is refused, naming both versions."""
    path = Path(path)
    payload = _safe_load(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} does not hold a mritumor checkpoint")
    found = payload.get("format")
    if found != CHECKPOINT_FORMAT:
        made_with = (
            payload.get("metadata", {}).get("versions", {}).get("mritumor", "an unknown version")
        )
        raise CheckpointError(
            f"{path} has checkpoint format {found!r} (made with mritumor {made_with}); this is mritumor "
            f"{__version__}, which reads format {CHECKPOINT_FORMAT}"
        )
    return payload


def run_metadata() -> dict:
    """Versions, commit and date: what a result needs to be reproduced."""
    import lightning
    import torchvision

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "mritumor": __version__,
            "torch": str(torch.__version__),  # TorchVersion is not a plain str: unsafe to unpickle
            "torchvision": str(torchvision.__version__),
            "lightning": str(lightning.__version__),
            "python": platform.python_version(),
        },
        "commit": git_commit(),
        "machine": platform.machine(),
    }


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
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
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it contains Python objects other than tensors and plain "
            "containers, and loading it could run code. Refused. (Only load checkpoints written by "
            f"mritumor.) Detail: {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({error})") from error
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

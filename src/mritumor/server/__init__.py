"""``mritumor serve``: predictions over HTTP and a one-page web interface.

:mod:`.uploads` makes an upload safe and lays it out for the inference layer's input
discovery, :mod:`.service` holds the loaded models and turns an upload into ``mritumor predict
--json``'s document, :mod:`.app` is the FastAPI application, :mod:`.run` starts it with
uvicorn. FastAPI, uvicorn and python-multipart are the optional extra ``serve``
(:func:`require` says so when they are missing); nothing else in mritumor imports them.
"""

from __future__ import annotations

from mritumor.errors import MritumorError

EXTRA = "pip install 'mritumor[serve]'  (FastAPI, uvicorn, python-multipart)"


def require() -> None:
    """Raise a :class:`MritumorError` naming the install command when a server package is missing."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]  # fmt: skip
    if missing:
        raise MritumorError(f"mritumor serve needs {', '.join(missing)}: {EXTRA}")

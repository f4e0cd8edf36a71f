"""Starting the server: checkpoints loaded once, the app built, uvicorn run in the foreground."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

from mritumor.errors import MritumorError
from mritumor.server import require

log = logging.getLogger(__name__)


def is_local(host: str) -> bool:
    """Loopback only: ``localhost``, 127.0.0.0/8, ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, no_auth: bool) -> None:
    """A server reachable from other machines needs a token, or an explicit ``--no-auth``."""
    if token is not None and no_auth:
        raise MritumorError("--token and --no-auth exclude each other")
    if not is_local(host) and token is None and not no_auth:
        raise MritumorError(
            f"--host {host} makes the server reachable from other machines: give --token SECRET "
            "(clients send 'Authorization: Bearer SECRET') or, on a trusted network, --no-auth"
        )


def serve(
    checkpoints: list[str | Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    no_auth: bool = False,
    settings=None,
) -> None:
    check_exposure(host, token, no_auth)
    require()
    import uvicorn

    from mritumor.server.app import Settings, create_app
    from mritumor.server.service import load_models

    settings = settings or Settings()
    settings.token = token
    models = load_models(checkpoints)
    app = create_app(models, settings)
    access = logging.getLogger("mritumor.server.access")
    if not access.handlers:  # one plain line per request on stderr, whatever the CLI's format
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    print(
        f"mritumor serve: {', '.join(models)} on http://{host}:{port}/ "
        f"(API docs at /docs{'; Bearer token required' if token else ''})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")

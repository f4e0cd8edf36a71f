"""``mritumor serve``: trained checkpoints behind an HTTP API and a web page."""

from __future__ import annotations

import argparse

from mritumor.commands.common import add_command, flag

DESCRIPTION = """\
Loads each --checkpoint once and answers on http://HOST:PORT/:
  POST /predict   multipart form, field 'files': a patient's slices (PNG/JPG/TIFF/BMP/NPY/DICOM
                  files), one zip of a patient folder or DICOM series, or one NIfTI volume;
                  optional fields model (a name from /models), patient_id, images, explain.
                  Answer: the JSON document of `mritumor predict --json`, with each slice's
                  predicted mask as a PNG data URL for segmenting models.
  GET  /models    a model card per checkpoint; GET /health; OpenAPI docs at /docs; the page at /.
Binds to 127.0.0.1 unless --host says otherwise; any other host needs --token (clients send
'Authorization: Bearer TOKEN') or --no-auth. Uploads are checked by content, size and slice
count, zips for paths, links and compression ratio; at most --workers predictions run at once
and --queue wait, beyond that the answer is 503 with Retry-After. One access-log line per
request on stderr. Needs the 'serve' extra: pip install 'mritumor[serve]'."""


def register(subcommands) -> None:
    parser = add_command(subcommands, "serve", "serve checkpoints over HTTP and a web page", DESCRIPTION)  # fmt: skip
    flag(parser, "--checkpoint", action="append", required=True, help="best.pt to serve (repeat for several models)")  # fmt: skip
    flag(parser, "--host", default="127.0.0.1", help="address to bind (default: local only)")
    flag(parser, "--port", type=int, default=8000, help="TCP port")
    flag(parser, "--token", default=None, help="require 'Authorization: Bearer TOKEN' on /predict and /models")  # fmt: skip
    flag(parser, "--no_auth", action="store_true", help="allow a non-local --host without a token")
    flag(parser, "--workers", type=int, default=1, help="predictions running at once")
    flag(parser, "--queue", type=int, default=8, help="requests waiting beyond --workers before 503")  # fmt: skip
    flag(parser, "--timeout", type=float, default=120.0, help="seconds per request before 504")
    flag(parser, "--max_upload_mb", type=float, default=256.0, help="largest request body, MiB")
    flag(parser, "--max_slices", type=int, default=1000, help="most slices in one request")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from mritumor.errors import MritumorError
    from mritumor.server import require
    from mritumor.server.run import check_exposure, serve

    check_exposure(args.host, args.token, args.no_auth)
    if args.workers < 1 or args.queue < 0 or args.timeout <= 0:
        raise MritumorError("--workers must be ≥ 1, --queue ≥ 0 and --timeout > 0")
    require()
    from mritumor.server.app import Settings
    from mritumor.server.uploads import Limits

    limits = replace(Limits(), max_request_bytes=int(args.max_upload_mb * 2**20), max_slices=args.max_slices)  # fmt: skip
    settings = Settings(limits=limits, workers=args.workers, queue=args.queue, timeout=args.timeout)
    serve(args.checkpoint, args.host, args.port, args.token, args.no_auth, settings)

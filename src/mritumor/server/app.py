"""The FastAPI application of ``mritumor serve`` (:func:`create_app`).

Routes: ``POST /predict`` (multipart form: ``files`` = the slices, one zip or one NIfTI volume;
optional ``model``, ``patient_id``, ``images``, ``explain``), ``GET /health``, ``GET /models``
(model cards), ``/`` (the page, from ``static/``), ``/docs`` (OpenAPI).

Concurrency is bounded: ``workers`` predictions run at once in a thread pool and ``queue`` more
wait; beyond that a request is answered 503 with ``Retry-After`` before its body is read. A
request that runs past ``timeout`` seconds is answered 504; its work stops at the next patient
and only then frees its place (a forward pass cannot be interrupted). Every error is a JSON
body ``{"error": message, "status": code}``; an unexpected exception is logged here with its
traceback and answered as a bare 500. One access-log line per request (logger
``mritumor.server.access``): time, method, path, status, bytes in and out, latency, outcome.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from mritumor import __version__
from mritumor.errors import MritumorError
from mritumor.server.service import Cancelled, ModelEntry, predict_upload
from mritumor.server.uploads import Limits, UploadError, prepare, request_folder, safe_name

log = logging.getLogger(__name__)
access = logging.getLogger("mritumor.server.access")

STATIC = {  # file → media type; nothing else is served from the package
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CHUNK = 2**20
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_POLICY = (  # the page may load nothing from elsewhere
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass
class Settings:
    limits: Limits = Limits()
    workers: int = 1  # predictions at once
    queue: int = 8  # requests waiting beyond those
    timeout: float = 120.0  # seconds per request
    token: str | None = None  # Bearer token for /predict and /models; None: no auth
    tmp_root: Path | None = None  # request folders go here (None: the system's)
    retry_after: int = 2  # seconds, in a 503's Retry-After


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Slots:
    """Places for predictions: running + waiting ≤ workers + queue. A place is held until its
    work has really ended (also after a timeout answered the client)."""

    def __init__(self, size: int):
        self.size, self.used, self.lock = size, 0, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.used >= self.size:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self.lock:
            self.used -= 1


def create_app(models: dict[str, ModelEntry], settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="mritumor",
        version=__version__,
        description="Brain-MRI tumour type and grade prediction with trained mritumor checkpoints.",
    )
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="predict")
    slots = Slots(settings.workers + settings.queue)
    app.state.models, app.state.settings, app.state.slots = models, settings, slots
    app.add_middleware(BodyLimit, limit=settings.limits.max_request_bytes)

    @app.middleware("http")
    async def log_and_guard(request: Request, call_next):
        start = time.perf_counter()
        size = request.headers.get("content-length")
        try:
            if size is not None and not size.isdigit():
                raise ApiError(400, "invalid Content-Length")
            if size is not None and int(size) > settings.limits.max_request_bytes:
                raise ApiError(413, f"request of {size} bytes; at most {settings.limits.max_request_bytes}")  # fmt: skip
            response = await call_next(request)
        except ApiError as error:
            response = error_response(error.status, error.message, error.headers)
        except Exception:  # never a stack trace to the client: it goes to the log
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            response = error_response(500, "internal server error (logged on the server)")
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        outcome = getattr(request.state, "outcome", None) or ("ok" if response.status_code < 400 else "refused")  # fmt: skip
        access.info(
            "%s %s %s %d in=%s out=%s %.1fms %s",
            time.strftime("%Y-%m-%dT%H:%M:%S"),
            request.method,
            request.url.path,
            response.status_code,
            getattr(request.state, "received", size or 0),
            response.headers.get("content-length", "-"),
            (time.perf_counter() - start) * 1000,
            outcome,
        )
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        request.state.outcome = f"error: {error.message[:120]}"
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return error_response(422, "invalid request: " + "; ".join(e.get("msg", "") for e in error.errors()))  # fmt: skip

    def authorise(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip(), settings.token):  # fmt: skip
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.get("/health", summary="Liveness and load")
    async def health():
        return {
            "status": "ok",
            "version": __version__,
            "models": list(models),
            "busy": slots.used,
            "capacity": slots.size,
        }

    @app.get("/models", summary="A model card per checkpoint")
    async def model_cards(request: Request):
        authorise(request)
        return {"models": [entry.card for entry in models.values()]}

    @app.post(
        "/predict",
        summary="Predict one upload: slices, one zip (patient folder or DICOM series) or one NIfTI volume",  # fmt: skip
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {  # fmt: skip
                            "type": "object",
                            "required": ["files"],
                            "properties": {
                                "files": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                },
                                "model": {
                                    "type": "string",
                                    "description": "a name of GET /models (default: the first)",
                                },  # fmt: skip
                                "patient_id": {
                                    "type": "string",
                                    "description": "the name of loose slices' patient",
                                },  # fmt: skip
                                "images": {
                                    "type": "boolean",
                                    "description": "add each slice as the model saw it (PNG data URL)",
                                },  # fmt: skip
                                "explain": {
                                    "type": "boolean",
                                    "description": "add heat maps of the 3 most important slices",
                                },  # fmt: skip
                            },
                        }
                    }
                },
            }
        },
    )
    async def predict(request: Request):
        authorise(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "send a multipart/form-data body with the files in field 'files'")  # fmt: skip
        if not slots.take():
            request.state.outcome = "busy"
            raise ApiError(503, "the server is busy; retry later", {"Retry-After": str(settings.retry_after)})  # fmt: skip
        handed_over = False
        try:
            folder_context = request_folder(settings.tmp_root)
            folder = folder_context.__enter__()
            try:
                files, names, fields = await receive_form(request, folder, settings.limits)
                entry = choose_model(models, fields.get("model"))
                label = upload_label(names, fields.get("patient_id"))
                cancel = threading.Event()

                def work():
                    try:
                        if cancel.is_set():  # timed out while waiting in the queue
                            raise Cancelled()
                        path = prepare(files, names, folder, settings.limits)
                        return predict_upload(
                            entry, path, label, settings.limits,
                            images=truthy(fields.get("images")),
                            explain=truthy(fields.get("explain")),
                            cancelled=cancel.is_set,
                        )  # fmt: skip
                    finally:  # the work owns the folder and the place from here on
                        folder_context.__exit__(None, None, None)
                        slots.give()

                future = pool.submit(work)
                handed_over = True
            finally:
                if not handed_over:
                    folder_context.__exit__(None, None, None)
            try:
                # shielded: a queued job cancelled here would never run, nor free its place
                document = await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(future)), settings.timeout
                )
            except asyncio.TimeoutError as error:
                cancel.set()
                raise ApiError(504, f"the prediction took longer than {settings.timeout:g} s") from error  # fmt: skip
        except UploadError as error:
            raise ApiError(error.status, str(error)) from error
        except Cancelled as error:
            raise ApiError(504, "the prediction was stopped: out of time") from error
        except MritumorError as error:
            raise ApiError(422, str(error)) from error
        finally:
            if not handed_over:
                slots.give()
        return JSONResponse(document)

    @app.get("/", include_in_schema=False)
    async def page():
        html = (resources.files("mritumor.server") / "static" / "index.html").read_text()
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            raise ApiError(404, f"no such file: {name}")
        body = (resources.files("mritumor.server") / "static" / name).read_bytes()
        return Response(body, media_type=STATIC[name])

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    app.router.on_shutdown.append(lambda: pool.shutdown(wait=False))
    return app


class BodyLimit:
    """ASGI middleware: a body longer than ``limit`` stops being read (chunked uploads carry
    no Content-Length to refuse them by)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, f"request body larger than {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def truthy(value) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def choose_model(models: dict[str, ModelEntry], name) -> ModelEntry:
    if not name:
        return next(iter(models.values()))
    if name not in models:
        raise ApiError(404, f"no model {name!r}; models: {', '.join(models)}")
    return models[name]


def upload_label(names: list[str], patient_id) -> str:
    if patient_id:
        return safe_name(str(patient_id), "patient")
    if len(names) == 1 and names[0].lower().endswith((".zip", ".nii", ".nii.gz", ".gz")):
        return safe_name(names[0], "upload")
    return "patient"


async def receive_form(request: Request, folder: Path, limits: Limits):
    """The form's files copied into ``folder`` (sizes counted while copying), their names as
    sent, and its text fields. The parser's own spooled copies are closed before returning."""
    received = 0
    try:
        form = await request.form(max_files=limits.max_files, max_fields=20)
    except HTTPException as error:
        if "too many files" in str(error.detail).lower():
            raise ApiError(413, f"more than {limits.max_files} files in one request; at most {limits.max_files}") from error  # fmt: skip
        raise ApiError(400, f"unreadable form: {error.detail}") from error
    except ApiError:
        raise
    except Exception as error:  # python-multipart raises its own types on malformed bodies
        raise ApiError(400, f"unreadable multipart body ({type(error).__name__})") from error
    try:
        files: list[Path] = []
        names: list[str] = []
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "files":
                    raise ApiError(400, f"file in field {key!r}; send files in field 'files'")
                path = folder / f"in-{len(files):05d}"
                size = 0
                with open(path, "wb") as out:
                    while chunk := await value.read(CHUNK):
                        size += len(chunk)
                        received += len(chunk)
                        if size > limits.max_file_bytes:
                            raise ApiError(413, f"{value.filename}: larger than {limits.max_file_bytes} bytes")  # fmt: skip
                        if received > limits.max_request_bytes:
                            raise ApiError(413, f"upload larger than {limits.max_request_bytes} bytes")  # fmt: skip
                        out.write(chunk)
                files.append(path)
                names.append(value.filename or f"file_{len(files)}")
            else:
                fields[key] = value
        request.state.received = received
        return files, names, fields
    finally:
        await form.close()

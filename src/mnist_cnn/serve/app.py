"""The draw-a-digit web app: a page and a JSON API over a run's trained models (FastAPI).

Models load once when the app starts, and one inference worker (``batching``) owns them:
concurrent requests are answered in batches, one forward pass per model, so a classroom
opening the page at once is served, not failed. Decoding and preparing uploads runs in
Starlette's thread pool, off the event loop and in parallel with inference. Uploads are
capped in size; anything that is not a usable image gets a 4xx with a message; a full queue
gets 503 with Retry-After, a request not answered in time 504: never a 500 for load.
Every one of those answers is declared in the OpenAPI schema, and the API documentation
(/docs, /redoc) is served with its scripts from the app itself: it works offline.

Two runtimes answer the same way: ``jax`` (the run's Keras models, one jitted function each)
and ``onnx`` (onnxruntime sessions on the run's exports, ``mnist-cnn export --format onnx``),
which loads no Keras model at all.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import inspect
import json
import os
import socket
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from mnist_cnn.core.config import POLARITIES, BatchingSettings, ServerSettings
from mnist_cnn.core.errors import ConfigError, ImageInputError
from mnist_cnn.predict.inference import check_onnxruntime, onnx_forward
from mnist_cnn.predict.preprocess import (
    IMAGE_TYPES,
    MAX_BYTES,
    digit_png,
    prepare_digit,
    read_image_bytes,
    use_compiled_preparation,
)
from mnist_cnn.serve.batching import InferenceWorker, Overloaded
from mnist_cnn.serve.icon import favicon_png
from mnist_cnn.serve.site import add_browser_routes
from mnist_cnn.store.runs import RunFolder

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": f"The image ({IMAGE_TYPES}, at most 10 MB): the file itself as the request body, "
        "or a multipart/form-data upload with the file in the field 'image'.",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}
            },
        },
    }
}
RETRY_AFTER_SECONDS = 1
COMPILE_NOTICE_AFTER_S = 5.0  # A start-up that compiles the preparation says so after this long.
PREPARE_THREADS = 2
# Swagger UI 5 and ReDoc 2, as files of the pinned fastapi-offline package: the docs need no CDN.
DOCS_ASSETS = resources.files("fastapi_offline") / "static"
DOCS_STATIC_URL = "/static/docs"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # ReDoc's "API docs by Redocly" link fetches it.


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the API: one sentence that says what is wrong and what to do."""

    detail: str = Field(examples=["the server is busy (the queue is full); try again in a moment"])


class ModelAnswer(BaseModel):
    digit: int = Field(ge=0, le=9, description="the most probable digit")
    probability: float = Field(description="its probability")
    probabilities: list[float] = Field(min_length=10, max_length=10, description="one per digit, 0 to 9")


class Prediction(BaseModel):
    predictions: dict[str, ModelAnswer] = Field(description="every model's answer, by model name")
    model_input_png: str = Field(description="the 28x28 image the models saw, as a data:image/png;base64 URL")


class Readiness(BaseModel):
    ready: bool
    models: list[str]
    runtime: str = Field(description="what answers: jax (the Keras models) or onnx (onnxruntime on the exports)")
    answered: int = Field(description="predictions answered since the start")
    batches: int = Field(description="forward passes that answered them (mean batch = answered / batches)")
    process: int = Field(description="the id of the server process that answered (one of --workers N)")


def error_response(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description, **extra}


RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}
}
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Prediction, "description": "every model's answer"},
    400: error_response("no image: an empty body, an empty file, or a form without a file"),
    413: error_response(f"the upload is over the {MAX_BYTES // 2**20} MB limit"),
    422: error_response("not a readable image, over the pixel limit, or blank (no ink found)"),
    503: error_response(
        "the server is busy (its queue is full): try again after Retry-After seconds", headers=RETRY_AFTER_HEADER
    ),
    504: error_response("no answer in time: the server is overloaded", headers=RETRY_AFTER_HEADER),
}
READYZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "the models are loaded and compiled"},
    503: {"model": Readiness, "description": "not ready yet: the models are still loading or compiling"},
}


def create_app(run_dir: Path, settings: BatchingSettings | None = None, runtime: str = "jax") -> FastAPI:
    """The app for one run folder; its models (``runtime`` jax) or their ONNX exports
    (``runtime`` onnx) are loaded and compiled here, once."""
    run = RunFolder.existing(run_dir)
    runtime = ServerSettings(runtime=runtime).runtime  # An unknown runtime is refused in one line.
    if runtime == "onnx":
        check_onnxruntime()
        models: dict[str, Any] = run.onnx_exports()
        parameters = {name: recorded_parameters(run, name) for name in models}
        worker = InferenceWorker(models, settings, build_forward=onnx_forward, pad_batches=False).start()
    else:
        models = run.load_models()
        parameters = {name: int(model.count_params()) for name, model in models.items()}
        worker = InferenceWorker(models, settings).start()
    augmented = run.config().augmentation is not None
    summaries = [
        {**model_summary(run, name, count), "augmented": augmented, "runtime": runtime}
        for name, count in parameters.items()
    ]
    # Decoding and preparing uploads is mostly Python holding the GIL: two threads keep both
    # cores busy beside the event loop and the inference worker; dozens (Starlette's default
    # pool) would only fight over the GIL and slow every request down.
    preparers = concurrent.futures.ThreadPoolExecutor(
        max_workers=PREPARE_THREADS, thread_name_prefix="mnist-cnn-prepare"
    )
    # The compiled preparation (loaded from numba's cache, or compiled the first time on a machine)
    # while the worker compiles the models.
    compile_preparation()
    worker.wait_ready()  # Compiles every batch shape now: the first user waits no longer than the rest.

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.stop()
        preparers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        **NO_TELEMETRY,
        title="mnist-cnn",
        summary="Draw or upload a digit; every model of the run answers.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Served below with local scripts, not FastAPI's CDN ones.
        redoc_url=None,
    )
    app.state.worker = worker

    def prepare_and_submit(
        content: bytes, polarity: str, answered: asyncio.Future, loop: asyncio.AbstractEventLoop
    ) -> None:
        """In a preparing thread: the upload prepared and handed to the worker from there, and
        the models' answer handed back to the event loop once, when it is there. Why: each hop
        through the loop waits its turn behind everything else the loop has to do (under a
        crowd, hundreds of refusals a turn), so a request takes the fewest: in, and out."""
        try:
            digit, model_input_png = prepare_upload(content, polarity)
            future = worker.submit(digit)
        except BaseException as error:  # A bad image (HTTPException) or a full queue, for the loop.
            loop.call_soon_threadsafe(settle, answered, None, error)
            return
        finally:
            worker.release()  # Queued now (or failed): the queue's bound counts it from here.

        def hand_back(done: concurrent.futures.Future) -> None:
            error = done.exception()
            outcome = None if error is not None else (done.result(), model_input_png)
            loop.call_soon_threadsafe(settle, answered, outcome, error)

        future.add_done_callback(hand_back)

    async def answer(content: bytes, polarity: str) -> dict[str, Any]:
        """Every model's answer to one upload, as the API's JSON; an HTTPException for a bad
        polarity or image (4xx), a full queue (503) or no answer in time (504). Both ways in
        call it: the route below, and FastPredict for a plain image body."""
        if polarity not in POLARITIES:  # One sentence, as every error here (not FastAPI's list).
            raise HTTPException(
                status_code=400, detail=f"unknown polarity {polarity!r}: choose from {', '.join(POLARITIES)}"
            )
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        try:
            # Admitted before decoding: a request waiting for a decoding thread counts as queued.
            worker.admit()
            try:
                preparers.submit(prepare_and_submit, content, polarity, answered, loop)
            except BaseException:
                worker.release()
                raise
            late = loop.call_later(worker.settings.timeout_s, settle, answered, None, NoAnswerInTime())
            try:
                answers, model_input_png = await answered
            finally:
                late.cancel()
        except Overloaded as error:
            raise HTTPException(
                status_code=503, detail=busy_message(str(error)), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            ) from None
        except NoAnswerInTime:
            raise HTTPException(
                status_code=504,
                detail=f"no answer within {worker.settings.timeout_s:g} s; the server is overloaded, try again later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        return {
            "predictions": {name: prediction.to_json() for name, prediction in answers.items()},
            "model_input_png": model_input_png,
        }

    app.add_middleware(FastPredict, worker=worker, answer=answer)
    add_documentation(app)
    add_browser_routes(app, run, summaries)  # The page's script, models.json, ONNX models, onnxruntime-web.

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (resources.files("mnist_cnn.serve") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(favicon_png(), media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthz", summary="Liveness: the server answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: models loaded and compiled", responses=READYZ_RESPONSES)
    def readyz() -> JSONResponse:
        ready = worker.ready.is_set()
        # Mean batch = answered / batches; each of `--workers N` processes counts its own.
        counts = {"answered": worker.answered, "batches": worker.batches, "process": os.getpid()}
        return JSONResponse(
            {"ready": ready, "models": list(models), "runtime": runtime, **counts},
            status_code=200 if ready else 503,
        )

    @app.get("/api/models", summary="The run's models")
    def list_models() -> dict[str, Any]:
        return {"run": str(run_dir), "runtime": runtime, "models": summaries}

    @app.post(
        "/api/predict",
        summary="Predict the digit in an image",
        openapi_extra=IMAGE_BODY,
        responses=PREDICT_RESPONSES,
    )
    async def predict(
        request: Request,
        polarity: str = Query(
            "auto",
            description="which is the ink: guessed from the image (auto), or said: light-on-dark (the page's "
            "pad, a screen), dark-on-light (pen on paper)",
            json_schema_extra={"enum": list(POLARITIES)},
        ),
    ) -> JSONResponse:
        return JSONResponse(await answer(await read_upload(request), polarity))

    return app


def compile_preparation() -> None:
    """use_compiled_preparation, with a line when it takes a while: the first start on a
    machine compiles the kernels (about a minute on 2 cores), and a silent minute looks hung."""
    notice = threading.Timer(
        COMPILE_NOTICE_AFTER_S,
        print,
        ["mnist-cnn: compiling the image preparation for this machine (once: about a minute on 2 cores)"],
        {"flush": True},
    )
    notice.daemon = True
    notice.start()
    try:
        use_compiled_preparation()
    finally:
        notice.cancel()


class NoAnswerInTime(Exception):
    """The models did not answer within the worker's timeout (the server answers 504)."""


def settle(answered: asyncio.Future, outcome: Any, error: BaseException | None) -> None:
    """In the event loop: a request's outcome, unless it already has one (it timed out, or its
    client went away and the wait was cancelled)."""
    if answered.done():
        return
    if error is not None:
        answered.set_exception(error)
    else:
        answered.set_result(outcome)


def busy_message(reason: str) -> str:
    return f"the server is busy ({reason}); try again in a moment"


class FastPredict:
    """POST /api/predict with the image as the body (the page, scripts, the load benchmark)
    answered as plain ASGI, in front of FastAPI (a middleware); a multipart form, and every
    other request, go on to FastAPI's routes.

    Why: at a few hundred answers a second per process, FastAPI's way through its middleware
    stack, router, parameter parsing and exception handlers was a fifth of the server's
    CPU, and its check of OpenTelemetry's providers on every request a twentieth (NO_TELEMETRY
    turns that one off for the other routes too). The work itself is the same ``answer`` as
    the route's, errors included ({"detail": ...} and the same status and headers), and
    while the worker is full a prediction is refused with 503 before its body is read: under
    a crowd, refusals are most of the event loop's work, and the answered requests wait
    behind them at every step. uvicorn discards an unread body and keeps the connection."""

    def __init__(self, app: Any, worker: InferenceWorker, answer: Any) -> None:
        self.app, self.worker, self.answer = app, worker, answer
        reason = f"{worker.settings.queue_size} requests are already waiting"
        self.busy = json_body({"detail": busy_message(reason)})
        self.busy_headers = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode("ascii"))]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/api/predict"):
            await self.app(scope, receive, send)
            return
        if self.worker.full():
            await send_json(send, 503, self.busy, self.busy_headers)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        polarity = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True).get("polarity", ["auto"])[
            -1
        ]
        try:
            content = await read_body(receive, headers.get(b"content-length"))
            if content is None:
                return  # The client went away.
            answer = await self.answer(content, polarity)
        except HTTPException as error:
            extra = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (error.headers or {}).items()
            ]
            await send_json(send, error.status_code, json_body({"detail": error.detail}), extra)
            return
        await send_json(send, 200, json_body(answer))


async def read_body(receive: Any, declared: bytes | None) -> bytes | None:
    """The request's body, refused with 413 past MAX_BYTES (declared, or as it arrives) and 400
    when empty (read_upload's rules); None when the client disconnects first."""
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise too_large()
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BYTES:
            raise too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    content = b"".join(chunks)
    if not content:
        raise HTTPException(status_code=400, detail=f"empty request body: send an image file ({IMAGE_TYPES})")
    return content


def json_body(content: Any) -> bytes:
    """JSON as FastAPI's JSONResponse renders it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


async def send_json(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    start_headers = [
        (b"content-length", str(len(body)).encode("ascii")),
        (b"content-type", b"application/json"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


# FastAPI 0.16x's OpenTelemetry hooks, off where it has them: unused here, their check of the
# providers on every request cost 5 % of a busy server's event loop.
NO_TELEMETRY = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)


def add_documentation(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc) with their scripts and styles served by the app."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: API documentation",
            swagger_js_url=f"{root}{DOCS_STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.ico",
            # No online validator badge: it would send the schema's address to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(f"{DOCS_STATIC_URL}/redoc.js", include_in_schema=False)
    def redoc_js() -> Response:
        return Response(redoc_script(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: API documentation",
            redoc_js_url=f"{root}{DOCS_STATIC_URL}/redoc.js",
            redoc_favicon_url=f"{root}/favicon.ico",
            with_google_fonts=False,
        )

    # After the routes above: the mount would otherwise answer for redoc.js too.
    app.mount(DOCS_STATIC_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")


@functools.cache
def redoc_script() -> bytes:
    """ReDoc's script with its one outside address, a logo, replaced by the app's own icon."""
    script = (DOCS_ASSETS / "redoc.standalone.js").read_text(encoding="utf-8")
    icon = "data:image/png;base64," + base64.b64encode(favicon_png()).decode("ascii")
    return script.replace(REDOC_LOGO, icon).encode("utf-8")


def model_summary(run: RunFolder, name: str, parameters: int | None) -> dict[str, Any]:
    """A served model's name, size and test accuracy (None while its run has not finished it)."""
    folder = run.model(name)
    metrics = folder.read_metrics() if folder.metrics_path.is_file() else None
    return {
        "name": name,
        "parameters": parameters,
        "test_accuracy": metrics.test_accuracy if metrics else None,
        "epochs": metrics.epochs if metrics else None,
    }


def recorded_parameters(run: RunFolder, name: str) -> int | None:
    """A model's parameter count as its metrics record it: the ONNX server loads no Keras model
    to count them (None while the run has not finished the model)."""
    folder = run.model(name)
    return folder.read_metrics().parameters if folder.metrics_path.is_file() else None


def too_large() -> HTTPException:
    return HTTPException(
        status_code=413, detail=f"upload is over the {MAX_BYTES // 2**20} MB limit; send a smaller image"
    )


async def read_upload(request: Request) -> bytes:
    """The uploaded image: the 'image' file (else the first file) of a form, or the raw body
    (FastPredict answers most of those before FastAPI routes them)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise too_large()
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await read_form_file(request)
    content = await read_body(request.receive, None)
    if content is None:
        raise HTTPException(status_code=400, detail="the client disconnected before sending the image")
    return content


async def read_form_file(request: Request) -> bytes:
    try:
        form = await request.form(max_files=4, max_fields=16, max_part_size=MAX_BYTES)
    except HTTPException as error:  # Starlette's multipart parser: malformed or over a limit.
        status = 413 if "size" in str(error.detail).lower() else 400
        raise HTTPException(status_code=status, detail=f"malformed multipart upload: {error.detail}") from None
    image = form.get("image")
    files = [value for value in form.values() if isinstance(value, UploadFile)]
    upload = image if isinstance(image, UploadFile) else (files[0] if files else None)
    if upload is None:
        raise HTTPException(status_code=400, detail="the form has no file: send the image in the field 'image'")
    content = await upload.read()
    if not content:
        raise HTTPException(status_code=400, detail=f"the uploaded file is empty: send an image file ({IMAGE_TYPES})")
    return content


def prepare_upload(content: bytes, polarity: str = "auto") -> tuple[np.ndarray, str]:
    """Decode and prepare an upload (in a worker thread): the 28x28 digit and it as a data URL."""
    try:
        digit = prepare_digit(read_image_bytes(content, "upload"), "upload", polarity)
    except ImageInputError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return digit, "data:image/png;base64," + base64.b64encode(digit_png(digit)).decode("ascii")


SERVE_ENVIRONMENT = "MNIST_CNN_SERVE"  # How `serve --workers N` hands its settings to each worker process.


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``serve --workers N`` (uvicorn's app factory)."""
    settings = json.loads(os.environ[SERVE_ENVIRONMENT])
    run_dir, runtime = Path(settings.pop("run_dir")), settings.pop("runtime")
    return create_app(run_dir, BatchingSettings(**settings), runtime)


def address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_address_free(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will (SO_REUSEADDR), then let go: a taken port is one
    clear line before anything is announced, not uvicorn's errno after the models load."""
    family = address_family(host)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except socket.gaierror:
        raise ConfigError(f"cannot listen on {host}: no such address; choose another with --host") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use: stop what uses it or choose another with --port"
            ) from None
        if error.errno == errno.EACCES:
            raise ConfigError(
                f"port {port} on {host} needs administrator rights (ports below 1024 do): choose another with --port"
            ) from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"{host} is not an address of this machine: choose another with --host (127.0.0.1 or 0.0.0.0)"
            ) from None
        raise ConfigError(
            f"cannot listen on {host} port {port} ({error.strerror}): choose another with --port"
        ) from None


def serve(run_dir: Path, server: ServerSettings | None = None, settings: BatchingSettings | None = None) -> None:
    """Serve the page and the API; ``server.workers`` > 1 runs that many processes on one port."""
    import uvicorn

    server = server or ServerSettings()
    host, port, workers = server.host, server.port, server.workers

    run = RunFolder.existing(run_dir)
    run.trained_model_folders()  # A bad folder fails here, in one line, not in each worker.
    if server.runtime == "onnx":  # So do a missing onnxruntime and missing exports.
        check_onnxruntime()
        run.onnx_exports()
    check_address_free(host, port)  # Announce no server that cannot be there.
    print(
        f"mnist-cnn: serving {run_dir} ({server.runtime}) on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops",
        flush=True,
    )
    # No access log: at "warning" it prints nothing, but uvicorn still formats every request's
    # line (client, path, quoting) when the access logger has a handler.
    quiet = {"log_level": "warning", "access_log": False}
    if workers == 1:
        uvicorn.run(create_app(run_dir, settings, server.runtime), host=host, port=port, **quiet)
        return
    settings = settings or BatchingSettings()
    handed = {"run_dir": str(run_dir), "runtime": server.runtime, **dataclasses.asdict(settings)}
    os.environ[SERVE_ENVIRONMENT] = json.dumps(handed)
    factory = "mnist_cnn.serve.app:app_from_environment"
    options = {"factory": True, "workers": workers, "host": host, "port": port, **quiet}
    if not REUSE_PORT:  # uvicorn's own way: one socket, shared by the workers.
        uvicorn.run(factory, **options)
        return
    # uvicorn's supervisor (restarts, signals, health checks) with workers that listen on
    # sockets of their own (OwnSocketProcess): it starts its workers by this module-level name.
    with mock.patch.object(multiprocess, "Process", OwnSocketProcess):
        multiprocess.Multiprocess(uvicorn.Config(factory, **options), sockets=[]).run()


# Linux spreads the connections to one port over the sockets that listen on it with
# SO_REUSEPORT; elsewhere (macOS, Windows) the option does not balance, and uvicorn's shared
# socket is used.
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` beside the other workers' (SO_REUSEPORT)."""
    listener = socket.socket(address_family(host), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    return listener


class OwnSocketProcess(multiprocess.Process):
    """A worker of ``serve --workers N``: uvicorn's worker process, listening on a socket of its
    own instead of the parent's.

    Why: with one shared socket, the worker that wakes first accepts every connection waiting,
    so a crowd that connects at once (a class opening the page, a load test) lands on one
    worker while the other idles: 16 wrk clients measured 150 requests/s on one process of two,
    419 when each worker has its socket and the kernel spreads the connections (SO_REUSEPORT;
    bench/serve_load.py, README).
    """

    def target(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            listener = reuse_port_socket(self.config.host, self.config.port)
        except OSError as error:  # Taken since the check: uvicorn's supervisor stops, not restarts.
            where = f"{self.config.host}:{self.config.port}"
            print(f"mnist-cnn: cannot listen on {where} ({error.strerror}): choose another --port", file=sys.stderr)
            sys.exit(STARTUP_FAILURE)
        super().target([listener])

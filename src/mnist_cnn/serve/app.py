"""The draw-a-digit web app: a page and a JSON API over a run's trained models (FastAPI).

Models load once when the app starts, and one inference worker (``batching``) owns them:
concurrent requests are answered in batches, one forward pass per model, so a classroom
opening the page at once is served, not failed. Decoding and preparing uploads runs in two
threads of its own, off the event loop and in parallel with inference. Uploads are capped in
size; anything that is not a usable image gets a 4xx with a message; a full queue gets 503
with Retry-After, a request not answered in time 504: never a 500 for load. Every one of those
answers is declared in the OpenAPI schema (``schemas``), and the API documentation is served
with its scripts from the app itself (``docs``): it works offline.

Two runtimes answer the same way: ``jax`` (the run's Keras models, one jitted function each)
and ``onnx`` (onnxruntime sessions on the run's exports, ``mnist-cnn export --format onnx``),
which loads no Keras model at all. How the app is run as processes, with which HTTP limits,
is ``process``'s.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import inspect
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from mnist_cnn.core.config import POLARITIES, BatchingSettings, ServerSettings
from mnist_cnn.core.errors import ImageInputError
from mnist_cnn.predict.inference import check_onnxruntime, onnx_forward
from mnist_cnn.predict.preprocess import MAX_BYTES, digit_png, prepare_digit, read_image_bytes
from mnist_cnn.serve.batching import InferenceWorker, Overloaded
from mnist_cnn.serve.docs import add_documentation
from mnist_cnn.serve.fast_path import PREDICT_PATH, FastPredict, read_body
from mnist_cnn.serve.icon import favicon_png
from mnist_cnn.serve.preparation import OwnProcessCompile, Preparation, Source
from mnist_cnn.serve.schemas import (
    IMAGE_BODY,
    IMAGE_TYPES,
    PREDICT_RESPONSES,
    READYZ_RESPONSES,
    RETRY_AFTER_SECONDS,
    busy_message,
    too_large,
)
from mnist_cnn.serve.site import add_browser_routes
from mnist_cnn.store.runs import RunFolder

PREPARE_THREADS = 2
logger = logging.getLogger("mnist_cnn.serve")


DEFAULT_SOURCE = object()  # create_app's preparation: compiled by a process of its own (OwnProcessCompile).


def create_app(
    run_dir: Path,
    settings: BatchingSettings | None = None,
    runtime: str = "jax",
    preparation: Source | None | object = DEFAULT_SOURCE,
) -> FastAPI:
    """The app for one run folder; its models (``runtime`` jax) or their ONNX exports
    (``runtime`` onnx) are loaded and compiled here, once, and it is ready when they answer.

    The image preparation is NumPy's until ``preparation`` (serve.preparation: by default a
    process of its own that fills numba's cache) has the compiled kernels ready, then theirs,
    the same digits: the app never waits for them. None: NumPy's (unless this process already
    prepares with the kernels).
    """
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
    answerer = Answerer(worker)
    # The compiled preparation in the background, from now on: the worker compiles the models meanwhile.
    switch = Preparation(OwnProcessCompile() if preparation is DEFAULT_SOURCE else preparation).start()
    try:
        worker.wait_ready()  # Compiles every batch shape now: the first user waits no longer than the rest.
    except BaseException:
        switch.stop()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        switch.stop()
        worker.stop()
        answerer.stop()

    app = FastAPI(
        **NO_TELEMETRY,
        title="mnist-cnn",
        summary="Draw or upload a digit; every model of the run answers.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Served by docs.add_documentation with local scripts, not FastAPI's CDN ones.
        redoc_url=None,
    )
    app.state.worker = worker
    app.state.preparation = switch
    # The outermost of the app's own middleware: what a user adds later wraps it (fast_path says why).
    app.add_middleware(FastPredict, worker=worker, answer=answerer.answer)
    add_documentation(app)
    add_browser_routes(app, run, summaries)  # The page's script, models.json, ONNX models, onnxruntime-web.
    add_routes(app, worker, answerer, switch, {"run": run.identity(), "runtime": runtime, "models": summaries})
    return app


def add_routes(
    app: FastAPI, worker: InferenceWorker, answerer: Answerer, preparation: Preparation, listing: dict[str, Any]
) -> None:
    """The page, the icon, health and readiness, the models' listing and the prediction route."""
    models = [summary["name"] for summary in listing["models"]]

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
        ready = worker.ready.is_set()  # The models answer; the preparation never holds readiness back.
        # Mean batch = answered / batches; each of `--workers N` processes counts its own.
        counts = {"answered": worker.answered, "batches": worker.batches, "process": os.getpid()}
        described = {"runtime": listing["runtime"], "preparation": preparation.state}
        return JSONResponse(
            {"ready": ready, "models": models, **described, **counts},
            status_code=200 if ready else 503,
        )

    @app.get("/api/models", summary="The run's models")
    def list_models() -> dict[str, Any]:
        """The run by its id (config.json's run_id), never by its path on the server."""
        return listing

    @app.post(
        PREDICT_PATH, summary="Predict the digit in an image", openapi_extra=IMAGE_BODY, responses=PREDICT_RESPONSES
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
        return JSONResponse(await answerer.answer(await read_upload(request), polarity))


class Answerer:
    """One upload to every model's answer: admitted against the worker's queue, decoded and
    prepared in a preparing thread, answered by the worker, and back to the event loop once.

    Decoding and preparing is mostly Python holding the GIL: two threads keep both cores busy
    beside the event loop and the inference worker; dozens (Starlette's default pool) would
    only fight over the GIL and slow every request down.
    """

    def __init__(self, worker: InferenceWorker) -> None:
        self.worker = worker
        self.preparers = concurrent.futures.ThreadPoolExecutor(
            max_workers=PREPARE_THREADS, thread_name_prefix="mnist-cnn-prepare"
        )

    def stop(self) -> None:
        self.preparers.shutdown(wait=False, cancel_futures=True)

    async def answer(self, content: bytes, polarity: str) -> dict[str, Any]:
        """Every model's answer to one upload, as the API's JSON; an HTTPException for a bad
        polarity or image (4xx), a full queue (503) or no answer in time (504). Both ways in
        call it: the route, and FastPredict for a plain image body."""
        if polarity not in POLARITIES:  # One sentence, as every error here (not FastAPI's list).
            raise HTTPException(
                status_code=400, detail=f"unknown polarity {polarity!r}: choose from {', '.join(POLARITIES)}"
            )
        worker = self.worker
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        try:
            # Admitted before decoding: a request waiting for a decoding thread counts as queued.
            worker.admit()
            try:
                self.preparers.submit(self.prepare_and_submit, content, polarity, answered, loop)
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

    def prepare_and_submit(
        self, content: bytes, polarity: str, answered: asyncio.Future, loop: asyncio.AbstractEventLoop
    ) -> None:
        """In a preparing thread: the upload prepared and handed to the worker from there, and
        the models' answer handed back to the event loop once, when it is there. Why: each hop
        through the loop waits its turn behind everything else the loop has to do (under a
        crowd, hundreds of refusals a turn), so a request takes the fewest: in, and out."""
        try:
            digit, model_input_png = prepare_upload(content, polarity)
            future = self.worker.submit(digit)
        except BaseException as error:  # A bad image (HTTPException) or a full queue, for the loop.
            loop.call_soon_threadsafe(settle, answered, None, error)
            return
        finally:
            self.worker.release()  # Queued now (or failed): the queue's bound counts it from here.

        def hand_back(done: concurrent.futures.Future) -> None:
            error = done.exception()
            outcome = None if error is not None else (done.result(), model_input_png)
            loop.call_soon_threadsafe(settle, answered, outcome, error)

        future.add_done_callback(hand_back)


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


# FastAPI 0.16x's OpenTelemetry hooks, off where it has them: unused here, their check of the
# providers on every request cost 5 % of a busy server's event loop.
NO_TELEMETRY = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)


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


async def read_upload(request: Request) -> bytes:
    """The uploaded image: the 'image' file (else the first file) of a form, or the raw body
    (FastPredict answers most of those before FastAPI routes them). A client that leaves before
    its upload is read is logged in one quiet line, not a traceback."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise too_large()
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await read_form_file(request)
        content = await read_body(request.receive, None)
    except ClientDisconnect:
        content = None
    if content is None:
        logger.info("a client left before its upload was read")
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
    """Decode and prepare an upload (in a preparing thread): the 28x28 digit and it as a data URL."""
    try:
        digit = prepare_digit(read_image_bytes(content, "upload"), "upload", polarity)
    except ImageInputError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return digit, "data:image/png;base64," + base64.b64encode(digit_png(digit)).decode("ascii")

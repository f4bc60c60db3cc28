"""The draw-a-digit web app: a page and a JSON API over a run's trained models (FastAPI).

Models load once when the app starts, and one inference worker (``batching``) owns them:
concurrent requests are answered in batches, one forward pass per model, so a classroom
opening the page at once is served, not failed. Decoding and preparing uploads runs in
Starlette's thread pool, off the event loop and in parallel with inference. Uploads are
capped in size; anything that is not a usable image gets a 4xx with a message; a full queue
gets 503 with Retry-After, a request not answered in time 504: never a 500 for load.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile

from mnist_cnn.core.config import BatchingSettings, ServerSettings
from mnist_cnn.core.errors import ImageInputError
from mnist_cnn.predict.preprocess import MAX_BYTES, digit_png, prepare_digit, read_image_bytes
from mnist_cnn.serve.batching import InferenceWorker, Overloaded
from mnist_cnn.store.runs import RunFolder

IMAGE_TYPES = "PNG, JPEG, BMP, GIF or WebP"
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
PREPARE_THREADS = 2


def create_app(run_dir: Path, settings: BatchingSettings | None = None) -> FastAPI:
    """The app for one run folder; its models are loaded and compiled here, once."""
    run = RunFolder.existing(run_dir)
    models = run.load_models()
    augmented = run.config().augmentation is not None
    summaries = [{**model_summary(run, name, model), "augmented": augmented} for name, model in models.items()]
    worker = InferenceWorker(models, settings).start()
    # Decoding and preparing uploads is mostly Python holding the GIL: two threads keep both
    # cores busy beside the event loop and the inference worker; dozens (Starlette's default
    # pool) would only fight over the GIL and slow every request down.
    preparers = concurrent.futures.ThreadPoolExecutor(
        max_workers=PREPARE_THREADS, thread_name_prefix="mnist-cnn-prepare"
    )
    worker.wait_ready()  # Compiles every batch shape now: the first user waits no longer than the rest.

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.stop()
        preparers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="mnist-cnn",
        summary="Draw or upload a digit; every model of the run answers.",
        version="1",
        lifespan=lifespan,
    )
    app.state.worker = worker

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (resources.files("mnist_cnn.serve") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/healthz", summary="Liveness: the server answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: models loaded and compiled")
    def readyz() -> JSONResponse:
        ready = worker.ready.is_set()
        counts = {"answered": worker.answered, "batches": worker.batches}  # Mean batch = answered / batches.
        return JSONResponse({"ready": ready, "models": list(models), **counts}, status_code=200 if ready else 503)

    @app.get("/api/models", summary="The run's models")
    def list_models() -> dict[str, Any]:
        return {"run": str(run_dir), "models": summaries}

    @app.post("/api/predict", summary="Predict the digit in an image", openapi_extra=IMAGE_BODY)
    async def predict(request: Request) -> JSONResponse:
        content = await read_upload(request)
        loop = asyncio.get_running_loop()
        digit, model_input_png = await loop.run_in_executor(preparers, prepare_upload, content)
        try:
            future = worker.submit(digit)
        except Overloaded as error:
            raise HTTPException(
                status_code=503,
                detail=f"the server is busy ({error}); try again in a moment",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        try:
            answers = await asyncio.wait_for(asyncio.wrap_future(future), worker.settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(
                status_code=504,
                detail=f"no answer within {worker.settings.timeout_s:g} s; the server is overloaded, try again later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        # A JSONResponse as it is: FastAPI's encoder would walk this plain JSON once more per request.
        return JSONResponse(
            {
                "predictions": {name: prediction.to_json() for name, prediction in answers.items()},
                "model_input_png": model_input_png,
            }
        )

    return app


def model_summary(run: RunFolder, name: str, model: Any) -> dict[str, Any]:
    """A served model's name, size and test accuracy (None while its run has not finished it)."""
    folder = run.model(name)
    metrics = folder.read_metrics() if folder.metrics_path.is_file() else None
    return {
        "name": name,
        "parameters": int(model.count_params()),
        "test_accuracy": metrics.test_accuracy if metrics else None,
        "epochs": metrics.epochs if metrics else None,
    }


def too_large() -> HTTPException:
    return HTTPException(
        status_code=413, detail=f"upload is over the {MAX_BYTES // 2**20} MB limit; send a smaller image"
    )


async def read_upload(request: Request) -> bytes:
    """The uploaded image: the raw body, or the 'image' file (else the first file) of a form."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise too_large()
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await read_form_file(request)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BYTES:
            raise too_large()
        chunks.append(chunk)
    content = b"".join(chunks)
    if not content:
        raise HTTPException(status_code=400, detail=f"empty request body: send an image file ({IMAGE_TYPES})")
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


def prepare_upload(content: bytes) -> tuple[np.ndarray, str]:
    """Decode and prepare an upload (in a worker thread): the 28x28 digit and it as a data URL."""
    try:
        digit = prepare_digit(read_image_bytes(content, "upload"), "upload")
    except ImageInputError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return digit, "data:image/png;base64," + base64.b64encode(digit_png(digit)).decode("ascii")


SERVE_ENVIRONMENT = "MNIST_CNN_SERVE"  # How `serve --workers N` hands its settings to each worker process.


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``serve --workers N`` (uvicorn's app factory)."""
    settings = json.loads(os.environ[SERVE_ENVIRONMENT])
    return create_app(Path(settings.pop("run_dir")), BatchingSettings(**settings))


def serve(run_dir: Path, server: ServerSettings | None = None, settings: BatchingSettings | None = None) -> None:
    """Serve the page and the API; ``server.workers`` > 1 runs that many processes on one port."""
    import uvicorn

    server = server or ServerSettings()
    host, port, workers = server.host, server.port, server.workers

    RunFolder.existing(run_dir).trained_model_folders()  # A bad folder fails here, in one line, not in each worker.
    print(f"mnist-cnn: serving {run_dir} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops", flush=True)
    if workers == 1:
        uvicorn.run(create_app(run_dir, settings), host=host, port=port, log_level="warning")
        return
    settings = settings or BatchingSettings()
    os.environ[SERVE_ENVIRONMENT] = json.dumps({"run_dir": str(run_dir), **dataclasses.asdict(settings)})
    uvicorn.run(
        "mnist_cnn.serve.app:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
    )

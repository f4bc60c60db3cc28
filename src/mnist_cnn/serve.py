"""The draw-a-digit web app: a page and a JSON API over a run's trained models (FastAPI).

Models load once when the app starts; each prediction is one small forward pass per model.
Uploads are capped in size; anything that is not a usable image gets a 4xx with a message.
"""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from mnist_cnn.errors import ImageInputError
from mnist_cnn.inference import predict_digit
from mnist_cnn.preprocess import MAX_BYTES, digit_png, prepare_digit, read_image_bytes
from mnist_cnn.runs import RunFolder

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image file itself as the request body (PNG, JPEG, BMP, GIF or WebP, at most 10 MB).",
        "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def create_app(run_dir: Path) -> FastAPI:
    """The app for one run folder; its models are loaded here, once."""
    run = RunFolder.existing(run_dir)
    models = run.load_models()
    summaries = [model_summary(run, name, model) for name, model in models.items()]
    predict_digit(models, np.zeros((28, 28), dtype=np.float32))  # Compile now: the first user waits no longer.

    app = FastAPI(
        title="mnist-cnn",
        summary="Draw or upload a digit; every model of the run answers.",
        version="1",
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (resources.files("mnist_cnn") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/api/models", summary="The run's models")
    def list_models() -> dict[str, Any]:
        return {"run": str(run_dir), "models": summaries}

    @app.post("/api/predict", summary="Predict the digit in an image", openapi_extra=IMAGE_BODY)
    async def predict(request: Request) -> dict[str, Any]:
        content = await read_capped_body(request)
        try:
            digit = prepare_digit(read_image_bytes(content, "upload"), "upload")
        except ImageInputError as error:
            raise HTTPException(status_code=422 if content else 400, detail=str(error)) from None
        return await run_in_threadpool(answer, models, digit)

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


async def read_capped_body(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_BYTES without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise HTTPException(
            status_code=413, detail=f"upload is over the {MAX_BYTES // 2**20} MB limit; send a smaller image"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BYTES:
            raise HTTPException(
                status_code=413, detail=f"upload is over the {MAX_BYTES // 2**20} MB limit; send a smaller image"
            )
        chunks.append(chunk)
    content = b"".join(chunks)
    if not content:
        raise HTTPException(
            status_code=400, detail="empty request body: send an image file (PNG, JPEG, BMP, GIF or WebP)"
        )
    return content


def answer(models: dict[str, Any], digit: np.ndarray) -> dict[str, Any]:
    """Every model's probabilities for one prepared 28x28 digit, and that digit as a PNG."""
    return {
        "predictions": {name: prediction.to_json() for name, prediction in predict_digit(models, digit).items()},
        "model_input_png": "data:image/png;base64," + base64.b64encode(digit_png(digit)).decode("ascii"),
    }


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    app = create_app(run_dir)
    print(f"mnist-cnn: serving {run_dir} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

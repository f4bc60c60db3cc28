"""What the API answers, declared once: the JSON bodies, the error sentences shared by the route
and the plain-body fast path, and the OpenAPI description of each answer."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, Field

from mnist_cnn.predict.preprocess import IMAGE_TYPES, MAX_BYTES, MAX_PIXELS, MAX_SIDE

RETRY_AFTER_SECONDS = 1
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": f"The image ({IMAGE_TYPES}, at most {MAX_BYTES // 2**20} MB, "
        f"{MAX_PIXELS // 1_000_000} megapixels and {MAX_SIDE:,} pixels a side): the file itself as the request body, "
        "or a multipart/form-data upload with the file in the field 'image'.",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


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
    preparation: str = Field(
        description="how uploads are prepared: compiled (numba's kernels), compiling (NumPy's preparation, the same "
        "digits, until the kernels are ready) or numpy (where numba does not import)",
        json_schema_extra={"enum": ["compiled", "compiling", "numpy"]},
    )
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
    422: error_response("not a readable image, a format not read, over the pixel limits, or blank (no ink found)"),
    503: error_response(
        "the server is busy (its queue is full): try again after Retry-After seconds", headers=RETRY_AFTER_HEADER
    ),
    504: error_response("no answer in time: the server is overloaded", headers=RETRY_AFTER_HEADER),
}
READYZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "the models are loaded and compiled: the server answers"},
    503: {"model": Readiness, "description": "not ready yet: the models are still loading or compiling"},
}


def busy_message(reason: str) -> str:
    return f"the server is busy ({reason}); try again in a moment"


def too_large() -> HTTPException:
    return HTTPException(
        status_code=413, detail=f"upload is over the {MAX_BYTES // 2**20} MB limit; send a smaller image"
    )


def empty_body() -> HTTPException:
    return HTTPException(status_code=400, detail=f"empty request body: send an image file ({IMAGE_TYPES})")

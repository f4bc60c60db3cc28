"""POST /api/predict with the image as the body, answered as plain ASGI in front of FastAPI.

Why: at a few hundred answers a second per process, FastAPI's way through its middleware
stack, router, parameter parsing and exception handlers was a fifth of the server's CPU. The
work itself is the app's own ``answer`` (the route calls the same), errors included: the same
status, headers and {"detail": ...} body. While the worker is full a prediction is refused with
503 before its body is read: under a crowd, refusals are most of the event loop's work.

The rule for anything added to the app: ``create_app`` adds FastPredict as its outermost
middleware, and Starlette wraps each middleware added later around the ones before. So a
middleware added to the returned app (authentication, CORS, request logging) sees every
request, fast-path predictions included (tests/test_serve.py checks it). What the fast path
skips is FastAPI's routing: a dependency declared on the /api/predict route would not run for a
plain image body, so checks belong in a middleware, not in a route dependency.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import HTTPException

from mnist_cnn.predict.preprocess import MAX_BYTES
from mnist_cnn.serve.batching import InferenceWorker
from mnist_cnn.serve.schemas import RETRY_AFTER_SECONDS, busy_message, empty_body, too_large

PREDICT_PATH = "/api/predict"
Answer = Callable[[bytes, str], Awaitable[dict[str, Any]]]


class FastPredict:
    """The ASGI middleware: a plain image body to PREDICT_PATH is answered here with ``answer``;
    a multipart form, and every other request, go on to FastAPI."""

    def __init__(self, app: Any, worker: InferenceWorker, answer: Answer) -> None:
        self.app, self.worker, self.answer = app, worker, answer
        reason = f"{worker.settings.queue_size} requests are already waiting"
        self.busy = json_body({"detail": busy_message(reason)})
        self.busy_headers = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode("ascii"))]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PREDICT_PATH):
            await self.app(scope, receive, send)
            return
        if self.worker.full():
            await send_json(send, 503, self.busy, self.busy_headers)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        polarity = query.get("polarity", ["auto"])[-1]
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
    when empty; None when the client disconnects first."""
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
        raise empty_body()
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

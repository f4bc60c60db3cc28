"""Dynamic batching of predictions: many concurrent requests, one forward pass per model.

Why: the web server receives requests on many threads at once, and Keras's JAX ``predict``
is not safe to call concurrently (it donates its state buffers: two threads destroy each
other's inputs). So one worker thread owns the models, as in TF Serving's batching or
Triton's dynamic batcher: requests that arrive within a short window are stacked into one
batch, padded to one of a few fixed sizes compiled at start-up (no user waits for a
compilation), sent through each model once, and every request gets its own answer.

Back-pressure instead of collapse: the queue is bounded; when it is full, ``submit`` refuses
at once (the server answers 503 with Retry-After) rather than letting waits grow without end.
And the bound counts a request from its admission (``admit``), while it is still being
decoded, not only once it reaches the queue: otherwise a crowd waits, unbounded, in front of
the decoding threads, and even the requests that are answered wait there for most of a second.

What runs the forward passes is a ``Forward`` per model, built in the worker's thread by
``build_forward``: ``compiled_forward`` on the Keras models (JAX), or ``onnx_forward`` on the
run's ONNX exports; the batching is the same for both, but for the padding: a jitted JAX
function compiles once per batch shape, so its batches are padded to a few fixed sizes, while
onnxruntime takes any batch as it is (``pad_batches=False``), and a batch of 5 costs 5 images,
not 16.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mnist_cnn.core.config import BatchingSettings
from mnist_cnn.predict.inference import Forward, compiled_forward, predict_digits


class Overloaded(Exception):
    """The queue of waiting requests is full: try again shortly."""


@dataclasses.dataclass
class _Request:
    digit: np.ndarray
    future: concurrent.futures.Future


class InferenceWorker:
    """One thread that owns the models and answers queued digits in batches.

    ``models`` maps names to what ``build_forward`` turns into a ``Forward``: Keras models for
    ``compiled_forward`` (the default), ``OnnxModelFile``s for ``onnx_forward``. ``pad_batches``:
    whether each batch is padded to the next of ``settings.batch_sizes()`` (for a forward that
    compiles per shape).
    """

    def __init__(
        self,
        models: dict[str, Any],
        settings: BatchingSettings | None = None,
        build_forward: Callable[[Any], Forward] | None = None,
        pad_batches: bool = True,
    ) -> None:
        self.models = models
        self.pad_batches = pad_batches
        self._build_forward = build_forward or compiled_forward
        # Built in the worker's thread, like every model call: nothing else touches them.
        self._forwards: dict[str, Forward] = {}
        self.settings = settings or BatchingSettings()
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=self.settings.queue_size)
        self._admission = threading.Lock()
        self._preparing = 0  # Requests admitted and not yet queued (being read or decoded).
        self._thread = threading.Thread(target=self._run, name="mnist-cnn-inference", daemon=True)
        self.ready = threading.Event()
        self.failure: BaseException | None = None  # Why warm-up failed, if it did.
        self.batches = 0  # Forward passes run (for the benchmark and the tests).
        self.answered = 0

    def start(self) -> InferenceWorker:
        """Compile every batch shape (in the worker's thread, like all model calls), then serve."""
        self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the compiled models; re-raise here what broke the warm-up (never hang)."""
        ready = self.ready.wait(timeout)
        if self.failure is not None:
            raise self.failure
        return ready

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)  # Blocks only while the queue is full; the worker drains it.
            self._thread.join(timeout=30)

    def full(self) -> bool:
        """Whether a new request would be refused: ``queue_size`` are queued or being decoded."""
        return self._preparing + self._queue.qsize() >= self.settings.queue_size

    def admit(self) -> None:
        """Hold a place for one request while it is decoded, before ``submit``: a request being
        prepared counts against ``queue_size`` like one waiting in the queue, so a crowd is
        refused at once (``Overloaded``) instead of waiting for the decoding threads. ``release``
        gives the place back, in whichever thread the request is submitted (or fails)."""
        with self._admission:
            if self.full():
                raise Overloaded(f"{self.settings.queue_size} requests are already waiting")
            self._preparing += 1

    def release(self) -> None:
        """The place ``admit`` held, given back once the request is queued or has failed."""
        with self._admission:
            self._preparing -= 1

    def submit(self, digit: np.ndarray) -> concurrent.futures.Future:
        """Queue one prepared 28x28 digit; the future resolves to every model's answer."""
        request = _Request(digit=digit, future=concurrent.futures.Future())
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise Overloaded(f"{self.settings.queue_size} requests are already waiting") from None
        return request.future

    def _run(self) -> None:
        try:
            self._forwards = {name: self._build_forward(model) for name, model in self.models.items()}
            for size in self.settings.batch_sizes():
                predict_digits(self._forwards, np.zeros((1, 28, 28), dtype=np.float32), padded_size=size)
        except BaseException as error:  # Handed to wait_ready's caller, in its own thread.
            self.failure = error
            self.ready.set()
            return
        self.ready.set()
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._answer(batch)

    def _collect(self) -> list[_Request] | None:
        """Wait for a request, then for up to ``window_ms`` more (or a full batch)."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.settings.window_ms / 1000
        while len(batch) < self.settings.max_batch:
            try:
                # Whatever is already queued joins at once; then wait out the window.
                request = (
                    self._queue.get_nowait()
                    if time.monotonic() >= deadline
                    else self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                )
            except queue.Empty:
                break
            if request is None:
                self._queue.put(None)  # Stop after this batch.
                break
            batch.append(request)
        return batch

    def _answer(self, batch: list[_Request]) -> None:
        live = [request for request in batch if request.future.set_running_or_notify_cancel()]
        if not live:
            return
        size = next(size for size in self.settings.batch_sizes() if size >= len(live)) if self.pad_batches else None
        try:
            digits = np.stack([request.digit for request in live])
            answers = predict_digits(self._forwards, digits, padded_size=size)
        except Exception as error:  # A failing model must fail these requests, not the worker.
            for request in live:
                request.future.set_exception(error)
            return
        self.batches += 1
        self.answered += len(live)
        for request, answer in zip(live, answers, strict=True):
            request.future.set_result(answer)

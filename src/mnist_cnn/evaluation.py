"""Test-set evaluation, inference timing and per-image predictions."""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np

INFERENCE_BATCH_SIZE = 1000
SINGLE_IMAGE_REPEATS = 30


def evaluate_model(model: keras.Model, X_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Test loss and accuracy, computed by Keras from the compiled loss and metric."""
    loss, accuracy = model.evaluate(X_test, y_test, batch_size=INFERENCE_BATCH_SIZE, verbose=0)
    return {"test_loss": float(loss), "test_accuracy": float(accuracy)}


def time_inference(model: keras.Model, X_test: np.ndarray) -> dict[str, float]:
    """Inference time per image over the test set in large batches, and for one image alone.

    Both are measured after a warm-up call, so compilation is not counted.
    """
    model.predict(X_test[:INFERENCE_BATCH_SIZE], batch_size=INFERENCE_BATCH_SIZE, verbose=0)
    start = time.perf_counter()
    model.predict(X_test, batch_size=INFERENCE_BATCH_SIZE, verbose=0)
    batched = (time.perf_counter() - start) / len(X_test)
    single_image = X_test[:1]
    model.predict_on_batch(single_image)
    timings = []
    for _ in range(SINGLE_IMAGE_REPEATS):
        start = time.perf_counter()
        model.predict_on_batch(single_image)
        timings.append(time.perf_counter() - start)
    return {
        "inference_ms_per_image_batched": batched * 1000,
        "inference_ms_single_image": float(np.median(timings)) * 1000,
    }


def predict_images(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Class probabilities, shape (N, 10), for images of shape (N, 28, 28, 1) in [0, 1]."""
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
        raise ValueError(f"images must have shape (N, 28, 28, 1), got {images.shape}")
    return np.asarray(model.predict_on_batch(images.astype("float32")))


def describe_prediction(probabilities: np.ndarray, top: int = 3) -> dict[str, Any]:
    """The predicted digit, its probability and the ``top`` most likely digits."""
    order = np.argsort(probabilities)[::-1][:top]
    return {
        "digit": int(order[0]),
        "probability": float(probabilities[order[0]]),
        "top": [{"digit": int(digit), "probability": float(probabilities[digit])} for digit in order],
    }

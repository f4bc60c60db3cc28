"""Test-set evaluation, inference timing and the predictions for chosen test images."""

from __future__ import annotations

import time

import keras
import numpy as np

from mnist_cnn.core.config import EVALUATION_BATCH_SIZE
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.results import Prediction, PredictionsOnTestImages
from mnist_cnn.data.mnist import MnistSplits
from mnist_cnn.predict.inference import predict_probabilities

SINGLE_IMAGE_REPEATS = 30


def evaluate_model(model: keras.Model, X_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Test loss and accuracy, computed by Keras from the compiled loss and metric."""
    loss, accuracy = model.evaluate(X_test, y_test, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    return {"test_loss": float(loss), "test_accuracy": float(accuracy)}


def time_inference(model: keras.Model, X_test: np.ndarray) -> dict[str, float]:
    """Inference time per image over the test set in large batches, and for one image alone.

    Both are measured after a warm-up call, so compilation is not counted.
    """
    model.predict(X_test[:EVALUATION_BATCH_SIZE], batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    start = time.perf_counter()
    model.predict(X_test, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
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


def predict_test_images(
    models: dict[str, keras.Model], splits: MnistSplits, indices: tuple[int, ...] | list[int]
) -> PredictionsOnTestImages:
    """Every model's answer for X_test[i] for each i in ``indices``."""
    for index in indices:
        if not 0 <= index < len(splits.X_test):
            raise ConfigError(
                f"test index {index} is out of range: the test set has {len(splits.X_test)} images "
                f"(0-{len(splits.X_test) - 1})"
            )
    images = splits.X_test[list(indices)]
    return PredictionsOnTestImages(
        indices=list(indices),
        true_labels=[int(splits.y_test[index]) for index in indices],
        predictions={
            name: [Prediction.from_probabilities(row) for row in predict_probabilities(model, images)]
            for name, model in models.items()
        },
    )

"""Prediction with trained models: the one path from a prepared digit to every model's answer.

Used by ``mnist-cnn predict`` and by the web server alike. It imports neither the trainers
nor matplotlib, so serving stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_cnn.preprocess import digit_png
from mnist_cnn.results import Prediction
from mnist_cnn.runs import write_bytes

if TYPE_CHECKING:
    import keras


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Class probabilities, shape (N, 10), for images of shape (N, 28, 28, 1) in [0, 1]."""
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
        raise ValueError(f"images must have shape (N, 28, 28, 1), got {images.shape}")
    return np.asarray(model.predict_on_batch(images.astype("float32")))


def predict_digit(models: dict[str, keras.Model], digit: np.ndarray) -> dict[str, Prediction]:
    """Every model's answer, with all ten probabilities, for one prepared 28x28 digit."""
    if digit.shape != (28, 28):
        raise ValueError(f"a prepared digit has shape (28, 28), got {digit.shape}")
    batch = digit[None, :, :, None]
    return {
        name: Prediction.from_probabilities(predict_probabilities(model, batch)[0], keep_all=True)
        for name, model in models.items()
    }


def save_model_input(digit: np.ndarray, source: str, folder: Path) -> Path:
    """Write the 28x28 image the models saw, as a PNG named after the input (``-``: stdin)."""
    stem = "stdin" if source == "-" else Path(source).stem
    path = folder / f"{stem}-28x28.png"
    write_bytes(path, digit_png(digit))
    return path

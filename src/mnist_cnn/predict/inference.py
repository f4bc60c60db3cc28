"""Prediction with trained models: the one path from a prepared digit to every model's answer.

Used by ``mnist-cnn predict`` and by the web server alike. It imports neither the trainers
nor matplotlib, so serving stays light.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.files import write_bytes
from mnist_cnn.core.results import Prediction
from mnist_cnn.predict.preprocess import digit_png

if TYPE_CHECKING:
    import keras

# A model as a function: images (N, 28, 28, 1) in [0, 1] -> probabilities (N, 10).
Forward = Callable[[np.ndarray], np.ndarray]

ONNX_INSTALL_COMMAND = "pip install -e '.[export]'"
# onnxruntime's threads per session, for the server's worker model: one thread runs every
# forward pass (sessions never run at once), and the other core decodes uploads and runs the
# HTTP layer. Measured on the 2-core machine (both models, batch 1/16/64): 2 intra-op threads
# won a little on a lone image and lost on batches (their spinning and the decoding threads
# fight for the same two cores); 1 thread, spinning off, is steady.
ONNX_INTRA_OP_THREADS = 1


@dataclasses.dataclass(frozen=True)
class OnnxModelFile:
    """One exported model: its .onnx file and the names of its input and output (from the manifest)."""

    path: Path
    input_name: str
    output_name: str


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Class probabilities, shape (N, 10), for images of shape (N, 28, 28, 1) in [0, 1]."""
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
        raise ValueError(f"images must have shape (N, 28, 28, 1), got {images.shape}")
    return np.asarray(model.predict_on_batch(images.astype("float32")))


def keras_forward(model: keras.Model) -> Forward:
    """``model.predict_on_batch`` as a forward function (any backend; one caller at a time)."""
    return lambda images: predict_probabilities(model, images)


def compiled_forward(model: keras.Model) -> Forward:
    """A fast, thread-safe forward pass of ``model``'s current weights: images -> probabilities.

    On JAX this is one jitted pure function of the weights (no donated buffers, no state
    synchronised back into the model per call, unlike ``predict_on_batch``), about ten times
    less overhead per call; it is what a server calls thousands of times a second. On the
    other backends it is ``predict_on_batch``.
    """
    import keras

    if keras.backend.backend() != "jax":
        return keras_forward(model)
    import jax

    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, non_trainable, images):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return outputs

    def call(images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
            raise ValueError(f"images must have shape (N, 28, 28, 1), got {images.shape}")
        return np.asarray(forward(trainable, non_trainable, images.astype("float32")))

    return call


def check_onnxruntime() -> None:
    """Refuse in one line, before anything starts, when onnxruntime cannot be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(f"--runtime onnx needs onnxruntime, which is not installed: {ONNX_INSTALL_COMMAND}") from None


def onnx_forward(model_file: OnnxModelFile, intra_op_threads: int = ONNX_INTRA_OP_THREADS) -> Forward:
    """An onnxruntime session on an exported model as a forward function, with ``compiled_forward``'s
    contract: images (N, 28, 28, 1) in [0, 1] -> probabilities (N, 10), any N.

    onnxruntime is imported here, not with the module: ``mnist-cnn predict`` and the JAX server
    never need it.
    """
    check_onnxruntime()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Idle threads that spin would take the core the upload decoding needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # Errors only: no start-up notes on the server's console.
    session = onnxruntime.InferenceSession(str(model_file.path), options, providers=["CPUExecutionProvider"])
    outputs, input_name = [model_file.output_name], model_file.input_name

    def call(images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
            raise ValueError(f"images must have shape (N, 28, 28, 1), got {images.shape}")
        return session.run(outputs, {input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    return call


def predict_digit(models: dict[str, keras.Model], digit: np.ndarray) -> dict[str, Prediction]:
    """Every model's answer, with all ten probabilities, for one prepared 28x28 digit."""
    return predict_digits({name: keras_forward(model) for name, model in models.items()}, digit[None])[0]


def predict_digits(
    forwards: dict[str, Forward], digits: np.ndarray, padded_size: int | None = None
) -> list[dict[str, Prediction]]:
    """Every model's answers for prepared digits (N, 28, 28): one forward pass per model.

    ``forwards`` map model names to forward functions (``keras_forward``, ``compiled_forward``,
    ``onnx_forward``).
    ``padded_size`` pads the batch with blank images to that many, so a compiled model sees
    only a few batch shapes (the server's batches); the padding's answers are dropped.
    """
    if digits.ndim != 3 or digits.shape[1:] != (28, 28):
        raise ValueError(f"prepared digits have shape (N, 28, 28), got {digits.shape}")
    count = len(digits)
    batch = digits[..., None].astype("float32")
    if padded_size is not None and padded_size > count:
        batch = np.concatenate([batch, np.zeros((padded_size - count, 28, 28, 1), dtype="float32")])
    probabilities = {name: forward(batch)[:count] for name, forward in forwards.items()}
    return [
        {name: Prediction.from_probabilities(rows[index], keep_all=True) for name, rows in probabilities.items()}
        for index in range(count)
    ]


def save_model_input(digit: np.ndarray, source: str, folder: Path, taken: set[str] | None = None) -> Path:
    """Write the 28x28 image the models saw, as a PNG named after the input (``-``: stdin).

    ``taken`` holds the names already written in this call: an input whose name is taken
    (``a/seven.gif`` then ``b/seven.webp``) gets a numbered one (``seven-2-28x28.png``)
    instead of overwriting the first; the name it gets is added.
    """
    stem = "stdin" if source == "-" else Path(source).stem
    name, number = f"{stem}-28x28.png", 1
    while taken is not None and name in taken:
        number += 1
        name = f"{stem}-{number}-28x28.png"
    if taken is not None:
        taken.add(name)
    path = folder / name
    write_bytes(path, digit_png(digit))
    return path

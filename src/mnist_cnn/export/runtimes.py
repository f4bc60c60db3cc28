"""Each format's converter and runtime: write a Keras model as the format, run the written file.

The parity check runs every exported model with the runtime a deployment would use
(onnxruntime, TensorFlow's SavedModel loader, the LiteRT interpreter), never through Keras,
and the manifest's input and output names, shapes and dtypes are read from that runtime:
they describe the file as it is, not as it was meant to be. Import this module only once
Keras runs the TensorFlow backend (``plan.EXPORT_BACKEND``).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from mnist_cnn.core.environment import tensorflow_noise_dropped
from mnist_cnn.export.plan import ExportFormat

# onnxruntime's names for tensor element types, as NumPy names them.
ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


@dataclasses.dataclass(frozen=True)
class TensorDescription:
    """An input or output of an exported model: its name, shape (None: any size) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class Runtime(Protocol):
    """An exported model loaded by its own runtime."""

    inputs: list[TensorDescription]
    outputs: list[TensorDescription]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for images (N, 28, 28, 1) float32."""
        ...


def convert(model: keras.Model, export_format: ExportFormat, path: Path) -> None:
    """Write ``model`` as ``export_format`` at ``path`` (Keras's own exporter, on TensorFlow)."""
    with tensorflow_noise_dropped(), warnings.catch_warnings():
        # Keras's tf2onnx shim asks NumPy for np.object, which NumPy 2 answers with a FutureWarning.
        warnings.filterwarnings("ignore", message=r"In the future `np\.object`", category=FutureWarning)
        model.export(str(path), format=export_format.keras_format, verbose=False)


def open_runtime(export_format: ExportFormat, path: Path) -> Runtime:
    """The exported file at ``path`` loaded by the runtime of its format."""
    return RUNTIMES[export_format.name](path)


def run_in_batches(runtime: Runtime, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The runtime's probabilities for every image, ``batch_size`` at a time.

    TensorFlow and LiteRT log to file descriptor 2 while they load and first run a model (the
    interpreter announces its XNNPACK delegate when it allocates tensors): dropped, as at start-up.
    """
    with tensorflow_noise_dropped():
        return np.concatenate(
            [runtime.predict(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        )


class OnnxRuntime:
    """An .onnx file in an onnxruntime session on the CPU."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [onnx_description(node) for node in self.session.get_inputs()]
        self.outputs = [onnx_description(node) for node in self.session.get_outputs()]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.outputs[0].name], {self.inputs[0].name: images})[0]


def onnx_description(node: Any) -> TensorDescription:
    """A session's input or output; a symbolic dimension (the batch, 'unk__36') is None."""
    shape = tuple(dimension if isinstance(dimension, int) else None for dimension in node.shape)
    return TensorDescription(node.name, shape, ONNX_DTYPES.get(node.type, node.type))


class SavedModelRuntime:
    """A SavedModel folder loaded by TensorFlow, called through its serving_default signature."""

    SIGNATURE = "serving_default"

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.tf = tf
        self.signature = tf.saved_model.load(str(path)).signatures[self.SIGNATURE]
        _, keyword_inputs = self.signature.structured_input_signature
        self.inputs = [tensorflow_description(name, spec) for name, spec in keyword_inputs.items()]
        self.outputs = [tensorflow_description(name, spec) for name, spec in self.signature.structured_outputs.items()]

    def predict(self, images: np.ndarray) -> np.ndarray:
        answer = self.signature(**{self.inputs[0].name: self.tf.constant(images)})
        return answer[self.outputs[0].name].numpy()


def tensorflow_description(name: str, spec: Any) -> TensorDescription:
    return TensorDescription(name, tuple(spec.shape.as_list()), spec.dtype.name)


class LiteRtRuntime:
    """A .tflite file in the LiteRT interpreter, its input resized to each batch fed.

    Run by LiteRT's built-in kernels, without its default XNNPACK delegate: measured on Model_A
    fully trained (60 epochs), all 10,000 test images, the built-in kernels answer within 6.4e-6
    of Keras, XNNPACK within 1.5e-5 (and the reference kernels 1.5e-5), all with every top digit
    the same. The file is the same either way; the check measures the file with the kernels
    whose float32 sums are nearest Keras's order, and README "Deploy" gives both figures.
    """

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interpreter = Interpreter(
            model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()
        self.inputs = [litert_description(detail) for detail in self.input_details]
        self.outputs = [litert_description(detail) for detail in self.output_details]
        self.batch_size: int | None = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.batch_size != len(images):
            self.interpreter.resize_tensor_input(self.input_details[0]["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.batch_size = len(images)
        self.interpreter.set_tensor(self.input_details[0]["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_details[0]["index"]).copy()


def litert_description(detail: dict[str, Any]) -> TensorDescription:
    """An interpreter's tensor; its shape signature's -1 (the batch) is None."""
    shape = tuple(None if dimension < 0 else int(dimension) for dimension in detail["shape_signature"])
    return TensorDescription(detail["name"], shape, np.dtype(detail["dtype"]).name)


RUNTIMES: dict[str, type] = {"onnx": OnnxRuntime, "saved_model": SavedModelRuntime, "litert": LiteRtRuntime}

"""The network as data: a list of layers, the only statement of a CNN in mnist-cnn.

A variant's network is a list of short strings, read in order from the 28x28x1 image::

    layers = ["conv 32 3", "pool 2", "conv 64 3", "pool 2", "flatten", "dropout 0.5"]

and the Dense 10 softmax that reads out the digit always comes last (it is not written). The
layers, with their optional words in brackets:

    conv FILTERS KERNEL [stride S] [valid|same] [ACTIVATION]   Conv2D, 'valid', stride 1, ReLU
    pool SIZE [stride S]                                       MaxPooling2D, stride = size
    batchnorm                                                  BatchNormalization (Keras's defaults)
    dropout RATE                                               Dropout
    flatten                                                    Flatten
    globalpool                                                 GlobalAveragePooling2D
    dense UNITS [ACTIVATION]                                   Dense, ReLU
    ACTIVATION                                                 an activation on its own (relu, ...)

ACTIVATION is one of ``ACTIVATIONS``. Everything else is derived from the parsed list here, with
no Keras import: each layer's output shape, the parameter count, the Keras layer names, and the
description the reports and ``mnist-cnn variants`` show. The Keras builder (train.models) and the
fused trainer (train.fused) read the same parsed layers. A mistake is a ``LayerError`` naming the
layer by its position and text: an unknown layer, a bad number, a pooling that leaves nothing, a
layer in the wrong place (a Dense layer before Flatten, a convolution after it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from mnist_cnn.core.errors import ConfigError

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
ACTIVATIONS = ("relu", "linear", "tanh", "sigmoid")
PADDINGS = ("valid", "same")
KINDS = ("conv", "pool", "batchnorm", "dropout", "flatten", "globalpool", "dense", *ACTIVATIONS)
# The Keras BatchNormalization defaults, which the fused trainer computes (train.fused).
BATCHNORM_MOMENTUM = 0.99
BATCHNORM_EPSILON = 1e-3

Shape = tuple[int, ...]  # (height, width, channels) for feature maps; (width,) once flat.


class LayerError(ConfigError):
    """A layer that cannot be built: ``index`` is its position in the list (0-based), ``text`` as written."""

    def __init__(self, index: int, text: str, problem: str) -> None:
        super().__init__(f"layer {index + 1} {text!r}: {problem}")
        self.index, self.text, self.problem = index, text, problem


@dataclasses.dataclass(frozen=True)
class Conv:
    filters: int
    kernel: int
    stride: int = 1
    padding: str = "valid"
    activation: str = "relu"


@dataclasses.dataclass(frozen=True)
class Pool:
    size: int
    stride: int


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    pass


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float


@dataclasses.dataclass(frozen=True)
class Flatten:
    pass


@dataclasses.dataclass(frozen=True)
class GlobalPool:
    pass


@dataclasses.dataclass(frozen=True)
class Dense:
    units: int
    activation: str = "relu"


@dataclasses.dataclass(frozen=True)
class Activation:
    name: str


Layer = Conv | Pool | BatchNorm | Dropout | Flatten | GlobalPool | Dense | Activation
# The readout every network ends with: it is part of the network, never written in a list.
READOUT = Dense(NUM_CLASSES, activation="softmax")


def parse_layer(index: int, text: str) -> Layer:
    """One layer from its text (``index``: its position, for the error message)."""
    if not isinstance(text, str):
        raise LayerError(index, str(text), "a layer is a string such as 'conv 32 3' or 'dense 128'")
    words = text.split()
    if not words:
        raise LayerError(index, text, f"empty; the layers are {', '.join(KINDS)}")
    kind, *rest = words
    kind = kind.lower()
    reader = _READERS.get(kind)
    if reader is None:
        if kind in ACTIVATIONS:
            return _no_more(index, text, rest, Activation(kind))
        raise LayerError(index, text, f"unknown layer {kind!r}; the layers are {', '.join(KINDS)}")
    return reader(index, text, [word.lower() for word in rest])


def _whole(index: int, text: str, words: list[str], what: str, example: str) -> int:
    if not words:
        raise LayerError(index, text, f"needs its {what} (e.g. {example!r})")
    word = words.pop(0)
    if not word.isdigit() or int(word) < 1:
        raise LayerError(index, text, f"{what} must be a whole number of at least 1, got {word!r}")
    return int(word)


def _stride(index: int, text: str, words: list[str], default: int) -> int:
    if words and words[0] == "stride":
        words.pop(0)
        return _whole(index, text, words, "stride", "stride 2")
    return default


def _no_more(index: int, text: str, words: list[str], layer: Layer) -> Layer:
    if words:
        raise LayerError(index, text, f"unexpected {' '.join(words)!r}; write it as {layer_text(layer)!r}")
    return layer


def _activation(words: list[str]) -> str:
    return words.pop(0) if words and words[0] in ACTIVATIONS else "relu"


def _read_conv(index: int, text: str, words: list[str]) -> Layer:
    filters = _whole(index, text, words, "number of filters", "conv 32 3")
    kernel = _whole(index, text, words, "kernel size", "conv 32 3")
    stride = _stride(index, text, words, 1)
    padding = words.pop(0) if words and words[0] in PADDINGS else "valid"
    layer = Conv(filters, kernel, stride, padding, _activation(words))
    if words:
        raise LayerError(
            index, text, f"unexpected {' '.join(words)!r}: write conv FILTERS KERNEL [stride S] [valid|same] "
            f"[{'|'.join(ACTIVATIONS)}]"
        )  # fmt: skip
    return layer


def _read_pool(index: int, text: str, words: list[str]) -> Layer:
    size = _whole(index, text, words, "pool size", "pool 2")
    return _no_more(index, text, words, Pool(size, _stride(index, text, words, size)))


def _read_dropout(index: int, text: str, words: list[str]) -> Layer:
    if not words:
        raise LayerError(index, text, "needs its rate (e.g. 'dropout 0.5')")
    word = words.pop(0)
    try:
        rate = float(word)
    except ValueError:
        rate = math.nan
    if not 0 < rate < 1:
        raise LayerError(index, text, f"the dropout rate must be above 0 and below 1, got {word!r}")
    return _no_more(index, text, words, Dropout(rate))


def _read_dense(index: int, text: str, words: list[str]) -> Layer:
    units = _whole(index, text, words, "number of units", "dense 128")
    return _no_more(index, text, words, Dense(units, _activation(words)))


_READERS = {
    "conv": _read_conv,
    "pool": _read_pool,
    "batchnorm": lambda index, text, words: _no_more(index, text, words, BatchNorm()),
    "dropout": _read_dropout,
    "flatten": lambda index, text, words: _no_more(index, text, words, Flatten()),
    "globalpool": lambda index, text, words: _no_more(index, text, words, GlobalPool()),
    "dense": _read_dense,
}


def layer_text(layer: Layer) -> str:
    """The shortest text that parses back to ``layer`` ('conv 32 3', 'pool 2', 'dense 128')."""
    match layer:
        case Conv():
            words = ["conv", str(layer.filters), str(layer.kernel)]
            words += [f"stride {layer.stride}"] if layer.stride != 1 else []
            words += [layer.padding] if layer.padding != "valid" else []
            words += [layer.activation] if layer.activation != "relu" else []
            return " ".join(words)
        case Pool():
            return f"pool {layer.size}" + (f" stride {layer.stride}" if layer.stride != layer.size else "")
        case Dropout():
            return f"dropout {layer.rate}"
        case Dense():
            return f"dense {layer.units}" + (f" {layer.activation}" if layer.activation != "relu" else "")
        case Activation():
            return layer.name
        case _:
            return type(layer).__name__.lower()


def output_shape(index: int, text: str, layer: Layer, shape: Shape) -> Shape:
    """What ``layer`` makes of an input of ``shape``; a LayerError when it cannot take that input."""
    spatial = len(shape) == 3
    if isinstance(layer, (Conv, Pool, GlobalPool)) and not spatial:
        raise LayerError(index, text, "comes after the features are flat: put it before 'flatten'")
    if isinstance(layer, (Flatten,)) and not spatial:
        raise LayerError(index, text, "the features are already flat")
    if isinstance(layer, Dense) and spatial:
        raise LayerError(
            index, text, f"a Dense layer needs flat input, and here come {_shape_text(shape)} feature maps: put "
            "'flatten' or 'globalpool' before it"
        )  # fmt: skip
    match layer:
        case Conv():
            side = [_conv_side(size, layer.kernel, layer.stride, layer.padding) for size in shape[:2]]
            if min(side) < 1:
                raise LayerError(
                    index, text, f"a {layer.kernel}x{layer.kernel} 'valid' kernel does not fit its "
                    f"{_shape_text(shape)} input: use a smaller kernel or 'same' padding"
                )  # fmt: skip
            return (*side, layer.filters)
        case Pool():
            side = [(size - layer.size) // layer.stride + 1 for size in shape[:2]]
            if min(shape[:2]) < layer.size:
                raise LayerError(
                    index, text, f"leaves nothing: its input is {_shape_text(shape)}, smaller than the pool"
                )
            return (*side, shape[2])
        case Flatten():
            return (math.prod(shape),)
        case GlobalPool():
            return (shape[2],)
        case Dense():
            return (layer.units,)
        case _:
            return shape


def _conv_side(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1 if size >= kernel else 0


def _shape_text(shape: Shape) -> str:
    return "x".join(map(str, shape))


@dataclasses.dataclass(frozen=True)
class Network:
    """A parsed, checked layer list: ``layers`` ends with the Dense 10 readout, ``shapes[i]`` is
    the output shape of ``layers[i]``, ``texts`` the list as written (without the readout)."""

    texts: tuple[str, ...]
    layers: tuple[Layer, ...]
    shapes: tuple[Shape, ...]

    @property
    def input_shapes(self) -> tuple[Shape, ...]:
        return (INPUT_SHAPE, *self.shapes[:-1])

    def parameter_count(self) -> int:
        """Every parameter of the built Keras model (``model.count_params()``): BatchNorm's moving
        mean and variance included, as Keras counts them."""
        return sum(_parameters(layer, shape) for layer, shape in zip(self.layers, self.input_shapes, strict=True))

    def trainable_count(self) -> int:
        """The parameters training changes by gradient (BatchNorm's moving statistics excluded)."""
        moving = sum(
            2 * shape[-1] for layer, shape in zip(self.layers, self.input_shapes, strict=True)
            if isinstance(layer, BatchNorm)
        )  # fmt: skip
        return self.parameter_count() - moving

    def names(self) -> tuple[str, ...]:
        """The Keras layer names: 'conv', 'pool' (numbered when a kind repeats: 'conv_1', 'conv_2'),
        'dense_1'..., 'flatten', 'digit' for the readout, and a layer that modifies the one before it
        (dropout, batchnorm, an activation) named after it: 'pool_dropout', 'dense_1_batchnorm'."""
        kinds = [_kind(layer) for layer in self.layers[:-1]]
        counts = {kind: kinds.count(kind) for kind in kinds}
        seen: dict[str, int] = {}
        names: list[str] = []
        base = "image"  # The last layer that is not a modifier: what a modifier is named after.
        for layer, kind in zip(self.layers, kinds, strict=False):
            seen[kind] = seen.get(kind, 0) + 1
            if kind in ("dropout", "batchnorm", "activation"):
                name = f"{base}_{layer.name if isinstance(layer, Activation) else kind}"
            else:
                name = f"{kind}_{seen[kind]}" if kind == "dense" or counts[kind] > 1 else kind
                base = name
            while name in names:
                name += "_"
            names.append(name)
        return (*names, "digit")

    def describe(self) -> str:
        """'Conv2D 32 3×3 → MaxPooling 2×2 → Flatten → Dense 200 → Dense 100 → Dense 10 (softmax)'."""
        return " → ".join(describe_layer(layer) for layer in self.layers)


def _kind(layer: Layer) -> str:
    return "activation" if isinstance(layer, Activation) else type(layer).__name__.lower()


def _parameters(layer: Layer, shape: Shape) -> int:
    match layer:
        case Conv():
            return layer.filters * (layer.kernel * layer.kernel * shape[2] + 1)
        case Dense():
            return layer.units * (shape[0] + 1)
        case BatchNorm():
            return 4 * shape[-1]  # gamma, beta, moving mean, moving variance.
        case _:
            return 0


def describe_layer(layer: Layer) -> str:
    """'Conv2D 32 3×3', 'MaxPooling 2×2', 'Dense 200': one layer as the reports name it."""
    match layer:
        case Conv():
            extras = [f"stride {layer.stride}"] if layer.stride != 1 else []
            extras += ["'same'"] if layer.padding == "same" else []
            extras += [layer.activation] if layer.activation != "relu" else []
            return f"Conv2D {layer.filters} {layer.kernel}×{layer.kernel}" + (
                f" ({', '.join(extras)})" if extras else ""
            )
        case Pool():
            stride = f" (stride {layer.stride})" if layer.stride != layer.size else ""
            return f"MaxPooling {layer.size}×{layer.size}{stride}"
        case BatchNorm():
            return "BatchNorm"
        case Dropout():
            return f"Dropout {layer.rate:g}"
        case Flatten():
            return "Flatten"
        case GlobalPool():
            return "GlobalAveragePooling"
        case Dense():
            if layer.activation == "softmax":
                return f"Dense {layer.units} (softmax)"
            return f"Dense {layer.units}" + (f" ({layer.activation})" if layer.activation != "relu" else "")
        case Activation():
            return layer.name.capitalize() if layer.name != "relu" else "ReLU"
    raise TypeError(layer)


def parse_network(texts: Sequence[str]) -> Network:
    """The checked network of a layer list; a LayerError for the first layer that cannot be built."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ConfigError(f'layers must be a list of strings such as ["conv 32 3", "pool 2"], got {texts!r}')
    if not texts:
        raise ConfigError("layers is empty: list at least 'flatten' (the Dense 10 softmax comes after it)")
    layers = [parse_layer(index, text) for index, text in enumerate(texts)]
    shapes: list[Shape] = []
    shape = INPUT_SHAPE
    for index, (text, layer) in enumerate(zip(texts, layers, strict=True)):
        shape = output_shape(index, text, layer, shape)
        shapes.append(shape)
    if len(shape) != 1:
        raise LayerError(
            len(texts) - 1, texts[-1], f"the network ends with {_shape_text(shape)} feature maps: end the list "
            "with 'flatten' or 'globalpool' (the Dense 10 softmax comes after it)"
        )  # fmt: skip
    shapes.append((NUM_CLASSES,))
    return Network(tuple(texts), (*layers, READOUT), tuple(shapes))


def family_layers(filters: int, kernel_size: int, dense_units: Sequence[int], dropout: float) -> tuple[str, ...]:
    """The specification's family as a layer list: Conv2D(filters, k x k, 'valid', ReLU) -> MaxPooling
    2x2 -> Flatten -> Dense(units, ReLU)..., with Dropout after the pooling and each hidden Dense
    layer when ``dropout`` is set. Model_A is ``family_layers(32, 3, (200, 100), 0)``."""
    drop = [f"dropout {float(dropout)}"] if dropout else []  # str(float) reads back exactly.
    hidden = [text for units in dense_units for text in (f"dense {units}", *drop)]
    return (f"conv {filters} {kernel_size}", "pool 2", *drop, "flatten", *hidden)

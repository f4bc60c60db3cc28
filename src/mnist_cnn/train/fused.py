"""The fast training path: any network of the supported layers, trained by one compiled JAX step per batch.

Why it exists: on a 2-core CPU, Keras's ``model.fit`` spends most of each batch-32 step in
per-op overhead and in slow max-pooling gradients, not in arithmetic (docs/performance.md).
This module computes *the same function* as the Keras model ``train.models.build_variant``
builds from a spec's layer list (core.network), with a formulation XLA runs well, trains it
with the Keras optimizer's own stateless update, and writes the weights back into the Keras
model, so everything after training (evaluation, the saved ``.keras`` file, serving) is plain
Keras.

The formulation of a k x k stride-1 convolution followed by 2x2 max-pooling (Model_A's and
Model_B's first layers, and any such pair on the one-channel image): each pooled pixel reads one (k+1) x
(k+1) window of the input (stride 2). So the four convolution outputs under one pooling window
are one matrix product ``patches @ placed_kernel`` with ``patches`` (N*P*P, (k+1)^2*C) (P the
pooled side, 13 for k = 3 on 28x28; C the input channels) and ``placed_kernel`` ((k+1)^2*C,
4*filters) (the kernel placed at the four offsets of the window), and pooling is a max over
the four column groups. The activation and the bias commute with that max (the activations
are monotone, the bias is per channel), so they are applied after it, on a quarter of the
values. Other convolutions are ``lax.conv_general_dilated``, as Keras's JAX backend computes
them. Every max-pooling's gradient is written by hand (``pool_max``, the first maximum of each
window takes it all, as Keras's does): XLA's generic max-pool gradient is the slowest op of
the whole step.

BatchNorm is Keras's: in training the batch's mean and (biased) variance normalise, and the
moving mean and variance follow them with momentum 0.99; evaluation reads the moving ones. The
moving statistics travel with the weights and are written back into the Keras model.

Dropout is Keras's: in training each value is kept with probability 1 - rate (drawn by
``jax.random.bernoulli``, as Keras's JAX backend draws it) and scaled by 1 / (1 - rate);
evaluation drops nothing. The masks of batch b of epoch e come from ``dropout_key(seed, e, b)``,
drawn inside the compiled step, so a resumed run draws the very masks an uninterrupted one drew.
Keras's Dropout layers draw theirs from their own seed generators: the two trainers see
different masks, so with dropout their weights differ after an epoch (the tests check that the
same masks give the same step, and the same mean loss over many masks).

Which lists it computes is stated in ``train.trainers.fused_refusal``; ``check_model`` checks
that the Keras model is the one the builder makes of the spec, layer by layer, before training.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import keras
import numpy as np

from mnist_cnn.core import network as net
from mnist_cnn.core.config import EVALUATION_BATCH_SIZE, ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.data.augment import augment_epoch, epoch_key
from mnist_cnn.data.mnist import MnistSplits, epoch_order
from mnist_cnn.train.models import keras_layer
from mnist_cnn.train.progress import EpochBars, OnImages, no_bars
from mnist_cnn.train.trainers import fused_refusal


def check_model(model: keras.Model, spec: ModelSpec) -> None:
    """Refuse to train ``model`` unless it is exactly the network the builder makes of ``spec``.

    The guard against a silent difference: a layer changed in the model, or a spec the fused
    trainer does not compute, stops training here instead of training another network. Each
    layer's configuration is compared with the one ``train.models.keras_layer`` gives its entry
    of the list (no weights are drawn).
    """
    refusal = fused_refusal(spec, keras.backend.backend())
    if refusal is not None:
        raise ConfigError(f"{spec.name}: {refusal}; use --trainer keras")
    network = spec.network()
    expected = [keras_layer(layer, name) for layer, name in zip(network.layers, network.names(), strict=True)]
    actual = list(model.layers)
    matches = len(actual) == len(expected) and all(
        type(found) is type(wanted) and _comparable(found.get_config()) == _comparable(wanted.get_config())
        for found, wanted in zip(actual, expected, strict=False)
    )
    if not matches or tuple(model.input_shape[1:]) != net.INPUT_SHAPE:
        raise ConfigError(
            f"{spec.name}: the model's layers ({', '.join(type(layer).__name__ for layer in actual)}) are not the "
            "network the fused trainer computes for its spec; use --trainer keras"
        )


def _comparable(config: dict) -> dict:
    """A layer's configuration without what does not change its function (its name, its build shape)."""
    return {key: value for key, value in config.items() if key not in ("name", "build_config")}


def window_patches(images: jax.Array, kernel_size: int) -> jax.Array:
    """(N, H, W, C) -> (N*P*P', (k+1)^2*C): the (k+1) x (k+1) stride-2 input window under each pooled pixel."""
    count, height, width, channels = images.shape
    pooled_rows, pooled_columns = (height - kernel_size + 1) // 2, (width - kernel_size + 1) // 2
    window = kernel_size + 1
    windows = [
        images[:, row : row + 2 * pooled_rows - 1 : 2, column : column + 2 * pooled_columns - 1 : 2, :]
        for row in range(window)
        for column in range(window)
    ]
    return jnp.stack(windows, axis=-2).reshape(count * pooled_rows * pooled_columns, window * window * channels)


def placed_kernel(kernel: jax.Array) -> jax.Array:
    """(k, k, C, F) -> ((k+1)^2*C, 4F): the kernel at the 4 offsets of a (k+1) x (k+1) window, offset-major."""
    placed = [
        jnp.pad(kernel, ((row, 1 - row), (column, 1 - column), (0, 0), (0, 0))).reshape(-1, kernel.shape[-1])
        for row in (0, 1)
        for column in (0, 1)
    ]
    return jnp.concatenate(placed, axis=1)


@jax.custom_vjp
def pool_max4(values: jax.Array) -> jax.Array:
    """(R, 4F) -> (R, F): the max over the four offset groups (= 2x2 max-pooling)."""
    return values.reshape(values.shape[0], 4, -1).max(axis=1)


def _pool_max4_forward(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    grouped = values.reshape(values.shape[0], 4, -1)
    return grouped.max(axis=1), jnp.argmax(grouped, axis=1).astype(jnp.int8)


def _pool_max4_backward(winner: jax.Array, gradient: jax.Array) -> tuple[jax.Array]:
    # Like Keras's MaxPooling2D, the whole gradient goes to one winner per window.
    chosen = winner[:, None, :] == jnp.arange(4, dtype=jnp.int8)[None, :, None]
    spread = jnp.where(chosen, gradient[:, None, :], 0.0).reshape(gradient.shape[0], -1)
    # The barrier stops XLA from fusing this select into the next matmul, which makes
    # that matmul several times slower on CPU.
    return (jax.lax.optimization_barrier(spread),)


pool_max4.defvjp(_pool_max4_forward, _pool_max4_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def pool_max(values: jax.Array, size: int) -> jax.Array:
    """(N, H, W, C) -> (N, H//size, W//size, C): max-pooling of stride ``size``, 'valid' (the last
    rows and columns that make no whole window are dropped, as Keras drops them)."""
    return _pool_windows(values, size).max(axis=-1)


def _pool_windows(values: jax.Array, size: int) -> jax.Array:
    """(N, H, W, C) -> (N, H', W', C, size*size): each window's values, in row-major order."""
    count, height, width, channels = values.shape
    rows, columns = height // size, width // size
    cropped = values[:, : rows * size, : columns * size, :]
    grouped = cropped.reshape(count, rows, size, columns, size, channels).transpose(0, 1, 3, 5, 2, 4)
    return grouped.reshape(count, rows, columns, channels, size * size)


def _pool_max_forward(values: jax.Array, size: int) -> tuple[jax.Array, tuple[jax.Array, tuple[int, ...]]]:
    windows = _pool_windows(values, size)
    return windows.max(axis=-1), (jnp.argmax(windows, axis=-1).astype(jnp.int8), values.shape)


def _pool_max_backward(size: int, residuals: tuple[jax.Array, tuple[int, ...]], gradient: jax.Array) -> tuple:
    winner, shape = residuals
    count, rows, columns, channels = gradient.shape
    chosen = winner[..., None] == jnp.arange(size * size, dtype=jnp.int8)
    spread = jnp.where(chosen, gradient[..., None], 0.0).reshape(count, rows, columns, channels, size, size)
    spread = spread.transpose(0, 1, 4, 2, 5, 3).reshape(count, rows * size, columns * size, channels)
    spread = jnp.pad(spread, ((0, 0), (0, shape[1] - rows * size), (0, shape[2] - columns * size), (0, 0)))
    return (jax.lax.optimization_barrier(spread),)


pool_max.defvjp(_pool_max_forward, _pool_max_backward)


# Dropout masks: one stream of keys of its own, apart from augmentation's chunk keys (which fold
# chunk numbers, far below this, into the same epoch key).
DROPOUT_STREAM = 0x64726F70  # "drop"


def dropout_epoch_key(seed: int, epoch: int) -> jax.Array:
    """The key of epoch ``epoch``'s dropout masks: batch b's masks draw from ``fold_in(this, b)``."""
    return jax.random.fold_in(epoch_key(seed, epoch), DROPOUT_STREAM)


def dropout_key(seed: int, epoch: int, batch: int) -> jax.Array:
    """The key of the dropout masks of batch ``batch`` of epoch ``epoch``: a function of the three numbers only."""
    return jax.random.fold_in(dropout_epoch_key(seed, epoch), batch)


def dropout_masks(key: jax.Array, network: net.Network, count: int) -> list[jax.Array]:
    """The keep masks of one batch of ``count`` images, one per Dropout layer in list order, each
    (count, values of its input) in Flatten's order; True (kept) with probability 1 - rate, drawn
    as Keras's JAX backend draws them (``jax.random.bernoulli``)."""
    dropouts = [
        (layer.rate, math.prod(shape))
        for layer, shape in zip(network.layers, network.input_shapes, strict=True)
        if isinstance(layer, net.Dropout)
    ]
    if not dropouts:
        return []
    keys = jax.random.split(key, len(dropouts))
    return [
        jax.random.bernoulli(k, 1.0 - rate, (count, width)) for k, (rate, width) in zip(keys, dropouts, strict=True)
    ]


def drop(values: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """Keras's Dropout in training: kept values scaled by 1 / (1 - rate), the others 0."""
    return jnp.where(keep.reshape(values.shape), values / (1.0 - rate), 0.0)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "linear": lambda values: values,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def fuses_with_pool(layer: net.Layer, following: net.Layer | None, channels: int) -> bool:
    """Whether a convolution and the 2x2 pooling after it run as one matrix product: a stride-1
    convolution of the one-channel image. On many channels the (k+1) x (k+1) windows multiply
    16/9 as many products for k = 3, and XLA's own convolution with ``pool_max`` is faster (a
    training epoch of pytorch/examples' network: 45 s against 75 s fused, on one core)."""
    return (
        isinstance(layer, net.Conv) and layer.stride == 1 and isinstance(following, net.Pool)
        and following.size == 2 and following.stride == 2 and channels == 1
    )  # fmt: skip


def _same_padding(images: jax.Array, kernel_size: int) -> jax.Array:
    before = (kernel_size - 1) // 2  # As XLA's 'SAME' pads for stride 1.
    after = kernel_size - 1 - before
    return jnp.pad(images, ((0, 0), (before, after), (before, after), (0, 0)))


def conv_pool(images: jax.Array, kernel: jax.Array, bias: jax.Array, layer: net.Conv) -> jax.Array:
    """A stride-1 convolution, its activation and a 2x2 max-pooling, as one matrix product (module docstring)."""
    if layer.padding == "same":
        images = _same_padding(images, layer.kernel)
    count, height, width, _ = images.shape
    rows, columns = (height - layer.kernel + 1) // 2, (width - layer.kernel + 1) // 2
    pooled = pool_max4(window_patches(images, layer.kernel) @ placed_kernel(kernel))
    return _ACTIVATIONS[layer.activation](pooled + bias).reshape(count, rows, columns, -1)


def conv(images: jax.Array, kernel: jax.Array, bias: jax.Array, layer: net.Conv) -> jax.Array:
    outputs = jax.lax.conv_general_dilated(
        images, kernel, (layer.stride, layer.stride), layer.padding.upper(), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return _ACTIVATIONS[layer.activation](outputs + bias)


def batch_norm(
    values: jax.Array, gamma: jax.Array, beta: jax.Array, moving: tuple[jax.Array, jax.Array], training: bool
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Keras's BatchNormalization (last axis): the normalised values and the new moving (mean, variance)."""
    moving_mean, moving_variance = moving
    if training:
        axes = tuple(range(values.ndim - 1))
        mean, variance = jnp.mean(values, axes), jnp.var(values, axis=axes)
        momentum = net.BATCHNORM_MOMENTUM
        moving = (
            moving_mean * momentum + mean * (1.0 - momentum),
            moving_variance * momentum + variance * (1.0 - momentum),
        )
    else:
        mean, variance = moving_mean, moving_variance
    inverse = jax.lax.rsqrt(variance + net.BATCHNORM_EPSILON) * gamma  # The order of Keras's JAX backend.
    return jnp.add(values * inverse, -mean * inverse + beta), moving


def forward(
    network: net.Network,
    params: list[jax.Array],
    stats: list[jax.Array],
    images: jax.Array,
    masks: list[jax.Array] | None = None,
    training: bool = False,
) -> tuple[jax.Array, list[jax.Array]]:
    """Pre-softmax outputs of ``network`` and its new BatchNorm statistics.

    ``params``: ``model.trainable_variables`` (in layer order: kernel and bias, gamma and beta);
    ``stats``: each BatchNorm layer's moving mean and variance, in layer order; ``masks``
    (``dropout_masks``'s): training with dropout, None: none dropped; ``training``: BatchNorm
    normalises by the batch and updates its statistics.
    """
    values = images
    weights, moving, keeps = iter(params), iter(stats), iter(masks or [])
    new_stats: list[jax.Array] = []
    layers = network.layers
    index = 0
    while index < len(layers):
        layer = layers[index]
        following = layers[index + 1] if index + 1 < len(layers) else None
        match layer:
            case net.Conv() if fuses_with_pool(layer, following, values.shape[-1]):
                values = conv_pool(values, next(weights), next(weights), layer)
                index += 1  # The pooling is done.
            case net.Conv():
                values = conv(values, next(weights), next(weights), layer)
            case net.Pool() if layer.stride == layer.size:
                values = pool_max(values, layer.size)
            case net.BatchNorm():
                values, updated = batch_norm(
                    values, next(weights), next(weights), (next(moving), next(moving)), training
                )
                new_stats += updated
            case net.Dropout():
                keep = next(keeps, None)
                if keep is not None:
                    values = drop(values, keep, layer.rate)
            case net.Flatten():
                values = values.reshape(values.shape[0], -1)  # NHWC order, as Keras's Flatten.
            case net.GlobalPool():
                values = jnp.mean(values, axis=(1, 2))
            case net.Dense() if index == len(layers) - 1:
                values = values @ next(weights) + next(weights)  # The readout: softmax is in the loss.
            case net.Dense():
                values = _ACTIVATIONS[layer.activation](values @ next(weights) + next(weights))
            case net.Activation():
                values = _ACTIVATIONS[layer.name](values)
            case _:
                raise ConfigError(f"the fused trainer does not compute {net.layer_text(layer)!r}")
        index += 1
    return values, new_stats


def forward_logits(
    network: net.Network, params: list[jax.Array], stats: list[jax.Array], images: jax.Array
) -> jax.Array:
    """Inference: pre-softmax outputs with nothing dropped and BatchNorm's moving statistics."""
    return forward(network, params, stats, images)[0]


def batch_loss_and_correct(
    params: list[jax.Array],
    stats: list[jax.Array],
    images: jax.Array,
    labels: jax.Array,
    network: net.Network,
    masks: list[jax.Array] | None = None,
    training: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, list[jax.Array]]]:
    """Mean sparse categorical cross-entropy, and (the number of correct predictions, the new
    BatchNorm statistics); the predictions are the network's as trained (with ``masks`` applied
    and batch statistics when ``training``), as model.fit's training accuracy."""
    logits, new_stats = forward(network, params, stats, images, masks, training)
    log_probabilities = jax.nn.log_softmax(logits)
    losses = -jnp.take_along_axis(log_probabilities, labels[:, None], axis=1)[:, 0]
    correct = jnp.sum(jnp.argmax(logits, axis=1) == labels)
    return jnp.mean(losses), (correct, new_stats)


def make_train_step(optimizer: keras.optimizers.Optimizer, network: net.Network) -> Callable:
    """One step of the compiled Keras optimizer (SGD unless the config names another), updating in place.

    ``step(params, stats, optimizer_state, images, labels, key, batch)``: the dropout masks are
    drawn in the step from ``fold_in(key, batch)`` (``key``: ``dropout_epoch_key``); a network
    without dropout reads neither.
    """
    has_dropout = any(isinstance(layer, net.Dropout) for layer in network.layers)

    def train_step(params, stats, optimizer_state, images, labels, key, batch):
        count = images.shape[0]
        masks = dropout_masks(jax.random.fold_in(key, batch), network, count) if has_dropout else None
        (loss, (correct, new_stats)), gradients = jax.value_and_grad(batch_loss_and_correct, has_aux=True)(
            params, stats, images, labels, network, masks, True
        )
        params, optimizer_state = optimizer.stateless_apply(optimizer_state, gradients, params)
        return params, new_stats, optimizer_state, loss * labels.shape[0], correct

    return jax.jit(train_step, donate_argnums=(0, 1, 2))


@functools.partial(jax.jit, static_argnames=("network",))
def _evaluate_batch(params, stats, images, labels, network):
    loss, (correct, _) = batch_loss_and_correct(params, stats, images, labels, network)
    return loss * labels.shape[0], correct


def evaluate_arrays(
    network: net.Network, state: FusedState, images: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """Loss and accuracy over a data set, in large batches (inference: BatchNorm's moving statistics)."""
    loss_total, correct_total = 0.0, 0
    for start in range(0, len(images), EVALUATION_BATCH_SIZE):
        loss, correct = _evaluate_batch(
            state.params,
            state.stats,
            images[start : start + EVALUATION_BATCH_SIZE],
            labels[start : start + EVALUATION_BATCH_SIZE],
            network,
        )
        loss_total += float(loss)
        correct_total += int(correct)
    return loss_total / len(images), correct_total / len(images)


@dataclasses.dataclass
class FusedState:
    params: list[jax.Array]
    stats: list[jax.Array]  # Each BatchNorm layer's moving mean and variance, in layer order.
    optimizer_state: list[jax.Array]


def batch_norm_statistics(model: keras.Model) -> list:
    """The moving mean and variance variables of each BatchNorm layer of ``model``, in layer order."""
    return [
        variable
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in (layer.moving_mean, layer.moving_variance)
    ]


def read_state(model: keras.Model) -> FusedState:
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return FusedState(
        params=[jnp.array(variable.value) for variable in model.trainable_variables],
        stats=[jnp.array(variable.value) for variable in batch_norm_statistics(model)],
        optimizer_state=[jnp.array(variable.value) for variable in optimizer.variables],
    )


def write_state(model: keras.Model, state: FusedState) -> None:
    """Put trained weights, BatchNorm statistics and optimizer state back into the Keras model (for saving, serving)."""
    for variable, value in zip(model.trainable_variables, state.params, strict=True):
        variable.assign(value)
    for variable, value in zip(batch_norm_statistics(model), state.stats, strict=True):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, state.optimizer_state, strict=True):
        variable.assign(value)


def run_epoch(
    step: Callable,
    state: FusedState,
    images: jax.Array,
    labels: jax.Array,
    batch_size: int,
    key: jax.Array,
    on_images: OnImages | None = None,
) -> tuple[FusedState, float, float]:
    """One pass over ``images`` in their order (the last batch may be smaller, as in model.fit);
    ``key``: the epoch's ``dropout_epoch_key``; ``on_images`` (a bar's): told the images of the
    steps that have finished, in order.

    JAX dispatches a step and returns before it runs, and on CPU this loop dispatches the whole
    epoch in a fraction of its time: a count of dispatched steps would be full long before the
    epoch is. So the bar counts a step once its result is ready, asked without waiting
    (``is_ready``) while the loop dispatches; once all are dispatched, it waits for them in
    order, as the sums below would wait anyway. Training never waits for the bar.
    """
    params, stats, optimizer_state = state.params, state.stats, state.optimizer_state
    losses, corrects = [], []
    count = len(images)
    running: collections.deque[tuple[int, jax.Array]] = collections.deque()  # (images done after it, its loss)
    for batch, start in enumerate(range(0, count, batch_size)):
        params, stats, optimizer_state, loss, correct = step(
            params,
            stats,
            optimizer_state,
            images[start : start + batch_size],
            labels[start : start + batch_size],
            key,
            batch,
        )
        losses.append(loss)
        corrects.append(correct)
        if on_images is not None:
            running.append((min(start + batch_size, count), loss))
            while running and running[0][1].is_ready():
                on_images(running.popleft()[0])
    if on_images is not None:
        for done, loss in running:
            loss.block_until_ready()
            on_images(done)
    total_loss = float(jnp.sum(jnp.stack(losses)))
    total_correct = int(jnp.sum(jnp.stack(corrects)))
    return FusedState(params, stats, optimizer_state), total_loss / len(images), total_correct / len(images)


def train_epochs(
    model: keras.Model,
    spec: ModelSpec,
    splits: MnistSplits,
    config: ExperimentConfig,
    first_epoch: int,
    bars: EpochBars | None = None,
) -> Iterator[tuple[int, dict[str, float]]]:
    """Train ``model`` from epoch ``first_epoch`` (0-based) to ``config.epochs``.

    After each epoch the Keras model holds the new weights, BatchNorm statistics and optimizer
    state, and the generator yields ``(epoch, logs)`` with the logs model.fit would give (plus
    ``seconds``). ``bars``: each epoch's bar (train/progress.py), closed before it is yielded.
    """
    check_model(model, spec)
    network = spec.network()
    augmentation = config.augmentation_for(spec)
    step = make_train_step(model.optimizer, network)
    state = read_state(model)
    images = jnp.asarray(splits.X_train)
    labels = jnp.asarray(splits.y_train.astype("int32"))
    valid_images = jnp.asarray(splits.X_valid)
    valid_labels = jnp.asarray(splits.y_valid.astype("int32"))
    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        with (bars or no_bars)(epoch, len(images)) as on_images:
            order = epoch_order(config.seed, epoch, len(images))
            if augmentation is None:
                epoch_images = images[order]
            else:
                epoch_images = jnp.asarray(augment_epoch(splits.X_train[order], config.seed, epoch, augmentation))
            key = dropout_epoch_key(config.seed, epoch)
            state, loss, accuracy = run_epoch(
                step, state, epoch_images, labels[order], config.batch_size, key, on_images
            )
            val_loss, val_accuracy = evaluate_arrays(network, state, valid_images, valid_labels)
            write_state(model, state)
        logs = {
            "loss": loss,
            "accuracy": accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "seconds": time.perf_counter() - start,
        }
        yield epoch, logs

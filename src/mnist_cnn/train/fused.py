"""The fast training path: the same CNN, trained by one compiled JAX step per batch.

Why it exists: on a 2-core CPU, Keras's ``model.fit`` spends most of each batch-32 step in
per-op overhead and in slow max-pooling gradients, not in arithmetic (docs/performance.md).
This module computes *the same function* as ``models.build_cnn`` with a formulation XLA
runs well, trains it with the Keras optimizer's own stateless update, and writes the
weights back into the Keras model, so everything after training (evaluation, the saved
``.keras`` file, serving) is plain Keras.

The formulation, for a k x k 'valid' convolution followed by 2x2 max-pooling (the spec's
``kernel_size`` k; 3 for Model_A and Model_B): each pooled pixel reads one (k+1) x (k+1)
window of the input (stride 2). So the four convolution outputs under one pooling window are
one matrix product ``patches @ placed_kernel`` with ``patches`` (N*P*P, (k+1)^2) (P the pooled
side, 13 for k = 3) and ``placed_kernel`` ((k+1)^2, 4*filters) (the k x k kernel placed at the
four offsets of the window), and pooling is a max over the four column groups. ReLU and the
bias commute with that max (both are monotone, the bias is per channel), so they are applied
after it, on a quarter of the values. Only the four-way max and its gradient are written by
hand (``pool_max4``): XLA's generic max-pool gradient is the slowest op of the whole step.

Dropout (a spec's ``dropout`` rate) is Keras's own: in training each value of the pooled
features and of each hidden Dense output is kept with probability 1 - rate (drawn by
``jax.random.bernoulli``, as Keras's JAX backend draws it) and scaled by 1 / (1 - rate);
evaluation drops nothing. The masks of batch b of epoch e come from ``dropout_key(seed, e, b)``,
drawn inside the compiled step, so a resumed run draws the very masks an uninterrupted one drew.
Keras's Dropout layers draw theirs from their own seed generators: the two trainers see
different masks, so with dropout their weights differ after an epoch (the tests check that the
same masks give the same step, and the same mean loss over many masks).

What it computes is stated once, in ``train.trainers.fused_refusal``; ``check_model`` checks
that the Keras model built from the spec is that network, layer by layer, before training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import keras
import numpy as np

from mnist_cnn.core.config import EVALUATION_BATCH_SIZE, INPUT_SHAPE, NUM_CLASSES, ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.data.augment import augment_epoch, epoch_key
from mnist_cnn.data.mnist import MnistSplits, epoch_order
from mnist_cnn.train.trainers import fused_refusal


def check_model(model: keras.Model, spec: ModelSpec) -> None:
    """Refuse to train ``model`` unless it is exactly the network this module computes for ``spec``.

    The guard against a silent difference: a layer added to the builder, or a spec field the
    fused trainer does not read, stops training here instead of training another network.
    """
    refusal = fused_refusal(spec, keras.backend.backend())
    if refusal is not None:
        raise ConfigError(f"{spec.name}: {refusal}; use --trainer keras")
    dropout = [("Dropout", {"rate": spec.dropout, "noise_shape": None})] if spec.dropout else []
    expected = [
        ("Conv2D", {"filters": spec.filters, "kernel_size": (spec.kernel_size,) * 2, "strides": (1, 1),
                    "padding": "valid", "activation": "relu"}),
        ("MaxPooling2D", {"pool_size": (2, 2), "strides": (2, 2), "padding": "valid"}),
        *dropout,
        ("Flatten", {}),
        *[layer for units in spec.dense_units
          for layer in [("Dense", {"units": units, "activation": "relu"}), *dropout]],
        ("Dense", {"units": NUM_CLASSES, "activation": "softmax"}),
    ]  # fmt: skip
    actual = [(layer.__class__.__name__, layer.get_config()) for layer in model.layers]
    matches = len(actual) == len(expected) and all(
        kind == expected_kind and all(_same(config.get(key), value) for key, value in settings.items())
        for (kind, config), (expected_kind, settings) in zip(actual, expected, strict=False)
    )
    if not matches or model.input_shape[1:] != INPUT_SHAPE:
        raise ConfigError(
            f"{spec.name}: the model's layers ({', '.join(kind for kind, _ in actual)}) are not the network the "
            "fused trainer computes for its spec; use --trainer keras"
        )


def _same(found: object, wanted: object) -> bool:
    return tuple(found) == wanted if isinstance(wanted, tuple) and found is not None else found == wanted


def window_patches(images: jax.Array, kernel_size: int) -> jax.Array:
    """(N, 28, 28, 1) -> (N*P*P, (k+1)^2): the (k+1) x (k+1) stride-2 input window under each pooled pixel."""
    pixels = images[..., 0]
    count = pixels.shape[0]
    pooled = (pixels.shape[1] - kernel_size + 1) // 2
    window = kernel_size + 1
    span = 2 * pooled - 1
    windows = [
        pixels[:, row : row + span : 2, column : column + span : 2] for row in range(window) for column in range(window)
    ]
    return jnp.stack(windows, axis=-1).reshape(count * pooled * pooled, window * window)


def placed_kernel(kernel: jax.Array) -> jax.Array:
    """(k, k, 1, F) -> ((k+1)^2, 4F): the kernel at the 4 offsets of a (k+1) x (k+1) window, offset-major."""
    taps = kernel[:, :, 0, :]
    size = taps.shape[0] + 1
    placed = [
        jnp.pad(taps, ((row, 1 - row), (column, 1 - column), (0, 0))).reshape(size * size, -1)
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


# Dropout masks: one stream of keys of its own, apart from augmentation's chunk keys (which fold
# chunk numbers, far below this, into the same epoch key).
DROPOUT_STREAM = 0x64726F70  # "drop"


def dropout_epoch_key(seed: int, epoch: int) -> jax.Array:
    """The key of epoch ``epoch``'s dropout masks: batch b's masks draw from ``fold_in(this, b)``."""
    return jax.random.fold_in(epoch_key(seed, epoch), DROPOUT_STREAM)


def dropout_key(seed: int, epoch: int, batch: int) -> jax.Array:
    """The key of the dropout masks of batch ``batch`` of epoch ``epoch``: a function of the three numbers only."""
    return jax.random.fold_in(dropout_epoch_key(seed, epoch), batch)


def dropout_masks(key: jax.Array, rate: float, params: list[jax.Array], count: int) -> list[jax.Array]:
    """The keep masks of one batch of ``count`` images: (count, P*P*F) for the pooled features (in
    Flatten's order), then (count, units) for each hidden Dense layer; True (kept) with probability
    1 - rate, drawn as Keras's JAX backend draws them (``jax.random.bernoulli``)."""
    widths = [params[2].shape[0], *(kernel.shape[1] for kernel in params[2:-2:2])]
    keys = jax.random.split(key, len(widths))
    return [jax.random.bernoulli(k, 1.0 - rate, (count, width)) for k, width in zip(keys, widths, strict=True)]


def drop(values: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """Keras's Dropout in training: kept values scaled by 1 / (1 - rate), the others 0."""
    return jnp.where(keep, values / (1.0 - rate), 0.0)


def forward_logits(
    params: list[jax.Array], images: jax.Array, masks: list[jax.Array] | None = None, rate: float = 0.0
) -> jax.Array:
    """Pre-softmax outputs of the CNN for ``params`` in ``model.trainable_variables`` order.

    ``masks`` (``dropout_masks``'s, for ``rate``): training with dropout; None: inference (or no dropout).
    """
    conv_kernel, conv_bias, *dense = params
    count = images.shape[0]
    masks = list(masks) if masks is not None else []
    # The kernel size comes from the spec through the conv kernel's shape (check_model).
    pooled = pool_max4(window_patches(images, conv_kernel.shape[0]) @ placed_kernel(conv_kernel))
    hidden = jax.nn.relu(pooled + conv_bias).reshape(count, -1)  # NHWC flatten order, as keras Flatten.
    if masks:
        hidden = drop(hidden, masks[0], rate)
    for layer, index in enumerate(range(0, len(dense) - 2, 2), start=1):
        hidden = jax.nn.relu(hidden @ dense[index] + dense[index + 1])
        if masks:
            hidden = drop(hidden, masks[layer], rate)
    return hidden @ dense[-2] + dense[-1]


def batch_loss_and_correct(
    params: list[jax.Array],
    images: jax.Array,
    labels: jax.Array,
    masks: list[jax.Array] | None = None,
    rate: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Mean sparse categorical cross-entropy, and the number of correct predictions (of the
    network as trained: with ``masks`` applied when given, as model.fit's training accuracy)."""
    logits = forward_logits(params, images, masks, rate)
    log_probabilities = jax.nn.log_softmax(logits)
    losses = -jnp.take_along_axis(log_probabilities, labels[:, None], axis=1)[:, 0]
    correct = jnp.sum(jnp.argmax(logits, axis=1) == labels)
    return jnp.mean(losses), correct


def make_train_step(optimizer: keras.optimizers.Optimizer, rate: float = 0.0) -> Callable:
    """One SGD step (or whatever optimizer the config names), compiled, updating in place.

    ``step(params, optimizer_state, images, labels, key, batch)``: with a dropout ``rate``, the
    masks are drawn in the step from ``fold_in(key, batch)`` (``key``: ``dropout_epoch_key``);
    without, ``key`` and ``batch`` are not read.
    """

    def train_step(params, optimizer_state, images, labels, key, batch):
        masks = dropout_masks(jax.random.fold_in(key, batch), rate, params, images.shape[0]) if rate else None
        (loss, correct), gradients = jax.value_and_grad(batch_loss_and_correct, has_aux=True)(
            params, images, labels, masks, rate
        )
        params, optimizer_state = optimizer.stateless_apply(optimizer_state, gradients, params)
        return params, optimizer_state, loss * labels.shape[0], correct

    return jax.jit(train_step, donate_argnums=(0, 1))


@jax.jit
def _evaluate_batch(params, images, labels):
    loss, correct = batch_loss_and_correct(params, images, labels)
    return loss * labels.shape[0], correct


def evaluate_arrays(params: list[jax.Array], images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Loss and accuracy over a data set, in large batches."""
    loss_total, correct_total = 0.0, 0
    for start in range(0, len(images), EVALUATION_BATCH_SIZE):
        loss, correct = _evaluate_batch(
            params, images[start : start + EVALUATION_BATCH_SIZE], labels[start : start + EVALUATION_BATCH_SIZE]
        )
        loss_total += float(loss)
        correct_total += int(correct)
    return loss_total / len(images), correct_total / len(images)


@dataclasses.dataclass
class FusedState:
    params: list[jax.Array]
    optimizer_state: list[jax.Array]


def read_state(model: keras.Model) -> FusedState:
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return FusedState(
        params=[jnp.array(variable.value) for variable in model.trainable_variables],
        optimizer_state=[jnp.array(variable.value) for variable in optimizer.variables],
    )


def write_state(model: keras.Model, state: FusedState) -> None:
    """Put trained weights and optimizer state back into the Keras model (for saving, serving)."""
    for variable, value in zip(model.trainable_variables, state.params, strict=True):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, state.optimizer_state, strict=True):
        variable.assign(value)


def run_epoch(
    step: Callable, state: FusedState, images: jax.Array, labels: jax.Array, batch_size: int, key: jax.Array
) -> tuple[FusedState, float, float]:
    """One pass over ``images`` in their order (the last batch may be smaller, as in model.fit);
    ``key``: the epoch's ``dropout_epoch_key``."""
    params, optimizer_state = state.params, state.optimizer_state
    losses, corrects = [], []
    for batch, start in enumerate(range(0, len(images), batch_size)):
        params, optimizer_state, loss, correct = step(
            params, optimizer_state, images[start : start + batch_size], labels[start : start + batch_size], key, batch
        )
        losses.append(loss)
        corrects.append(correct)
    total_loss = float(jnp.sum(jnp.stack(losses)))
    total_correct = int(jnp.sum(jnp.stack(corrects)))
    return FusedState(params, optimizer_state), total_loss / len(images), total_correct / len(images)


def train_epochs(
    model: keras.Model, spec: ModelSpec, splits: MnistSplits, config: ExperimentConfig, first_epoch: int
) -> Iterator[tuple[int, dict[str, float]]]:
    """Train ``model`` from epoch ``first_epoch`` (0-based) to ``config.epochs``.

    After each epoch the Keras model holds the new weights and optimizer state, and the
    generator yields ``(epoch, logs)`` with the logs model.fit would give (plus ``seconds``).
    """
    check_model(model, spec)
    step = make_train_step(model.optimizer, spec.dropout)
    state = read_state(model)
    images = jnp.asarray(splits.X_train)
    labels = jnp.asarray(splits.y_train.astype("int32"))
    valid_images = jnp.asarray(splits.X_valid)
    valid_labels = jnp.asarray(splits.y_valid.astype("int32"))
    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        order = epoch_order(config.seed, epoch, len(images))
        if config.augmentation is None:
            epoch_images = images[order]
        else:
            epoch_images = jnp.asarray(augment_epoch(splits.X_train[order], config.seed, epoch, config.augmentation))
        key = dropout_epoch_key(config.seed, epoch)
        state, loss, accuracy = run_epoch(step, state, epoch_images, labels[order], config.batch_size, key)
        val_loss, val_accuracy = evaluate_arrays(state.params, valid_images, valid_labels)
        write_state(model, state)
        logs = {
            "loss": loss,
            "accuracy": accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "seconds": time.perf_counter() - start,
        }
        yield epoch, logs

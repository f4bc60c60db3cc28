"""One parametric CNN builder; Model_A and Model_B are named variants of it (see config)."""

from __future__ import annotations

import keras
from keras import layers

from mnist_cnn.core.config import ExperimentConfig, ModelSpec

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def build_cnn(
    filters: int,
    kernel_size: int = 3,
    dense_units: tuple[int, ...] = (200, 100),
    num_classes: int = NUM_CLASSES,
    name: str = "cnn",
) -> keras.Model:
    """Conv2D(filters, kernel, stride 1, 'valid') -> MaxPool 2x2 -> Flatten -> Dense... -> softmax.

    Hidden layers use ReLU. The specification fixes everything but the filter count.
    """
    if filters < 1:
        raise ValueError(f"filters must be at least 1, got {filters}")
    model = keras.Sequential(name=name)
    model.add(keras.Input(shape=INPUT_SHAPE, name="image"))
    model.add(
        layers.Conv2D(
            filters=filters,
            kernel_size=(kernel_size, kernel_size),
            strides=1,
            padding="valid",
            activation="relu",
            name="conv",
        )
    )
    model.add(layers.MaxPooling2D(pool_size=(2, 2), name="pool"))
    model.add(layers.Flatten(name="flatten"))
    for index, units in enumerate(dense_units, start=1):
        model.add(layers.Dense(units, activation="relu", name=f"dense_{index}"))
    model.add(layers.Dense(num_classes, activation="softmax", name="digit"))
    return model


def build_variant(spec: ModelSpec) -> keras.Model:
    """Build a named variant (Model_A, Model_B) of the CNN."""
    return build_cnn(
        filters=spec.filters,
        kernel_size=spec.kernel_size,
        dense_units=spec.dense_units,
        name=spec.name,
    )


def make_optimizer(config: ExperimentConfig) -> keras.optimizers.Optimizer:
    """The optimizer the config names; the specification names none, so SGD(0.01) is the default."""
    optimizers = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return optimizers[config.optimizer](learning_rate=config.learning_rate)


def compile_model(model: keras.Model, config: ExperimentConfig) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(config),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=config.steps_per_execution,
    )
    return model


def seeded_model(spec: ModelSpec, config: ExperimentConfig) -> keras.Model:
    """Build and compile a variant with weights drawn from the run's seed."""
    keras.utils.set_random_seed(config.seed)
    return compile_model(build_variant(spec), config)

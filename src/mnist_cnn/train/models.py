"""The one CNN builder: a ``ModelSpec`` (core.config) becomes a Keras model.

Model_A, Model_B and any other variant are data (specs) read here; nothing else in the package
states the architecture. The fused trainer computes the same function from the same spec and
checks the built model against it (train.trainers, train.fused).
"""

from __future__ import annotations

import keras
from keras import layers

from mnist_cnn.core.config import INPUT_SHAPE, NUM_CLASSES, ExperimentConfig, ModelSpec


def build_variant(spec: ModelSpec) -> keras.Model:
    """Conv2D(filters, kernel, stride 1, 'valid') -> MaxPool 2x2 -> Flatten -> Dense... -> softmax.

    Hidden layers use ReLU (the specification names no activation; ReLU is the usual one). With
    ``spec.dropout``, a Dropout layer follows the pooling and each hidden Dense layer.
    Layer names are fixed ("conv", "pool", "flatten", "dense_1"..., "digit"): the fused
    trainer and the reports find layers by them.
    """
    model = keras.Sequential(name=spec.name)
    model.add(keras.Input(shape=INPUT_SHAPE, name="image"))
    model.add(
        layers.Conv2D(
            filters=spec.filters,
            kernel_size=(spec.kernel_size, spec.kernel_size),
            strides=1,
            padding="valid",
            activation="relu",
            name="conv",
        )
    )
    model.add(layers.MaxPooling2D(pool_size=(2, 2), name="pool"))
    if spec.dropout:
        model.add(layers.Dropout(spec.dropout, name="pool_dropout"))
    model.add(layers.Flatten(name="flatten"))
    for index, units in enumerate(spec.dense_units, start=1):
        model.add(layers.Dense(units, activation="relu", name=f"dense_{index}"))
        if spec.dropout:
            model.add(layers.Dropout(spec.dropout, name=f"dense_{index}_dropout"))
    model.add(layers.Dense(NUM_CLASSES, activation="softmax", name="digit"))
    return model


def make_optimizer(config: ExperimentConfig, spec: ModelSpec | None = None) -> keras.optimizers.Optimizer:
    """The variant's optimizer if it names one, else the run's; the specification names none, so
    SGD(0.01) is the default."""
    optimizers = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    name = (spec.optimizer if spec else None) or config.optimizer
    learning_rate = (spec.learning_rate if spec else None) or config.learning_rate
    return optimizers[name](learning_rate=learning_rate)


def compile_model(model: keras.Model, config: ExperimentConfig, spec: ModelSpec | None = None) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(config, spec),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=config.steps_per_execution,
    )
    return model


def seeded_model(spec: ModelSpec, config: ExperimentConfig) -> keras.Model:
    """Build and compile a variant with weights drawn from the run's seed."""
    keras.utils.set_random_seed(config.seed)
    return compile_model(build_variant(spec), config, spec)

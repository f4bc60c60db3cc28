"""The one CNN builder: a ``ModelSpec``'s layer list (core.network) becomes a Keras model.

Model_A, Model_B and any other variant are data (specs) read here, one Keras layer per listed
layer and the Dense 10 softmax last; nothing else in the package builds a network. The fused
trainer computes the same function from the same parsed list and checks the built model against
it (train.fused).
"""

from __future__ import annotations

import keras
from keras import layers

from mnist_cnn.core import network as net
from mnist_cnn.core.config import ExperimentConfig, ModelSpec


def keras_layer(layer: net.Layer, name: str) -> keras.layers.Layer:
    """The Keras layer of one parsed layer (Keras's defaults for everything the list does not say)."""
    match layer:
        case net.Conv():
            return layers.Conv2D(
                filters=layer.filters,
                kernel_size=(layer.kernel, layer.kernel),
                strides=layer.stride,
                padding=layer.padding,
                activation=layer.activation,
                name=name,
            )
        case net.Pool():
            return layers.MaxPooling2D(pool_size=(layer.size, layer.size), strides=layer.stride, name=name)
        case net.BatchNorm():
            return layers.BatchNormalization(momentum=net.BATCHNORM_MOMENTUM, epsilon=net.BATCHNORM_EPSILON, name=name)
        case net.Dropout():
            return layers.Dropout(layer.rate, name=name)
        case net.Flatten():
            return layers.Flatten(name=name)
        case net.GlobalPool():
            return layers.GlobalAveragePooling2D(name=name)
        case net.Dense():
            return layers.Dense(layer.units, activation=layer.activation, name=name)
        case net.Activation():
            return layers.Activation(layer.name, name=name)
    raise TypeError(f"no Keras layer for {layer!r}")


def build_variant(spec: ModelSpec) -> keras.Model:
    """The Keras model of ``spec``'s network, layer by layer, named as ``Network.names`` says
    ("conv", "pool", "flatten", "dense_1"..., "digit")."""
    network = spec.network()
    model = keras.Sequential(name=spec.name)
    model.add(keras.Input(shape=net.INPUT_SHAPE, name="image"))
    for layer, name in zip(network.layers, network.names(), strict=True):
        model.add(keras_layer(layer, name))
    return model


def make_optimizer(config: ExperimentConfig, spec: ModelSpec | None = None) -> keras.optimizers.Optimizer:
    """The variant's optimizer if it names one, else the run's; the specification names none, so
    SGD(0.01) is the default."""
    optimizers = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "adadelta": keras.optimizers.Adadelta,
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

"""The fused JAX trainer computes the same model, the same loss and the same gradients as Keras."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.data.mnist import epoch_order
from mnist_cnn.train import fused
from mnist_cnn.train.models import seeded_model


@pytest.fixture(scope="module")
def images_and_labels():
    rng = np.random.default_rng(1)
    images = rng.random((48, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, size=48).astype("int32")
    return images, labels


def perturbed_model(key: str) -> keras.Model:
    """A variant whose biases are non-zero too, so every term of the formula is exercised."""
    model = seeded_model(MODEL_VARIANTS[key], ExperimentConfig(models=(key,), backend="jax"))
    rng = np.random.default_rng(2)
    for variable in model.trainable_variables:
        if "bias" in variable.path:
            variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))
    return model


@pytest.mark.parametrize("key", ["A", "B"])
def test_fused_forward_equals_the_keras_model(key: str, images_and_labels) -> None:
    images, _ = images_and_labels
    model = perturbed_model(key)
    state = fused.read_state(model)
    expected = np.asarray(model.predict_on_batch(images))
    actual = np.asarray(jax.nn.softmax(fused.forward_logits(state.params, jnp.asarray(images))))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["A", "B"])
def test_fused_gradients_equal_keras_autodiff(key: str, images_and_labels) -> None:
    images, labels = images_and_labels
    model = perturbed_model(key)
    state = fused.read_state(model)
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    loss_function = keras.losses.SparseCategoricalCrossentropy()

    def keras_loss(params):
        probabilities, _ = model.stateless_call(params, non_trainable, images)
        return loss_function(labels, probabilities)

    expected_loss, expected = jax.value_and_grad(keras_loss)(state.params)
    (loss, correct), actual = jax.value_and_grad(fused.batch_loss_and_correct, has_aux=True)(
        state.params, jnp.asarray(images), jnp.asarray(labels)
    )
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    probabilities = np.asarray(model.predict_on_batch(images))
    assert int(correct) == int(np.sum(probabilities.argmax(axis=1) == labels))
    for variable, got, want in zip(model.trainable_variables, actual, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6, err_msg=variable.path)


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    first = epoch_order(42, 3, 1000)
    assert sorted(first.tolist()) == list(range(1000))
    np.testing.assert_array_equal(first, epoch_order(42, 3, 1000))
    assert not np.array_equal(first, epoch_order(42, 4, 1000))
    assert not np.array_equal(first, epoch_order(43, 3, 1000))


def test_fused_trainer_refuses_other_backends() -> None:
    with pytest.raises(ConfigError, match="JAX backend"):
        ExperimentConfig(backend="tensorflow", trainer="fused")
    with pytest.raises(ConfigError, match="JAX backend"):
        ExperimentConfig(trainer="fused").for_backend("torch")


def test_a_config_for_another_backend_is_refused_before_training(tmp_path) -> None:
    """Keras runs JAX in this process: a run asking for TensorFlow fails at once, clearly."""
    from mnist_cnn.experiment import run_experiment

    with pytest.raises(ConfigError, match="for the tensorflow backend but Keras is running jax"):
        run_experiment(ExperimentConfig(backend="tensorflow", limit=64, epochs=1), tmp_path / "run")
    assert not (tmp_path / "run").exists()

"""The fused JAX trainer computes the same model, the same loss and the same gradients as Keras,
for every spec it accepts, and refuses, before any data loads, what it does not compute."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.data.mnist import epoch_order, load_mnist
from mnist_cnn.train import fused
from mnist_cnn.train.loop import train_model
from mnist_cnn.train.models import build_variant, seeded_model
from mnist_cnn.train.trainers import fused_refusal, plan_trainers

# Specs beyond the built-in variants that exercise every part of the fused formulation:
# other kernel sizes (even, 1, 5: other window sizes and an odd convolution output that the
# pooling floors), one hidden layer, none.
EXTRA_SPECS = {
    "K5": ModelSpec(key="K5", name="Model_K5", filters=8, kernel_size=5),
    "K4": ModelSpec(key="K4", name="Model_K4", filters=6, kernel_size=4, dense_units=(32,)),
    "K1": ModelSpec(key="K1", name="Model_K1", filters=4, kernel_size=1, dense_units=(16, 16, 16)),
    "D0": ModelSpec(key="D0", name="Model_D0", filters=8, dense_units=()),
}
EVERY_SPEC = [*MODEL_VARIANTS, *EXTRA_SPECS]


@pytest.fixture(autouse=True)
def extra_variants(monkeypatch):
    """The extra specs as variants a config may name (as a variants file would make them)."""
    for key, spec in EXTRA_SPECS.items():
        monkeypatch.setitem(MODEL_VARIANTS, key, spec)


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


@pytest.mark.parametrize("key", EVERY_SPEC)
def test_fused_forward_equals_the_keras_model(key: str, images_and_labels) -> None:
    images, _ = images_and_labels
    model = perturbed_model(key)
    state = fused.read_state(model)
    expected = np.asarray(model.predict_on_batch(images))
    actual = np.asarray(jax.nn.softmax(fused.forward_logits(state.params, jnp.asarray(images))))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["A", "B", "K5", "K4"])
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


@pytest.fixture(scope="module")
def small_splits():
    return load_mnist("bundled", limit=640)


@pytest.mark.parametrize("key", EVERY_SPEC)
def test_fused_and_model_fit_reach_the_same_weights_for_every_spec(key: str, small_splits) -> None:
    """One epoch on 576 images, same seed and batches: the fused step is model.fit's maths."""
    trained = {}
    for trainer in ("fused", "keras"):
        config = ExperimentConfig(
            models=(key,), epochs=1, seed=5, limit=640, steps_per_execution=8, trainer=trainer
        ).for_backend(keras.backend.backend())
        assert plan_trainers(config)[0].trainer == trainer
        model = seeded_model(MODEL_VARIANTS[key], config)
        trained[trainer] = (model, train_model(model, small_splits, config))
    (fused_model, fused_result), (keras_model, keras_result) = trained["fused"], trained["keras"]
    for variable, got, want in zip(
        fused_model.trainable_variables, fused_model.get_weights(), keras_model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{key} {variable.path}")
    assert fused_result.history[0]["loss"] == pytest.approx(keras_result.history[0]["loss"], rel=1e-4)


def test_the_fused_trainer_refuses_a_spec_field_it_does_not_compute(monkeypatch) -> None:
    plain = ModelSpec(key="P", name="Model_P", filters=8)
    dropping = ModelSpec(key="DR", name="Model_DR", filters=8, dropout=0.5)
    assert fused_refusal(plain, "jax") is None  # At its default the field changes nothing.
    assert fused_refusal(dropping, "jax") == "the fused trainer does not compute dropout"
    monkeypatch.setitem(MODEL_VARIANTS, "DR", dropping)
    auto = plan_trainers(ExperimentConfig(models=("A", "DR"), backend="jax"))
    assert [(choice.trainer, choice.reason) for choice in auto] == [
        ("fused", None),
        ("keras", "the fused trainer does not compute dropout"),
    ]
    assert auto[1].describe() == "Model_DR: trained by model.fit (the fused trainer does not compute dropout)"
    with pytest.raises(ConfigError, match="Model_DR: the fused trainer does not compute dropout; use --trainer keras"):
        plan_trainers(ExperimentConfig(models=("A", "DR"), backend="jax", trainer="fused"))


def test_the_fused_trainer_refuses_a_model_that_is_not_its_spec() -> None:
    """A layer the builder adds that the fused trainer does not know is an error, never ignored."""
    spec = MODEL_VARIANTS["A"]
    model = build_variant(spec)
    fused.check_model(model, spec)  # The builder's model is the spec's network.
    with_dropout = keras.Sequential([*model.layers[:3], keras.layers.Dropout(0.5), *model.layers[3:]], name="Model_A")
    with pytest.raises(ConfigError, match="not the network the fused trainer computes"):
        fused.check_model(with_dropout, spec)
    with pytest.raises(ConfigError, match="not the network"):
        fused.check_model(build_variant(MODEL_VARIANTS["B"]), spec)


def test_fused_trainer_refuses_other_backends() -> None:
    with pytest.raises(ConfigError, match="needs the JAX backend"):
        plan_trainers(ExperimentConfig(backend="tensorflow", trainer="fused"))
    auto = plan_trainers(ExperimentConfig(backend="torch"))
    assert {choice.trainer for choice in auto} == {"keras"}


def test_a_refused_trainer_stops_the_run_before_anything_is_written(tmp_path, monkeypatch) -> None:
    from mnist_cnn.experiment import run_experiment

    monkeypatch.setitem(MODEL_VARIANTS, "DR", ModelSpec(key="DR", name="Model_DR", filters=8, dropout=0.5))
    with pytest.raises(ConfigError, match="does not compute dropout"):
        run_experiment(ExperimentConfig(models=("DR",), trainer="fused", limit=64, epochs=1), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_config_for_another_backend_is_refused_before_training(tmp_path) -> None:
    """Keras runs JAX in this process: a run asking for TensorFlow fails at once, clearly."""
    from mnist_cnn.experiment import run_experiment

    with pytest.raises(ConfigError, match="for the tensorflow backend but Keras is running jax"):
        run_experiment(ExperimentConfig(backend="tensorflow", limit=64, epochs=1), tmp_path / "run")
    assert not (tmp_path / "run").exists()

"""The fused JAX trainer computes the same model, the same loss and the same gradients as Keras,
for every spec it accepts, and refuses, before any data loads, what it does not compute.

For dropout, whose masks the two trainers draw from different generators: the same weights
given the same masks (injected here), and the same mean loss over many masks within noise."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.variants import read_variants_file
from mnist_cnn.data.mnist import epoch_order, load_mnist
from mnist_cnn.train import fused
from mnist_cnn.train.loop import train_model
from mnist_cnn.train.models import build_variant, seeded_model
from mnist_cnn.train.trainers import fused_refusal, plan_trainers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
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
# Dropout after the pooling and two hidden layers, or after the pooling alone; rates other than
# 0.5, so that keeping with probability rate instead of 1 - rate shows.
DROPOUT_SPECS = {
    "DR": ModelSpec(key="DR", name="Model_DR", filters=8, dense_units=(32, 16), dropout=0.3),
    "DP": ModelSpec(key="DP", name="Model_DP", filters=4, kernel_size=4, dense_units=(), dropout=0.6),
}


@pytest.fixture(autouse=True)
def extra_variants(monkeypatch):
    """The extra specs as variants a config may name (as a variants file would make them)."""
    for key, spec in {**EXTRA_SPECS, **DROPOUT_SPECS}.items():
        monkeypatch.setitem(MODEL_VARIANTS, key, spec)


@pytest.fixture(scope="module")
def images_and_labels():
    rng = np.random.default_rng(1)
    images = rng.random((48, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, size=48).astype("int32")
    return images, labels


def spec_network(key: str):
    return MODEL_VARIANTS[key].network()


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
    actual = fused.forward_logits(MODEL_VARIANTS[key].network(), state.params, state.stats, jnp.asarray(images))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(actual)), expected, rtol=1e-5, atol=1e-6)


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
    (loss, (correct, _)), actual = jax.value_and_grad(fused.batch_loss_and_correct, has_aux=True)(
        state.params, state.stats, jnp.asarray(images), jnp.asarray(labels), MODEL_VARIANTS[key].network()
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


@dataclasses.dataclass(frozen=True)
class SpecWithSmoothing(ModelSpec):
    """A spec with a field the fused trainer does not read (as a new ModelSpec field would be)."""

    label_smoothing: float = 0.0


def test_the_fused_trainer_refuses_a_spec_field_it_does_not_compute(monkeypatch) -> None:
    plain = SpecWithSmoothing(key="P", name="Model_P", filters=8)
    normed = SpecWithSmoothing(key="BN", name="Model_BN", filters=8, label_smoothing=0.1)
    assert fused_refusal(plain, "jax") is None  # At its default the field changes nothing.
    assert fused_refusal(normed, "jax") == "the fused trainer does not compute label_smoothing"
    assert fused_refusal(DROPOUT_SPECS["DR"], "jax") is None  # Dropout it computes.
    monkeypatch.setitem(MODEL_VARIANTS, "BN", normed)
    auto = plan_trainers(ExperimentConfig(models=("A", "BN", "DR"), backend="jax"))
    assert [(choice.trainer, choice.reason) for choice in auto] == [
        ("fused", None),
        ("keras", "the fused trainer does not compute label_smoothing"),
        ("fused", None),
    ]
    assert auto[1].describe() == "Model_BN: trained by model.fit (the fused trainer does not compute label_smoothing)"
    with pytest.raises(
        ConfigError, match="Model_BN: the fused trainer does not compute label_smoothing; use --trainer keras"
    ):
        plan_trainers(ExperimentConfig(models=("A", "BN"), backend="jax", trainer="fused"))


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


def test_the_fused_trainer_accepts_dropout_only_as_its_spec_states_it() -> None:
    """Dropout layers with the spec's rate after the pooling and each hidden layer, nothing else."""
    spec = DROPOUT_SPECS["DR"]
    model = build_variant(spec)
    fused.check_model(model, spec)
    layers = model.layers
    dropout = keras.layers.Dropout
    variants = {
        "another rate": [*layers[:2], dropout(0.5), *layers[3:]],
        "one missing": [*layers[:5], *layers[6:]],
        "before the pooling": [layers[0], dropout(0.3), layers[1], *layers[3:]],
        "a noise shape": [*layers[:2], dropout(0.3, noise_shape=(None, 1, 1, 8)), *layers[3:]],
    }
    for what, changed in variants.items():
        with pytest.raises(ConfigError, match="not the network the fused trainer computes"):
            fused.check_model(keras.Sequential(changed, name=spec.name), spec)
            pytest.fail(f"accepted dropout with {what}")
    with pytest.raises(ConfigError, match="not the network"):
        fused.check_model(build_variant(dataclasses.replace(spec, dropout=0.0)), spec)


def test_fused_trainer_refuses_other_backends() -> None:
    with pytest.raises(ConfigError, match="needs the JAX backend"):
        plan_trainers(ExperimentConfig(backend="tensorflow", trainer="fused"))
    auto = plan_trainers(ExperimentConfig(backend="torch"))
    assert {choice.trainer for choice in auto} == {"keras"}


def test_a_refused_trainer_stops_the_run_before_anything_is_written(tmp_path, monkeypatch) -> None:
    from mnist_cnn.experiment import run_experiment

    monkeypatch.setitem(
        MODEL_VARIANTS, "BN", SpecWithSmoothing(key="BN", name="Model_BN", filters=8, label_smoothing=0.1)
    )
    with pytest.raises(ConfigError, match="does not compute label_smoothing"):
        run_experiment(ExperimentConfig(models=("BN",), trainer="fused", limit=64, epochs=1), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_config_for_another_backend_is_refused_before_training(tmp_path) -> None:
    """Keras runs JAX in this process: a run asking for TensorFlow fails at once, clearly."""
    from mnist_cnn.experiment import run_experiment

    with pytest.raises(ConfigError, match="for the tensorflow backend but Keras is running jax"):
        run_experiment(ExperimentConfig(backend="tensorflow", limit=64, epochs=1), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def injected_masks(spec: ModelSpec, count: int, seed: int) -> list[jax.Array]:
    """Masks to inject into both trainers, of the shapes the fused trainer draws."""
    return fused.dropout_masks(jax.random.key(seed), spec.network(), count)


@pytest.fixture
def keras_draws(monkeypatch):
    """``keras_draws(masks)``: from then on Keras's Dropout layers (JAX backend: ``jax.random.bernoulli``
    in keras.src.backend.jax.random) draw ``masks``, in layer order; Keras's own code scales and
    selects. Returns the list of (probability, shape) of each draw Keras makes."""

    def inject(masks: list[jax.Array]) -> list[tuple]:
        drawn: list[tuple] = []

        def bernoulli(key, p, shape):
            mask = masks[len(drawn) % len(masks)]
            drawn.append((p, tuple(shape)))
            return jnp.reshape(mask, shape)  # (N, P*P*F) in Flatten's (NHWC) order -> (N, P, P, F).

        monkeypatch.setattr(jax.random, "bernoulli", bernoulli)
        return drawn

    return inject


@pytest.mark.parametrize("key", DROPOUT_SPECS)
def test_with_the_same_masks_dropout_gives_keras_loss_and_gradients(key: str, images_and_labels, keras_draws) -> None:
    images, labels = images_and_labels
    spec = DROPOUT_SPECS[key]
    model = perturbed_model(key)
    state = fused.read_state(model)
    masks = injected_masks(spec, len(images), seed=7)
    drawn = keras_draws(masks)
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    loss_function = keras.losses.SparseCategoricalCrossentropy()

    def keras_loss(params):
        probabilities, _ = model.stateless_call(params, non_trainable, images, training=True)
        return loss_function(labels, probabilities)

    expected_loss, expected = jax.value_and_grad(keras_loss)(state.params)
    assert [shape[1:] for _, shape in drawn] == [
        (spec.pooled_size, spec.pooled_size, spec.filters),
        *[(units,) for units in spec.dense_units],
    ]
    assert all(p == pytest.approx(1 - spec.dropout) for p, _ in drawn)
    (loss, _), actual = jax.value_and_grad(fused.batch_loss_and_correct, has_aux=True)(
        state.params, state.stats, jnp.asarray(images), jnp.asarray(labels), spec.network(), masks, True
    )
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    without = fused.batch_loss_and_correct(
        state.params, state.stats, jnp.asarray(images), jnp.asarray(labels), spec.network()
    )[0]
    assert abs(float(without) - float(loss)) > 1e-2  # The masks matter.
    for variable, got, want in zip(model.trainable_variables, actual, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6, err_msg=variable.path)


@pytest.mark.parametrize("key", DROPOUT_SPECS)
def test_with_the_same_masks_one_step_gives_model_fit_weights(
    key: str, images_and_labels, keras_draws, monkeypatch
) -> None:
    """Keras's own train step (train_on_batch) and the fused step, both given the same masks."""
    images, labels = images_and_labels
    spec = DROPOUT_SPECS[key]
    keras_model, fused_model = perturbed_model(key), perturbed_model(key)
    state = fused.read_state(fused_model)
    masks = injected_masks(spec, len(images), seed=8)
    drawn = keras_draws(masks)
    keras_model.train_on_batch(images, labels)
    assert len(drawn) == len(masks)
    monkeypatch.setattr(fused, "dropout_masks", lambda key, network, count: masks)
    step = fused.make_train_step(fused_model.optimizer, spec.network())
    params, *_ = step(
        state.params, state.stats, state.optimizer_state, jnp.asarray(images), jnp.asarray(labels),
        fused.dropout_epoch_key(0, 0), 0,
    )  # fmt: skip
    for variable, got, want in zip(keras_model.trainable_variables, params, keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=variable.path)


@pytest.mark.parametrize("key", DROPOUT_SPECS)
def test_over_many_masks_the_mean_dropout_loss_is_keras(key: str, images_and_labels) -> None:
    """Each trainer's own generator, 200 masks each: the same mean training loss within noise."""
    images, labels = images_and_labels
    spec = DROPOUT_SPECS[key]
    model = perturbed_model(key)
    state = fused.read_state(model)
    loss_function = keras.losses.SparseCategoricalCrossentropy()

    @jax.jit
    def keras_loss(non_trainable):
        probabilities, non_trainable = model.stateless_call(state.params, non_trainable, images, training=True)
        return loss_function(labels, probabilities), non_trainable

    @jax.jit
    def fused_loss(batch):
        masks = fused.dropout_masks(
            jax.random.fold_in(fused.dropout_epoch_key(3, 0), batch), spec.network(), len(images)
        )
        return fused.batch_loss_and_correct(
            state.params, state.stats, jnp.asarray(images), jnp.asarray(labels), spec.network(), masks, True
        )[0]

    non_trainable = [variable.value for variable in model.non_trainable_variables]
    keras_losses = []
    for _ in range(200):
        loss, non_trainable = keras_loss(non_trainable)
        keras_losses.append(float(loss))
    fused_losses = [float(fused_loss(batch)) for batch in range(200)]
    assert min(len(set(keras_losses)), len(set(fused_losses))) > 190  # New masks every time.
    difference = np.mean(fused_losses) - np.mean(keras_losses)
    noise = np.sqrt(np.var(fused_losses, ddof=1) / 200 + np.var(keras_losses, ddof=1) / 200)
    assert abs(difference) < 4 * noise, (difference, noise)
    inference = float(
        fused.batch_loss_and_correct(
            state.params, state.stats, jnp.asarray(images), jnp.asarray(labels), spec.network()
        )[0]
    )
    assert abs(np.mean(fused_losses) - inference) > 8 * noise  # Dropout moves the loss: the test can tell.


def test_the_fused_masks_follow_seed_epoch_and_batch_only() -> None:
    spec = DROPOUT_SPECS["DR"]

    def masks(seed: int, epoch: int, batch: int) -> list[jax.Array]:
        return fused.dropout_masks(fused.dropout_key(seed, epoch, batch), spec.network(), 64)

    def flat(drawn: list[jax.Array]) -> np.ndarray:
        return np.concatenate([np.asarray(mask) for mask in drawn], axis=1)

    drawn = masks(5, 1, 3)
    assert [mask.shape for mask in drawn] == [(64, 13 * 13 * 8), (64, 32), (64, 16)]
    first = flat(drawn)
    np.testing.assert_array_equal(first, flat(masks(5, 1, 3)))
    for other in (masks(5, 1, 4), masks(5, 2, 3), masks(6, 1, 3)):
        assert not np.array_equal(first, flat(other))
    assert first.mean() == pytest.approx(1 - spec.dropout, abs=0.01)  # 64 x 1,400 draws.
    # The training step draws batch b's masks from the epoch's key and b: those very masks.
    images = jnp.asarray(np.random.default_rng(3).random((64, 28, 28, 1), dtype=np.float32))
    labels = jnp.asarray(np.arange(64, dtype="int32") % 10)
    model = seeded_model(spec, ExperimentConfig(models=("DR",), backend="jax"))
    state = fused.read_state(model)
    expected = fused.batch_loss_and_correct(state.params, state.stats, images, labels, spec.network(), drawn, True)[0]
    step = fused.make_train_step(model.optimizer, spec.network())
    *_, loss, _ = step(
        state.params, state.stats, state.optimizer_state, images, labels, fused.dropout_epoch_key(5, 1), 3
    )
    assert float(loss) / 64 == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("key", DROPOUT_SPECS)
def test_evaluation_and_prediction_drop_nothing(key: str, images_and_labels) -> None:
    images, labels = images_and_labels
    model = perturbed_model(key)
    state = fused.read_state(model)
    expected_loss, expected_accuracy = model.evaluate(images, labels, batch_size=16, verbose=0)
    loss, accuracy = fused.evaluate_arrays(spec_network(key), state, images, labels)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy == pytest.approx(expected_accuracy)
    logits = fused.forward_logits(spec_network(key), state.params, state.stats, jnp.asarray(images))
    probabilities = np.asarray(jax.nn.softmax(logits))
    np.testing.assert_allclose(probabilities, np.asarray(model.predict_on_batch(images)), rtol=1e-5, atol=1e-6)


def test_a_dropout_variant_is_trained_by_the_fused_step(small_splits) -> None:
    """``auto`` and ``fused`` train a dropout variant with the fused step."""
    config = ExperimentConfig(models=("DR",), epochs=1, seed=5, limit=640, trainer="fused").for_backend("jax")
    assert plan_trainers(dataclasses.replace(config, trainer="auto"))[0].trainer == "fused"
    assert plan_trainers(config)[0].trainer == "fused"
    model = seeded_model(DROPOUT_SPECS["DR"], config)
    before = [np.asarray(w) for w in model.get_weights()]
    result = train_model(model, small_splits, config)
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert np.isfinite(result.history[0]["loss"])


# Every layer kind and form the lists allow, beyond the anchors: 'same' padding fused with its
# pooling, a strided convolution, 3x3 pooling, BatchNorm on feature maps and on Dense outputs,
# global average pooling, the other activations, Dropout on feature maps.
LIST_SPECS = {
    "L1": ModelSpec(key="L1", name="Model_L1", layers=(
        "conv 6 3 same tanh", "pool 2", "conv 5 2 stride 2 sigmoid", "batchnorm", "pool 3", "flatten",
        "dense 16 linear", "batchnorm", "relu", "dense 12 tanh")),
    "L2": ModelSpec(key="L2", name="Model_L2", layers=(
        "conv 4 4 same", "batchnorm", "relu", "pool 2", "conv 6 3 linear", "globalpool", "dense 8 sigmoid")),
}  # fmt: skip
ANCHORS = {spec.key: spec for spec in read_variants_file(EXAMPLES / "anchors.toml")}


@pytest.fixture
def list_variants(monkeypatch):
    for key, spec in {**LIST_SPECS, **ANCHORS}.items():
        monkeypatch.setitem(MODEL_VARIANTS, key, spec)


def test_the_anchor_networks_are_the_ones_their_sources_state() -> None:
    """keras-io's mnist_convnet and pytorch/examples' mnist, layer for layer and parameter for parameter."""
    assert {key: spec.parameter_count() for key, spec in ANCHORS.items()} == {
        "KERAS_IO": 34_826,  # keras-io's model.summary(): "Total params: 34,826".
        "PYTORCH": 1_199_882,  # 320 + 18,496 + 1,179,776 + 1,290.
        "A_BN": 1_104_558,  # Model_A's 1,103,230 and 4 x (32 + 200 + 100).
        "A_CONV2": 360_126,
    }
    assert ANCHORS["A_BN"].network().trainable_count() == 1_103_230 + 2 * (32 + 200 + 100)
    assert ANCHORS["KERAS_IO"].network().shapes[:5] == ((26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (1600,))
    for spec in ANCHORS.values():
        assert build_variant(spec).count_params() == spec.parameter_count()
        assert fused_refusal(spec, "jax") is None


@pytest.mark.parametrize("key", LIST_SPECS)
def test_fused_forward_and_gradients_equal_keras_for_every_layer_kind(key: str, images_and_labels, list_variants):
    images, labels = images_and_labels
    spec = LIST_SPECS[key]
    model = seeded_model(spec, ExperimentConfig(models=(key,), backend="jax"))
    fused.check_model(model, spec)
    state = fused.read_state(model)
    assert len(state.stats) == 2 * sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    logits = fused.forward_logits(spec.network(), state.params, state.stats, jnp.asarray(images))
    np.testing.assert_allclose(
        np.asarray(jax.nn.softmax(logits)), np.asarray(model.predict_on_batch(images)), rtol=1e-5, atol=1e-6
    )
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    loss_function = keras.losses.SparseCategoricalCrossentropy()

    def keras_loss(params):
        probabilities, updated = model.stateless_call(params, non_trainable, images, training=True)
        return loss_function(labels, probabilities), updated

    (expected_loss, updated), expected = jax.value_and_grad(keras_loss, has_aux=True)(state.params)
    (loss, (_, stats)), actual = jax.value_and_grad(fused.batch_loss_and_correct, has_aux=True)(
        state.params, state.stats, jnp.asarray(images), jnp.asarray(labels), spec.network(), None, True
    )
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    for variable, got, want in zip(model.trainable_variables, actual, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6, err_msg=variable.path)
    moving = {id(variable): value for variable, value in zip(model.non_trainable_variables, updated, strict=True)}
    for variable, got in zip(fused.batch_norm_statistics(model), stats, strict=True):
        np.testing.assert_allclose(got, moving[id(variable)], rtol=1e-5, atol=1e-7, err_msg=variable.path)


@pytest.mark.parametrize("key", [*ANCHORS, *LIST_SPECS])
def test_fused_and_model_fit_reach_the_same_weights_for_every_example_network(
    key: str, small_splits, list_variants, keras_draws, monkeypatch
) -> None:
    """One epoch on 576 images (18 batches of 32), the same masks in both trainers for dropout:
    the same weights, BatchNorm statistics and optimizer's result, and the same loss.

    pytorch/examples' Adadelta at its learning rate of 1.0 with dropout makes the 18 steps chaotic:
    rounding differences of 1e-8 grow to 1e-3, at 0.1 they stay at 1e-8 (and at 1.0 without
    dropout too), so the test trains it at 0.1."""
    spec = MODEL_VARIANTS[key]
    if spec.learning_rate is not None and spec.learning_rate >= 1:
        spec = dataclasses.replace(spec, learning_rate=0.1)
        monkeypatch.setitem(MODEL_VARIANTS, key, spec)
    masks = injected_masks(spec, 32, seed=9)
    if masks:
        keras_draws(masks)
        monkeypatch.setattr(fused, "dropout_masks", lambda key, network, count: masks)
    trained = {}
    for trainer in ("fused", "keras"):
        config = ExperimentConfig(
            models=(key,), epochs=1, seed=5, limit=640, steps_per_execution=6, trainer=trainer
        ).for_backend(keras.backend.backend())
        assert plan_trainers(config)[0].trainer == trainer
        model = seeded_model(spec, config)
        trained[trainer] = (model, train_model(model, small_splits, config))
    (fused_model, fused_result), (keras_model, keras_result) = trained["fused"], trained["keras"]
    assert len(fused_model.weights) == len(keras_model.weights)
    for variable, got, want in zip(
        fused_model.weights, fused_model.get_weights(), keras_model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=f"{key} {variable.path}")
    assert fused_result.history[0]["loss"] == pytest.approx(keras_result.history[0]["loss"], rel=1e-4)
    assert fused_result.history[0]["val_loss"] == pytest.approx(keras_result.history[0]["val_loss"], rel=1e-4)


def test_the_fused_trainer_refuses_a_pooling_it_does_not_compute(list_variants) -> None:
    overlapping = ModelSpec(key="OV", name="Model_OV", layers=("conv 4 3", "pool 3 stride 2", "flatten"))
    assert fused_refusal(overlapping, "jax") == (
        "the fused trainer does not compute 'pool 3 stride 2' (a pooling whose stride is not its size)"
    )

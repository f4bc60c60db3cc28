import numpy as np
import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.train.models import build_variant, compile_model

SMALL = ModelSpec(key="S", name="Model_S", filters=4)


@pytest.mark.parametrize(("key", "filters", "parameters"), [("A", 32, 1_103_230), ("B", 64, 2_185_150)])
def test_variants_have_the_specified_architecture(key: str, filters: int, parameters: int) -> None:
    model = build_variant(MODEL_VARIANTS[key])
    assert model.name == f"Model_{key}"
    assert model.count_params() == parameters
    conv = model.get_layer("conv")
    assert conv.filters == filters
    assert conv.kernel_size == (3, 3) and conv.strides == (1, 1) and conv.padding == "valid"
    assert model.get_layer("pool").pool_size == (2, 2)
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [200, 100, 10]
    assert model.get_layer("flatten").output.shape[1] == 13 * 13 * filters
    assert model.get_layer("digit").activation.__name__ == "softmax"


def test_output_is_a_probability_distribution_over_ten_digits() -> None:
    model = build_variant(SMALL)
    images = np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)
    probabilities = np.asarray(model.predict_on_batch(images))
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_the_optimizer_is_configurable_and_defaults_to_plain_sgd() -> None:
    model = compile_model(build_variant(SMALL), ExperimentConfig())
    assert model.optimizer.__class__.__name__ == "SGD"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    assert model.optimizer.momentum == 0
    adam = compile_model(build_variant(SMALL), ExperimentConfig(optimizer="adam", learning_rate=0.001))
    assert adam.optimizer.__class__.__name__ == "Adam"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"filters": 0}, "filters must be a whole number of at least 1"),
        ({"filters": 2.5}, "filters"),
        ({"kernel_size": 28}, "kernel_size must be a whole number from 1 to 27"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"dense_units": (200, 0)}, "dense_units"),
    ],
)
def test_an_impossible_spec_is_refused_with_the_field_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelSpec(key="X", name="Model_X", **{"filters": 8, **fields})


@pytest.mark.parametrize(("kernel_size", "pooled"), [(1, 14), (3, 13), (4, 12), (5, 12), (27, 1)])
def test_the_spec_states_its_feature_map_size(kernel_size: int, pooled: int) -> None:
    spec = ModelSpec(key="K", name="Model_K", filters=2, kernel_size=kernel_size, dense_units=(8,))
    assert spec.pooled_size == pooled
    assert build_variant(spec).get_layer("flatten").output.shape[1] == pooled * pooled * 2

import numpy as np
import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig
from mnist_cnn.train.models import build_cnn, build_variant, compile_model


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
    model = build_cnn(filters=4)
    images = np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)
    probabilities = np.asarray(model.predict_on_batch(images))
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_the_optimizer_is_configurable_and_defaults_to_plain_sgd() -> None:
    model = compile_model(build_cnn(filters=4), ExperimentConfig())
    assert model.optimizer.__class__.__name__ == "SGD"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    assert model.optimizer.momentum == 0
    adam = compile_model(build_cnn(filters=4), ExperimentConfig(optimizer="adam", learning_rate=0.001))
    assert adam.optimizer.__class__.__name__ == "Adam"


def test_bad_filter_count_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="filters"):
        build_cnn(filters=0)

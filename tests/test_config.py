import pytest

from mnist_cnn.core.config import ExperimentConfig


def test_defaults_are_the_specification() -> None:
    config = ExperimentConfig()
    assert config.models == ("A", "B")
    assert config.epochs == 60
    assert config.batch_size == 32
    assert config.validation_size == 6000
    assert config.optimizer == "sgd" and config.learning_rate == 0.01


def test_round_trips_through_a_dict() -> None:
    config = ExperimentConfig(models=("B",), epochs=3, limit=100)
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch size"),
        ({"models": ("C",)}, "unknown model"),
        ({"models": ()}, "no models"),
        ({"models": ("A", "A")}, "twice"),
        ({"learning_rate": 0.0}, "learning rate"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"backend": "numpy"}, "backend"),
        ({"limit": 0}, "limit"),
    ],
)
def test_out_of_range_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**changes)


def test_a_config_from_a_newer_version_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="newer"):
        ExperimentConfig.from_dict({"epochs": 1, "attention_heads": 4})

"""--augment: seeded, bounded, a no-op at zero strength, the same on both trainers, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from mnist_cnn.core.config import Augmentation, ExperimentConfig
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.faults import FAULT_ENVIRONMENT
from mnist_cnn.data.augment import augment_batch, augment_epoch, batch_key
from mnist_cnn.data.mnist import load_mnist
from mnist_cnn.store.runs import RunFolder
from tests.conftest import cli

ZERO = Augmentation(**{field: 0.0 for field in Augmentation.__dataclass_fields__})


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist("bundled", limit=64).X_train[:16]


@pytest.mark.slow
def test_augmentation_is_seeded_bounded_and_changes_the_images(digits: np.ndarray) -> None:
    compiled = jax.jit(augment_batch, static_argnums=2)
    first = np.asarray(compiled(digits, batch_key(1, 0, 0), Augmentation()))
    again = np.asarray(compiled(digits, batch_key(1, 0, 0), Augmentation()))
    other = np.asarray(compiled(digits, batch_key(1, 0, 1), Augmentation()))
    assert first.shape == digits.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.min() >= 0.0 and first.max() <= 1.0
    # Redrawn, not erased or thrown out of the frame: ink remains, near where it was.
    assert (first.reshape(len(first), -1).max(axis=1) > 0.3).all()
    assert np.abs(centre_of_mass(first) - centre_of_mass(digits)).max() < 4.5


def centre_of_mass(images: np.ndarray) -> np.ndarray:
    ink = images[..., 0]
    rows, columns = np.indices(ink.shape[1:])
    total = ink.sum(axis=(1, 2))
    return np.stack([(ink * rows).sum(axis=(1, 2)) / total, (ink * columns).sum(axis=(1, 2)) / total], axis=1)


@pytest.mark.slow
def test_zero_strength_leaves_the_images_as_they_are(digits: np.ndarray) -> None:
    unchanged = np.asarray(jax.jit(augment_batch, static_argnums=2)(digits, batch_key(3, 2, 1), ZERO))
    np.testing.assert_allclose(unchanged, digits, atol=1e-6)


@pytest.mark.slow
def test_an_epoch_is_redrawn_chunk_by_chunk_from_its_own_keys(digits: np.ndarray, monkeypatch) -> None:
    """augment_epoch: chunk c from batch_key(seed, epoch, c), whatever the chunk's length."""
    from mnist_cnn.data import augment

    monkeypatch.setattr(augment, "CHUNK", 6)
    whole = augment_epoch(digits, 5, 2, Augmentation())
    assert whole.shape == digits.shape
    np.testing.assert_array_equal(whole, augment_epoch(digits, 5, 2, Augmentation()))
    assert not np.allclose(whole, augment_epoch(digits, 5, 3, Augmentation()))
    compiled = jax.jit(augment_batch, static_argnums=2)
    for index, start in enumerate(range(0, len(digits), 6)):
        part = digits[start : start + 6]
        padded = np.concatenate([part, np.zeros((6 - len(part), 28, 28, 1), np.float32)])
        expected = np.asarray(compiled(padded, batch_key(5, 2, index), Augmentation()))[: len(part)]
        np.testing.assert_allclose(whole[start : start + 6], expected, atol=1e-5)


def test_bad_strengths_are_refused() -> None:
    with pytest.raises(ConfigError, match="rotation_degrees must be 0 or more"):
        Augmentation(rotation_degrees=-1)
    with pytest.raises(ConfigError, match="at most 1"):
        Augmentation(blur_probability=2)


@pytest.mark.slow
def test_an_augmented_run_records_it_trains_and_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    arguments = ["experiment", "--augment", "--models", "A", "--limit", "256", "--epochs", "2", "--seed", "3"]
    straight = tmp_path / "straight"
    assert cli(*arguments, "--out", straight).returncode == 0
    record = json.loads((straight / "config.json").read_text())
    assert record["config"]["augmentation"]["rotation_degrees"] == Augmentation().rotation_degrees
    assert RunFolder(straight).config().augmentation == Augmentation()
    history = RunFolder(straight).model("Model_A").read_history()
    assert history[-1]["loss"] < history[0]["loss"]

    plain = tmp_path / "plain"
    assert cli(*[argument for argument in arguments if argument != "--augment"], "--out", plain).returncode == 0
    assert RunFolder(plain).config().augmentation is None
    assert RunFolder(plain).model("Model_A").read_history()[0]["loss"] != history[0]["loss"]

    interrupted = tmp_path / "interrupted"
    monkeypatch.setenv(FAULT_ENVIRONMENT, "interrupt@epoch-end:Model_A:1")
    assert cli(*arguments, "--out", interrupted).returncode == 130
    monkeypatch.delenv(FAULT_ENVIRONMENT)
    assert cli("experiment", "--resume", interrupted).returncode == 0
    got = RunFolder(interrupted).model("Model_A").load_model().get_weights()
    want = RunFolder(straight).model("Model_A").load_model().get_weights()
    for got_weights, want_weights in zip(got, want, strict=True):
        np.testing.assert_array_equal(got_weights, want_weights)


@pytest.mark.slow
def test_both_trainers_train_the_same_augmented_model() -> None:
    import keras

    from mnist_cnn.core.config import MODEL_VARIANTS
    from mnist_cnn.train.loop import train_model
    from mnist_cnn.train.models import seeded_model

    splits = load_mnist("bundled", limit=320)
    weights = {}
    for trainer in ("fused", "keras"):
        config = ExperimentConfig(
            models=("A",), epochs=1, seed=9, limit=320, trainer=trainer, augmentation=Augmentation()
        ).for_backend(keras.backend.backend())
        model = seeded_model(MODEL_VARIANTS["A"], config)
        train_model(model, splits, config)
        weights[trainer] = model.get_weights()
    for fused, fitted in zip(weights["fused"], weights["keras"], strict=True):
        np.testing.assert_allclose(fused, fitted, rtol=1e-4, atol=1e-5)
    assert jax.devices()  # JAX is what augments, whichever trainer fits.

from pathlib import Path

import keras
import numpy as np
import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig
from mnist_cnn.data.mnist import load_mnist
from mnist_cnn.store.runs import ModelFolder
from mnist_cnn.train.loop import ExperimentProgress, train_model
from mnist_cnn.train.models import seeded_model


@pytest.fixture(scope="module")
def small_splits():
    return load_mnist("bundled", limit=640)


def train_small(splits, epochs: int, seed: int = 7, key: str = "A", trainer: str = "auto"):
    config = ExperimentConfig(
        models=(key,), epochs=epochs, seed=seed, limit=640, steps_per_execution=8, trainer=trainer
    ).for_backend(keras.backend.backend())
    model = seeded_model(MODEL_VARIANTS[key], config)
    return model, train_model(model, splits, config)


def test_training_lowers_the_loss_and_records_every_epoch(small_splits) -> None:
    _, result = train_small(small_splits, epochs=4)
    losses = [row["loss"] for row in result.history]
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(row["seconds"] > 0 for row in result.history)
    assert result.training_seconds >= sum(row["seconds"] for row in result.history) * 0.99
    assert set(result.history[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}


def test_the_same_seed_gives_the_same_history(small_splits) -> None:
    _, first = train_small(small_splits, epochs=2, seed=3)
    _, second = train_small(small_splits, epochs=2, seed=3)
    _, other = train_small(small_splits, epochs=2, seed=4)
    metrics = ("loss", "accuracy", "val_loss", "val_accuracy")
    assert [[row[m] for m in metrics] for row in first.history] == [[row[m] for m in metrics] for row in second.history]
    assert [row["loss"] for row in first.history] != [row["loss"] for row in other.history]


def test_the_fused_trainer_and_model_fit_reach_the_same_weights(small_splits) -> None:
    """Same backend (JAX), same seed, same batches: the two trainers are the same maths."""
    fused_model, fused = train_small(small_splits, epochs=1, trainer="fused")
    keras_model, fitted = train_small(small_splits, epochs=1, trainer="keras")
    for variable, got, want in zip(
        fused_model.trainable_variables, fused_model.get_weights(), keras_model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=variable.path)
    assert fused.history[0]["loss"] == pytest.approx(fitted.history[0]["loss"], rel=1e-4)
    assert fused.history[0]["val_accuracy"] == pytest.approx(fitted.history[0]["val_accuracy"], abs=1e-9)


def test_a_saved_model_reloads_and_predicts_the_same(small_splits, tmp_path: Path) -> None:
    model, _ = train_small(small_splits, epochs=1, key="B")
    folder = ModelFolder(tmp_path / "Model_B")
    folder.save_model(model)
    assert [p.name for p in folder.path.iterdir()] == ["model.keras"]  # No temporary file left behind.
    reloaded = folder.load_model()
    assert reloaded.name == "Model_B" and reloaded.count_params() == 2_185_150
    images = small_splits.X_test[:16]
    np.testing.assert_allclose(reloaded.predict_on_batch(images), model.predict_on_batch(images), rtol=1e-6, atol=1e-7)


def test_eta_covers_models_not_yet_started() -> None:
    progress = ExperimentProgress(plan={"Model_A": (10, 1_000_000), "Model_B": (10, 2_000_000)})
    assert progress.eta_seconds() is None
    for _ in range(5):
        progress.record("Model_A", 3.0)
    # 5 epochs of A left at 3 s, then 10 of B estimated at twice A's cost.
    assert progress.eta_seconds() == pytest.approx(5 * 3.0 + 10 * 6.0)


def test_a_damaged_model_file_gives_a_clear_error(small_splits, tmp_path: Path) -> None:
    import io
    import zipfile

    from mnist_cnn.core.errors import RunFolderError

    model, _ = train_small(small_splits, epochs=1)
    folder = ModelFolder(tmp_path / "Model_A")
    folder.save_model(model)
    good = folder.model_path.read_bytes()
    unknown_class = io.BytesIO()
    with zipfile.ZipFile(unknown_class, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Nope", "config": {}}')
        archive.writestr("metadata.json", "{}")
    corruptions = {
        "truncated": good[: len(good) // 2],
        "flipped bytes": good[:5000] + bytes(255 - byte for byte in good[5000:5400]) + good[5400:],
        "not a zip": b"just text",
        "unknown class": unknown_class.getvalue(),
    }
    for content in corruptions.values():
        folder.model_path.write_bytes(content)
        with pytest.raises(RunFolderError, match="not a readable .keras model"):
            folder.load_model()

"""Training: Keras's model.fit or the fused JAX step, with the callbacks that time it and show where it is.

Both paths call the same Keras callbacks' ``on_epoch_end(epoch, logs)`` with the same logs,
so progress display and checkpoints work the same whichever trainer runs.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TextIO

import keras

from mnist_cnn.config import ExperimentConfig
from mnist_cnn.data import MnistSplits

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
# Validation is a forward pass only; big batches make it cheap without changing its result.
VALIDATION_BATCH_SIZE = 1000


@dataclasses.dataclass
class ExperimentProgress:
    """Tracks finished epochs of every model to print an ETA for the whole experiment.

    Models not yet started are estimated from the measured speed of the ones that ran,
    scaled by parameter count (the big Dense layer carries most of the work).
    """

    plan: dict[str, tuple[int, int]]  # model name -> (epochs, parameter count)
    stream: TextIO = sys.stdout
    seconds: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def record(self, model_name: str, epoch_seconds: float) -> None:
        self.seconds.setdefault(model_name, []).append(epoch_seconds)

    def eta_seconds(self) -> float | None:
        measured = {name: sum(times) / len(times) for name, times in self.seconds.items() if times}
        if not measured:
            return None
        seconds_per_parameter = sum(
            measured[name] / self.plan[name][1] for name in measured
        ) / len(measured)
        remaining = 0.0
        for name, (epochs, parameters) in self.plan.items():
            left = epochs - len(self.seconds.get(name, []))
            per_epoch = measured.get(name, seconds_per_parameter * parameters)
            remaining += max(left, 0) * per_epoch
        return remaining

    def epochs_done(self) -> int:
        return sum(len(times) for times in self.seconds.values())

    def epochs_total(self) -> int:
        return sum(epochs for epochs, _ in self.plan.values())


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time (monotonic clock) to the logs as ``seconds``."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start


class ProgressLine(keras.callbacks.Callback):
    """One line per epoch: metrics, epoch time, and the ETA of the whole experiment."""

    def __init__(self, model_name: str, epochs: int, progress: ExperimentProgress) -> None:
        super().__init__()
        self.model_name = model_name
        self.epochs = epochs
        self.progress = progress

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.progress.record(self.model_name, logs["seconds"])
        done, total = self.progress.epochs_done(), self.progress.epochs_total()
        print(
            f"{self.model_name} epoch {epoch + 1:>3}/{self.epochs}  "
            f"loss {logs.get('loss', float('nan')):.4f}  acc {logs.get('accuracy', float('nan')):.4f}  "
            f"val_loss {logs.get('val_loss', float('nan')):.4f}  val_acc {logs.get('val_accuracy', float('nan')):.4f}  "
            f"{logs['seconds']:.1f}s  | experiment {done}/{total} epochs, "
            f"ETA {format_duration(self.progress.eta_seconds())}",
            file=self.progress.stream,
            flush=True,
        )


@dataclasses.dataclass
class TrainingResult:
    history: list[dict[str, float]]
    training_seconds: float


def train_model(
    model: keras.Model,
    splits: MnistSplits,
    config: ExperimentConfig,
    progress: ExperimentProgress | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainingResult:
    """Train ``model`` on the training split, validating on the held-out split every epoch."""
    callbacks: list[keras.callbacks.Callback] = []
    if progress is not None:
        callbacks.append(ProgressLine(model.name, config.epochs, progress))
    callbacks.extend(extra_callbacks or [])
    start = time.perf_counter()
    if config.resolved_trainer() == "fused":
        history = fit_fused(model, splits, config, callbacks)
    else:
        history = fit_keras(model, splits, config, callbacks)
    training_seconds = time.perf_counter() - start
    return TrainingResult(history=history_rows(history), training_seconds=training_seconds)


def fit_keras(
    model: keras.Model, splits: MnistSplits, config: ExperimentConfig, callbacks: list[keras.callbacks.Callback]
) -> dict[str, list[float]]:
    fit_history = model.fit(
        splits.X_train,
        splits.y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(splits.X_valid, splits.y_valid),
        validation_batch_size=VALIDATION_BATCH_SIZE,
        shuffle=True,
        callbacks=[EpochTimer(), *callbacks],
        verbose=0,
    )
    return fit_history.history


def fit_fused(
    model: keras.Model, splits: MnistSplits, config: ExperimentConfig, callbacks: list[keras.callbacks.Callback]
) -> dict[str, list[float]]:
    from mnist_cnn import fused  # Imports JAX: only on the JAX backend.

    history: dict[str, list[float]] = {}
    for callback in callbacks:
        callback.set_model(model)

    def on_epoch_end(epoch: int, logs: dict[str, float]) -> None:
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)

    fused.train_epochs(model, splits, config, first_epoch=0, on_epoch_end=on_epoch_end)
    return history


def history_rows(history: dict[str, list[float]]) -> list[dict[str, float]]:
    """Keras's column-wise history as one row per epoch, in HISTORY_FIELDS order."""
    epochs = len(history["loss"])
    return [
        {"epoch": index + 1, **{field: float(history[field][index]) for field in HISTORY_FIELDS[1:]}}
        for index in range(epochs)
    ]

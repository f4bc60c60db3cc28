"""Training, one epoch at a time, by either trainer, with timing, progress and checkpoints.

Two trainers yield the same per-epoch logs (loss, accuracy, val_loss, val_accuracy, seconds):
``fused`` (fused.py, compiled JAX step, the default on JAX) and ``keras`` (model.fit, any
backend). Both visit the training images in ``epoch_order(seed, epoch)``: a function of the
seed and epoch only, so an interrupted run that resumes sees the very batches it would
have seen had it run straight through.

Progress: one line per epoch (``ExperimentProgress.report``), and on a terminal, a bar within
each epoch (train/progress.py), cleared before the epoch's line.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import keras

from mnist_cnn.core.config import EVALUATION_BATCH_SIZE, ExperimentConfig, ModelSpec
from mnist_cnn.core.results import HISTORY_FIELDS, HistoryRow
from mnist_cnn.core.text import format_duration
from mnist_cnn.data.mnist import MnistSplits, epoch_order
from mnist_cnn.train.progress import EpochBars, OnImages, epoch_bar, is_terminal, no_bars
from mnist_cnn.train.trainers import TrainerChoice, plan_trainers

EpochLogs = dict[str, float]


@dataclasses.dataclass
class ExperimentProgress:
    """Tracks finished epochs of every model to print an ETA for the whole experiment.

    Models not yet started are estimated from the measured speed of the ones that ran,
    scaled by parameter count (the big Dense layer carries most of the work). The first
    epoch of a model includes compilation, so it is left out once there are others.

    ``bar``: whether each epoch also draws a bar on ``stream`` while it trains; None (the
    default): when ``stream`` is a terminal. The epoch lines are the same either way.
    """

    plan: dict[str, tuple[int, int]]  # model name -> (epochs, parameter count)
    stream: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)
    seconds: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    bar: bool | None = None

    def record(self, model_name: str, epoch_seconds: float) -> None:
        self.seconds.setdefault(model_name, []).append(epoch_seconds)

    def eta_seconds(self) -> float | None:
        measured = {
            name: sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]
            for name, times in self.seconds.items()
            if times
        }
        if not measured:
            return None
        seconds_per_parameter = sum(measured[name] / self.plan[name][1] for name in measured) / len(measured)
        remaining = 0.0
        for name, (epochs, parameters) in self.plan.items():
            left = epochs - len(self.seconds.get(name, []))
            remaining += max(left, 0) * measured.get(name, seconds_per_parameter * parameters)
        return remaining

    def epochs_done(self) -> int:
        return sum(len(times) for times in self.seconds.values())

    def epochs_total(self) -> int:
        return sum(epochs for epochs, _ in self.plan.values())

    def epoch_bars(self, model_name: str, epochs: int) -> EpochBars:
        """The bars of ``model_name``'s epochs (none where the stream is not a terminal)."""
        if not (is_terminal(self.stream) if self.bar is None else self.bar):
            return no_bars
        return lambda epoch, images: epoch_bar(self.stream, f"{model_name} epoch {epoch + 1:>3}/{epochs}", images)

    def report(self, model_name: str, epochs: int, row: dict[str, float]) -> None:
        """One line per epoch: metrics, epoch time, and the ETA of the whole experiment."""
        self.record(model_name, row["seconds"])
        print(
            f"{model_name} epoch {int(row['epoch']):>3}/{epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  {row['seconds']:.1f}s  | "
            f"experiment {self.epochs_done()}/{self.epochs_total()} epochs, ETA {format_duration(self.eta_seconds())}",
            file=self.stream,
            flush=True,
        )


@dataclasses.dataclass
class TrainingResult:
    history: list[HistoryRow]
    training_seconds: float
    resumed_from_epoch: int | None = None


@dataclasses.dataclass
class ResumePoint:
    """Where a model's training continues: epochs done, their history and time spent."""

    epochs_done: int = 0
    history: list[HistoryRow] = dataclasses.field(default_factory=list)
    training_seconds: float = 0.0


def train_model(
    model: keras.Model,
    splits: MnistSplits,
    config: ExperimentConfig,
    progress: ExperimentProgress | None = None,
    resume: ResumePoint | None = None,
    on_epoch_end: Callable[[list[HistoryRow], float], None] | None = None,
    trainer: TrainerChoice | None = None,
) -> TrainingResult:
    """Train ``model`` up to ``config.epochs``, continuing from ``resume`` if given.

    ``model`` is the config's variant of the same name; ``trainer`` is its entry in
    ``plan_trainers(config)`` (planned here when not given). ``on_epoch_end(history,
    training_seconds)`` runs after every epoch, once the model holds that epoch's weights
    (the experiment writes its checkpoint there). With ``progress``, each epoch is also a bar
    on a terminal (``ExperimentProgress.epoch_bars``).
    """
    specs = {spec.name: spec for spec in config.model_specs()}
    if model.name not in specs:
        raise ValueError(f"{model.name} is not one of the config's models ({', '.join(specs)})")
    if trainer is None:
        trainer = next(choice for choice in plan_trainers(config) if choice.model == model.name)
    resume = resume or ResumePoint()
    history = list(resume.history)
    training_seconds = resume.training_seconds
    epochs = fused_epochs if trainer.trainer == "fused" else keras_epochs
    bars = progress.epoch_bars(model.name, config.epochs) if progress is not None else None
    session_start = time.perf_counter()
    for epoch, logs in epochs(model, specs[model.name], splits, config, resume.epochs_done, bars):
        row = {"epoch": epoch + 1, **{field: float(logs[field]) for field in HISTORY_FIELDS[1:]}}
        history.append(row)
        if progress is not None:
            progress.report(model.name, config.epochs, row)
        if on_epoch_end is not None:
            on_epoch_end(history, training_seconds + time.perf_counter() - session_start)
    training_seconds += time.perf_counter() - session_start
    return TrainingResult(
        history=history,
        training_seconds=training_seconds,
        resumed_from_epoch=resume.epochs_done if resume.epochs_done else None,
    )


def fused_epochs(
    model: keras.Model,
    spec: ModelSpec,
    splits: MnistSplits,
    config: ExperimentConfig,
    first_epoch: int,
    bars: EpochBars | None = None,
) -> Iterator[tuple[int, EpochLogs]]:
    from mnist_cnn.train import fused  # Imports JAX: only on the JAX backend.

    return fused.train_epochs(model, spec, splits, config, first_epoch, bars)


class ImagesTrained(keras.callbacks.Callback):
    """Tells ``on_images`` the images of the steps model.fit has finished.

    ``async_safe``: Keras keeps calling the batch-end hooks on its own threads, once each
    step's logs are ready, as it does without this callback (a hook it did not know safe would
    make the training thread wait for every step). The threads may finish out of order: the
    count only grows.
    """

    async_safe = True

    def __init__(self, on_images: OnImages, images: int, batch_size: int) -> None:
        super().__init__()
        self.on_images, self.images, self.batch_size = on_images, images, batch_size
        self.done = 0
        self.lock = threading.Lock()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        with self.lock:
            self.done = max(self.done, min((batch + 1) * self.batch_size, self.images))  # ``batch``: the last step.
            self.on_images(self.done)


def keras_epochs(
    model: keras.Model,
    spec: ModelSpec,
    splits: MnistSplits,
    config: ExperimentConfig,
    first_epoch: int,
    bars: EpochBars | None = None,
) -> Iterator[tuple[int, EpochLogs]]:
    """model.fit, one epoch per call, on the images in ``epoch_order`` (the compiled train
    function is built once and reused across calls); ``bars``: the epochs' bars, told the
    images trained by a callback (it reads nothing of the training)."""
    augmentation = config.augmentation_for(spec)
    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        with (bars or no_bars)(epoch, len(splits.X_train)) as on_images:
            order = epoch_order(config.seed, epoch, len(splits.X_train))
            images = splits.X_train[order]
            if augmentation is not None:
                from mnist_cnn.data.augment import augment_epoch  # Imports JAX: only when augmenting.

                images = augment_epoch(images, config.seed, epoch, augmentation)
            callbacks = [] if on_images is None else [ImagesTrained(on_images, len(images), config.batch_size)]
            fit = model.fit(
                images,
                splits.y_train[order],
                batch_size=config.batch_size,
                initial_epoch=epoch,
                epochs=epoch + 1,
                validation_data=(splits.X_valid, splits.y_valid),
                validation_batch_size=EVALUATION_BATCH_SIZE,
                shuffle=False,
                verbose=0,
                callbacks=callbacks,
            )
        logs: dict[str, Any] = {name: values[-1] for name, values in fit.history.items()}
        logs["seconds"] = time.perf_counter() - start
        yield epoch, logs

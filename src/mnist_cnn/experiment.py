"""The specification's experiment end to end: train, evaluate, compare, predict, write it all down.

``run_experiment(config, run_dir)`` is the one entry point; the CLI's ``experiment`` and
``train`` commands are thin wrappers around it, like flax's ``train_and_evaluate``. Every
file it reads or writes goes through ``runs.RunFolder``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import keras

from mnist_cnn.core.config import PREDICTION_INDICES, ExperimentConfig, TrackingSettings
from mnist_cnn.core.environment import describe_environment
from mnist_cnn.core.errors import ConfigError, RunFolderError
from mnist_cnn.core.faults import fault_point
from mnist_cnn.core.results import CheckpointState, HistoryRow, ModelMetrics, PredictionsOnTestImages
from mnist_cnn.core.text import say
from mnist_cnn.core.version import git_commit, package_version
from mnist_cnn.data.mnist import MnistSplits, load_mnist
from mnist_cnn.report.figures import plot_comparison, plot_learning_curves, plot_predictions, write_comparison
from mnist_cnn.report.html import write_run_report
from mnist_cnn.store.checkpoints import restore_checkpoint, save_checkpoint
from mnist_cnn.store.runs import ModelFolder, RunFolder
from mnist_cnn.track.mlflow_tracking import Tracker
from mnist_cnn.train.evaluation import evaluate_model, predict_test_images, time_inference
from mnist_cnn.train.loop import ExperimentProgress, ResumePoint, TrainingResult, train_model
from mnist_cnn.train.models import seeded_model
from mnist_cnn.train.trainers import TrainerChoice, plan_trainers, trainer_summary


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path,
    stream: TextIO | None = None,
    tracking: TrackingSettings | None = None,
) -> dict[str, ModelMetrics]:
    """Train every model of ``config`` and write the whole run folder; return each model's metrics.

    The config is bound to the backend Keras runs (a clear error if it cannot be). Into a
    folder that already holds a run with the same config, this resumes: finished models
    are kept, the model in training continues from its last checkpoint. With ``tracking``,
    each model is also an MLflow run, its epochs logged as they end (a resume continues it).
    """
    stream = stream or sys.stdout  # Looked up now, not at import: callers may redirect it.
    config = config.for_backend(keras.backend.backend())
    trainers = plan_trainers(config)  # Before anything is written or loaded: a refusal costs nothing.
    splits = load_training_data(config)  # Before the run folder exists: bad data leaves no failed run behind.
    run = RunFolder(run_dir).create()
    tracker = Tracker(tracking, stream, hint=run.path) if tracking else None
    with run.lock():
        previous = run.read_status()  # What the folder held before this command: finished or stopped.
        resumed = continues_a_stopped_run(adopt_run_folder(config, run, trainers), previous)
        run.remove_partial_files()
        run.write_status("running", resumed=resumed)
        try:
            metrics, models = train_all(config, run, splits, stream, trainers, tracker)
        except KeyboardInterrupt:
            run.write_status("interrupted")
            if tracker is not None:  # The store gets what the folder holds; unfinished models: KILLED.
                tracker.sync_run(run)
            raise
        except BaseException as error:
            run.write_status("failed", error=f"{error.__class__.__name__}: {error}")
            if tracker is not None:
                tracker.sync_run(run)
            raise
        run.write_status("finished", resumed=resumed)
        write_report(run, splits, models, stream)
        if tracker is not None:
            tracker.sync_run(run)  # Finished: final metrics, the report and files, status FINISHED.
    return metrics


def write_report(run: RunFolder, splits: MnistSplits, models: dict[str, keras.Model], stream: TextIO) -> None:
    """report.html, once status.json says finished: the report's header shows the run's final state.

    The run is finished whatever happens here (models, metrics, comparison and predictions are
    written), so a report that cannot be written does not fail it: the error is said, with the
    command that writes the report again from the folder.
    """
    try:
        write_run_report(run.path, splits, models)
    except Exception as error:
        say(
            stream,
            f"warning: {run.report_path} could not be written ({error.__class__.__name__}: {error}); "
            f"the run is finished: write its report with 'mnist-cnn report {run.path}'",
        )


def adopt_run_folder(config: ExperimentConfig, run: RunFolder, trainers: list[TrainerChoice]) -> bool:
    """Write config.json for a new run; for an existing one, check it is the same run.

    Returns True when the folder already held this run (so this is a resume).
    """
    if not run.is_run():
        if run.holds_other_files():
            raise RunFolderError(f"{run.path} is not empty and is not a run folder; choose another --out")
        run.write_record(config, run_details(trainers))
        return False
    stored = run.config()
    if stored != config:
        differences = ", ".join(
            f"{name} {old!r} -> {new!r}"
            for name, old in stored.to_dict().items()
            if (new := config.to_dict()[name]) != old
        )
        raise RunFolderError(
            f"{run.path} holds a run with other settings ({differences}); "
            f"continue it with 'mnist-cnn experiment --resume {run.path}' or choose another --out"
        )
    return True


def continues_a_stopped_run(held: bool, previous: dict[str, Any]) -> bool:
    """Whether this command resumes the run: the folder ``held`` it, and it had stopped before the end.

    A run given again once finished (``make smoke`` twice) trains nothing and writes its reports
    again; it keeps the mark it had (resumed if it once was) rather than saying it was resumed
    now. It still goes through the whole run, so that ``--track`` logs it.
    """
    if not held:
        return False
    if previous.get("state") == "finished":
        return bool(previous.get("resumed"))
    return True


def run_details(trainers: list[TrainerChoice]) -> dict[str, Any]:
    """What config.json holds beside the settings: the software and hardware that ran them."""
    return {
        "run_id": uuid.uuid4().hex,  # Names the run wherever its folder goes (tracking keys its runs by it).
        "mnist_cnn_version": package_version(),
        "mnist_cnn_commit": git_commit(),
        "trainer_used": trainer_summary(trainers),
        "trainers": {choice.model: {"trainer": choice.trainer, "reason": choice.reason} for choice in trainers},
        "environment": describe_environment(),
    }


def load_training_data(config: ExperimentConfig) -> MnistSplits:
    """The config's MNIST split; a batch larger than the training set is refused here."""
    splits = load_mnist(config.data, config.validation_size, config.limit)
    if config.batch_size > len(splits.X_train):
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the {len(splits.X_train)} training images; "
            "use a smaller --batch-size or a larger --limit"
        )
    return splits


def train_all(
    config: ExperimentConfig,
    run: RunFolder,
    splits: MnistSplits,
    stream: TextIO,
    trainers: list[TrainerChoice],
    tracker: Tracker | None = None,
) -> tuple[dict[str, ModelMetrics], dict[str, keras.Model]]:
    """Train, compare and predict; return each model's metrics, and the models for the report."""
    limited = f" (the first {config.limit} of each: --limit {config.limit})" if config.limit else ""
    say(stream, f"data: {splits.source}; {splits.describe_sizes()}{limited}; run folder {run.path}")
    for choice in trainers:
        say(stream, choice.describe())
    trainer_of = {choice.model: choice for choice in trainers}
    models = {spec.name: seeded_model(spec, config) for spec in config.model_specs()}
    progress = ExperimentProgress(
        plan={name: (config.epochs, model.count_params()) for name, model in models.items()}, stream=stream
    )
    metrics: dict[str, ModelMetrics] = {}
    histories: dict[str, list[HistoryRow]] = {}
    answers: dict[str, PredictionsOnTestImages] = {}
    for name in list(models):
        folder = run.model(name)
        if folder.is_finished() or folder.has_results():
            metrics[name], histories[name] = folder.read_metrics(), folder.read_history()
            if folder.is_finished():
                say(stream, f"{name}: already finished in {folder.path}, kept")
                models[name] = folder.load_model()
                answers[name] = model_predictions(models[name], splits, folder, reuse=True)
            else:  # A seed published unfinished: the results are here, the model file was left out.
                say(stream, f"{name}: already finished, kept from its results in {folder.path} (no model file)")
                del models[name]
                answers[name] = folder.read_predictions()
            for row in histories[name]:
                progress.record(name, row["seconds"])
            continue
        on_epoch = None if tracker is None else functools.partial(tracker.log_epochs, run, name)
        result = train_with_checkpoints(
            models[name], trainer_of[name], splits, config, folder, progress, stream, on_epoch
        )
        metrics[name], answers[name] = finish_model(models[name], result, splits, folder)
        histories[name] = result.history

    fault_point("reports")
    if len(metrics) > 1:
        plot_comparison(histories, run.comparison_figure_path)
    table = write_comparison(metrics, run, header=comparison_header(config, splits, metrics, trainers))
    predictions = write_predictions(answers, splits, run)
    # report.html comes after status.json says finished (run_experiment), so its header says so.
    say(stream, summary_text(table, predictions, run.path, run.report_path))
    return metrics, models


def train_with_checkpoints(
    model: keras.Model,
    trainer: TrainerChoice,
    splits: MnistSplits,
    config: ExperimentConfig,
    folder: ModelFolder,
    progress: ExperimentProgress,
    stream: TextIO,
    on_epoch: Callable[[list[HistoryRow]], None] | None = None,
) -> TrainingResult:
    """Train one model, checkpointing every epoch; continue from the checkpoint if there is one.

    ``on_epoch(history)`` (tracking) hears of an epoch once its checkpoint is on disk, so a
    tracking store never holds an epoch the run folder could lose: a resume logs only the
    epochs after it.
    """
    resume = None
    if folder.has_checkpoint():
        state = restore_checkpoint(folder.checkpoint_path, model)
        resume = ResumePoint(
            epochs_done=state.epochs_done, history=state.history, training_seconds=state.training_seconds
        )
        for row in resume.history:
            progress.record(model.name, row["seconds"])
        say(stream, f"{model.name}: resuming after epoch {resume.epochs_done} from {folder.checkpoint_path}")

    def save(history: list[HistoryRow], training_seconds: float) -> None:
        state = CheckpointState(
            epochs_done=len(history), history=history, training_seconds=training_seconds, seed=config.seed
        )
        save_checkpoint(folder.checkpoint_path, model, state)
        fault_point(f"epoch-end:{model.name}:{len(history)}")  # Checkpoint written, epoch not yet tracked.
        if on_epoch is not None:
            on_epoch(history)

    return train_model(model, splits, config, progress, resume=resume, on_epoch_end=save, trainer=trainer)


def model_predictions(
    model: keras.Model, splits: MnistSplits, folder: ModelFolder, reuse: bool = False
) -> PredictionsOnTestImages:
    """The model's answers for X_test[0..2], written into its folder: they outlive a published
    copy that leaves the model file out. ``reuse``: a finished model's, when already written."""
    if reuse and folder.predictions_path.is_file():
        return folder.read_predictions()
    answers = predict_test_images({folder.name: model}, splits, PREDICTION_INDICES)
    folder.write_predictions(answers)
    return answers


def finish_model(
    model: keras.Model, result: TrainingResult, splits: MnistSplits, folder: ModelFolder
) -> tuple[ModelMetrics, PredictionsOnTestImages]:
    """Evaluate a trained model and write its folder: model, history, curves, predictions, metrics."""
    folder.save_model(model)
    folder.write_history(result.history)
    plot_learning_curves(result.history, folder)
    answers = model_predictions(model, splits, folder)
    fault_point(f"model-saved:{model.name}")
    metrics = ModelMetrics.from_training(
        model_name=model.name,
        parameters=int(model.count_params()),
        history=result.history,
        training_seconds=result.training_seconds,
        resumed_from_epoch=result.resumed_from_epoch,
        test=evaluate_model(model, splits.X_test, splits.y_test),
        inference=time_inference(model, splits.X_test),
    )
    folder.write_metrics(metrics)  # Written last: its presence marks the model finished.
    folder.remove_checkpoint()
    return metrics, answers


def write_predictions(
    answers: dict[str, PredictionsOnTestImages], splits: MnistSplits, run: RunFolder
) -> PredictionsOnTestImages:
    """The specification's last step: X_test[0], X_test[1], X_test[2] and every model's digit,
    gathered from each model's own answers."""
    result = PredictionsOnTestImages(
        indices=list(PREDICTION_INDICES),
        true_labels=[int(splits.y_test[index]) for index in PREDICTION_INDICES],
        predictions={name: answer.predictions[name] for name, answer in answers.items()},
    )
    run.write_predictions(result)
    plot_predictions(splits.X_test[list(PREDICTION_INDICES)], result, run.predictions_figure_path)
    return result


def comparison_header(
    config: ExperimentConfig, splits: MnistSplits, metrics: dict[str, ModelMetrics], trainers: list[TrainerChoice]
) -> str:
    resumed = [
        f"{name} resumed after epoch {values.resumed_from_epoch}"
        for name, values in metrics.items()
        if values.resumed_from_epoch
    ]
    note = (
        f"This run was interrupted and resumed ({'; '.join(resumed)}); "
        "its times include the time before the interruption.\n\n"
        if resumed
        else ""
    )
    return note + (
        f"Backend {config.backend} ({trainer_summary(trainers)} trainer), {config.epochs} epochs, "
        f"batch {config.batch_size}, {config.optimizer} (learning rate {config.learning_rate}), seed {config.seed}; "
        f"{splits.describe_sizes()}.\n\n"
    )


def summary_text(table_markdown: str, predictions: PredictionsOnTestImages, run_dir: Path, report: Path) -> str:
    lines = ["", "Results", table_markdown.rstrip(), "", "Predictions"]
    for position, index in enumerate(predictions.indices):
        answers = ", ".join(
            f"{name} {answers[position].digit} ({answers[position].probability:.1%})"
            for name, answers in predictions.predictions.items()
        )
        lines.append(f"  X_test[{index}] (true {predictions.true_labels[position]}): {answers}")
    lines.append(f"\nEverything is in {run_dir}; open {report}")
    return "\n".join(lines)


# ---------------------------------------------------------------- using a finished run


@dataclasses.dataclass(frozen=True)
class RunEvaluation:
    """``mnist-cnn evaluate``: each saved model's test loss and accuracy on the run's own test set."""

    results: dict[str, dict[str, float]]
    test_images: int


def evaluate_run(run_dir: str | Path, data: str | None = None) -> RunEvaluation:
    """Evaluate a run's saved models on the test set it was scored on (so metrics.json is reproduced).

    ``data`` names another MNIST source; the run's ``--limit`` still applies, as it did in training.
    """
    run = RunFolder.existing(run_dir)
    config = run.config()
    models = run.load_models()
    splits = load_mnist(data or config.data, config.validation_size, config.limit)
    results = {name: evaluate_model(model, splits.X_test, splits.y_test) for name, model in models.items()}
    return RunEvaluation(results=results, test_images=len(splits.X_test))


def predict_run_test_images(
    run_dir: str | Path, indices: list[int], data: str | None = None
) -> PredictionsOnTestImages:
    """Every saved model's answer for X_test[i], i in ``indices``: any of the 10,000, whatever the run's limit."""
    run = RunFolder.existing(run_dir)
    config = run.config()
    models = run.load_models()
    splits = load_mnist(data or config.data, config.validation_size)
    return predict_test_images(models, splits, indices)

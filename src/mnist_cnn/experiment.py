"""The specification's experiment end to end: train, evaluate, compare, predict, write it all down.

``run_experiment(config, run_dir)`` is the one entry point; the CLI's ``experiment`` and
``train`` commands are thin wrappers around it, like flax's ``train_and_evaluate``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any, TextIO

import keras
import numpy as np

from mnist_cnn import __version__
from mnist_cnn.config import ExperimentConfig, ModelSpec
from mnist_cnn.data import MnistSplits, load_mnist
from mnist_cnn.environment import describe_environment
from mnist_cnn.errors import RunFolderError, UserError
from mnist_cnn.evaluation import describe_prediction, evaluate_model, predict_images, time_inference
from mnist_cnn.models import build_variant, compile_model
from mnist_cnn.reporting import plot_comparison, plot_learning_curves, plot_predictions, write_comparison
from mnist_cnn.checkpoints import CHECKPOINT_FILE, restore_checkpoint, save_checkpoint
from mnist_cnn.runs import (
    CONFIG_FILE,
    LOCK_FILE,
    RunLock,
    atomic_path,
    prepare_run_dir,
    read_csv,
    read_json,
    remove_partial_files,
    stored_config,
    write_csv,
    write_json,
    write_status,
)
from mnist_cnn.training import ExperimentProgress, ResumePoint, TrainingResult, train_model

PREDICTION_INDICES = (0, 1, 2)
MODEL_FILE = "model.keras"


def run_experiment(config: ExperimentConfig, run_dir: Path, stream: TextIO = sys.stdout) -> dict[str, Any]:
    """Train every model of ``config`` and write the whole run folder; return the metrics.

    Into a folder that already holds a run with the same config, this resumes: finished
    models are kept, the model in training continues from its last checkpoint.
    """
    prepare_run_dir(run_dir)
    with RunLock(run_dir):
        resumed = adopt_run_folder(config, run_dir)
        remove_partial_files(run_dir)
        write_status(run_dir, "running", resumed=resumed)
        try:
            metrics = train_all(config, run_dir, stream)
        except KeyboardInterrupt:
            write_status(run_dir, "interrupted")
            raise
        except BaseException as error:
            write_status(run_dir, "failed", error=f"{error.__class__.__name__}: {error}")
            raise
        write_status(run_dir, "finished", resumed=resumed)
    return metrics


def adopt_run_folder(config: ExperimentConfig, run_dir: Path) -> bool:
    """Write config.json for a new run; for an existing one, check it is the same run.

    Returns True when the folder already held this run (so this is a resume).
    """
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        if any(path.name != LOCK_FILE for path in run_dir.iterdir()):
            raise RunFolderError(f"{run_dir} is not empty and is not a run folder; choose another --out")
        write_json(config_path, run_record(config))
        return False
    stored = stored_config(run_dir)
    if stored != config:
        differences = ", ".join(
            f"{name} {old!r} -> {new!r}"
            for name, old in stored.to_dict().items()
            if (new := config.to_dict()[name]) != old
        )
        raise RunFolderError(
            f"{run_dir} holds a run with other settings ({differences}); "
            f"continue it with 'mnist-cnn experiment --resume {run_dir}' or choose another --out"
        )
    return True


def train_all(config: ExperimentConfig, run_dir: Path, stream: TextIO) -> dict[str, Any]:
    splits = load_mnist(config.data, config.validation_size, config.limit)
    if config.batch_size > len(splits.X_train):
        raise UserError(
            f"batch size {config.batch_size} is larger than the {len(splits.X_train)} training images; "
            "use a smaller --batch-size or a larger --limit"
        )
    print(f"data: {splits.source}; sizes {splits.sizes()}; run folder {run_dir}", file=stream, flush=True)
    specs = config.model_specs()
    models = {spec.name: seeded_model(spec, config) for spec in specs}
    progress = ExperimentProgress(
        plan={name: (config.epochs, model.count_params()) for name, model in models.items()}, stream=stream
    )
    metrics: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[dict[str, float]]] = {}
    for name in list(models):
        folder = run_dir / name
        if is_finished(folder):
            print(f"{name}: already finished in {folder}, kept", file=stream, flush=True)
            models[name] = load_model(folder / MODEL_FILE)
            metrics[name] = read_json(folder / "metrics.json")
            histories[name] = [history_row(row) for row in read_csv(folder / "history.csv")]
            for row in histories[name]:
                progress.record(name, row["seconds"])
            continue
        result = train_with_checkpoints(models[name], splits, config, folder, progress, stream)
        metrics[name] = finish_model(models[name], result, splits, config, folder)
        histories[name] = result.history

    if len(models) > 1:
        plot_comparison(histories, run_dir / "comparison.png")
    table = write_comparison(metrics, run_dir, header=comparison_header(config, splits, metrics))
    predictions = write_predictions(models, splits, run_dir)
    print(summary_text(table, predictions, run_dir), file=stream, flush=True)
    return metrics


def history_row(row: dict[str, Any]) -> dict[str, float]:
    """A history row read back from CSV or JSON: the epoch an int, the rest floats."""
    return {key: int(float(value)) if key == "epoch" else float(value) for key, value in row.items()}


def is_finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() and (folder / MODEL_FILE).is_file() and (folder / "history.csv").is_file()


def train_with_checkpoints(
    model: keras.Model, splits: MnistSplits, config: ExperimentConfig, folder: Path, progress: ExperimentProgress, stream: TextIO
) -> TrainingResult:
    """Train one model, checkpointing every epoch; continue from the checkpoint if there is one."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / CHECKPOINT_FILE
    resume = None
    if checkpoint.is_file():
        state = restore_checkpoint(checkpoint, model)
        resume = ResumePoint(
            epochs_done=int(state["epochs_done"]),
            history=[history_row(row) for row in state["history"]],
            training_seconds=float(state["training_seconds"]),
        )
        for row in resume.history:
            progress.record(model.name, row["seconds"])
        print(f"{model.name}: resuming after epoch {resume.epochs_done} from {checkpoint}", file=stream, flush=True)

    def save(history: list[dict[str, float]], training_seconds: float) -> None:
        state = {"epochs_done": len(history), "history": history, "training_seconds": training_seconds, "seed": config.seed}
        save_checkpoint(checkpoint, model, state)

    return train_model(model, splits, config, progress, resume=resume, on_epoch_end=save)


def run_record(config: ExperimentConfig) -> dict[str, Any]:
    """What config.json holds: the settings, and the software and hardware that ran them."""
    return {
        "mnist_cnn_version": __version__,
        "config": config.to_dict(),
        "trainer_used": config.resolved_trainer(),
        "environment": describe_environment(),
    }


def seeded_model(spec: ModelSpec, config: ExperimentConfig) -> keras.Model:
    """Build and compile a variant with weights drawn from the run's seed."""
    keras.utils.set_random_seed(config.seed)
    return compile_model(build_variant(spec), config)


def finish_model(
    model: keras.Model, result: TrainingResult, splits: MnistSplits, config: ExperimentConfig, folder: Path
) -> dict[str, Any]:
    """Evaluate a trained model and write its folder: model, history, metrics, curves."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, folder / MODEL_FILE)
    write_csv(folder / "history.csv", result.history)
    plot_learning_curves(result.history, model.name, folder)
    metrics = model_metrics(model, result, splits)
    write_json(folder / "metrics.json", metrics)  # Written last: its presence marks the model finished.
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    return metrics


def model_metrics(model: keras.Model, result: TrainingResult, splits: MnistSplits) -> dict[str, Any]:
    history = result.history
    epoch_seconds = [row["seconds"] for row in history]
    best = max(history, key=lambda row: row["val_accuracy"])
    return {
        "model": model.name,
        "parameters": int(model.count_params()),
        **evaluate_model(model, splits.X_test, splits.y_test),
        "best_val_accuracy": best["val_accuracy"],
        "best_val_epoch": int(best["epoch"]),
        "epochs": len(history),
        "training_seconds": result.training_seconds,
        "seconds_per_epoch": epoch_seconds,
        "seconds_per_epoch_median": statistics.median(epoch_seconds),
        "first_epoch_seconds": epoch_seconds[0],
        "resumed_from_epoch": result.resumed_from_epoch,
        **time_inference(model, splits.X_test),
    }


def save_model(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as temporary:
        model.save(temporary)


def load_model(path: Path) -> keras.Model:
    if not path.is_file():
        raise RunFolderError(f"{path} is missing; the run did not finish this model (train it again)")
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # Keras raises many kinds for a damaged zip or config.
        raise RunFolderError(f"{path} is not a readable .keras model ({error.__class__.__name__}); retrain it") from None


def load_run_models(run_dir: Path) -> dict[str, keras.Model]:
    """Every trained model of a run folder, by name, in the order the run trained them."""
    config = stored_config(run_dir)
    found = {spec.name: run_dir / spec.name / MODEL_FILE for spec in config.model_specs()}
    available = {name: path for name, path in found.items() if path.is_file()}
    if not available:
        raise RunFolderError(f"{run_dir} holds no trained model yet ({', '.join(found)} missing); finish or resume the run")
    return {name: load_model(path) for name, path in available.items()}


def predict_test_images(
    models: dict[str, keras.Model], splits: MnistSplits, indices: tuple[int, ...] | list[int]
) -> dict[str, Any]:
    """Every model's answer for X_test[i] for each i in ``indices``."""
    for index in indices:
        if not 0 <= index < len(splits.X_test):
            raise ValueError(f"test index {index} is out of range: the test set has {len(splits.X_test)} images (0-{len(splits.X_test) - 1})")
    images = splits.X_test[list(indices)]
    answers = {
        name: [describe_prediction(row) for row in predict_images(model, images)] for name, model in models.items()
    }
    return {
        "indices": list(indices),
        "true_labels": [int(splits.y_test[index]) for index in indices],
        "predictions": answers,
    }


def write_predictions(models: dict[str, keras.Model], splits: MnistSplits, run_dir: Path) -> dict[str, Any]:
    result = predict_test_images(models, splits, PREDICTION_INDICES)
    write_json(run_dir / "predictions.json", result)
    plot_predictions(
        splits.X_test[list(PREDICTION_INDICES)],
        np.asarray(result["true_labels"]),
        list(PREDICTION_INDICES),
        result["predictions"],
        run_dir / "predictions.png",
    )
    return result


def comparison_header(config: ExperimentConfig, splits: MnistSplits, metrics: dict[str, dict[str, Any]]) -> str:
    sizes = splits.sizes()
    resumed = [
        f"{name} resumed after epoch {values['resumed_from_epoch']}"
        for name, values in metrics.items()
        if values.get("resumed_from_epoch")
    ]
    note = f"This run was interrupted and resumed ({'; '.join(resumed)}); its times include the time before the interruption.\n\n" if resumed else ""
    return note + (
        f"Backend {config.backend} ({config.resolved_trainer()} trainer), {config.epochs} epochs, batch {config.batch_size}, "
        f"{config.optimizer} (learning rate {config.learning_rate}), seed {config.seed}; "
        f"{sizes['train']} training, {sizes['valid']} validation, {sizes['test']} test images.\n\n"
    )


def summary_text(table_markdown: str, predictions: dict[str, Any], run_dir: Path) -> str:
    lines = ["", "Results", table_markdown.rstrip(), "", "Predictions"]
    for position, index in enumerate(predictions["indices"]):
        answers = ", ".join(
            f"{name} {answers[position]['digit']} ({answers[position]['probability']:.1%})"
            for name, answers in predictions["predictions"].items()
        )
        lines.append(f"  X_test[{index}] (true {predictions['true_labels'][position]}): {answers}")
    lines.append(f"\nEverything is in {run_dir}")
    return "\n".join(lines)


__all__ = ["run_experiment", "load_run_models", "predict_test_images"]

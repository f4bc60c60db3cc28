"""Run folders and model folders: paths, typed records, status, model save/load.

``RunFolder`` and ``ModelFolder`` own every file of a run (names in ``layout``); the rest of
the package (training, evaluation, reporting, the CLI, the server) asks them for paths and
records. Every file is written atomically (``core.files``). This module imports no Keras, JAX
or matplotlib at import time: the server loads models through it without pulling in the
training stack.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_cnn.core.config import ExperimentConfig
from mnist_cnn.core.errors import ConfigError, RunFolderError, UserError
from mnist_cnn.core.files import (
    TEMPORARY_MARK,
    atomic_path,
    path_sha256,
    read_csv,
    read_json,
    read_record,
    write_csv,
    write_json,
    write_text,
)
from mnist_cnn.core.results import (
    HISTORY_FIELDS,
    Comparison,
    HistoryRow,
    ModelMetrics,
    PredictionsOnTestImages,
    history_row,
)
from mnist_cnn.store.layout import (
    CHECKPOINT_FILE,
    COMPARISON_FIGURE,
    COMPARISON_JSON,
    COMPARISON_MARKDOWN,
    CONFIG_FILE,
    EXPORT_ARTIFACT_SUFFIXES,
    EXPORT_MANIFEST_JSON,
    EXPORTS_FOLDER,
    HISTORY_FILE,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FIGURE,
    PREDICTIONS_JSON,
    REPORT_FILE,
    SEED_FOLDER_PREFIX,
    STATUS_FILE,
    SWEEP_FILE,
    TRIAL_FILE,
    WEB_SITE_FOLDER,
)
from mnist_cnn.store.lock import RunLock

if TYPE_CHECKING:
    import keras

    from mnist_cnn.predict.inference import OnnxModelFile


def fresh_path(root: Path, prefix: str) -> Path:
    """``root/<prefix><timestamp>`` that does not exist yet (``-2``, ``-3``... if two start in one second)."""
    base = root / f"{prefix}{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate


# What keras.saving.load_model raises for a damaged .keras file: ValueError for a file that is
# not a zip (and JSONDecodeError, a ValueError, for a broken config), KeyError for a zip
# without config.json, BadZipFile for a corrupted member, TypeError for a config naming a
# class Keras does not know, OSError and EOFError from the file and h5py.
MODEL_FILE_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)


# ---------------------------------------------------------------- a model's folder


class ModelFolder:
    """``RUN/Model_X/``: one trained (or training) model and everything about it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    def curve_path(self, metric: str) -> Path:
        """The figure of ``metric`` (loss, accuracy) against epoch."""
        return self.path / f"{metric}.png"

    @property
    def predictions_path(self) -> Path:
        """This model's own answers for X_test[0..2]: what the run's predictions.json needs of it
        when its model file is not there (a seed published unfinished, `mnist-cnn publish`)."""
        return self.path / PREDICTIONS_JSON

    def is_finished(self) -> bool:
        """metrics.json is written last, so with the model and history it marks a finished model."""
        return self.metrics_path.is_file() and self.model_path.is_file() and self.history_path.is_file()

    def has_results(self) -> bool:
        """Finished, its model file perhaps left out (published): metrics, history and its predictions."""
        return self.metrics_path.is_file() and self.history_path.is_file() and self.predictions_path.is_file()

    def write_predictions(self, predictions: PredictionsOnTestImages) -> None:
        write_json(self.predictions_path, predictions.to_json())

    def read_predictions(self) -> PredictionsOnTestImages:
        return read_record(self.predictions_path, PredictionsOnTestImages.from_json)

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def remove_checkpoint(self) -> None:
        self.checkpoint_path.unlink(missing_ok=True)

    def save_model(self, model: keras.Model) -> None:
        with atomic_path(self.model_path) as temporary:
            model.save(temporary)

    def load_model(self) -> keras.Model:
        import keras  # Deferred: importing keras fixes the backend, which the CLI chooses first.

        if not self.model_path.is_file():
            raise RunFolderError(f"{self.model_path} is missing; the run did not finish this model (train it again)")
        try:
            return keras.saving.load_model(self.model_path)
        except MODEL_FILE_ERRORS as error:
            raise RunFolderError(
                f"{self.model_path} is not a readable .keras model ({error.__class__.__name__}); retrain it"
            ) from None

    def write_history(self, history: list[HistoryRow]) -> None:
        write_csv(self.history_path, [{field: row[field] for field in HISTORY_FIELDS} for row in history])

    def read_history(self) -> list[HistoryRow]:
        try:
            return [history_row(row) for row in read_csv(self.history_path)]
        except ValueError as error:
            raise RunFolderError(f"{self.history_path} is malformed ({error}); the run folder is damaged") from None

    def write_metrics(self, metrics: ModelMetrics) -> None:
        write_json(self.metrics_path, metrics.to_json())

    def read_metrics(self) -> ModelMetrics:
        return read_record(self.metrics_path, ModelMetrics.from_json)


# ---------------------------------------------------------------- a folder of exported models


class ExportFolder:
    """A folder of a run's models exported in one format (``RUN/exports/onnx/`` or ``--out``).

    One artifact per model, named after it (a file, or a folder for a SavedModel), and
    manifest.json, written last: a folder whose manifest is there holds a finished export.
    """

    def __init__(self, path: str | Path, export_format: str) -> None:
        if export_format not in EXPORT_ARTIFACT_SUFFIXES:
            raise ConfigError(
                f"unknown export format {export_format!r}: choose from {', '.join(EXPORT_ARTIFACT_SUFFIXES)}"
            )
        self.path = Path(path)
        self.format = export_format

    def __repr__(self) -> str:
        return f"ExportFolder({str(self.path)!r}, {self.format!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / EXPORT_MANIFEST_JSON

    def artifact_name(self, model_name: str) -> str:
        """``Model_A.onnx``, ``Model_A_saved_model``, ``Model_A.tflite``: the model's name, the format's ending."""
        return f"{model_name}{EXPORT_ARTIFACT_SUFFIXES[self.format]}"

    def artifact_path(self, model_name: str) -> Path:
        return self.path / self.artifact_name(model_name)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.manifest_path, manifest)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest of a finished export (a clear error when there is none, or it is damaged)."""
        if not self.manifest_path.is_file():
            raise RunFolderError(
                f"{self.path} holds no finished {self.format} export (no {EXPORT_MANIFEST_JSON}); "
                f"run 'mnist-cnn export RUN_DIR --format {self.format}'"
            )
        manifest = read_json(self.manifest_path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
            raise RunFolderError(f"{self.manifest_path} is not an mnist-cnn export manifest; export again")
        return manifest


@dataclasses.dataclass(frozen=True)
class ExportState:
    """What a run's export in one format holds against the run's trained models.

    ``current``: each model whose artifact is there and was made from the model.keras the run
    holds now (its manifest entry, by model name). ``missing``: models without an entry or an
    artifact. ``stale``: models trained again since they were exported (the manifest records the
    sha256 of the model.keras each export was made from; an entry without one, from an export
    older than that record, cannot be checked and counts as current).
    """

    folder: ExportFolder
    current: dict[str, dict[str, Any]]
    missing: list[str]
    stale: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.stale

    def artifact(self, model_name: str) -> Path:
        """A current model's artifact (its manifest's ``file`` taken as a bare name: never a path out of the folder)."""
        return self.folder.path / Path(self.current[model_name]["file"]).name

    def problem(self, run_path: Path) -> str | None:
        """One line saying what is missing or out of date and the command that fixes it; None when complete."""
        command = f"run 'mnist-cnn export {run_path} --format {self.folder.format}'"
        if self.stale:
            return (
                f"the {self.folder.format} export of {', '.join(self.stale)} was made from an earlier {MODEL_FILE} "
                f"(trained again since): {command} again"
            )
        if self.missing:
            paths = ", ".join(str(self.folder.artifact_path(name)) for name in self.missing)
            verb = "is" if len(self.missing) == 1 else "are"
            return f"{paths} {verb} missing from the export; {command}"
        return None


# ---------------------------------------------------------------- the run folder


class RunFolder:
    """``runs/<timestamp>/``: a run's settings, state, models and reports."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def new(cls, root: str | Path = "runs") -> RunFolder:
        """A fresh ``runs/<timestamp>`` folder (with a suffix if two runs start in the same second)."""
        return cls(fresh_path(Path(root), ""))

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        """A folder that must already be a run (it has a config.json), checked before anything reads it."""
        run = cls(path)
        if not run.path.exists():
            raise RunFolderError(
                f"run folder {run.path} does not exist; pass a folder written by 'mnist-cnn experiment'"
            )
        if not run.path.is_dir():
            raise RunFolderError(f"{run.path} is not a folder; pass a run folder, as written by 'mnist-cnn experiment'")
        if not run.config_path.is_file() and (run.path / SWEEP_FILE).is_file():
            raise RunFolderError(
                f"{run.path} is a sweep folder (from 'mnist-cnn compare') holding one run per seed; "
                f"give one seed's run folder, such as {seed_run_to_suggest(run.path)}"
            )
        if not run.config_path.is_file():
            raise RunFolderError(
                f"{run.path} is not a run folder (no {CONFIG_FILE}); pass a folder written by 'mnist-cnn experiment'"
            )
        return run

    def create(self) -> RunFolder:
        """Make the folder (and its parents); a clear error when it cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(
                f"cannot create run folder {self.path}: {error.strerror}; choose another --out"
            ) from None
        if not os.access(self.path, os.W_OK):
            raise RunFolderError(f"run folder {self.path} is not writable; choose another --out")
        return self

    # Paths of the run-level files.
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def comparison_figure_path(self) -> Path:
        return self.path / COMPARISON_FIGURE

    @property
    def predictions_figure_path(self) -> Path:
        return self.path / PREDICTIONS_FIGURE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    def model(self, name: str) -> ModelFolder:
        return ModelFolder(self.path / name)

    def export_folder(self, export_format: str) -> Path:
        """``RUN/exports/<format>/``: where ``mnist-cnn export`` puts the run's models in that format."""
        return self.exports(export_format).path

    def exports(self, export_format: str) -> ExportFolder:
        """The run's own export folder for ``export_format``, with its artifact and manifest paths."""
        return ExportFolder(self.path / EXPORTS_FOLDER / export_format, export_format)

    def site_folder(self) -> Path:
        """``RUN/exports/web/``: the draw-a-digit page as a static site (``export --format web``)."""
        return self.path / EXPORTS_FOLDER / WEB_SITE_FOLDER

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def holds_other_files(self) -> bool:
        """True when the folder has anything but a lock (or a sweep trial's log): not safe for a new run."""
        return any(path.name not in (LOCK_FILE, LOG_FILE, TRIAL_FILE) for path in self.path.iterdir())

    # config.json
    def write_record(self, config: ExperimentConfig, details: dict[str, Any]) -> None:
        """config.json: the settings, plus the software and hardware that ran them."""
        write_json(self.config_path, {**details, "config": config.to_dict()})

    def read_record(self) -> dict[str, Any]:
        record = read_json(self.config_path)
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise RunFolderError(f"{self.config_path} is not an mnist-cnn run config; the run folder is damaged")
        return record

    def identity(self) -> str:
        """What names this run wherever its folder is moved or copied: config.json's ``run_id``.

        Runs written before run ids existed are named by the hash of their config.json, which
        holds the seed, settings and environment, and is never rewritten (a resume keeps it).
        """
        record = self.read_record()
        if isinstance(record.get("run_id"), str):
            return record["run_id"]
        return content_identity(self.config_path)

    def config(self) -> ExperimentConfig:
        """The config this run was made with."""
        record = self.read_record()  # Its errors name config.json already.
        try:
            return ExperimentConfig.from_dict(record["config"])
        except UserError as error:
            raise RunFolderError(f"{self.config_path}: {error}") from None
        except TypeError as error:  # A setting of the wrong type: the dataclass refuses it.
            raise RunFolderError(f"{self.config_path}: {error}; the run folder is damaged") from None

    # status.json and run.lock
    def write_status(self, state: str, **details: Any) -> None:
        """Record the run's state: running, interrupted, finished or failed."""
        record = {"state": state, "updated": datetime.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid()}
        write_json(self.status_path, {**record, **details})

    def read_status(self) -> dict[str, Any]:
        return read_json(self.status_path) if self.status_path.is_file() else {}

    def lock(self) -> RunLock:
        return RunLock(self.path / LOCK_FILE)

    def remove_partial_files(self) -> list[Path]:
        """Delete what killed writers left behind (never a finished file)."""
        leftovers = [path for path in self.path.rglob(f".*{TEMPORARY_MARK}*") if path.is_file()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    # Models
    def model_folders(self) -> list[ModelFolder]:
        """The folders of every model the run's config names, in training order."""
        return [self.model(spec.name) for spec in self.config().model_specs()]

    def trained_model_folders(self) -> list[ModelFolder]:
        """The folders of the run's models that have been trained (a clear error if none)."""
        folders = self.model_folders()
        available = [folder for folder in folders if folder.model_path.is_file()]
        if not available:
            names = ", ".join(folder.name for folder in folders)
            raise RunFolderError(f"{self.path} holds no trained model yet ({names} missing); finish or resume the run")
        return available

    def load_models(self) -> dict[str, keras.Model]:
        """Every trained model of the run, by name, in the order the run trained them."""
        return {folder.name: folder.load_model() for folder in self.trained_model_folders()}

    # Exports (`mnist-cnn export`)
    def export_state(self, export_format: str) -> ExportState:
        """Which trained models the run's own export in ``export_format`` holds, current or stale
        (ExportState); a folder without a manifest holds none."""
        folder = self.exports(export_format)
        entries = folder.read_manifest()["models"] if folder.manifest_path.is_file() else {}
        current, missing, stale = {}, [], []
        for model in self.trained_model_folders():
            entry = entries.get(model.name)
            listed = isinstance(entry, dict) and isinstance(entry.get("file"), str)
            if not listed or not (folder.path / Path(entry["file"]).name).exists():
                missing.append(model.name)
            elif entry.get("model_sha256") not in (None, path_sha256(model.model_path)):
                stale.append(model.name)
            else:
                current[model.name] = entry
        return ExportState(folder, current, missing, stale)

    def onnx_exports(self) -> dict[str, OnnxModelFile]:
        """Every trained model's ONNX export, by name, with the input and output names its
        manifest records; one line naming the export command when any is missing or stale."""
        from mnist_cnn.predict.inference import OnnxModelFile  # numpy and SciPy: not on the command line's checks.

        state = self.export_state("onnx")
        if not state.folder.manifest_path.is_file():
            raise RunFolderError(
                f"{self.path} has no ONNX export ({state.folder.manifest_path} is missing); "
                f"run 'mnist-cnn export {self.path} --format onnx' first"
            )
        if not state.complete:
            raise RunFolderError(state.problem(self.path))
        exports = {}
        for name, entry in state.current.items():
            try:
                exports[name] = OnnxModelFile(
                    path=state.artifact(name),
                    input_name=entry["inputs"][0]["name"],
                    output_name=entry["outputs"][0]["name"],
                )
            except (KeyError, IndexError, TypeError):
                raise RunFolderError(
                    f"the ONNX export of {self.path} has no usable entry for {name}; "
                    f"run 'mnist-cnn export {self.path} --format onnx' again"
                ) from None
        return exports

    # Reports
    def write_comparison(self, comparison: Comparison, markdown: str) -> None:
        write_json(self.path / COMPARISON_JSON, comparison.to_json())
        write_text(self.path / COMPARISON_MARKDOWN, markdown)

    def read_comparison(self) -> Comparison:
        return read_record(self.path / COMPARISON_JSON, Comparison.from_json)

    def write_predictions(self, predictions: PredictionsOnTestImages) -> None:
        write_json(self.path / PREDICTIONS_JSON, predictions.to_json())

    def read_predictions(self) -> PredictionsOnTestImages:
        return read_record(self.path / PREDICTIONS_JSON, PredictionsOnTestImages.from_json)

    def is_finished(self) -> bool:
        """True once every model is trained and the run's reports are written."""
        return (
            self.is_run()
            and self.read_status().get("state") == "finished"
            and all(folder.is_finished() for folder in self.model_folders())
        )

    def has_results(self) -> bool:
        """Finished, with every model's metrics and history: all a sweep's statistics read.

        Unlike ``is_finished`` the model files may be missing: a published sweep
        (``mnist-cnn publish``) leaves them out, and its seeds still count as done. So do the
        seeds of a sweep copied without their status.json (docs/compare was, before publish kept
        it): every run writes status.json before it trains, so a run without one that holds each
        model's results is a copy of a finished run. Counted unfinished, such a seed was trained
        again from scratch on ``compare --resume`` (its models' files are not there to keep).
        """
        if not self.is_run() or (self.status_path.is_file() and self.read_status().get("state") != "finished"):
            return False
        return all(folder.metrics_path.is_file() and folder.history_path.is_file() for folder in self.model_folders())

    # A run trained as a trial of a sweep
    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def write_trial(self, trial: dict[str, Any]) -> None:
        """trial.json: which node ran this run, with how many CPUs, and when.

        A trial may take several tasks (stopped and resumed, restarted with more CPUs, on
        another node): the records of the tasks before this one are kept under ``earlier``.
        A task writes its record when it starts and again when it ends, replacing its own.
        """
        previous = self.read_trial()
        earlier = previous.pop("earlier", [])
        if previous and task_identity(previous) != task_identity(trial):
            earlier.append(previous)
        write_json(self.path / TRIAL_FILE, {**trial, "earlier": earlier} if earlier else trial)

    def read_trial(self) -> dict[str, Any]:
        path = self.path / TRIAL_FILE
        return read_json(path) if path.is_file() else {}


def seed_run_to_suggest(sweep_path: Path) -> Path:
    """The sweep's seed run to name for a command that wants one run: the first (by seed) holding a
    trained model, else the first there is, else ``seed-0``."""
    runs = [
        path
        for path in sweep_path.glob(f"{SEED_FOLDER_PREFIX}*")
        if path.name.removeprefix(SEED_FOLDER_PREFIX).isdigit() and (path / CONFIG_FILE).is_file()
    ]
    runs.sort(key=lambda path: int(path.name.removeprefix(SEED_FOLDER_PREFIX)))
    trained = [path for path in runs if any(path.glob(f"*/{MODEL_FILE}"))]
    return (trained or runs or [sweep_path / f"{SEED_FOLDER_PREFIX}0"])[0]


def content_identity(path: Path) -> str:
    """``sha256-<20 hex digits>`` of a file's bytes: the identity of folders written without an id."""
    return "sha256-" + hashlib.sha256(path.read_bytes()).hexdigest()[:20]


def task_identity(trial: dict[str, Any]) -> tuple[Any, ...]:
    return trial.get("host"), trial.get("pid"), trial.get("started")

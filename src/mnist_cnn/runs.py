"""The run folder: the one module that knows its layout, and writes every file atomically.

A run folder holds everything needed to reproduce and read a run::

    config.json  status.json  run.lock (while in use)
    comparison.md  comparison.json  comparison.png  predictions.json  predictions.png  report.html
    Model_A/  model.keras  history.csv  metrics.json  loss.png  accuracy.png  checkpoint.npz (while training)

``RunFolder`` and ``ModelFolder`` own every one of these names; the rest of the package
(training, evaluation, reporting, the CLI, the server) asks them for paths and records.
Every file is written to a temporary name and renamed, so a killed run never leaves half a
file. This module imports no Keras, JAX or matplotlib at import time: the server loads
models through it without pulling in the training stack.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import signal
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mnist_cnn.config import ExperimentConfig
from mnist_cnn.errors import RunFolderError, UserError
from mnist_cnn.results import HISTORY_FIELDS, Comparison, HistoryRow, ModelMetrics, PredictionsOnTestImages, history_row

if TYPE_CHECKING:
    import keras

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
LOCK_FILE = "run.lock"
COMPARISON_JSON = "comparison.json"
COMPARISON_MARKDOWN = "comparison.md"
COMPARISON_FIGURE = "comparison.png"
PREDICTIONS_JSON = "predictions.json"
PREDICTIONS_FIGURE = "predictions.png"
REPORT_FILE = "report.html"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.npz"
# A run trained as one trial of a sweep: where it ran, and its training log.
TRIAL_FILE = "trial.json"
LOG_FILE = "train.log"
# The root of a `compare --seeds` sweep.
SWEEP_FILE = "sweep.json"
STATISTICS_JSON = "statistics.json"
STATISTICS_MARKDOWN = "statistics.md"
SWEEP_FIGURES = {
    "test_accuracy": "seed-accuracy.png",
    "curves": "mean-curves.png",
    "epoch_times": "epoch-times.png",
}
SEED_FOLDER_PREFIX = "seed-"
# Names of files being written start with "." and hold this mark; a process killed
# mid-write leaves one behind, and the next run in the folder removes it.
TEMPORARY_MARK = ".partial-"
# Test hook for the kill tests: "kill@POINT" (SIGKILL) or "interrupt@POINT" (SIGINT, as
# Ctrl-C) makes the process stop itself when it reaches POINT (see ``fault_point``), so
# every kill test stops the run at an exact, repeatable moment.
FAULT_ENVIRONMENT = "MNIST_CNN_FAULT"

Record = TypeVar("Record")
# What keras.saving.load_model raises for a damaged .keras file: ValueError for a file that is
# not a zip (and JSONDecodeError, a ValueError, for a broken config), KeyError for a zip
# without config.json, BadZipFile for a corrupted member, TypeError for a config naming a
# class Keras does not know, OSError and EOFError from the file and h5py.
MODEL_FILE_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)


def fault_point(point: str) -> None:
    """Stop this process here if the test hook names ``point`` (no-op otherwise)."""
    wanted = os.environ.get(FAULT_ENVIRONMENT, "")
    action, _, where = wanted.partition("@")
    if where == point:
        os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGINT)


# ---------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A failing write (a full disk, a read-only folder) removes the temporary file and
    becomes a RunFolderError naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}{TEMPORARY_MARK}", suffix=path.suffix or ".tmp", dir=path.parent
        )
        os.close(handle)
    except OSError as error:
        raise _write_error(path, error) from None
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, path)
    except OSError as error:
        temporary_path.unlink(missing_ok=True)
        raise _write_error(path, error) from None
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def _write_error(path: Path, error: OSError) -> RunFolderError:
    return RunFolderError(
        f"cannot write {path}: {error.strerror or error}; free some space or choose a writable folder"
    )


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_bytes(path: Path, content: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing; is {path.parent} a run folder made by mnist-cnn?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is unreadable or corrupt ({error}); the run folder is damaged") from None


def read_record(path: Path, parse: Callable[[Any], Record]) -> Record:
    """Read a JSON file and parse it into a typed record; a malformed one names the file."""
    try:
        return parse(read_json(path))
    except ValueError as error:
        raise RunFolderError(f"{path} is not a valid mnist-cnn record ({error}); the run folder is damaged") from None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RunFolderError(f"{path} is unreadable ({error}); the run folder is damaged") from None


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

    def is_finished(self) -> bool:
        """metrics.json is written last, so with the model and history it marks a finished model."""
        return self.metrics_path.is_file() and self.model_path.is_file() and self.history_path.is_file()

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
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(root) / stamp
        candidate, suffix = base, 1
        while candidate.exists():
            suffix += 1
            candidate = base.with_name(f"{stamp}-{suffix}")
        return cls(candidate)

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        """A folder that must already be a run (it has a config.json), checked before anything reads it."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunFolderError(
                f"run folder {run.path} does not exist; pass a folder written by 'mnist-cnn experiment'"
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

    def config(self) -> ExperimentConfig:
        """The config this run was made with."""
        try:
            return ExperimentConfig.from_dict(self.read_record()["config"])
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


def task_identity(trial: dict[str, Any]) -> tuple[Any, ...]:
    return trial.get("host"), trial.get("pid"), trial.get("started")


class SweepFolder:
    """``compare --seeds``: a folder of ordinary run folders ``seed-<n>/`` and their statistics::

    sweep.json  statistics.json  statistics.md  seed-accuracy.png  mean-curves.png  epoch-times.png
    seed-0/  seed-1/  ...   (each a run folder, plus trial.json and train.log)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def new(cls, root: str | Path = "runs") -> SweepFolder:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"compare-{stamp}"
        candidate, suffix = base, 1
        while candidate.exists():
            suffix += 1
            candidate = base.with_name(f"{base.name}-{suffix}")
        return cls(candidate)

    @classmethod
    def existing(cls, path: str | Path) -> SweepFolder:
        sweep = cls(path)
        if not sweep.path.is_dir():
            raise RunFolderError(
                f"sweep folder {sweep.path} does not exist; pass a folder written by 'mnist-cnn compare'"
            )
        if not sweep.settings_path.is_file():
            raise RunFolderError(
                f"{sweep.path} is not a sweep folder (no {SWEEP_FILE}); pass a folder written by 'mnist-cnn compare'"
            )
        return sweep

    def create(self) -> SweepFolder:
        RunFolder(self.path).create()
        return self

    @property
    def settings_path(self) -> Path:
        return self.path / SWEEP_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    def is_sweep(self) -> bool:
        return self.settings_path.is_file()

    def holds_other_files(self) -> bool:
        return any(path.name != LOCK_FILE for path in self.path.iterdir())

    def write_settings(self, settings: dict[str, Any]) -> None:
        write_json(self.settings_path, settings)

    def read_settings(self) -> dict[str, Any]:
        settings = read_json(self.settings_path)
        if not isinstance(settings, dict) or not isinstance(settings.get("experiment"), dict):
            raise RunFolderError(f"{self.settings_path} is not an mnist-cnn sweep; the sweep folder is damaged")
        return settings

    def seed_run(self, seed: int) -> RunFolder:
        return RunFolder(self.path / f"{SEED_FOLDER_PREFIX}{seed}")

    def lock(self) -> RunLock:
        return RunLock(self.path / LOCK_FILE)

    def figure_path(self, name: str) -> Path:
        return self.path / SWEEP_FIGURES[name]

    def write_statistics(self, statistics: dict[str, Any], markdown: str) -> None:
        write_json(self.path / STATISTICS_JSON, statistics)
        write_text(self.path / STATISTICS_MARKDOWN, markdown)

    def read_statistics(self) -> dict[str, Any]:
        return read_json(self.path / STATISTICS_JSON)


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Alive, but someone else's.
        return True
    return True


class RunLock:
    """Refuses a second process writing into the same run folder; notices a stale lock.

    The lock file holds the owner's pid. It is created with O_EXCL, so two processes
    cannot both take it; a lock whose process has died (killed, power cut) is taken over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and owner != os.getpid() and process_is_alive(owner):
                    raise RunFolderError(
                        f"{self.path.parent} is in use by process {owner}; "
                        "wait for it to finish or stop it, then resume"
                    ) from None
                self.path.unlink(missing_ok=True)  # Stale: its process is gone.
                continue
            except OSError as error:
                raise RunFolderError(
                    f"cannot lock {self.path.parent}: {error.strerror}; is the folder writable?"
                ) from None
            with os.fdopen(handle, "w") as lock:
                lock.write(str(os.getpid()))
            return self
        raise RunFolderError(f"could not lock {self.path.parent}; another process keeps taking it")

    def owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc_info: Any) -> None:
        if self.owner() == os.getpid():
            self.path.unlink(missing_ok=True)

"""Runs and sweeps in MLflow: a run per model; a sweep is a parent run with a child per seed and model.

The run folder stays the source of truth. Everything logged here is read from it, or is the
epoch just written to it, so ``mnist-cnn track FOLDER`` fills a store in afterwards and
running it twice changes nothing. Each MLflow run carries its folder's identity as a tag
(config.json's ``run_id`` and the model's name; sweep.json's ``sweep_id`` for a sweep): that
is how a resumed run, a back-fill and a sweep's driver find the MLflow run to continue
instead of starting another. Epochs are logged with step = epoch, only those after the last
one the store holds, so a resume neither repeats nor skips one.

Tracking never costs a result: a server that cannot be reached is refused in one line before
anything trains (``require_reachable_server``), and when the store fails mid-run (a server
gone) one warning line says so, tracking stops for the rest of the command, and the run goes
on. MLflow (the extra ``tracking``) is imported only when tracking is on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from mnist_cnn.core.config import ExperimentConfig, ModelSpec, SweepConfig, TrackingSettings
from mnist_cnn.core.errors import ConfigError, UserError
from mnist_cnn.core.results import HISTORY_FIELDS, HistoryRow
from mnist_cnn.core.sweep_results import SweepStatistics
from mnist_cnn.core.text import say
from mnist_cnn.store.checkpoints import read_checkpoint_state
from mnist_cnn.store.runs import ModelFolder, RunFolder
from mnist_cnn.store.sweeps import SweepFolder, existing_run_or_sweep

INSTALL_COMMAND = "pip install -e '.[tracking]'"
RUN_KEY_TAG = "mnist_cnn.run_key"  # <run identity>/<model name>
SWEEP_KEY_TAG = "mnist_cnn.sweep_key"  # <sweep identity>
ARTIFACTS_TAG = "mnist_cnn.artifacts"  # "logged" once a finished run's files are in the store.
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a sweep's runs under it.
EPOCH_METRICS = HISTORY_FIELDS[1:]  # loss, accuracy, val_loss, val_accuracy, seconds; step = epoch.
FINAL_METRICS = (
    "test_loss",
    "test_accuracy",
    "best_val_accuracy",
    "best_val_epoch",
    "training_seconds",
    "seconds_per_epoch_median",
    "first_epoch_seconds",
    "inference_ms_per_image_batched",
    "inference_ms_single_image",
    "parameters",
)
# A server that does not answer fails a request in seconds, not after MLflow's default seven
# retries with exponential backoff (minutes of a run waiting on its side channel).
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
BATCH_LIMIT = 1000  # MLflow's most metrics in one log_batch call.
STATUS_OF_STATE = {"failed": "FAILED", "interrupted": "KILLED"}

T = TypeVar("T")
NewRun = tuple[str, dict[str, str], dict[str, str], int]  # Run name, tags, parameters, start (ms).


class TrackingError(UserError):
    """The tracking store refused or could not be reached (``mnist-cnn track``: one line, exit 2)."""


def require_mlflow() -> None:
    """One line naming the install command when MLflow is missing, before anything is trained."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"--track needs MLflow, which is not installed: {INSTALL_COMMAND}")


# How long a tracking server has to answer before a command refuses it (Ray's own check waits as long).
REACH_TIMEOUT_S = 5.0


def require_reachable_server(settings: TrackingSettings) -> None:
    """A tracking server that cannot be reached is one line before anything is trained or written.

    Asked as MLflow's client would ask it (through the same proxy settings), for its ``/health``;
    any HTTP answer, or a TLS handshake MLflow may be set to accept, means a server is there. Left
    to MLflow, a server that is down cost a run its tracking with a warning full of urllib3's retries.
    """
    if settings.sqlite_path() is not None or not settings.uri.lower().startswith(("http://", "https://")):
        return
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(settings.uri.rstrip("/") + "/health", timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # It answered.
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, ssl.SSLError):
            return  # It answered; whether its certificate is accepted is MLflow's setting.
        raise ConfigError(
            f"--track {settings.uri}: no MLflow tracking server can be reached there ({reach_failure(reason)}); "
            f"start one ('mlflow server --host HOST --port PORT'), give the address of one that runs, "
            "or leave out --track"
        ) from None


def reach_failure(reason: object) -> str:
    """'connection refused', 'no answer within 10 s': why a server could not be reached, in words."""
    if isinstance(reason, TimeoutError):
        return f"no answer within {REACH_TIMEOUT_S:.0f} s"
    text = getattr(reason, "strerror", None) or str(reason)
    return text[:1].lower() + text[1:]


def require_writable_store(settings: TrackingSettings) -> None:
    """A SQLite store this process cannot write is one line before anything is trained (MLflow
    would fail at its first write, mid-run). Tried for real, as SQLite and MLflow will write:
    the database opened for writing (its contents untouched), and a file made and removed in
    its folder, where SQLite keeps its journal and MLflow the runs' files (``mlartifacts/``).
    The permission bits alone would not say it: root writes a file of mode 0444.
    """
    path = settings.sqlite_path()
    if path is None:  # A server: require_reachable_server asks it.
        return
    where = f"--track {settings.uri!r}"
    name, _, query = str(path).partition("?")  # sqlite:///PATH?mode=ro&uri=true: SQLite's URI options.
    if "mode=ro" in query.split("&"):
        raise ConfigError(f"{where} opens the database read-only (mode=ro); MLflow must write to it")
    path = Path(name)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{where}: {path} is not a file; give the database file's path, such as {path / 'mlflow.db'}")
    if path.exists():
        try:
            os.close(os.open(path, os.O_RDWR))
        except OSError as error:
            raise ConfigError(
                f"{where}: cannot write {path} ({error.strerror}); make it writable or give another database file"
            ) from None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".mnist-cnn-write-check-"):
            pass
    except OSError as error:
        raise ConfigError(
            f"{where}: cannot write in folder {path.parent} ({error.strerror}), where SQLite keeps the database's "
            "journal; make it writable or give a database in a folder this user can write"
        ) from None


def param_text(value: Any) -> str:
    """A setting as an MLflow parameter: text as it is, anything else as JSON (as config.json has it)."""
    return value if isinstance(value, str) else json.dumps(value)


def run_params(config: ExperimentConfig, spec: ModelSpec) -> dict[str, str]:
    """The whole config (as config.json holds it) and the model's spec under ``model.``."""
    params = {name: param_text(value) for name, value in config.to_dict().items()}
    params.update({f"model.{name}": param_text(value) for name, value in spec.to_json().items()})
    return params


def sweep_params(settings: SweepConfig) -> dict[str, str]:
    params = {name: param_text(value) for name, value in settings.experiment.to_dict().items() if name != "seed"}
    params["seeds"] = param_text(list(settings.seeds))
    params["baseline"] = param_text(settings.baseline_name())
    return params


def statistics_metrics(statistics: SweepStatistics) -> dict[str, float]:
    """statistics.json as metrics: each model's means and intervals, each paired difference and ratio."""
    metrics: dict[str, float | None] = {"seeds_finished": float(len(statistics.seeds_finished))}
    for model, summaries in statistics.models.items():
        for field, summary in summaries.items():
            for part in ("mean", "sd", "ci_low", "ci_high"):
                metrics[f"{model}/{field}/{part}"] = getattr(summary, part)
    for comparison in statistics.comparisons:
        prefix = f"{comparison.second}-{comparison.first}"
        for field, difference in comparison.differences.items():
            metrics[f"{prefix}/{field}/difference"] = difference.summary.mean
            metrics[f"{prefix}/{field}/ci_low"] = difference.summary.ci_low
            metrics[f"{prefix}/{field}/ci_high"] = difference.summary.ci_high
            for part in ("bootstrap_low", "bootstrap_high", "t_test_p", "wilcoxon_p", "holm_p"):
                metrics[f"{prefix}/{field}/{part}"] = getattr(difference, part)
        for field, ratio in comparison.ratios.items():
            metrics[f"{prefix}/{field}/ratio"] = ratio.geometric_mean
            metrics[f"{prefix}/{field}/ratio_ci_low"] = ratio.ci_low
            metrics[f"{prefix}/{field}/ratio_ci_high"] = ratio.ci_high
    return {name: float(value) for name, value in metrics.items() if value is not None}


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def failure_text(error: BaseException) -> str:
    """Why a tracking step failed, in one line: a server that stopped answering says so, in words,
    rather than with the urllib3 retries MLflow's message quotes."""
    import requests  # MLflow's HTTP client, already loaded with it.

    cause: BaseException | None = error
    for _ in range(10):  # A chain of causes is short; never follow a loop in one.
        if cause is None:
            break
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return "the server does not answer"
        cause = cause.__cause__ or cause.__context__
    return first_line(error)


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{error.__class__.__name__}: {text[:300]}" if text else error.__class__.__name__


class Tracker:
    """Logs run folders and sweep folders into one MLflow experiment, continuing what is there.

    ``strict`` (``mnist-cnn track``): a failing store is an error. Otherwise (``--track`` on a
    training command) it is one warning line and tracking stops; ``hint`` is the folder the
    warning tells the user to back-fill.
    """

    def __init__(
        self, settings: TrackingSettings, stream: TextIO, strict: bool = False, hint: Path | None = None
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.strict = strict
        self.hint = hint
        self.stopped = False
        self.created = 0  # MLflow runs this tracker made...
        self.continued = 0  # ...and those it found already there.
        self._client: Any = None
        self._experiment_id: str | None = None
        self._run_ids: dict[str, str] = {}  # Tag key -> MLflow run id.
        self._last_epoch: dict[str, int] = {}  # MLflow run id -> last epoch in the store.

    # ------------------------------------------------------------ what the commands call

    def log_epochs(self, run: RunFolder, model: str, history: list[HistoryRow]) -> None:
        """After each epoch (checkpoint written): the epochs the store does not have yet."""
        self.attempt(f"logging {model}'s epochs", lambda: self._log_epochs(self._model_run(run, model), history))

    def sync_run(self, run: RunFolder, parent: str | None = None) -> None:
        """Everything in a run folder: each model's run, epochs, final metrics, status and files."""
        self.attempt(f"logging {run.path}", lambda: self._sync_run(run, parent))

    def sync_sweep(self, sweep: SweepFolder, seeds: Sequence[int] | None = None) -> None:
        """A sweep's parent run and its statistics, and each seed's runs as its children.

        ``seeds``: only those seeds' folders (a sweep's driver, as each trial finishes); None: all.
        """
        self.attempt(f"logging {sweep.path}", lambda: self._sync_sweep(sweep, seeds))

    def sweep_parent(self, sweep: SweepFolder) -> str | None:
        return self.attempt(f"logging {sweep.path}", lambda: self._sweep_run(sweep))

    def attempt(self, what: str, action: Callable[[], T]) -> T | None:
        """Run one tracking step; a failure stops tracking with one warning line (strict: an error)."""
        if self.stopped:
            return None
        try:
            return action()
        except UserError:
            raise
        except Exception as error:  # MLflow, SQLAlchemy and requests each raise their own kinds.
            if self.strict:
                raise TrackingError(
                    f"tracking in MLflow at {self.settings.uri} failed while {what} ({failure_text(error)}); "
                    "check the URI and that the server is up, then run the command again"
                ) from None
            self.stopped = True
            folder = f" {self.hint}" if self.hint else " RUN_DIR"
            say(
                self.stream,
                f"warning: tracking in MLflow at {self.settings.uri} stopped while {what} ({failure_text(error)}); "
                f"training goes on and the run folder keeps everything: fill the store in afterwards with "
                f"'mnist-cnn track{folder} --track {self.settings.uri}'",
            )
            return None

    # ------------------------------------------------------------ the store

    @property
    def client(self) -> Any:
        if self._client is None:
            for name, value in HTTP_SETTINGS.items():
                os.environ.setdefault(name, value)
            from mlflow.tracking import MlflowClient

            # Their INFO lines (creating tables...) are not ours to print; MLflow sets its level on import.
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            # Nor urllib3's "Retrying..." warnings when a server stops answering: the warning line says so.
            logging.getLogger("urllib3").setLevel(logging.ERROR)

            client = MlflowClient(tracking_uri=self.settings.uri)
            experiment = client.get_experiment_by_name(self.settings.experiment)
            if experiment is None:
                self._experiment_id = client.create_experiment(
                    self.settings.experiment, artifact_location=self.artifact_location()
                )
            else:
                if experiment.lifecycle_stage == "deleted":
                    client.restore_experiment(experiment.experiment_id)
                self._experiment_id = experiment.experiment_id
            self._client = client
        return self._client

    def artifact_location(self) -> str | None:
        """A SQLite store keeps its files beside the database (``mlartifacts/``), wherever the command runs;
        a server decides for itself."""
        path = self.settings.sqlite_path()
        return (path.resolve().parent / "mlartifacts" / self.settings.experiment).as_uri() if path else None

    def _find(self, tag: str, key: str) -> str | None:
        client = self.client
        found = client.search_runs([self._experiment_id], filter_string=f"tags.`{tag}` = '{key}'", max_results=1)
        return found[0].info.run_id if found else None

    def _run(self, tag: str, key: str, create: Callable[[], NewRun]) -> str:
        """The MLflow run tagged ``tag=key``; made by ``create`` (name, tags, params, start) if there is none."""
        if key not in self._run_ids:
            run_id = self._find(tag, key)
            if run_id is None:
                from mlflow.entities import Param

                name, tags, params, started = create()
                run_id = self.client.create_run(
                    self._experiment_id, start_time=started, run_name=name, tags={**tags, tag: key}
                ).info.run_id
                self.client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
                self.created += 1
            else:
                self.continued += 1
            self._run_ids[key] = run_id
        return self._run_ids[key]

    # ------------------------------------------------------------ a run folder

    def _model_run(self, run: RunFolder, model: str, parent: str | None = None) -> str:
        def create() -> NewRun:
            record = run.read_record()
            config = run.config()
            spec = next(spec for spec in config.model_specs() if spec.name == model)
            environment = record.get("environment", {})
            trainer = record.get("trainers", {}).get(model, {}).get("trainer") or record.get("trainer_used")
            tags = {
                "mnist_cnn.model": model,
                "mnist_cnn.run_folder": str(run.path.resolve()),
                "mnist_cnn.version": str(record.get("mnist_cnn_version", "unknown")),
                "mnist_cnn.commit": str(record.get("mnist_cnn_commit") or "unknown"),
                "backend": config.backend,
                "trainer": str(trainer or "unknown"),
                "seed": str(config.seed),
                "host": str(run.read_trial().get("host") or environment.get("host") or "unknown"),
                "cpu": str(environment.get("cpu", "unknown")),
            }
            if parent is not None:
                tags[PARENT_TAG] = parent
            name = f"{model} seed {config.seed} ({run.path.name})"
            return name, tags, run_params(config, spec), started_ms(run)

        return self._run(RUN_KEY_TAG, f"{run.identity()}/{model}", create)

    def _log_epochs(self, run_id: str, history: list[HistoryRow]) -> None:
        from mlflow.entities import Metric

        if run_id not in self._last_epoch:
            steps = [metric.step for metric in self.client.get_metric_history(run_id, EPOCH_METRICS[0])]
            self._last_epoch[run_id] = max(steps, default=0)
        rows = [row for row in history if int(row["epoch"]) > self._last_epoch[run_id]]
        now = int(time.time() * 1000)
        metrics = [Metric(field, float(row[field]), now, int(row["epoch"])) for row in rows for field in EPOCH_METRICS]
        for chunk in chunks(metrics, BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=list(chunk))
        if rows:
            self._last_epoch[run_id] = int(rows[-1]["epoch"])

    def _sync_run(self, run: RunFolder, parent: str | None) -> None:
        state = run.read_status().get("state")
        for folder in run.model_folders():
            if not model_done(folder) and not folder.has_checkpoint():
                continue  # Not started: nothing to show yet.
            run_id = self._model_run(run, folder.name, parent)
            self._log_epochs(run_id, model_history(folder))
            logged = self.client.get_run(run_id)
            if model_done(folder):
                self._log_final_metrics(run_id, folder, logged.data.metrics)
                if run_done(run) and logged.data.tags.get(ARTIFACTS_TAG) != "logged":
                    self._log_artifacts(run_id, run, folder)
                if logged.info.status != "FINISHED":
                    self.client.set_terminated(run_id, "FINISHED", end_time=finished_ms(run, folder))
            elif state in STATUS_OF_STATE and logged.info.status == "RUNNING":
                self.client.set_terminated(run_id, STATUS_OF_STATE[state])

    def _log_final_metrics(self, run_id: str, folder: ModelFolder, present: dict[str, float]) -> None:
        from mlflow.entities import Metric

        metrics = folder.read_metrics()
        epochs = metrics.epochs
        now = int(time.time() * 1000)
        missing = [
            Metric(name, float(getattr(metrics, name)), now, epochs) for name in FINAL_METRICS if name not in present
        ]
        if missing:
            self.client.log_batch(run_id, metrics=missing)

    def _log_artifacts(self, run_id: str, run: RunFolder, folder: ModelFolder) -> None:
        """The model's own files, and the run's report and figures, once the run is finished."""
        for path in [*run_files(run), *model_files(folder)]:
            self.client.log_artifact(run_id, str(path))
        self.client.set_tag(run_id, ARTIFACTS_TAG, "logged")

    # ------------------------------------------------------------ a sweep folder

    def _sweep_run(self, sweep: SweepFolder) -> str:
        def create() -> NewRun:
            settings = SweepConfig.from_json(sweep.read_settings())
            tags = {"mnist_cnn.sweep_folder": str(sweep.path.resolve()), "mnist_cnn.kind": "sweep"}
            name = f"compare {','.join(settings.experiment.models)} ({sweep.path.name})"
            return name, tags, sweep_params(settings), modified_ms(sweep.settings_path)

        return self._run(SWEEP_KEY_TAG, sweep.identity(), create)

    def _sync_sweep(self, sweep: SweepFolder, seeds: Sequence[int] | None) -> None:
        parent = self._sweep_run(sweep)
        settings = SweepConfig.from_json(sweep.read_settings())
        for seed in settings.seeds if seeds is None else seeds:
            if sweep.seed_run(seed).is_run():
                self._sync_run(sweep.seed_run(seed), parent)
        if seeds is None and sweep.statistics_path.is_file():
            self._log_statistics(parent, sweep, settings)

    def _log_statistics(self, parent: str, sweep: SweepFolder, settings: SweepConfig) -> None:
        """statistics.json as metrics (step = seeds finished: the history shows them firm up), verdicts as tags."""
        from mlflow.entities import Metric, RunTag

        statistics = SweepStatistics.from_json(sweep.read_statistics())
        finished = len(statistics.seeds_finished)
        logged = self.client.get_run(parent)
        if logged.data.metrics.get("seeds_finished") != finished:
            now = int(time.time() * 1000)
            metrics = [Metric(name, value, now, finished) for name, value in statistics_metrics(statistics).items()]
            tags = []
            for comparison in statistics.comparisons:
                tags.append(RunTag(f"verdict.{comparison.second}", comparison.verdict[:5000]))
                tags.append(RunTag(f"time_verdict.{comparison.second}", comparison.time_verdict[:5000]))
            for chunk in chunks(metrics, BATCH_LIMIT):
                self.client.log_batch(parent, metrics=list(chunk))
            self.client.log_batch(parent, tags=tags)
            for path in sweep_files(sweep):
                self.client.log_artifact(parent, str(path))
        if set(statistics.seeds_finished) >= set(settings.seeds) and logged.info.status != "FINISHED":
            self.client.set_terminated(parent, "FINISHED")


# ---------------------------------------------------------------- what a folder holds


def model_done(folder: ModelFolder) -> bool:
    """Trained and scored: metrics.json (written last) and history.csv. The .keras file is not
    asked for: published folders (docs/compare) leave it out, and the store can do without it."""
    return folder.metrics_path.is_file() and folder.history_path.is_file()


def run_done(run: RunFolder) -> bool:
    """Every model done and the run's reports written (a published folder has no status.json)."""
    state = run.read_status().get("state")
    return state in (None, "finished") and all(model_done(folder) for folder in run.model_folders())


def model_history(folder: ModelFolder) -> list[HistoryRow]:
    """The epochs a model has: history.csv once finished, else its checkpoint's (a run in progress)."""
    if model_done(folder):
        return folder.read_history()
    if folder.has_checkpoint():
        return read_checkpoint_state(folder.checkpoint_path).history
    return []


def modified_ms(path: Path) -> int:
    return int(path.stat().st_mtime * 1000)


def iso_ms(text: Any) -> int | None:
    import datetime

    try:
        return int(datetime.datetime.fromisoformat(str(text)).timestamp() * 1000)
    except ValueError:
        return None


def started_ms(run: RunFolder) -> int:
    """When the run started (its trial's record, else config.json's time): a back-filled run
    shows when it ran, not when it was logged."""
    trial = run.read_trial()  # A trial taken up again keeps the tasks before it under "earlier".
    starts = [iso_ms(task.get("started")) for task in [trial, *trial.get("earlier", [])]]
    return min((start for start in starts if start), default=None) or modified_ms(run.config_path)


def finished_ms(run: RunFolder, folder: ModelFolder) -> int:
    """When the model was finished: metrics.json is its last file (a trial's end if the files were copied)."""
    trial_end = iso_ms(run.read_trial().get("finished"))
    written = modified_ms(folder.metrics_path)
    return min(written, trial_end) if trial_end else written


def run_files(run: RunFolder) -> list[Path]:
    paths = [run.config_path, run.report_path, run.comparison_figure_path, run.predictions_figure_path]
    return [path for path in paths if path.is_file()]


def model_files(folder: ModelFolder) -> list[Path]:
    paths = [folder.model_path, folder.history_path, folder.metrics_path]
    paths += [folder.curve_path(metric) for metric in ("loss", "accuracy")]
    return [path for path in paths if path.is_file()]


def sweep_files(sweep: SweepFolder) -> list[Path]:
    paths = [sweep.statistics_path, sweep.statistics_markdown_path, sweep.report_path, sweep.settings_path]
    paths += [sweep.figure_path(name) for name in ("test_accuracy", "curves", "epoch_times", "cost")]
    return [path for path in paths if path.is_file()]


def track_folders(paths: Sequence[str | Path], settings: TrackingSettings, stream: TextIO) -> str:
    """``mnist-cnn track``: each run or sweep folder into the store; returns the one-line summary.

    Every folder is checked before anything is logged; running it again finds the runs
    already there (by their folders' identity) and only adds what is missing.
    """
    folders = [existing_run_or_sweep(path) for path in paths]
    tracker = Tracker(settings, stream, strict=True)
    for folder in folders:
        if isinstance(folder, SweepFolder):
            tracker.sync_sweep(folder)
        else:
            tracker.sync_run(folder)
        say(stream, f"{folder.path}: in MLflow")
    where = settings.uri if settings.sqlite_path() is None else f"mlflow ui --backend-store-uri {settings.uri}"
    return (
        f"MLflow experiment {settings.experiment!r} at {settings.uri}: {tracker.created} run(s) created, "
        f"{tracker.continued} already there and brought up to date; see them with: {where}"
    )

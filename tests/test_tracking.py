"""--track and mnist-cnn track: what MLflow holds equals what the run folders hold, once.

Every check reads the store back with MLflow's own client: parameters against config.json,
each metric history against history.csv, final metrics against metrics.json. Faults (a kill,
a server down or gone mid-run) never cost a result, and `track` completes the store afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mnist_cnn.core.config import DEFAULT_TRACKING_URI, TrackingSettings
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.faults import FAULT_ENVIRONMENT
from mnist_cnn.core.results import HISTORY_FIELDS
from mnist_cnn.core.sweep_results import SweepStatistics
from mnist_cnn.core.version import package_version
from mnist_cnn.store.runs import RunFolder
from mnist_cnn.store.sweeps import SweepFolder
from mnist_cnn.track.mlflow_tracking import FINAL_METRICS, PARENT_TAG, RUN_KEY_TAG, SWEEP_KEY_TAG
from tests.conftest import cli, free_port, run_cli

REPOSITORY = Path(__file__).resolve().parent.parent
RUN_ARGS = ("experiment", "--limit", "300", "--epochs", "2", "--seed", "3")
EPOCH_METRICS = HISTORY_FIELDS[1:]


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def all_runs(uri: str, experiment: str = "mnist-cnn") -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return client.search_runs([found.experiment_id], max_results=1000)


def metric_history(uri: str, run_id: str, name: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((metric.step, metric.value) for metric in MlflowClient(uri).get_metric_history(run_id, name))


def artifact_names(uri: str, run_id: str) -> set[str]:
    from mlflow.tracking import MlflowClient

    return {entry.path for entry in MlflowClient(uri).list_artifacts(run_id)}


def runs_by_model(uri: str, run: RunFolder) -> dict[str, Any]:
    """The MLflow runs of a run folder, by model name (and there is exactly one per model)."""
    mine = [found for found in all_runs(uri) if found.data.tags.get(RUN_KEY_TAG, "").startswith(run.identity() + "/")]
    by_model = {found.data.tags["mnist_cnn.model"]: found for found in mine}
    assert len(by_model) == len(mine), "a model has two MLflow runs"
    return by_model


def assert_run_matches_folder(uri: str, logged: Any, run: RunFolder, model: str) -> None:
    """Parameters = config.json, every epoch metric = history.csv, final metrics = metrics.json."""
    config = run.read_record()["config"]
    params = logged.data.params
    for name, value in config.items():
        assert (params[name] if isinstance(value, str) else json.loads(params[name])) == value, name
    spec = next(spec for spec in run.config().model_specs() if spec.name == model)
    assert json.loads(params["model.filters"]) == spec.filters
    assert json.loads(params["model.dense_units"]) == list(spec.dense_units)
    folder = run.model(model)
    history = folder.read_history()
    for field in EPOCH_METRICS:
        expected = [(int(row["epoch"]), row[field]) for row in history]
        assert metric_history(uri, logged.info.run_id, field) == expected, field  # Exactly: no rounding.
    metrics = folder.read_metrics()
    for name in FINAL_METRICS:
        assert logged.data.metrics[name] == float(getattr(metrics, name)), name


# ---------------------------------------------------------------- a tracked run


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, RunFolder]:
    folder = tmp_path_factory.mktemp("tracked")
    uri = sqlite_uri(folder)
    result = cli(*RUN_ARGS, "--out", folder / "run", "--track", uri)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout + result.stderr
    return uri, RunFolder(folder / "run")


def test_a_tracked_run_is_a_run_per_model_holding_the_folder_exactly(tracked_run: tuple[str, RunFolder]) -> None:
    uri, run = tracked_run
    logged = runs_by_model(uri, run)
    assert set(logged) == {"Model_A", "Model_B"}
    for model, found in logged.items():
        assert found.info.status == "FINISHED"
        assert_run_matches_folder(uri, found, run, model)
        tags = found.data.tags
        assert tags["backend"] == "jax" and tags["trainer"] == "fused" and tags["seed"] == "3"
        assert tags["mnist_cnn.version"] == package_version() and tags["host"] == socket.gethostname()
        assert tags["mnist_cnn.run_folder"] == str(run.path.resolve()) and tags["cpu"]
        assert {"model.keras", "history.csv", "metrics.json", "loss.png", "accuracy.png"} <= artifact_names(
            uri, found.info.run_id
        )
        assert {"report.html", "config.json", "comparison.png", "predictions.png"} <= artifact_names(
            uri, found.info.run_id
        )


def test_tracking_a_tracked_run_again_adds_nothing(tracked_run: tuple[str, RunFolder]) -> None:
    uri, run = tracked_run
    result = cli("track", run.path, "--track", uri)
    assert result.returncode == 0, result.stderr
    assert "0 run(s) created, 2 already there" in result.stdout
    for model, found in runs_by_model(uri, run).items():
        assert_run_matches_folder(uri, found, run, model)  # Still one value per epoch.


def test_the_sqlite_store_keeps_its_files_beside_the_database(tracked_run: tuple[str, RunFolder]) -> None:
    uri, run = tracked_run
    database = Path(uri.removeprefix("sqlite:///"))
    stored = list((database.parent / "mlartifacts").rglob("model.keras"))
    assert len(stored) == 2  # Not in ./mlruns of whatever folder the command ran from.


# ---------------------------------------------------------------- back-fill


def test_back_filling_the_published_folders_twice_makes_no_duplicate(tmp_path: Path) -> None:
    uri = sqlite_uri(tmp_path)
    folders = (REPOSITORY / "docs" / "compare", REPOSITORY / "docs" / "full-run")
    first = cli("track", *folders, "--track", uri)
    assert first.returncode == 0, first.stderr
    assert "13 run(s) created, 0 already there" in first.stdout  # A parent, 5 seeds x 2 models, 2 models.
    again = cli("track", *folders, "--track", uri)
    assert again.returncode == 0, again.stderr
    assert "0 run(s) created, 13 already there" in again.stdout
    runs = all_runs(uri)
    assert len(runs) == 13

    sweep = SweepFolder(folders[0])
    parents = [found for found in runs if found.data.tags.get(SWEEP_KEY_TAG) == sweep.identity()]
    assert len(parents) == 1
    parent = parents[0]
    children = [found for found in runs if found.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 10
    for seed in range(5):
        seed_run = sweep.seed_run(seed)
        for model, found in runs_by_model(uri, seed_run).items():
            assert found.data.tags[PARENT_TAG] == parent.info.run_id
            assert_run_matches_folder(uri, found, seed_run, model)  # 60 epochs, each once.
    statistics = SweepStatistics.from_json(sweep.read_statistics())
    comparison = statistics.comparison
    assert comparison is not None
    metrics = parent.data.metrics
    assert metrics["seeds_finished"] == 5
    difference = comparison.differences["test_accuracy"]
    assert metrics["Model_B-Model_A/test_accuracy/difference"] == difference.summary.mean
    assert metrics["Model_B-Model_A/test_accuracy/ci_low"] == difference.summary.ci_low
    assert metrics["Model_B-Model_A/test_accuracy/t_test_p"] == difference.t_test_p
    assert metrics["Model_A/test_accuracy/mean"] == statistics.models["Model_A"]["test_accuracy"].mean
    assert parent.data.tags["verdict.Model_B"] == comparison.verdict
    assert parent.info.status == "FINISHED"
    assert {"statistics.md", "statistics.json", "report.html"} <= artifact_names(uri, parent.info.run_id)
    full_run = runs_by_model(uri, RunFolder(folders[1]))
    assert set(full_run) == {"Model_A", "Model_B"} and PARENT_TAG not in full_run["Model_A"].data.tags


def test_track_refuses_a_folder_that_is_neither_a_run_nor_a_sweep(tmp_path: Path) -> None:
    result = cli("track", tmp_path, "--track", sqlite_uri(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not a run folder" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # Checked before the store is touched.


# ---------------------------------------------------------------- settings


MALFORMED_URIS = ["htp://example.org", "sqlite://", "sqlite:///", "http://", "http://localhost:port", "mlruns"]


@pytest.mark.parametrize("uri", MALFORMED_URIS)
def test_a_malformed_tracking_uri_is_one_line_before_training(tmp_path: Path, uri: str) -> None:
    result = cli(*RUN_ARGS, "--out", tmp_path / "run", "--track", uri)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("mnist-cnn: error: --track") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_sqlite_store_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TrackingSettings(uri=f"sqlite:///{tmp_path}/missing/mlflow.db")


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` (a file or a folder) made unwritable for real, for this process and its children.

    The suite runs as root, whom permission bits do not stop (root writes a file of mode 0444,
    and so does SQLite run by root), so as root the path is made immutable (``chattr +i``:
    refused to root too, as a read-only mount would be); as anyone else, its write bits are
    cleared. Patching os.access or os.open would test the check against itself, not against the
    file system. Where root may not set the flag (a container without CAP_LINUX_IMMUTABLE, or no
    chattr), the test is skipped: nothing else there refuses root a write.
    """
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root, and no chattr to make a path immutable")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"running as root, and chattr +i is refused here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("unwritable_part", ["database", "folder"])
def test_a_sqlite_store_that_cannot_be_written_is_refused_before_training(tmp_path: Path, unwritable_part: str) -> None:
    """A read-only database (or one in a read-only folder, where SQLite writes its journal) is
    refused in one line before the run folder exists, not found out at the first epoch's logging."""
    store = tmp_path / "store"
    store.mkdir()
    database = store / "ro.db"
    if unwritable_part == "database":
        sqlite3.connect(database).close()  # A real, empty SQLite database.
    with unwritable(database if unwritable_part == "database" else store):
        result = cli(*RUN_ARGS, "--out", tmp_path / "run", "--track", f"sqlite:///{database}")
    assert result.returncode == 2, result.stdout
    cannot = f"cannot write {database}" if unwritable_part == "database" else f"cannot write in folder {store}"
    assert result.stderr.startswith(f"mnist-cnn: error: --track 'sqlite:///{database}': {cannot} ("), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("name", "message"), [("a-folder", "is not a file"), ("ro.db?mode=ro&uri=true", "opens the database read-only")]
)
def test_a_sqlite_store_that_is_a_folder_or_read_only_is_refused(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "a-folder").mkdir()
    result = cli(*RUN_ARGS, "--out", tmp_path / "run", "--track", f"sqlite:///{tmp_path / name}")
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("mnist-cnn: error: --track") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_bare_track_takes_the_environment_then_mlflows_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert TrackingSettings.chosen(None).uri == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert TrackingSettings.chosen(None).uri == "http://tracking.example:5000"
    assert TrackingSettings.chosen("sqlite:///other.db").uri == "sqlite:///other.db"


def test_without_mlflow_track_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "mlflow" else real_find_spec(name, *rest)
    )
    result = cli(*RUN_ARGS, "--out", tmp_path / "run", "--track")
    assert result.returncode == 2
    assert "pip install -e '.[tracking]'" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- faults never cost a result


UNREACHABLE_COMMANDS = {
    "train": ["train", "--model", "A", "--limit", "300", "--epochs", "1", "--out", "OUT"],
    "compare": ["compare", "--seeds", "2", "--limit", "300", "--epochs", "1", "--out", "OUT"],
    "track": ["track", "RUN"],
}


@pytest.mark.parametrize("command", UNREACHABLE_COMMANDS)
def test_a_tracking_server_that_cannot_be_reached_is_one_line_before_anything_trains(
    tmp_path: Path, command: str
) -> None:
    """Not a warning full of urllib3's retries after the run: one line saying so and what to do, exit 2,
    before anything is trained or written (tests/test_cli_speed.py: before Keras loads)."""
    run = tmp_path / "run"  # A stand-in for `track`: the checks read no more than its config.json.
    run.mkdir()
    (run / "config.json").write_text("{}")
    for uri in (f"http://127.0.0.1:{free_port()}", "http://127.0.0.1:9"):  # Nothing listens there.
        paths = {"OUT": tmp_path / "out", "RUN": run}
        result = cli(*[paths.get(word, word) for word in UNREACHABLE_COMMANDS[command]], "--track", uri)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"mnist-cnn: error: --track {uri}: no MLflow tracking server can be reached there (connection refused); "
            "start one ('mlflow server --host HOST --port PORT'), give the address of one that runs, "
            "or leave out --track\n"
        )
        assert result.stdout == "" and not (tmp_path / "out").exists()


def test_a_tracking_server_that_stops_answering_is_said_in_words(tmp_path: Path) -> None:
    """Gone mid-run (the start was checked): the one warning says the server does not answer, not
    urllib3's "HTTPConnectionPool(...): Max retries exceeded" that MLflow's message quotes."""
    from mnist_cnn.track.mlflow_tracking import Tracker

    uri = f"http://127.0.0.1:{free_port()}"
    stream = io.StringIO()
    tracker = Tracker(TrackingSettings(uri=uri), stream, hint=tmp_path / "run")
    assert tracker.attempt("logging Model_A's epochs", lambda: tracker.client) is None
    assert stream.getvalue() == (
        f"warning: tracking in MLflow at {uri} stopped while logging Model_A's epochs (the server does not answer); "
        f"training goes on and the run folder keeps everything: fill the store in afterwards with "
        f"'mnist-cnn track {tmp_path / 'run'} --track {uri}'\n"
    )


@pytest.mark.slow
def test_a_run_killed_and_resumed_is_one_mlflow_run_with_every_epoch_once(tmp_path: Path) -> None:
    """Killed after epoch 2's checkpoint, before epoch 2 reached the store: the resume logs epoch 2
    (none missing) and not epoch 1 again (none twice)."""
    uri, run_dir = sqlite_uri(tmp_path), tmp_path / "run"
    arguments = ("train", "--model", "A", "--limit", "300", "--epochs", "3", "--out", run_dir, "--track", uri)
    killed = run_cli(*arguments, env={FAULT_ENVIRONMENT: "kill@epoch-end:Model_A:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = RunFolder(run_dir)
    before = runs_by_model(uri, run)
    assert metric_history(uri, before["Model_A"].info.run_id, "loss")[-1][0] == 1
    resumed = cli("experiment", "--resume", run_dir, "--track", uri)
    assert resumed.returncode == 0, resumed.stderr
    after = runs_by_model(uri, run)
    assert set(after) == {"Model_A"} and after["Model_A"].info.run_id == before["Model_A"].info.run_id
    assert after["Model_A"].info.status == "FINISHED"
    assert_run_matches_folder(uri, after["Model_A"], run, "Model_A")


@contextlib.contextmanager
def mlflow_server(folder: Path, port: int) -> Iterator[subprocess.Popen]:
    """A real `mlflow server` on a loopback port, its store in ``folder``; stopped (its whole group) after."""
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", sqlite_uri(folder), "--artifacts-destination", str(folder / "artifacts"),
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield server
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def wait_until_stopped(process: subprocess.Popen, timeout: float = 300) -> None:
    """Until the process has stopped itself (SIGSTOP: state T in /proc)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert process.poll() is None and time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_costs_a_warning_and_track_completes_the_store(tmp_path: Path) -> None:
    port = free_port()
    uri, run_dir = f"http://127.0.0.1:{port}", tmp_path / "run"
    arguments = [sys.executable, "-m", "mnist_cnn.cli", "train", "--model", "A", "--limit", "300", "--epochs", "3"]
    with mlflow_server(tmp_path, port) as server:
        training = subprocess.Popen(
            [*arguments, "--out", str(run_dir), "--track", uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, FAULT_ENVIRONMENT: "pause@epoch-end:Model_A:2"},
        )
        wait_until_stopped(training)  # Epoch 1 is in the store; epoch 2 is about to be logged.
        assert len(metric_history(uri, runs_by_model(uri, RunFolder(run_dir))["Model_A"].info.run_id, "loss")) == 1
        stop_server(server)
        training.send_signal(signal.SIGCONT)
        stdout, stderr = training.communicate(timeout=600)
    assert training.returncode == 0, stderr
    warnings = [line for line in stdout.splitlines() if line.startswith("warning: tracking in MLflow")]
    assert len(warnings) == 1, stdout
    run = RunFolder(run_dir)
    assert run.is_finished()

    with mlflow_server(tmp_path, port):  # The server is back, on the same store.
        result = cli("track", run_dir, "--track", uri)
        assert result.returncode == 0, result.stderr
        logged = runs_by_model(uri, run)
        assert set(logged) == {"Model_A"}
        assert logged["Model_A"].info.status == "FINISHED"
        assert_run_matches_folder(uri, logged["Model_A"], run, "Model_A")
        assert "model.keras" in artifact_names(uri, logged["Model_A"].info.run_id)

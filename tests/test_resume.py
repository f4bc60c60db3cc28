"""Runs survive SIGKILL, Ctrl-C and a second writer; resumed runs equal uninterrupted ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn.checkpoints import CHECKPOINT_FILE, FAULT_ENVIRONMENT, read_checkpoint
from mnist_cnn.runs import TEMPORARY_MARK
from tests.conftest import run_cli

ARGS = ["experiment", "--limit", "320", "--epochs", "4", "--seed", "5"]
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def start(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_cnn.cli", *ARGS, "--out", str(run_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def run_until(process: subprocess.Popen, marker: str, delay: float) -> None:
    """Read the run's output until a line contains ``marker``, wait ``delay``, SIGKILL it."""
    for line in process.stdout:
        if marker in line:
            time.sleep(delay)
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def weights(run_dir: Path, name: str) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(run_dir / name / "model.keras").get_weights()]


def history(run_dir: Path, name: str) -> list[list[str]]:
    lines = (run_dir / name / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    columns = [header.index(metric) for metric in ("epoch", *METRICS)]
    return [[line.split(",")[i] for i in columns] for line in lines[1:]]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = run_cli(*ARGS, "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


KILL_POINTS = [
    ("Model_A epoch   1/4", 0.0),   # Right after an epoch: usually inside the checkpoint write.
    ("Model_A epoch   3/4", 0.05),
    ("Model_B epoch   2/4", 0.0),
    ("Model_B epoch   4/4", 0.01),  # While Model_B is being evaluated and saved.
    ("Results", 0.0),               # While the comparison and predictions are written.
]


@pytest.mark.parametrize(("marker", "delay"), KILL_POINTS)
def test_sigkill_then_resume_equals_a_straight_run(tmp_path: Path, straight_run: Path, marker: str, delay: float) -> None:
    run_dir = tmp_path / "run"
    run_until(start(run_dir), marker, delay)
    resumed = run_cli("experiment", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_result(run_dir, straight_run)


def test_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path: Path, straight_run: Path) -> None:
    run_dir = tmp_path / "run"
    process = start(run_dir, env={FAULT_ENVIRONMENT: "Model_A:2"})
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    checkpoint = run_dir / "Model_A" / CHECKPOINT_FILE
    document, _ = read_checkpoint(checkpoint)
    assert document["state"]["epochs_done"] == 1  # The old checkpoint, whole.
    assert list((run_dir / "Model_A").glob(f".*{TEMPORARY_MARK}*"))  # The half-written one, never renamed.
    resumed = run_cli("experiment", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stdout
    assert not list(run_dir.rglob(f".*{TEMPORARY_MARK}*"))
    assert_same_result(run_dir, straight_run)


def assert_same_result(run_dir: Path, straight_run: Path) -> None:
    for name in ("Model_A", "Model_B"):
        assert history(run_dir, name) == history(straight_run, name), name
        for got, want in zip(weights(run_dir, name), weights(straight_run, name)):
            np.testing.assert_array_equal(got, want)
        assert not (run_dir / name / CHECKPOINT_FILE).exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert not (run_dir / "run.lock").exists()
    straight_predictions = json.loads((straight_run / "predictions.json").read_text())
    assert json.loads((run_dir / "predictions.json").read_text()) == straight_predictions


def test_ctrl_c_saves_says_how_to_resume_and_exits_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start(run_dir)
    for line in process.stdout:
        if "Model_A epoch   2/4" in line:
            break
    time.sleep(0.5)  # Let the checkpoint of epoch 2 land.
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"mnist-cnn experiment --resume {run_dir}" in stderr
    assert "Traceback" not in stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    document, _ = read_checkpoint(run_dir / "Model_A" / CHECKPOINT_FILE)
    assert document["state"]["epochs_done"] >= 2
    resumed = run_cli("experiment", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((run_dir / "Model_A" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] >= 2
    # Time before the interruption is counted.
    assert metrics["training_seconds"] >= sum(metrics["seconds_per_epoch"]) * 0.99
    assert "interrupted and resumed" in (run_dir / "comparison.md").read_text()


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run_dir / "run.lock").write_text(str(holder.pid))
        refused = run_cli(*ARGS, "--out", str(run_dir))
        assert refused.returncode == 2
        assert f"in use by process {holder.pid}" in refused.stderr
    finally:
        holder.kill()
        holder.wait()
    taken_over = run_cli("experiment", "--limit", "64", "--epochs", "1", "--models", "A", "--out", str(run_dir))
    assert taken_over.returncode == 0, taken_over.stderr
    assert not (run_dir / "run.lock").exists()


def test_rerunning_into_a_finished_run_keeps_it_and_other_settings_are_refused(straight_run: Path, tmp_path: Path) -> None:
    before = (straight_run / "Model_A" / "model.keras").read_bytes()
    again = run_cli(*ARGS, "--out", str(straight_run))
    assert again.returncode == 0, again.stderr
    assert "Model_A: already finished" in again.stdout and "Model_B: already finished" in again.stdout
    assert (straight_run / "Model_A" / "model.keras").read_bytes() == before
    other = run_cli("experiment", "--limit", "320", "--epochs", "5", "--seed", "5", "--out", str(straight_run))
    assert other.returncode == 2
    assert "epochs 4 -> 5" in other.stderr and "--resume" in other.stderr


def test_a_full_disk_gives_one_line_and_no_half_written_file(tmp_path: Path) -> None:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tiny tmpfs here (needs root)")
    try:
        result = run_cli("experiment", "--limit", "64", "--epochs", "1", "--out", str(mount_point / "run"))
        assert result.returncode == 2, result.stderr
        assert "No space left on device" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not list(mount_point.rglob(f".*{TEMPORARY_MARK}*"))
        status = json.loads((mount_point / "run" / "status.json").read_text())
        assert status["state"] == "failed"
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_the_model_fit_trainer_resumes_exactly_too(tmp_path: Path) -> None:
    """TensorFlow's model.fit path: killed in a checkpoint write, resumed, equal to a straight run."""
    arguments = ["train", "--model", "A", "--backend", "tensorflow", "--limit", "320", "--epochs", "4", "--seed", "5"]
    straight = tmp_path / "straight"
    assert run_cli(*arguments, "--out", str(straight)).returncode == 0
    killed = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-m", "mnist_cnn.cli", *arguments, "--out", str(killed)],
        capture_output=True, timeout=300, env={**os.environ, FAULT_ENVIRONMENT: "Model_A:3"},
    )
    assert process.returncode == -signal.SIGKILL
    resumed = run_cli("experiment", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    assert history(killed, "Model_A") == history(straight, "Model_A")
    for got, want in zip(weights(killed, "Model_A"), weights(straight, "Model_A")):
        np.testing.assert_array_equal(got, want)

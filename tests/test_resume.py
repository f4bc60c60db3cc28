"""Runs survive SIGKILL, Ctrl-C and a second writer; resumed runs equal uninterrupted ones.

Every kill happens at an exact point of the run (the ``MNIST_CNN_FAULT`` test hook), not
after a sleep, so each test checks the same moment on every machine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn.core.faults import FAULT_ENVIRONMENT
from mnist_cnn.core.files import TEMPORARY_MARK
from mnist_cnn.store.checkpoints import epochs_done, read_checkpoint_state
from mnist_cnn.store.runs import RunFolder
from tests.conftest import cli, run_cli

ARGS = ["experiment", "--limit", "320", "--epochs", "4", "--seed", "5"]
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def killed_at(point: str, run_dir: Path, arguments: list[str] = ARGS) -> subprocess.CompletedProcess:
    """Run the real CLI until it SIGKILLs itself at ``point``."""
    result = run_cli(*arguments, "--out", run_dir, env={FAULT_ENVIRONMENT: f"kill@{point}"})
    assert result.returncode == -signal.SIGKILL, (point, result.stderr)
    return result


def weights(run_dir: Path, name: str) -> list[np.ndarray]:
    return [np.asarray(w) for w in RunFolder(run_dir).model(name).load_model().get_weights()]


def history(run_dir: Path, name: str) -> list[list[float]]:
    """The history without the times (which differ from run to run)."""
    return [[row[metric] for metric in ("epoch", *METRICS)] for row in RunFolder(run_dir).model(name).read_history()]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = cli(*ARGS, "--out", run_dir)
    assert result.returncode == 0, result.stderr
    return run_dir


def assert_same_model(run_dir: Path, straight_run: Path, name: str) -> None:
    """The same history (times aside) and, bit for bit, the same weights."""
    assert history(run_dir, name) == history(straight_run, name), name
    for got, want in zip(weights(run_dir, name), weights(straight_run, name), strict=True):
        np.testing.assert_array_equal(got, want)


def assert_same_result(run_dir: Path, straight_run: Path) -> None:
    for name in ("Model_A", "Model_B"):
        assert_same_model(run_dir, straight_run, name)
        assert not RunFolder(run_dir).model(name).has_checkpoint()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert not (run_dir / "run.lock").exists()
    assert RunFolder(run_dir).read_predictions() == RunFolder(straight_run).read_predictions()


# Where the run is killed, and how many of its 2 x 4 epochs are then done (what a sweep's ETA counts).
KILL_POINTS = {
    "epoch-end:Model_A:1": 1,  # A checkpoint just written.
    "epoch-end:Model_A:3": 3,
    "epoch-end:Model_B:2": 6,  # Model_A finished, Model_B in training.
    "model-saved:Model_B": 8,  # Model_B saved, its metrics not yet written.
    "reports": 8,  # Both models finished, comparison and predictions not yet written.
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_resume_equals_a_straight_run(tmp_path: Path, straight_run: Path, point: str) -> None:
    run_dir = tmp_path / "run"
    killed_at(point, run_dir)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # As a kill leaves it.
    run = RunFolder(run_dir)
    assert sum(epochs_done(run.model(name)) for name in ("Model_A", "Model_B")) == KILL_POINTS[point]
    resumed = cli("experiment", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_result(run_dir, straight_run)


@pytest.mark.slow
def test_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_checkpoint(
    tmp_path: Path, straight_run: Path
) -> None:
    run_dir = tmp_path / "run"
    killed_at("checkpoint-write:Model_A:2", run_dir)
    checkpoint = RunFolder(run_dir).model("Model_A").checkpoint_path
    assert read_checkpoint_state(checkpoint).epochs_done == 1  # The old checkpoint, whole.
    assert list(checkpoint.parent.glob(f".*{TEMPORARY_MARK}*"))  # The half-written one, never renamed.
    resumed = cli("experiment", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "Model_A: resuming after epoch 1" in resumed.stdout
    assert not list(run_dir.rglob(f".*{TEMPORARY_MARK}*"))
    assert_same_result(run_dir, straight_run)


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_resume_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT, delivered right after Model_A's second checkpoint."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENVIRONMENT, "interrupt@epoch-end:Model_A:2")
    interrupted = cli(*ARGS, "--out", run_dir)
    monkeypatch.delenv(FAULT_ENVIRONMENT)
    assert interrupted.returncode == 130
    assert interrupted.stderr.splitlines() == [
        f"mnist-cnn: interrupted; finished epochs are saved. Resume with: mnist-cnn experiment --resume {run_dir}"
    ]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert read_checkpoint_state(RunFolder(run_dir).model("Model_A").checkpoint_path).epochs_done == 2
    resumed = cli("experiment", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    metrics = RunFolder(run_dir).model("Model_A").read_metrics()
    assert metrics.resumed_from_epoch == 2
    assert metrics.training_seconds >= sum(metrics.seconds_per_epoch) * 0.99  # Time before the interruption counts.
    assert "interrupted and resumed (Model_A resumed after epoch 2)" in (run_dir / "comparison.md").read_text()


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run_dir / "run.lock").write_text(str(holder.pid))
        refused = cli(*ARGS, "--out", run_dir)
        assert refused.returncode == 2
        assert f"in use by process {holder.pid}" in refused.stderr
    finally:
        holder.kill()
        holder.wait()
    taken_over = cli("experiment", "--limit", "64", "--epochs", "1", "--models", "A", "--out", run_dir)
    assert taken_over.returncode == 0, taken_over.stderr
    assert not (run_dir / "run.lock").exists()


@pytest.mark.slow
def test_rerunning_into_a_finished_run_keeps_it_and_other_settings_are_refused(
    straight_run: Path, tmp_path: Path
) -> None:
    before = (straight_run / "Model_A" / "model.keras").read_bytes()
    again = cli(*ARGS, "--out", straight_run)
    assert again.returncode == 0, again.stderr
    assert "Model_A: already finished" in again.stdout and "Model_B: already finished" in again.stdout
    assert (straight_run / "Model_A" / "model.keras").read_bytes() == before
    other = cli("experiment", "--limit", "320", "--epochs", "5", "--seed", "5", "--out", straight_run)
    assert other.returncode == 2
    assert "epochs 4 -> 5" in other.stderr and "--resume" in other.stderr


def test_a_finished_run_given_again_is_not_marked_resumed(tmp_path: Path) -> None:
    """`make smoke` twice: the second trains nothing and says the run was not resumed. A run stopped
    in its reports (its models trained) and completed by a second command was resumed, and stays so."""
    arguments = ("experiment", "--models", "A", "--limit", "64", "--epochs", "1", "--out", tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    for _ in range(2):
        result = cli(*arguments)
        assert result.returncode == 0, result.stderr
        assert run.read_status()["state"] == "finished" and run.read_status()["resumed"] is False
        assert "<td>resumed</td><td>no</td>" in run.report_path.read_text()
    assert "Model_A: already finished" in result.stdout
    run.write_status("running")  # As a kill while it wrote its reports leaves it.
    for _ in range(2):
        result = cli(*arguments)
        assert result.returncode == 0, result.stderr
        assert run.read_status()["resumed"] is True
        assert "<td>resumed</td><td>yes</td>" in run.report_path.read_text()


@pytest.mark.slow
def test_a_full_disk_gives_one_line_and_no_half_written_file(tmp_path: Path) -> None:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tiny tmpfs here (needs root)")
    try:
        result = cli("experiment", "--limit", "64", "--epochs", "1", "--out", mount_point / "run")
        assert result.returncode == 2, result.stderr
        assert "No space left on device" in result.stderr and "free some space" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not list(mount_point.rglob(f".*{TEMPORARY_MARK}*"))
        status = json.loads((mount_point / "run" / "status.json").read_text())
        assert status["state"] == "failed"
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.slow
def test_the_model_fit_trainer_resumes_exactly_too(tmp_path: Path) -> None:
    """TensorFlow's model.fit path: killed in a checkpoint write, resumed, equal to a straight run."""
    arguments = ["train", "--model", "A", "--backend", "tensorflow", "--limit", "320", "--epochs", "4", "--seed", "5"]
    straight = tmp_path / "straight"
    assert run_cli(*arguments, "--out", straight).returncode == 0
    killed = tmp_path / "killed"
    killed_at("checkpoint-write:Model_A:3", killed, arguments)
    resumed = run_cli("experiment", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    assert_same_model(killed, straight, "Model_A")


@pytest.mark.slow
def test_a_batchnorm_and_dropout_network_resumes_bit_identical(tmp_path: Path) -> None:
    """The fused step draws batch b's dropout masks from (seed, epoch, b) only, and BatchNorm's
    moving statistics travel in the checkpoint: killed after its first epoch and resumed, a listed
    network with both ends bit-identical to a straight run (its moving mean and variance too)."""
    layers = '["conv 8 3 linear", "batchnorm", "relu", "pool 2", "dropout 0.3", "flatten", "dense 32", "dropout 0.5"]'
    arguments = ["experiment", "--models", "BD", "--variant", f"BD: layers={layers}", "--limit", "320"]
    arguments += ["--epochs", "3", "--seed", "5"]
    straight = tmp_path / "straight"
    assert cli(*arguments, "--out", straight).returncode == 0
    killed = tmp_path / "killed"
    killed_at("epoch-end:Model_BD:1", killed, arguments)
    resumed = cli("experiment", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "Model_BD: resuming after epoch 1" in resumed.stdout
    assert json.loads((killed / "config.json").read_text())["trainers"]["Model_BD"]["trainer"] == "fused"
    assert_same_model(killed, straight, "Model_BD")
    model = RunFolder(killed).model("Model_BD").load_model()
    moving = model.get_layer("conv_batchnorm").moving_variance.numpy()
    assert not np.allclose(moving, 1.0)  # Training moved the statistics that were saved.


def test_a_run_published_unfinished_trains_only_the_models_it_lacks(tmp_path: Path, straight_run: Path) -> None:
    """What publish keeps of an unfinished seed: Model_A's results and predictions without its
    model file, and no Model_B. The resume keeps Model_A from its results and trains Model_B,
    as the straight run did."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(straight_run, run_dir)
    run = RunFolder(run_dir)
    run.model("Model_A").model_path.unlink()
    shutil.rmtree(run.model("Model_B").path)
    run.write_status("interrupted")
    assert run.model("Model_A").has_results() and not run.model("Model_A").is_finished()

    result = cli("experiment", "--resume", run_dir)
    assert result.returncode == 0, result.stderr
    assert "Model_A: already finished, kept from its results" in result.stdout
    assert_same_model(run_dir, straight_run, "Model_B")
    assert history(run_dir, "Model_A") == history(straight_run, "Model_A")
    assert run.read_predictions() == RunFolder(straight_run).read_predictions()
    assert run.model("Model_B").read_predictions() == RunFolder(straight_run).model("Model_B").read_predictions()
    assert run.read_status()["state"] == "finished" and run.read_status()["resumed"]

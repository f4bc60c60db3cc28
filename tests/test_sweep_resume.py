"""A sweep SIGKILLed after its first trial resumes without training that trial again.

Its own file, so the parallel suite (make test: one file per process) runs it beside the other sweeps.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_cnn.core.sweep_results import SweepStatistics
from mnist_cnn.store.sweeps import SweepFolder

from .conftest import cli

SEEDS = (0, 1)
SETTINGS = ("--limit", "300", "--epochs", "2")


@pytest.mark.slow
def test_sweep_killed_after_its_first_trial_resumes_without_rerunning_it(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "mnist_cnn.cli", "compare", "--seeds", str(len(SEEDS))]
    driver = subprocess.Popen(
        [*command, *SETTINGS, "--workers", "1", "--out", str(sweep_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in driver.stdout:
            if "trials done" in line:
                break
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    sweep = SweepFolder(sweep_dir)
    first = sweep.seed_run(0)
    assert first.is_finished() and not sweep.statistics_path.exists()
    assert not sweep.seed_run(1).is_finished()
    finished_trial = first.read_trial()
    time.sleep(1)  # Ray's local processes follow their killed driver down.

    result = cli("compare", "--resume", sweep_dir)
    assert result.returncode == 0, result.stderr
    assert "seed 0: already finished" in result.stdout
    assert first.read_trial() == finished_trial  # Not trained again.
    resumed = SweepStatistics.from_json(sweep.read_statistics())
    assert resumed.seeds_finished == SEEDS
    # The statistics are those of the seeds' own folders (a trial equals a run alone: test_compare).
    for name in ("Model_A", "Model_B"):
        for field in ("test_accuracy", "test_loss", "best_val_accuracy"):
            expected = tuple(getattr(sweep.seed_run(seed).model(name).read_metrics(), field) for seed in SEEDS)
            assert resumed.values(name, field) == expected
    assert resumed.comparison is not None
    differences = [
        sweep.seed_run(seed).model("Model_B").read_metrics().test_accuracy
        - sweep.seed_run(seed).model("Model_A").read_metrics().test_accuracy
        for seed in SEEDS
    ]
    assert resumed.comparison.differences["test_accuracy"].differences == pytest.approx(differences, abs=1e-12)

"""Shared fixtures: small data and one real smoke run of the CLI that several tests read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SMOKE_LIMIT = 300
SMOKE_EPOCHS = 2


def run_cli(*arguments: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real ``mnist-cnn`` entry point in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "KERAS_HOME": str(cwd or Path.cwd()) + "/.keras-empty"},
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny experiment (both models, 2 epochs, 300 images) through the real CLI."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_cli("experiment", "--limit", str(SMOKE_LIMIT), "--epochs", str(SMOKE_EPOCHS), "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="session")
def small_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A small, valid MNIST-layout data set: 7,000 training and 50 test images."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(7000, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, size=7000).astype(np.uint8)
    x_test = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    y_test = rng.integers(0, 10, size=50).astype(np.uint8)
    return (x_train, y_train), (x_test, y_test)

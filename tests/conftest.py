"""Shared fixtures: small data, the CLI run in-process or as a real process, one smoke run."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# An empty Keras home: --data auto must take the bundled copy, never the network.
os.environ["KERAS_HOME"] = str(Path(__file__).resolve().parent.parent / ".keras-empty")

SMOKE_LIMIT = 300
SMOKE_EPOCHS = 2


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*arguments: str, stdin: bytes | None = None) -> Result:
    """Run ``mnist-cnn ARGUMENTS`` in this process: the same ``main`` a user runs, minus the
    start-up of a new Python and Keras (the suite stays fast)."""
    from mnist_cnn.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(argument) for argument in arguments])
            except SystemExit as exit_:  # argparse's errors and --help.
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        sys.stdin = saved_stdin
    return Result(code, out.getvalue(), err.getvalue())


def run_cli(*arguments: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real ``mnist-cnn`` entry point in a new process, where the process is what is tested."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn.cli", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    """A loopback port nothing listens on now (for a server a test starts, or one it wants absent)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny experiment (both models, 2 epochs, 300 images) through the real entry point.

    TF_ENABLE_ONEDNN_OPTS=1 makes TensorFlow log on import as it does on AVX-512 CPUs, on
    any CPU: the run must still print nothing to stderr that is not mnist-cnn's own.
    """
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_cli(
        "experiment", "--limit", SMOKE_LIMIT, "--epochs", SMOKE_EPOCHS, "--out", run_dir,
        env={"TF_ENABLE_ONEDNN_OPTS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return run_dir


@pytest.fixture(scope="session")
def onnx_run(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the smoke run with its ONNX exports (``mnist-cnn export``); the smoke run stays as it is."""
    from tests.onnx_exports import export_onnx

    run_dir = tmp_path_factory.mktemp("onnx") / "run"
    shutil.copytree(smoke_run, run_dir)
    export_onnx(run_dir)
    return run_dir


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """The app served by uvicorn on a loopback port in a background thread, for real HTTP."""
    import uvicorn

    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def small_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A small, valid MNIST-layout data set: 7,000 training and 50 test images."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(7000, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, size=7000).astype(np.uint8)
    x_test = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    y_test = rng.integers(0, 10, size=50).astype(np.uint8)
    return (x_train, y_train), (x_test, y_test)

"""Shared fixtures: small data, the CLI run in-process or as a real process, one smoke run."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# An empty Keras home: --data auto must take the bundled copy, never the network.
os.environ["KERAS_HOME"] = str(Path(__file__).resolve().parent.parent / ".keras-empty")


def share_jax_compilations() -> None:
    """One JAX persistent compilation cache for the session: this process, pytest-xdist's workers
    (started after this, they inherit it), and every mnist-cnn process, Ray worker and node a test
    starts. The suite trains the same few networks on the same shapes in dozens of processes, and
    XLA compiling them again was about a third of each small run (15 of 48 s). A cached executable
    is the one XLA compiled: the same results, bit for bit. Only compilations of 0.2 s or more are
    kept (the training steps and the predict functions, 15 entries for a smoke run): with every
    one kept (Keras's hundreds of tiny ops), each write scans the whole cache under its lock, and
    in-process tests that compile many networks took twice as long. A maximum size makes JAX lock
    the cache, so that no process reads an entry half written.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # A worker (set by the main process), or the user's own.
        return
    import atexit
    import tempfile

    folder = tempfile.mkdtemp(prefix="mnist-cnn-tests-jax-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=folder,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_COMPILATION_CACHE_MAX_SIZE=str(4 * 1024**3),
    )


share_jax_compilations()

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


def bench_script(name: str) -> Any:
    """A script of bench/ (``faults`` for bench/faults.py), imported by path: bench/ is not a
    package, and its scripts hold code the tests share (the probes, the invocations timed)."""
    import importlib.util

    bench = Path(__file__).resolve().parent.parent / "bench"
    if str(bench) not in sys.path:  # As when run as `python bench/NAME.py`: bench_helpers imports.
        sys.path.append(str(bench))
    path = bench / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drawn_seven_png(size: tuple[int, int] = (300, 200), width: int = 16) -> bytes:
    """A 7 drawn in black on white, as a JPEG photo of paper would hold it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).line([(120, 40), (200, 40), (140, 170)], fill="black", width=width)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def free_port() -> int:
    """A loopback port nothing listens on now (for a server a test starts, or one it wants absent)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """``make(folder)`` once per test session, whichever of pytest-xdist's workers asks first: the
    others wait for it and read the same folder (each worker would otherwise make its own copy).

    Without xdist the folder lies under this session's own temporary folder; with it, under the
    folder the workers' temporary folders share, which is new for each session too.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # What a worker that failed making it left.
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny experiment (both models, 2 epochs, 300 images) through the real entry point;
    one for the whole session (tests read it, none writes into it).

    TF_ENABLE_ONEDNN_OPTS=1 makes TensorFlow log on import as it does on AVX-512 CPUs, on
    any CPU: the run must still print nothing to stderr that is not mnist-cnn's own.
    """

    def make(folder: Path) -> None:
        result = run_cli(
            "experiment", "--limit", SMOKE_LIMIT, "--epochs", SMOKE_EPOCHS, "--out", folder / "run",
            env={"TF_ENABLE_ONEDNN_OPTS": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr

    return shared_folder(tmp_path_factory, "smoke", make) / "run"


ONNX_EXPORT_ANSWER = "export-answer.json"  # Beside onnx_run: what its `mnist-cnn export` printed.


@pytest.fixture(scope="session")
def onnx_run(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the smoke run with its ONNX exports (``mnist-cnn export``); the smoke run stays as it is.
    One for the whole session, as the smoke run is."""
    from tests.onnx_exports import export_onnx

    def make(folder: Path) -> None:
        shutil.copytree(smoke_run, folder / "run")
        result = export_onnx(folder / "run")
        (folder / ONNX_EXPORT_ANSWER).write_text(json.dumps(dataclasses.asdict(result)))

    return shared_folder(tmp_path_factory, "onnx", make) / "run"


@pytest.fixture(scope="session")
def onnx_export(onnx_run: Path) -> Result:
    """What ``mnist-cnn export ONNX_RUN --format onnx`` answered when it made onnx_run's exports."""
    return Result(**json.loads((onnx_run.parent / ONNX_EXPORT_ANSWER).read_text()))


@contextlib.contextmanager
def served(app: Any, limits: Any = None) -> Iterator[str]:
    """The app served by uvicorn on a loopback port in a background thread, for real HTTP, with
    the HTTP limits ``serve`` gives it (``limits``: an HttpLimits, else the defaults)."""
    import uvicorn

    from mnist_cnn.core.config import HttpLimits
    from mnist_cnn.serve.process import server_options

    port = free_port()
    options = server_options(limits or HttpLimits())
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
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

"""How long ``mnist-cnn`` takes to refuse a typo: bad flags, paths and ports, as real processes.

Every value, path and port is checked before Keras, JAX, TensorFlow, Ray or numba load
(cli.PRECHECKS), so each of these invocations should answer with one line and exit 2 in about
the time Python takes to start. Before that check existed they took 13 to 92 s on a loaded
2-core machine. Each invocation runs as ``python -m mnist_cnn.cli ...`` against a stand-in run
folder (a config.json and empty model files: enough for the checks, never loaded) and a port
this script holds open; the table gives each one's exit code and wall-clock seconds, then the
max and the median.

Usage: python bench/cli_refusals.py [--repeat 1]

tests/test_cli_speed.py runs the same invocations in one process and checks that none loads
Keras, JAX, TensorFlow, Ray, numba or PyTorch (no timing there: a shared machine varies).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = "RUN"  # Stands for the stand-in run folder in the invocations below.
TAKEN_PORT = "TAKEN_PORT"  # Stands for a port something already listens on.
BAD_VARIANTS = "BAD_VARIANTS"  # Stands for a variants file with an unknown field.


def bad_invocations() -> list[list[str]]:
    """The typos of the issue "The first ten minutes" and their like; each must be exit 2, one line."""
    return [
        ["serve", RUN, "--runtime", "tensorrt"],
        ["serve", RUN, "--runtime", "bogus"],
        ["serve", RUN, "--max-batch", "0"],
        ["serve", RUN, "--port", TAKEN_PORT],
        ["serve", RUN, "--port", "0"],
        ["serve", RUN, "--port", "70000"],
        ["serve", RUN, "--workers", "0"],
        ["serve", RUN, "--queue-size", "0"],
        ["serve", RUN, "--batch-window-ms", "-1"],
        ["serve", "/etc/passwd"],
        ["experiment", "--epochs", "0"],
        ["experiment", "--epochs", "-1"],
        ["experiment", "--epochs", "abc"],
        ["experiment", "--limit", "-5"],
        ["experiment", "--learning-rate", "0"],
        ["experiment", "--batch-size", "0"],
        ["experiment", "--resume", "/nonexistent"],
        ["experiment", "--device", "gpu"],
        ["train", "--model", "A", "--device", "gpu", "--backend", "tensorflow"],
        ["compare", "--seeds", "0"],
        ["compare", "--workers", "0"],
        ["train", "--model", "Z"],
        ["variants", "--variants", BAD_VARIANTS],
        ["evaluate", "/nonexistent"],
        ["predict", "/nonexistent-run", "x.png"],
        ["report", "/nonexistent"],
        ["export", RUN, "--format", "bogus"],
        ["track", "/nonexistent", "--track", "sqlite:///mlflow.db"],
        ["experiment", "--track", "http://127.0.0.1:9"],
        ["publish", "/nonexistent", "--out", "copy"],
    ]


def make_stand_in_run(folder: Path) -> Path:
    """A run folder the checks accept: the default config, and an (empty) model file per model."""
    from mnist_cnn.core.config import ExperimentConfig

    config = ExperimentConfig()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"config": config.to_dict()}), encoding="utf-8")
    for spec in config.model_specs():
        (folder / spec.name).mkdir(exist_ok=True)
        (folder / spec.name / "model.keras").write_bytes(b"")
    return folder


def make_bad_variants(path: Path) -> Path:
    path.write_text("[F16]\nfilters = 16\nwidth = 3\n", encoding="utf-8")
    return path


def listening_socket() -> socket.socket:
    """A loopback socket that listens (so ``serve --port`` on its port is refused as taken)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def substitute(invocation: list[str], values: dict[str, str]) -> list[str]:
    return [values.get(argument, argument) for argument in invocation]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each invocation; the fastest is shown")
    args = parser.parse_args()
    from mnist_cnn.core.environment import cpu_description

    with tempfile.TemporaryDirectory(prefix="cli-refusals-") as scratch, listening_socket() as taken:
        root = Path(scratch)
        values = {
            RUN: str(make_stand_in_run(root / "run")),
            TAKEN_PORT: str(taken.getsockname()[1]),
            BAD_VARIANTS: str(make_bad_variants(root / "bad.toml")),
        }
        rows = []
        for invocation in bad_invocations():
            command = [sys.executable, "-m", "mnist_cnn.cli", *substitute(invocation, values)]
            times, code, lines = [], None, []
            for _ in range(args.repeat):
                started = time.perf_counter()
                finished = subprocess.run(command, capture_output=True, text=True, cwd=root, env=os.environ.copy())
                times.append(time.perf_counter() - started)
                code, lines = finished.returncode, finished.stderr.strip().splitlines()
            rows.append((" ".join(invocation), code, min(times), len(lines)))
    width = max(len(row[0]) for row in rows)
    print(f"mnist-cnn refusing bad invocations, each a new process; CPU: {cpu_description()}")
    print(f"{'invocation':<{width}}  exit  stderr lines  seconds")
    for invocation, code, seconds, lines in rows:
        print(f"{invocation:<{width}}  {code:>4}  {lines:>12}  {seconds:7.2f}")
    seconds = [row[2] for row in rows]
    print(f"max {max(seconds):.2f} s, median {statistics.median(seconds):.2f} s over {len(rows)} invocations")
    wrong = [row[0] for row in rows if row[1] != 2 or row[3] != 1]
    if wrong:
        print(f"not refused with exit 2 and one line: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A typo is refused before Keras, JAX, TensorFlow, Ray or numba load (cli.PRECHECKS), and
--help and ``variants`` never load them: checked by what a fresh process has imported, not by
the clock (bench/cli_refusals.py times the same invocations as real processes)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import bench_script

HEAVY = ("keras", "jax", "tensorflow", "ray", "numba", "torch")
SUBCOMMANDS = ("experiment", "train", "compare", "track", "publish", "report", "variants", "evaluate", "predict")
SUBCOMMANDS += ("serve", "export")

# Runs each invocation through cli.main in this one fresh process, and after each one says what
# it printed, its exit code, and which heavy packages are loaded by then.
RUNNER = """
import contextlib, io, json, sys
from mnist_cnn.cli import main
heavy = {heavy!r}
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    loaded = sorted(name for name in heavy if name in sys.modules)
    results.append({{"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "loaded": loaded}})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def refusals_bench():
    """bench/cli_refusals.py, imported by path (bench/ is not a package): the invocations it times."""
    return bench_script("cli_refusals")


def run_in_fresh_process(invocations: list[list[str]], cwd: Path) -> list[dict]:
    finished = subprocess.run(
        [sys.executable, "-c", RUNNER.format(heavy=HEAVY)],
        input=json.dumps(invocations),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


@pytest.fixture(scope="module")
def refusals(refusals_bench, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every bad invocation of the benchmark, run once in one fresh process, by its text."""
    root = tmp_path_factory.mktemp("refusals")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        values = {
            refusals_bench.RUN: str(refusals_bench.make_stand_in_run(root / "run")),
            refusals_bench.TAKEN_PORT: str(taken.getsockname()[1]),
            refusals_bench.BAD_VARIANTS: str(refusals_bench.make_bad_variants(root / "bad.toml")),
        }
        invocations = [refusals_bench.substitute(argv, values) for argv in refusals_bench.bad_invocations()]
        results = run_in_fresh_process(invocations, root)
    return {" ".join(argv): result for argv, result in zip(refusals_bench.bad_invocations(), results, strict=True)}


def test_every_bad_invocation_is_refused_in_one_line_before_keras_loads(refusals: dict[str, dict]) -> None:
    assert len(refusals) >= 20
    for invocation, result in refusals.items():
        assert result["code"] == 2, (invocation, result["stderr"])
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1, (invocation, result["stderr"])
        assert "error:" in lines[0] and "Traceback" not in result["stderr"], (invocation, result["stderr"])
        assert not result["loaded"], f"{invocation} loaded {', '.join(result['loaded'])} before refusing"


def test_the_refusals_say_what_is_wrong(refusals: dict[str, dict]) -> None:
    expected = {
        "serve RUN --runtime tensorrt": "unknown runtime 'tensorrt'",
        "serve RUN --port TAKEN_PORT": "is already in use",
        "serve RUN --port 0": "port must be a whole number from 1 to 65535",
        "serve RUN --max-batch 0": "max batch must be a whole number of at least 1",
        "serve /etc/passwd": "/etc/passwd is not a folder",
        "experiment --epochs 0": "epochs must be a whole number of at least 1",
        "compare --seeds 0": "no seeds",
        "experiment --device gpu": "this installation's JAX has no GPU support",
        "train --model A --device gpu --backend tensorflow": "--device gpu trains on the jax backend, not tensorflow",
        "train --model Z": "unknown model 'Z'",
        "evaluate /nonexistent": "run folder /nonexistent does not exist",
        "predict /nonexistent-run x.png": "run folder /nonexistent-run does not exist",
        "report /nonexistent": "run folder /nonexistent does not exist",
        "experiment --track http://127.0.0.1:9": "no MLflow tracking server can be reached there",
    }
    for invocation, message in expected.items():
        assert message in refusals[invocation]["stderr"], (invocation, refusals[invocation]["stderr"])


def test_help_of_every_subcommand_and_variants_load_no_heavy_package(tmp_path: Path) -> None:
    invocations = [["--help"], *([command, "--help"] for command in SUBCOMMANDS), ["variants"]]
    for result in run_in_fresh_process(invocations, tmp_path):
        assert result["code"] == 0, (result["argv"], result["stderr"])
        assert result["stdout"].strip(), result["argv"]
        assert not result["loaded"], f"{' '.join(result['argv'])} loaded {', '.join(result['loaded'])}"


def test_variants_lists_the_parameter_counts_without_keras(tmp_path: Path) -> None:
    [result] = run_in_fresh_process([["variants", "--variant", "F8: filters=8"]], tmp_path)
    assert result["code"] == 0, result["stderr"]
    rows = {line.split()[0]: line for line in result["stdout"].splitlines()[1:]}
    assert "1,103,230" in rows["A"] and "2,185,150" in rows["B"] and "F8" in rows
    assert not result["loaded"], result["loaded"]

"""A real Ray cluster on this machine, started as a user starts one: ``ray start --head`` and
``ray start --address`` in their own processes, on loopback, with Ray 2.60's token
authentication, then ``mnist-cnn compare`` joining it from another process.

Each "machine" is a home folder (where Ray keeps ~/.ray/auth_token) and a short Ray temp
folder (RAY_TMPDIR: Ray's sockets must fit in 107 characters), both under one new folder in
/tmp, so the user's ~/.ray and /tmp/ray are left alone. Nodes run with ``--block`` so that
each is one process this file owns: SIGTERM stops it and the node's processes with it (Ray's
own ``ray stop`` ends every Ray process on the machine, other people's included), and any
process left naming the folder is killed by its id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from .conftest import cli, free_port

RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 120  # One `ray start` on a busy 2-core machine takes 10 to 30 seconds.
STOP_TIMEOUT_S = 60
SWEEP_TIMEOUT_S = 480
SWEEP = ("compare", "--seeds", "2", "--models", "A", "--epochs", "1", "--limit", "300")
# What Ray's C++ and Python loggers start their lines with ("[2026-11-25 13:32:00,623 W 157 157] gcs_client.cc").
RAY_LOG_MARKS = ("gcs_client.cc", "InvalidAuthToken", "WARNING", "(raylet)", "[20")
# Matplotlib's font list and the like stay where they are when HOME moves.
XDG = {"XDG_CACHE_HOME": ".cache", "XDG_CONFIG_HOME": ".config"}


@dataclasses.dataclass
class Machine:
    """One machine of the cluster: its home (with or without ~/.ray/auth_token) and Ray's temp folder."""

    home: Path
    ray_tmpdir: Path

    @classmethod
    def under(cls, root: Path, name: str) -> Machine:
        machine = cls(home=root / name, ray_tmpdir=root / "t")  # One file system: one /tmp/ray.
        machine.home.mkdir()
        machine.ray_tmpdir.mkdir(exist_ok=True)
        return machine

    @property
    def token_file(self) -> Path:
        return self.home / ".ray" / "auth_token"

    def env(self, **more: str) -> dict[str, str]:
        """A user's environment on this machine: none of the test session's RAY_ settings."""
        caches = {name: os.environ.get(name, str(Path.home() / folder)) for name, folder in XDG.items()}
        plain = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        return {**plain, **caches, "HOME": str(self.home), "RAY_TMPDIR": str(self.ray_tmpdir), **more}


@contextlib.contextmanager
def ray_node(arguments: Callable[[], list[str]], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``ray start --block ARGUMENTS`` until the block ends; it is up when Ray says it started.

    Ray gives a new node's raylet 30 seconds to register, fixed; on this 2-core machine under
    load that can pass (seen twice in a row while the browser tests ran beside it, and three
    times in a row on a slower CPU while the other test process trained). Such a start is tried
    again, up to five times, with new ports (``arguments()``), after a pause that lets the
    other test process's burst of work pass.
    """
    attempts = 5
    for attempt in range(1, attempts + 1):
        node = start_node(arguments(), env, log)
        if node.poll() is None:
            break
        text = log.read_text()
        assert attempt < attempts and "timed out during startup" in text, (
            f"ray start exited {node.returncode}:\n{text[-3000:]}"
        )
        time.sleep(10 * attempt)
    try:
        yield node
    finally:
        stop_node(node)


def start_node(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The node once started, or once its ``ray start`` ended without starting."""
    with open(log, "w") as output:
        node = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *arguments],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # A Ctrl-C in the test run reaches the node through teardown only.
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text() and node.poll() is None:
        if time.monotonic() > deadline:
            stop_node(node)
            raise AssertionError(f"ray start not up in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return node


def stop_node(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.terminate()  # `ray start --block` drains its node and stops the node's processes.
        try:
            node.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=10)


def kill_processes_naming(folder: Path) -> None:
    """Whatever Ray left running from this test's folder (its command line names the folder), by id."""
    left = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(folder) in argument for argument in process.info["cmdline"] or ()):
                process.kill()
                left.append(process)
    psutil.wait_procs(left, timeout=10)


@contextlib.contextmanager
def machines_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Short: Ray's socket paths live below it.
    try:
        yield root
    finally:
        kill_processes_naming(root)
        shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass
class Cluster:
    port: int
    head: Machine
    worker: Machine
    root: Path


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head that turned token authentication on by itself, as Ray 2.60's `ray start --head` does on
    a machine with a token (made by `ray get-auth-token --generate`, or by any local ray.init()), and
    a worker node on another "machine" given a copy of the token and RAY_AUTH_MODE=token (README)."""
    with machines_root() as root:
        head, worker = Machine.under(root, "head"), Machine.under(root, "worker")
        made = subprocess.run(
            [RAY, "get-auth-token", "--generate"], env=head.env(), capture_output=True, text=True, timeout=60
        )
        assert made.returncode == 0 and head.token_file.read_text() == made.stdout, made.stderr
        worker.token_file.parent.mkdir()
        shutil.copy(head.token_file, worker.token_file)
        port = 0

        def head_arguments() -> list[str]:
            nonlocal port
            port = free_port()
            return [
                "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
                # Ray's fixed default ports, free here whatever else runs on the machine.
                "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            ]  # fmt: skip

        def worker_arguments() -> list[str]:
            return [
                "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                "--dashboard-agent-listen-port", str(free_port()),
            ]  # fmt: skip

        with ray_node(head_arguments, head.env(), root / "head.log"):
            assert "Token authentication is enabled for this Ray cluster" in (root / "head.log").read_text()
            with ray_node(worker_arguments, worker.env(RAY_AUTH_MODE="token"), root / "worker.log"):
                yield Cluster(port=port, head=head, worker=worker, root=root)


def run_compare(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The real entry point with exactly ``env`` (conftest's run_cli adds to the test session's)."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn.cli", *SWEEP, *arguments],
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
        env=env,
    )


@pytest.mark.slow
def test_compare_joins_a_token_cluster_of_ray_start_processes(cluster: Cluster) -> None:
    """From the worker's machine, with the head's token in ~/.ray/auth_token and no RAY_ setting:
    the README's `--ray-address HOST:PORT`. One CPU a node, two seeds: one trial on each node."""
    out = cluster.root / "sweep"
    address = f"127.0.0.1:{cluster.port}"
    result = run_compare("--ray-address", address, "--out", str(out), env=cluster.worker.env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # None of Ray's log lines, no warning.
    assert "on 2 Ray node(s) with 2 CPUs" in result.stdout, result.stdout
    assert result.stdout.count("trials done") == 2
    trials = [json.loads((out / f"seed-{seed}" / "trial.json").read_text()) for seed in (0, 1)]
    assert all(trial["epochs_trained"] == 1 and trial["cpus_reserved"] == 1 for trial in trials), trials
    assert len({trial["node_id"] for trial in trials}) == 2, trials  # Both nodes ran a trial.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "requires its token and this machine has none: copy the head's ~/.ray/auth_token"),
        ("not-the-head-s-token", "refused the token in RAY_AUTH_TOKEN: set it to the head's token"),
    ],
    ids=["no-token", "wrong-token"],
)
def test_joining_without_the_head_s_token_is_one_line_and_exit_2(
    cluster: Cluster, token: str | None, message: str, tmp_path: Path
) -> None:
    """A machine with no token (a fresh home), or a wrong one: one line that says what to set,
    at once, instead of Ray's minute of InvalidAuthToken warnings."""
    stranger = Machine(home=tmp_path, ray_tmpdir=cluster.head.ray_tmpdir)
    env = stranger.env() if token is None else stranger.env(RAY_AUTH_TOKEN=token)
    started = time.monotonic()
    result = run_compare("--ray-address", f"127.0.0.1:{cluster.port}", "--out", str(tmp_path / "sweep"), env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"the Ray cluster at 127.0.0.1:{cluster.port} {message}" in result.stderr
    assert not any(mark in result.stderr for mark in RAY_LOG_MARKS), result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "sweep" / "seed-0").exists()


@pytest.mark.slow
def test_local_compare_starts_its_own_ray_after_a_ray_start_cluster_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A head started and stopped for real (SIGTERM to `ray start --block`, as Ctrl-C does) leaves
    its address in RAY_TMPDIR/ray/ray_current_cluster; a plain ray.init() took that for a
    cluster to join and refused the sweep's num_cpus. The local default must not look at it."""
    with machines_root() as root:
        machine = Machine.under(root, "home")

        def arguments() -> list[str]:
            return [
                "--head", "--port", str(free_port()), "--num-cpus", "1", "--include-dashboard", "false",
                "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            ]  # fmt: skip

        with ray_node(arguments, machine.env(), root / "head.log"):
            pass
        record = machine.ray_tmpdir / "ray" / "ray_current_cluster"
        assert record.exists(), "Ray no longer leaves its record behind: this test tests nothing"
        stale = record.read_text()

        monkeypatch.setenv("RAY_TMPDIR", str(machine.ray_tmpdir))  # Ray's /tmp/ray is this one.
        # One CPU a trial: no trial restarted with the CPUs the first leaves (only slower here).
        result = cli(*SWEEP, "--cpus-per-trial", "1", "--out", root / "sweep")
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
        assert f"on 1 Ray node(s) with {os.cpu_count()} CPUs" in result.stdout, result.stdout
        assert result.stdout.count("trials done") == 2
        assert record.read_text() == stale  # Left as it was: not joined, not rewritten.

"""``mnist-cnn compare --seeds N``: the experiment once per seed, run as Ray tasks, then statistics.

One *trial* is one seed: every requested model trained with that seed, one after the other,
in one Ray task on one node, so time ratios between models are paired on the same hardware. A trial is
an ordinary ``run_experiment`` into ``seed-<n>/`` and resumes from its checkpoints like any
run. Ray core tasks (not Ray Tune) because a trial is a fixed job, not a search: Tune's
schedulers, searchers and its own result folders would add nothing but a second layout.

This module imports no Keras or JAX: a Ray worker sets its thread count before the trial
imports them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from mnist_cnn.core.config import DEFAULT_CPUS_PER_TRIAL, ExperimentConfig, SweepConfig
from mnist_cnn.core.errors import ConfigError, RayStartError, RunFolderError, TrialLostError, UserError
from mnist_cnn.core.text import format_duration, say
from mnist_cnn.store.checkpoints import epochs_done
from mnist_cnn.store.runs import RunFolder
from mnist_cnn.store.sweeps import SweepFolder

# A Ray address that does not answer within this many seconds is reported, not waited on.
CONNECT_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- one trial (runs in a Ray worker)


def thread_settings(cpus: int) -> dict[str, str]:
    """Environment that keeps a trial's numeric libraries to its share of the node's CPUs.

    XLA (JAX) has no 'n threads' setting, only one thread or a pool the size of the machine;
    TensorFlow and OpenMP take a number.
    """
    settings = {"OMP_NUM_THREADS": str(cpus), "TF_NUM_INTRAOP_THREADS": str(cpus), "TF_NUM_INTEROP_THREADS": "1"}
    if cpus == 1:
        settings["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return settings


def train_seed(experiment: dict[str, Any], run_dir: str, cpus: int) -> dict[str, Any]:
    """One trial: ``run_experiment`` for one seed, logging to the seed's train.log.

    Runs in a fresh Ray worker process (``max_calls=1``), so the thread settings take hold
    before Keras and JAX are imported. Returns (and writes to trial.json) where it ran.
    """
    os.environ.update(thread_settings(cpus))
    from mnist_cnn.core.environment import cpu_model, select_backend

    config = ExperimentConfig.from_dict(experiment)
    select_backend(config.backend)
    import ray

    from mnist_cnn.experiment import run_experiment

    run = RunFolder(run_dir).create()
    trial = {
        "seed": config.seed,
        "host": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "cpu": cpu_model(),
        "cpus_reserved": cpus,
        "pid": os.getpid(),
        "python": platform.python_version(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    run.write_trial(trial)  # Already now: a task cancelled or killed mid-way is still on record.
    before = epochs_by_model(run, config)
    started = time.perf_counter()
    with open(run.log_path, "a", encoding="utf-8") as log:
        run_experiment(config, run.path, stream=log)
    trial["wall_seconds"] = round(time.perf_counter() - started, 3)
    trial["epochs_trained"] = epochs_left_after(config, before)  # By this task: fewer than all when it resumed.
    trial["training_seconds"] = round(seconds_trained(run, before), 3)  # The rest of wall_seconds: start, results.
    trial["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    run.write_trial(trial)
    return trial


def epochs_by_model(run: RunFolder, experiment: ExperimentConfig) -> dict[str, int]:
    """Epochs each model of a seed's trial has trained so far, from its finished folder or checkpoint."""
    done = {}
    for spec in experiment.model_specs():
        done[spec.name] = 0
        # A damaged checkpoint counts as not started: the trial itself will report it.
        with contextlib.suppress(UserError):
            done[spec.name] = epochs_done(run.model(spec.name))
    return done


def epochs_left_after(experiment: ExperimentConfig, done: dict[str, int]) -> int:
    return experiment.epochs * len(experiment.model_specs()) - sum(done.values())


def epochs_left(run: RunFolder, experiment: ExperimentConfig) -> int:
    """Epochs a seed's trial still has to train, counting its finished models and checkpoints."""
    return epochs_left_after(experiment, epochs_by_model(run, experiment))


def seconds_trained(run: RunFolder, before: dict[str, int]) -> float:
    """Seconds the epochs trained since ``before`` (epochs per model) took, from the models' histories.

    What a trial spends beyond them (starting, loading data, evaluating, writing its results)
    does not grow with the epochs: the sweep's ETA counts it once per trial.
    """
    total = 0.0
    for name, done in before.items():
        folder = run.model(name)
        if folder.history_path.is_file():
            total += sum(row["seconds"] for row in folder.read_history()[done:])
    return total


# ---------------------------------------------------------------- the sweep (the driver)


def train_seeds(
    sweep_config: SweepConfig,
    sweep: SweepFolder,
    ray_address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: int | None = None,
    stream: TextIO | None = None,
    on_trial: Callable[[int], None] | None = None,
) -> None:
    """Train every seed of the sweep that has not finished, as Ray tasks.

    Finished seeds are kept; unfinished ones continue from their checkpoints. Where and how
    the trials run (the cluster, ``workers``, ``cpus_per_trial``) is not part of the sweep: a
    resumed sweep may run on other machines, and the results do not depend on it.
    ``on_trial(seed)`` runs in this process as each trial ends (tracking logs it from its folder).
    """
    stream = stream or sys.stdout
    plan = CpuPlan.of(workers, cpus_per_trial)  # Before sweep.json: a bad flag leaves no sweep behind.
    adopt_sweep_folder(sweep_config, sweep)
    pending = []
    for seed in sweep_config.seeds:
        if sweep.seed_run(seed).has_results():
            say(stream, f"seed {seed}: already finished in {sweep.seed_run(seed).path}, kept")
        else:
            pending.append(seed)
    if pending:
        run_trials(sweep_config, sweep, pending, ray_address, plan, stream, on_trial)


def check_sweep_options(ray_address: str | None, workers: int | None, cpus_per_trial: int | None) -> None:
    """Where and how the trials would run, checked before anything starts or is written (Keras,
    Ray, the sweep folder): a bad --workers, --cpus-per-trial or --ray-address is one line at once."""
    CpuPlan.of(workers, cpus_per_trial)
    if ray_address is not None:
        check_reachable(ray_address)


def adopt_sweep_folder(sweep_config: SweepConfig, sweep: SweepFolder) -> None:
    """Write sweep.json for a new sweep; for an existing one, check it is the same sweep."""
    if not sweep.is_sweep():
        if sweep.holds_other_files():
            raise RunFolderError(f"{sweep.path} is not empty and is not a sweep folder; choose another --out")
        # The id names the sweep wherever its folder goes (tracking keys its runs by it).
        sweep.write_settings({**sweep_config.to_json(), "sweep_id": uuid.uuid4().hex})
        return
    stored = SweepConfig.from_json(sweep.read_settings())
    if stored != sweep_config:
        raise RunFolderError(
            f"{sweep.path} holds a sweep with other settings; continue it with "
            f"'mnist-cnn compare --resume {sweep.path}' or choose another --out"
        )


def start_ray(address: str | None) -> Any:
    """Join the cluster at ``address``, or start a local Ray that ends with this process.

    The local Ray is always a new one (``address="local"``): every ``ray start`` leaves its
    address in Ray's temp folder (``/tmp/ray/ray_current_cluster``), kept after a stop that
    was not ``ray stop``, and a plain ``ray.init()`` would take it for a cluster to join.
    """
    import logging

    import ray

    options: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,  # Each trial logs into its own train.log instead.
        "include_dashboard": False,
        "configure_logging": True,
    }
    if address is None:
        start_local_ray(ray, options)
        return ray
    address = resolve_address(address)
    check_reachable(address)
    if not address.startswith("ray://"):
        use_auth_settings(ray, auth_settings(address))
    try:
        with stderr_kept_back():  # Ray's C++ core warns on file descriptor 2 while it retries.
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
        raise ConfigError(
            f"cannot join the Ray cluster at {address}: {first_line(error)}; start one with 'ray start --head' "
            "or leave out --ray-address to run locally"
        ) from None
    return ray


# How long a new local node has to register with its GCS: Ray's RayConfig
# ``raylet_start_wait_time_s`` (default 30 s), which its C++ core reads from the environment.
# On this 2-core machine, busy with other work, a local node took 24 of those 30 s (its raylet
# 13 s to start, its agents 12 s more); twice Ray's default leaves room for a busier one.
RAYLET_START_WAIT = "RAY_raylet_start_wait_time_s"
LOCAL_RAY_START_WAIT_S = 60


def start_local_ray(ray: Any, options: dict[str, Any]) -> None:
    """A new local Ray whose node has LOCAL_RAY_START_WAIT_S to register (a RAY_raylet_start_wait_time_s
    of the user's is kept); a Ray that does not start is one line (RayStartError), not a traceback.

    The node's raylet also waits for its agents (Python processes) to write their ports, a fixed
    15 s in Ray 2.60 that no setting changes: past it the raylet aborts, and ray.init() raises
    the same "timed out during startup" once the deadline above has passed.
    """
    os.environ.setdefault(RAYLET_START_WAIT, str(LOCAL_RAY_START_WAIT_S))
    ray._raylet.Config.initialize("")  # Ray's core reads the environment again, as ray.init() itself does.
    try:
        ray.init(address="local", num_cpus=os.cpu_count(), **options)
    except Exception as error:
        # Ray raises a bare Exception when its node misses the deadline; OSError and the like when
        # its processes cannot start or bind. Anything else is a bug (in mnist-cnn or Ray).
        if not (type(error) is Exception or isinstance(error, (OSError, RuntimeError, ray.exceptions.RayError))):
            raise
        ray.shutdown()  # Whatever part of the node did start goes with it.
        raise RayStartError(
            f"Ray did not start on this machine: {first_line(error).rstrip('.')}; close programs that keep the "
            "CPUs busy and run the command again, or run the sweep on a running Ray cluster with --ray-address "
            "HOST:PORT (one that 'ray start --head' started)"
        ) from None


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else error.__class__.__name__


def resolve_address(address: str) -> str:
    """``auto``: the cluster ``ray start`` last started or joined on this machine (or RAY_ADDRESS)."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        with stderr_kept_back():  # Ray warns there when it finds several clusters, and takes the last one.
            return canonicalize_bootstrap_address("auto") or address
    except (ConnectionError, ValueError):
        raise ConfigError(
            "--ray-address auto found no Ray cluster on this machine; start one with 'ray start --head', "
            "give its HOST:PORT, or leave out --ray-address to run locally"
        ) from None


def check_reachable(address: str) -> None:
    """Fail fast, in one line, when a HOST:PORT address does not answer (Ray itself retries for a minute)."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r} is not HOST:PORT (e.g. 192.168.1.10:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start one with 'ray start --head' "
            "or leave out --ray-address to run locally"
        ) from None


# ---------------------------------------------------------------- token authentication

# A Ray head started by `ray start --head` requires a token when the machine has one
# (~/.ray/auth_token, which any local ray.init() writes), but a process that joins it by
# address does not send one unless RAY_AUTH_MODE=token. Asking the head first, in a separate
# process, turns a refusal into one line instead of a minute of Ray's retries and warnings.
AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_FILE = "~/.ray/auth_token"
PRINTS_TOKEN = "'ray get-auth-token' on the head prints it"
SHARE_TOKEN = (
    f"copy the head's {TOKEN_FILE} to this machine (or set RAY_AUTH_TOKEN to the head's token: {PRINTS_TOKEN})"
)

# Whether the head at sys.argv[1] takes this process's credentials: exit 0 yes, 3 no.
HEAD_PROBE = """
import sys
import ray._raylet
from ray.exceptions import AuthenticationError
try:
    ray._raylet.GcsClient(address=sys.argv[1])
except AuthenticationError:
    sys.exit(3)
"""
PROBE_TIMEOUT_S = 30.0
REFUSED = 3


def auth_settings(address: str) -> dict[str, str]:
    """The environment this process needs to join the head at ``address``: ``{}`` or token mode.

    The head is asked as Ray's default (no token) would, and when it wants a token, with the
    token this machine has. A RAY_AUTH_MODE of the user's is kept, and checked the same way.
    """
    chosen = os.environ.get(AUTH_MODE)
    if (chosen is None or chosen.lower() != "token") and head_accepts(address, {}):
        return {}
    if chosen is not None and chosen.lower() != "token":
        raise ConfigError(
            f"the Ray cluster at {address} requires a token, which {AUTH_MODE}={chosen} here does not send: "
            f"unset {AUTH_MODE} and {SHARE_TOKEN}"
        )
    source = token_source()
    if source is None:
        # With RAY_AUTH_MODE=token and no token, Ray refuses to join any cluster.
        raise ConfigError(f"the Ray cluster at {address} requires its token and this machine has none: {SHARE_TOKEN}")
    settings = {} if chosen else {AUTH_MODE: "token"}
    if not head_accepts(address, settings):
        raise ConfigError(f"the Ray cluster at {address} refused the token in {source[0]}: {source[1]}")
    return settings


def token_source() -> tuple[str, str] | None:
    """Where Ray takes the token from (Ray's order) and how to put the head's there; None: no token here."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN", f"set it to the head's token ({PRINTS_TOKEN})"
    if "RAY_AUTH_TOKEN_PATH" in os.environ:
        path = os.path.expanduser(os.environ["RAY_AUTH_TOKEN_PATH"])
        if not (os.path.isfile(path) and os.path.getsize(path) > 0):
            # Ray's C++ core aborts the process on it: say it first.
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH names {path}, which is missing or empty; unset it or fix it")
        return f"RAY_AUTH_TOKEN_PATH ({path})", f"put the head's token in that file ({PRINTS_TOKEN})"
    path = os.path.expanduser(TOKEN_FILE)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return (
            path,
            f"replace it with the head's {TOKEN_FILE} (or set RAY_AUTH_TOKEN to the head's token: {PRINTS_TOKEN})",
        )
    return None


def head_accepts(address: str, settings: dict[str, str]) -> bool:
    """Ask the head's GCS, from a new process with ``settings`` added to the environment."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", HEAD_PROBE, address],
            env={**os.environ, **settings},
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{address} answers but no Ray head replied there within {PROBE_TIMEOUT_S:.0f} seconds; "
            "give the port of 'ray start --head' (6379 unless --port)"
        ) from None
    if probe.returncode not in (0, REFUSED):
        lines = [line for line in probe.stderr.strip().splitlines() if line.strip()]
        raise ConfigError(
            f"cannot join the Ray cluster at {address}: {lines[-1] if lines else f'exit {probe.returncode}'}"
        )
    return probe.returncode == 0


def use_auth_settings(ray: Any, settings: dict[str, str]) -> None:
    """Put ``settings`` into this process's environment, and make Ray, already imported, read them again."""
    if not settings:
        return
    os.environ.update(settings)
    ray._raylet.Config.initialize("")  # As Ray's own ray.init() does when it turns token mode on.
    ray._raylet.AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def stderr_kept_back() -> Iterator[None]:
    """File descriptor 2 into a temporary file for the block: Ray's C++ core writes its log
    lines there directly, past ``sys.stderr``. What the block raises says what went wrong."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No stderr at all: nothing to keep back.
        yield
        return
    with tempfile.TemporaryFile() as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def largest_node_cpus(ray: Any) -> int:
    return max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=0)


@dataclasses.dataclass
class CpuPlan:
    """How many CPUs each trial gets. Fixed (``--cpus-per-trial``), or ``auto``: one each
    while there are more trials than CPUs, since on a small CPU two 1-thread trials side by
    side finish more seeds per hour than one 2-thread trial (README), and the CPUs left idle
    by the last trials shared among them (a running trial is restarted with more: it
    resumes from its last epoch's checkpoint)."""

    fixed: int | None = None
    workers: int | None = None  # At most this many trials at once.
    total: int = 1  # The cluster's CPUs.
    largest_node: int = 1  # A trial runs on one node, so it can use at most this many.

    @classmethod
    def of(cls, workers: int | None, cpus_per_trial: int | None) -> CpuPlan:
        if cpus_per_trial is not None and cpus_per_trial < 1:
            raise ConfigError(f"CPUs per trial must be at least 1, got {cpus_per_trial}")
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        return cls(fixed=cpus_per_trial, workers=workers)

    def for_cluster(self, total: int, largest_node: int) -> CpuPlan:
        if self.fixed is not None and self.fixed > largest_node:
            raise ConfigError(
                f"no node of the Ray cluster has {self.fixed} CPUs for a trial; use --cpus-per-trial "
                f"{max(1, largest_node)} or add a larger node"
            )
        return dataclasses.replace(self, total=max(1, total), largest_node=max(1, largest_node))

    def concurrency(self) -> int:
        slots = self.total // (self.fixed or DEFAULT_CPUS_PER_TRIAL)
        return max(1, min(slots, self.workers or slots))

    def next_trial(self, waiting: int, running: list[int]) -> int | None:
        """CPUs for the next waiting trial, given the CPUs of those running; None: wait."""
        if not waiting or len(running) >= self.concurrency():
            return None
        free = self.total - sum(running)
        if self.fixed is not None:
            return self.fixed if free >= self.fixed else None
        if free < 1:
            return None
        startable = min(waiting, self.concurrency() - len(running))
        return min(self.largest_node, max(1, free // startable))

    def grow(self, waiting: int, running: list[int], growable: Sequence[bool] | None = None) -> tuple[int, int] | None:
        """(position in ``running``, new CPUs) of a trial worth restarting with more CPUs; only a
        trial ``growable`` says is still training (all of them when not given) is."""
        candidates = [index for index in range(len(running)) if growable is None or growable[index]]
        if self.fixed is not None or waiting or not candidates:
            return None
        free = self.total - sum(running)
        position = min(candidates, key=lambda index: running[index])
        if free < 1 or running[position] >= self.largest_node:
            return None
        return position, min(self.largest_node, running[position] + free)


@dataclasses.dataclass
class RunningTrial:
    seed: int
    cpus: int


def run_trials(
    sweep_config: SweepConfig,
    sweep: SweepFolder,
    seeds: Sequence[int],
    ray_address: str | None,
    plan: CpuPlan,
    stream: TextIO,
    on_trial: Callable[[int], None] | None = None,
) -> None:
    """Submit one Ray task per seed as CPUs free up, and report each trial as it ends."""
    ray = start_ray(ray_address)
    try:
        plan = plan.for_cluster(int(ray.cluster_resources().get("CPU", 1)), largest_node_cpus(ray))
        cpus_text = f"{plan.fixed} CPU(s) each" if plan.fixed else "CPUs shared out (auto)"
        say(
            stream,
            f"sweep: {len(seeds)} trial(s) to run (seeds {', '.join(map(str, seeds))}), up to {plan.concurrency()} "
            f"at a time, {cpus_text}, on {len(ray.nodes())} Ray node(s) with {plan.total} CPUs; "
            f"logs in {sweep.path}/seed-*/",
        )
        trial = ray.remote(max_calls=1, max_retries=0)(train_seed)

        def submit(seed: int, cpus: int) -> Any:
            run_dir = str(sweep.seed_run(seed).path.resolve())
            return trial.options(num_cpus=cpus).remote(sweep_config.for_seed(seed).to_dict(), run_dir, cpus)

        def left_of(seed: int) -> int:
            return epochs_left(sweep.seed_run(seed), sweep_config.for_seed(seed))

        waiting = list(seeds)
        running: dict[Any, RunningTrial] = {}
        progress = SweepProgress(total=len(seeds), concurrency=plan.concurrency(), shares_idle_cpus=plan.fixed is None)
        try:
            while waiting or running:
                while (cpus := plan.next_trial(len(waiting), [t.cpus for t in running.values()])) is not None:
                    seed = waiting.pop(0)
                    running[submit(seed, cpus)] = RunningTrial(seed, cpus)
                regrow_idle_cpus(ray, plan, waiting, running, submit, stream, left_of)
                done, _ = ray.wait(list(running), num_returns=1)
                finished = running.pop(done[0])
                info = trial_result(ray, done[0], finished.seed, sweep)
                progress.finished(info["wall_seconds"], info.get("epochs_trained", 0), info.get("training_seconds"))
                unfinished = waiting + [trial.seed for trial in running.values()]
                left = sum(left_of(seed) for seed in unfinished)
                report_trial(stream, sweep.seed_run(finished.seed), info, progress, left, len(unfinished))
                if on_trial is not None:
                    on_trial(finished.seed)
            # A final regrow check is not needed: nothing is left running.
        except KeyboardInterrupt:
            for reference in running:
                ray.cancel(reference, force=True)
            raise
    finally:
        ray.shutdown()


# A trial restarted with more CPUs loses its epoch in progress: one with no more than that left gains nothing.
EPOCHS_WORTH_A_RESTART = 2


def regrow_idle_cpus(
    ray: Any,
    plan: CpuPlan,
    waiting: list[int],
    running: dict[Any, RunningTrial],
    submit: Any,
    stream: TextIO,
    epochs_left_of: Callable[[int], int],
) -> None:
    """With no trial waiting and CPUs idle, restart a running trial with more of them.

    It loses at most the epoch in progress: the new task resumes from the last checkpoint. Only
    a trial still training is restarted: not one whose task has ended and waits to be collected
    (two trials often end together), nor one whose epochs are trained and that is writing its
    results. Restarting those re-ran a finished trial and overwrote its record.
    """
    references = list(running)
    ended, _ = ray.wait(references, num_returns=len(references), timeout=0) if references else ([], [])
    growable = [
        reference not in ended and epochs_left_of(running[reference].seed) >= EPOCHS_WORTH_A_RESTART
        for reference in references
    ]
    change = plan.grow(len(waiting), [running[reference].cpus for reference in references], growable)
    if change is None:
        return
    reference = references[change[0]]
    old = running.pop(reference)
    ray.cancel(reference, force=True)
    ray.wait([reference], timeout=60)  # The old worker is gone (its run lock with it) before the new one starts.
    say(stream, f"seed {old.seed}: CPUs idle, restarting it with {change[1]} CPUs (it resumes from its last epoch)")
    running[submit(old.seed, change[1])] = RunningTrial(old.seed, change[1])


def trial_result(ray: Any, reference: Any, seed: int, sweep: SweepFolder) -> dict[str, Any]:
    """The trial's answer; a user error inside it becomes one line naming the seed."""
    try:
        return ray.get(reference)
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as error:
        raise TrialLostError(
            f"seed {seed}: its Ray worker died ({error.__class__.__name__}: killed, out of memory, or its node "
            f"gone); finished epochs are saved: continue with 'mnist-cnn compare --resume {sweep.path}'"
        ) from None
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, UserError):
            raise cause.__class__(f"seed {seed}: {cause}") from None
        raise RuntimeError(
            f"seed {seed} failed; see {sweep.seed_run(seed).log_path} and the Ray error above"
        ) from error


@dataclasses.dataclass
class SweepProgress:
    """How many trials are done, and when the rest should be.

    Counted in epochs, not trials: a resumed trial may train a few epochs or none (its
    models were finished before the sweep stopped), and its few seconds say nothing about
    how long a whole trial takes. What a trial spends beyond its epochs (starting, loading
    the data, evaluating, writing its results) is counted once per trial still to finish:
    a trial that has trained its epochs still runs, so its ETA is not 0.
    """

    total: int
    concurrency: int
    shares_idle_cpus: bool = True  # CpuPlan auto: the last trials get the CPUs others leave.
    done: int = 0
    seconds: float = 0.0  # Wall time of the finished trials...
    epochs: int = 0  # ...the epochs they trained in it...
    overhead_seconds: float = 0.0  # ...and the part of it beyond those epochs.

    def finished(self, trial_seconds: float, epochs_trained: int, training_seconds: float | None = None) -> None:
        """A trial ended; ``training_seconds`` (its epochs' time) None: not recorded, all of it counts as epochs."""
        self.done += 1
        self.seconds += trial_seconds
        self.epochs += epochs_trained
        if training_seconds is not None:
            self.overhead_seconds += max(0.0, trial_seconds - training_seconds)

    def eta_seconds(self, epochs_left: int, trials_left: int = 0) -> float:
        """``epochs_left`` at the finished trials' seconds per epoch, as many at once as run side by side,
        plus each of ``trials_left`` trials' own work beyond its epochs, as the finished ones took."""
        if self.done == 0 or (epochs_left and self.epochs == 0):
            return math.nan
        side_by_side = self.concurrency if self.shares_idle_cpus else min(self.concurrency, self.total - self.done)
        per_epoch = (self.seconds - self.overhead_seconds) / self.epochs if self.epochs else 0.0
        per_trial = self.overhead_seconds / self.done
        epochs = epochs_left * per_epoch / max(1, side_by_side)
        return epochs + trials_left * per_trial / max(1, min(side_by_side, trials_left))


def report_trial(
    stream: TextIO, run: RunFolder, trial: dict[str, Any], progress: SweepProgress, epochs_left: int, trials_left: int
) -> None:
    for folder in run.model_folders():
        metrics = folder.read_metrics()
        say(
            stream,
            f"seed {trial['seed']:>3}  {metrics.model}  test accuracy {metrics.test_accuracy:.4f}  "
            f"training {format_duration(metrics.training_seconds)}  on {trial['host']}",
        )
    eta = progress.eta_seconds(epochs_left, trials_left)
    left = f", ETA {format_duration(eta)}" if progress.done < progress.total and math.isfinite(eta) else ""
    say(stream, f"sweep: {progress.done}/{progress.total} trials done{left}")

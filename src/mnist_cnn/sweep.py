"""``mnist-cnn compare --seeds N``: the experiment once per seed, run as Ray tasks, then statistics.

One *trial* is one seed: every requested model trained with that seed, one after the other,
in one Ray task on one node, so the B/A time ratio is paired on the same hardware. A trial is
an ordinary ``run_experiment`` into ``seed-<n>/`` and resumes from its checkpoints like any
run. Ray core tasks (not Ray Tune) because a trial is a fixed job, not a search: Tune's
schedulers, searchers and its own result folders would add nothing but a second layout.

This module imports no Keras or JAX: a Ray worker sets its thread count before the trial
imports them.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mnist_cnn.config import DEFAULT_CPUS_PER_TRIAL, ExperimentConfig
from mnist_cnn.errors import ConfigError, RunFolderError, UserError
from mnist_cnn.runs import RunFolder, SweepFolder

# What the power estimate asks: seeds needed to detect a 0.1-point accuracy difference.
DETECTABLE_DIFFERENCE = 0.001
# A Ray address that does not answer within this many seconds is reported, not waited on.
CONNECT_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs: one experiment config, repeated for each seed (its own seed ignored)."""

    experiment: ExperimentConfig
    seeds: tuple[int, ...]
    cpus_per_trial: int = DEFAULT_CPUS_PER_TRIAL

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("no seeds: use --seeds N (seeds 0 to N-1) or a list such as --seeds 3,7,11")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"a seed is named twice in --seeds {','.join(map(str, self.seeds))}")
        if min(self.seeds) < 0:
            raise ConfigError("seeds must be 0 or more")
        if len(self.experiment.models) > 1 and len(self.seeds) < 2:
            raise ConfigError(
                "comparing models needs at least 2 seeds to measure seed-to-seed noise; use --seeds 2 or more "
                "(5 or more for a useful answer)"
            )
        if self.cpus_per_trial < 1:
            raise ConfigError(f"CPUs per trial must be at least 1, got {self.cpus_per_trial}")

    def for_seed(self, seed: int) -> ExperimentConfig:
        return dataclasses.replace(self.experiment, seed=seed)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": {**self.experiment.to_dict(), "seed": None},
            "seeds": list(self.seeds),
            "cpus_per_trial": self.cpus_per_trial,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> SweepConfig:
        try:
            experiment = ExperimentConfig.from_dict({**document["experiment"], "seed": 0})
            return cls(
                experiment=experiment,
                seeds=tuple(int(seed) for seed in document["seeds"]),
                cpus_per_trial=int(document["cpus_per_trial"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RunFolderError(f"the sweep's settings are damaged ({error})") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """``5`` means seeds 0-4; ``3,7,11`` means those seeds. ValueError with a usable message."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seeds or a comma-separated list of seeds") from None
    if len(numbers) == 1 and "," not in text:
        if numbers[0] < 1:
            raise ValueError(f"--seeds {text}: at least 1 seed is needed (2 or more to compare models)")
        return tuple(range(numbers[0]))
    if not numbers or min(numbers) < 0:
        raise ValueError(f"{text!r}: seeds must be 0 or more")
    return tuple(numbers)


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
    from mnist_cnn.environment import cpu_model, select_backend

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
    started = time.perf_counter()
    with open(run.log_path, "a", encoding="utf-8") as log:
        run_experiment(config, run.path, stream=log)
    trial["wall_seconds"] = round(time.perf_counter() - started, 3)
    trial["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    run.write_trial(trial)
    return trial


# ---------------------------------------------------------------- the sweep (the driver)


def run_sweep(
    sweep_config: SweepConfig,
    sweep_dir: str | Path,
    ray_address: str | None = None,
    workers: int | None = None,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Train every seed not finished yet on Ray, then write and return the sweep's statistics.

    Into a folder that already holds this sweep, this resumes: finished seeds are kept,
    unfinished ones continue from their checkpoints.
    """
    stream = stream or sys.stdout
    sweep = SweepFolder(sweep_dir).create()
    with sweep.lock():
        adopt_sweep_folder(sweep_config, sweep)
        pending = []
        for seed in sweep_config.seeds:
            if sweep.seed_run(seed).is_finished():
                say(stream, f"seed {seed}: already finished in {sweep.seed_run(seed).path}, kept")
            else:
                pending.append(seed)
        if pending:
            run_trials(sweep_config, sweep, pending, ray_address, workers, stream)
        from mnist_cnn.sweep_report import write_sweep_statistics

        statistics, markdown = write_sweep_statistics(sweep, sweep_config)
    say(stream, "\n" + markdown.rstrip() + f"\n\nEverything is in {sweep.path}")
    return statistics


def adopt_sweep_folder(sweep_config: SweepConfig, sweep: SweepFolder) -> None:
    """Write sweep.json for a new sweep; for an existing one, check it is the same sweep."""
    if not sweep.is_sweep():
        if sweep.holds_other_files():
            raise RunFolderError(f"{sweep.path} is not empty and is not a sweep folder; choose another --out")
        sweep.write_settings(sweep_config.to_json())
        return
    stored = SweepConfig.from_json(sweep.read_settings())
    if stored != sweep_config:
        raise RunFolderError(
            f"{sweep.path} holds a sweep with other settings; continue it with "
            f"'mnist-cnn compare --resume {sweep.path}' or choose another --out"
        )


def say(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)


def start_ray(address: str | None) -> Any:
    """Join the cluster at ``address``, or start a local Ray that ends with this process."""
    import logging

    import ray

    options: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,  # Each trial logs into its own train.log instead.
        "include_dashboard": False,
        "configure_logging": True,
    }
    if address is None:
        ray.init(num_cpus=os.cpu_count(), **options)
        return ray
    check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise ConfigError(
            f"cannot join the Ray cluster at {address}: {first_line}; start one with 'ray start --head' "
            "or leave out --ray-address to run locally"
        ) from None
    return ray


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


def largest_node_cpus(ray: Any) -> int:
    return max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=0)


def run_trials(
    sweep_config: SweepConfig,
    sweep: SweepFolder,
    seeds: Sequence[int],
    ray_address: str | None,
    workers: int | None,
    stream: TextIO,
) -> None:
    """Submit one Ray task per seed (at most ``workers`` at a time) and report each as it ends."""
    ray = start_ray(ray_address)
    try:
        cpus = sweep_config.cpus_per_trial
        if largest_node_cpus(ray) < cpus:
            raise ConfigError(
                f"no node of the Ray cluster has {cpus} CPUs for a trial; use --cpus-per-trial "
                f"{max(1, largest_node_cpus(ray))} or add a larger node"
            )
        slots = max(1, int(ray.cluster_resources().get("CPU", cpus)) // cpus)
        concurrency = min(slots, workers or slots, len(seeds))
        say(
            stream,
            f"sweep: {len(seeds)} trial(s) to run (seeds {', '.join(map(str, seeds))}), {concurrency} at a time, "
            f"{cpus} CPU(s) each, on {len(ray.nodes())} Ray node(s); logs in {sweep.path}/seed-*/",
        )
        trial = ray.remote(max_calls=1)(train_seed).options(num_cpus=cpus, max_retries=0)
        waiting = list(seeds)
        running: dict[Any, int] = {}
        progress = SweepProgress(total=len(seeds), concurrency=concurrency)
        try:
            while waiting or running:
                while waiting and len(running) < concurrency:
                    seed = waiting.pop(0)
                    run_dir = str(sweep.seed_run(seed).path.resolve())
                    experiment = sweep_config.for_seed(seed).to_dict()
                    running[trial.remote(experiment, run_dir, cpus)] = seed
                done, _ = ray.wait(list(running), num_returns=1)
                seed = running.pop(done[0])
                info = trial_result(ray, done[0], seed, sweep)
                progress.finished(info["wall_seconds"])
                report_trial(stream, sweep.seed_run(seed), info, progress)
        except KeyboardInterrupt:
            for reference in running:
                ray.cancel(reference, force=True)
            raise
    finally:
        ray.shutdown()


def trial_result(ray: Any, reference: Any, seed: int, sweep: SweepFolder) -> dict[str, Any]:
    """The trial's answer; a user error inside it becomes one line naming the seed."""
    try:
        return ray.get(reference)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, UserError):
            raise cause.__class__(f"seed {seed}: {cause}") from None
        raise RuntimeError(
            f"seed {seed} failed; see {sweep.seed_run(seed).log_path} and the Ray error above"
        ) from error


@dataclasses.dataclass
class SweepProgress:
    """How many trials are done, and when the rest should be."""

    total: int
    concurrency: int
    done: int = 0
    seconds: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def finished(self, trial_seconds: float) -> None:
        self.done += 1
        self.seconds += trial_seconds

    def eta_seconds(self) -> float:
        """Remaining trials in waves of ``concurrency``, each as long as the mean trial so far."""
        if self.done == 0:
            return math.nan
        remaining = self.total - self.done
        waves = math.ceil(remaining / self.concurrency)
        return waves * self.seconds / self.done


def report_trial(stream: TextIO, run: RunFolder, trial: dict[str, Any], progress: SweepProgress) -> None:
    for folder in run.model_folders():
        metrics = folder.read_metrics()
        say(
            stream,
            f"seed {trial['seed']:>3}  {metrics.model}  test accuracy {metrics.test_accuracy:.4f}  "
            f"training {format_duration(metrics.training_seconds)}  on {trial['host']}",
        )
    eta = progress.eta_seconds()
    left = f", ETA {format_duration(eta)}" if progress.done < progress.total and math.isfinite(eta) else ""
    say(stream, f"sweep: {progress.done}/{progress.total} trials done{left}")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

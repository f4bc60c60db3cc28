"""compare --seeds: the statistics against independent computations, a real sweep on a local Ray
(tracked in MLflow), and its bad inputs. A two-node cluster, a killed-and-resumed sweep and a sweep
of three variants have files of their own, so the parallel suite runs them side by side."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from mnist_cnn.core import stats
from mnist_cnn.core.config import ExperimentConfig, SweepConfig, parse_seeds
from mnist_cnn.core.errors import ConfigError, TrialLostError
from mnist_cnn.core.sweep_results import SweepStatistics
from mnist_cnn.store.runs import RunFolder
from mnist_cnn.store.sweeps import SweepFolder
from mnist_cnn.sweep.trials import CpuPlan, SweepProgress, trial_result

from .conftest import cli, run_cli

SWEEP_SEEDS = (0, 1)  # Two trials side by side: one round on 2 CPUs.
SWEEP_SETTINGS = ("--limit", "300", "--epochs", "2")
SWEEP_CONFIG = SweepConfig(experiment=ExperimentConfig(limit=300, epochs=2, backend="jax"), seeds=SWEEP_SEEDS)


# ---------------------------------------------------------------- statistics, checked independently


def test_summary_matches_a_hand_computation() -> None:
    summary = stats.summarize([1.0, 2.0, 3.0, 4.0])
    assert summary.mean == 2.5
    assert summary.sd == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, n - 1 = 3
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, df=3) from tables
    assert (summary.ci_low, summary.ci_high) == pytest.approx((2.5 - half, 2.5 + half))
    single = stats.summarize([0.98])
    assert (single.sd, single.ci_low, single.ci_high) == (None, None, None)


def test_paired_difference_matches_scipy() -> None:
    first = [0.9871, 0.9880, 0.9866, 0.9890, 0.9875]
    second = [0.9885, 0.9884, 0.9883, 0.9893, 0.9897]
    result = stats.paired_difference("test_accuracy", first, second)
    differences = np.subtract(second, first)
    assert result.differences == pytest.approx(tuple(differences))
    assert result.t_test_p == pytest.approx(scipy_stats.ttest_rel(second, first).pvalue)
    assert result.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(differences).pvalue)
    low, high = scipy_stats.t.interval(
        0.95, len(differences) - 1, loc=differences.mean(), scale=scipy_stats.sem(differences)
    )
    assert (result.summary.ci_low, result.summary.ci_high) == pytest.approx((low, high))
    # The bootstrap interval is reproducible and lies within the differences' range.
    again = stats.paired_difference("test_accuracy", first, second)
    assert (again.bootstrap_low, again.bootstrap_high) == (result.bootstrap_low, result.bootstrap_high)
    assert differences.min() <= result.bootstrap_low < differences.mean() < result.bootstrap_high <= differences.max()
    # Five seeds all in one direction: the smallest two-sided Wilcoxon p there is, 2/32.
    assert result.wilcoxon_p == pytest.approx(0.0625)


def test_paired_difference_edge_cases() -> None:
    identical = stats.paired_difference("test_accuracy", [0.98, 0.99], [0.98, 0.99])
    assert identical.t_test_p == 1.0 and identical.wilcoxon_p == 1.0 and identical.summary.mean == 0
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.paired_difference("test_accuracy", [0.98], [0.99])
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_difference("test_accuracy", [0.98, 0.97], [0.99])


def test_ratio_summary_is_a_geometric_mean() -> None:
    ratio = stats.ratio_summary("training_seconds", [100.0, 200.0], [200.0, 800.0])  # ratios 2 and 4
    assert ratio.ratios == pytest.approx((2.0, 4.0))
    assert ratio.geometric_mean == pytest.approx(math.sqrt(8))
    logs = np.log([2.0, 4.0])
    half = scipy_stats.t.ppf(0.975, 1) * logs.std(ddof=1) / math.sqrt(2)
    assert (ratio.ci_low, ratio.ci_high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))


@pytest.mark.parametrize(
    ("sd", "effect", "expected"),
    # G*Power's sample sizes for a two-sided one-sample t-test, alpha 0.05, power 0.8:
    # d = 1 needs 10, d = 0.5 needs 34.
    [(1.0, 1.0, 10), (2.0, 1.0, 34), (0.001, 0.0005, 34), (None, 0.001, None)],
)
def test_seeds_needed_matches_published_power_tables(sd: float | None, effect: float, expected: int | None) -> None:
    assert stats.seeds_needed(sd, effect) == expected


def test_verdicts_say_what_was_found_in_plain_words() -> None:
    unclear = stats.paired_difference("test_accuracy", [0.9871, 0.9880, 0.9866], [0.9875, 0.9872, 0.9873])
    sentence = stats.accuracy_verdict("Model_A", "Model_B", unclear)
    assert sentence.startswith("With 3 seeds, Model_B's test accuracy is 0.01 points higher than Model_A's")
    assert "no detectable difference" in sentence
    clear = stats.paired_difference("test_accuracy", [0.980, 0.981, 0.982, 0.983], [0.985, 0.9861, 0.9869, 0.988])
    assert "a detectable difference" in stats.accuracy_verdict("Model_A", "Model_B", clear)
    assert "lower" in stats.accuracy_verdict(
        "Model_B", "Model_A", stats.paired_difference("x", [0.99, 0.98], [0.98, 0.97])
    )


# ---------------------------------------------------------------- seeds and settings


@pytest.mark.parametrize(("text", "seeds"), [("5", (0, 1, 2, 3, 4)), ("1", (0,)), ("3,7,11", (3, 7, 11)), ("4,", (4,))])
def test_seeds_flag(text: str, seeds: tuple[int, ...]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["abc", "1,x", "2.5"])
def test_a_seeds_flag_that_is_not_numbers_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a number of seeds"):
        parse_seeds(text)


@pytest.mark.parametrize(
    ("text", "message"), [("0", "at least 1 seed"), ("-2", "at least 1 seed"), ("3,-1", "0 or more")]
)
def test_seeds_that_cannot_be_run_are_refused_by_the_sweep_config(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SweepConfig(experiment=ExperimentConfig(models=("A",)), seeds=parse_seeds(text))


def test_sweep_config_round_trips_and_refuses_a_single_seed_comparison() -> None:
    assert SweepConfig.from_json(json.loads(json.dumps(SWEEP_CONFIG.to_json()))) == SWEEP_CONFIG
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        SweepConfig(experiment=ExperimentConfig(), seeds=(0,))
    assert SweepConfig(experiment=ExperimentConfig(models=("A",)), seeds=(0,)).seeds == (0,)
    with pytest.raises(ConfigError, match="twice"):
        SweepConfig(experiment=ExperimentConfig(), seeds=(1, 1))


def test_auto_cpu_plan_runs_one_thread_trials_side_by_side_then_gives_idle_cpus_to_the_last() -> None:
    plan = CpuPlan.of(workers=None, cpus_per_trial=None).for_cluster(total=2, largest_node=2)
    assert plan.next_trial(waiting=5, running=[]) == 1
    assert plan.next_trial(waiting=4, running=[1]) == 1
    assert plan.next_trial(waiting=3, running=[1, 1]) is None
    assert plan.grow(waiting=1, running=[1]) is None  # A trial still waits for the free CPU.
    assert plan.grow(waiting=0, running=[1]) == (0, 2)  # The last trial alone: it gets both CPUs.
    assert plan.grow(waiting=0, running=[1, 1]) is None
    assert plan.next_trial(waiting=1, running=[]) == 2


def test_fixed_and_capped_cpu_plans() -> None:
    fixed = CpuPlan.of(workers=None, cpus_per_trial=2).for_cluster(total=2, largest_node=2)
    assert fixed.next_trial(5, []) == 2 and fixed.next_trial(4, [2]) is None and fixed.grow(0, [2]) is None
    one_at_a_time = CpuPlan.of(workers=1, cpus_per_trial=None).for_cluster(total=2, largest_node=2)
    assert one_at_a_time.next_trial(5, []) == 2 and one_at_a_time.next_trial(4, [2]) is None
    two_nodes = CpuPlan.of(workers=None, cpus_per_trial=None).for_cluster(total=4, largest_node=2)
    assert two_nodes.next_trial(1, []) == 2  # A trial runs on one node: never more CPUs than a node has.
    with pytest.raises(ConfigError, match="no node of the Ray cluster has 8 CPUs"):
        CpuPlan.of(workers=None, cpus_per_trial=8).for_cluster(total=16, largest_node=4)


class FakeRay:
    """What regrow_idle_cpus asks of Ray: which tasks have ended, and cancelling one."""

    def __init__(self, ended: set[str]) -> None:
        self.ended = ended
        self.cancelled: list[str] = []

    def wait(self, references: list[str], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        return [r for r in references if r in self.ended], [r for r in references if r not in self.ended]

    def cancel(self, reference: str, force: bool = False) -> None:
        self.cancelled.append(reference)


@pytest.mark.parametrize(
    ("ended", "epochs_left", "restarted"),
    [
        (set(), 60, True),  # Still training, the other CPU idle: it gets both.
        ({"task-3"}, 0, False),  # Its task ended (not collected yet): a finished trial, never re-run.
        (set(), 0, False),  # Its epochs are trained; it is writing its results.
        (set(), 1, False),  # Only the epoch in progress left, which a restart would lose.
    ],
)
def test_idle_cpus_go_only_to_a_trial_still_training(ended: set[str], epochs_left: int, restarted: bool) -> None:
    from mnist_cnn.sweep.trials import RunningTrial, regrow_idle_cpus

    ray = FakeRay(ended)
    plan = CpuPlan.of(workers=None, cpus_per_trial=None).for_cluster(total=2, largest_node=2)
    running = {"task-3": RunningTrial(seed=3, cpus=1)}
    submitted: list[tuple[int, int]] = []

    def submit(seed: int, cpus: int) -> str:
        submitted.append((seed, cpus))
        return "task-3-again"

    stream = io.StringIO()
    regrow_idle_cpus(ray, plan, [], running, submit, stream, lambda seed: epochs_left)
    if restarted:
        assert ray.cancelled == ["task-3"] and submitted == [(3, 2)] and set(running) == {"task-3-again"}
        assert "restarting it with 2 CPUs" in stream.getvalue()
    else:
        assert ray.cancelled == [] and submitted == [] and set(running) == {"task-3"} and stream.getvalue() == ""


def test_a_sweep_copied_without_status_files_resumes_keeping_every_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/compare was copied before publish kept status.json: a copy of it resumed (to add seeds,
    as issue 32's 20-seed sweep does) keeps its five finished seeds instead of training them again."""
    from mnist_cnn.sweep import trials

    sweep_dir = tmp_path / "compare"
    shutil.copytree(Path(__file__).resolve().parent.parent / "docs" / "compare", sweep_dir)
    sweep = SweepFolder.existing(sweep_dir)
    assert not any(sweep.seed_run(seed).status_path.exists() for seed in sweep.seeds())
    trained: list[int] = []
    monkeypatch.setattr(trials, "run_trials", lambda config, sweep, seeds, *rest: trained.extend(seeds))
    stream = io.StringIO()
    trials.train_seeds(SweepConfig.from_json(sweep.read_settings()), sweep, stream=stream)
    assert trained == []
    assert stream.getvalue().count("already finished") == len(sweep.seeds()) == 5
    assert sweep.publish(tmp_path / "published").finished == [0, 1, 2, 3, 4]


def test_sweep_eta_counts_epochs_so_a_resumed_trial_does_not_shrink_it() -> None:
    progress = SweepProgress(total=3, concurrency=2)
    progress.finished(trial_seconds=14.0, epochs_trained=0)  # Resumed with both models already trained.
    assert math.isnan(progress.eta_seconds(epochs_left=120))  # Nothing measured yet: no ETA, not "14 s".
    progress.finished(trial_seconds=600.0, epochs_trained=120)
    assert progress.eta_seconds(epochs_left=120) == pytest.approx(120 * 614 / 120 / 2)  # Idle CPUs shared.
    fixed = SweepProgress(total=3, concurrency=2, shares_idle_cpus=False, done=2, seconds=600.0, epochs=120)
    assert fixed.eta_seconds(epochs_left=120) == pytest.approx(600.0)  # The last trial runs alone.


def test_sweep_eta_counts_what_a_trial_does_beyond_its_epochs_so_it_is_not_0_while_one_runs() -> None:
    """Two trials side by side: when the first ends, the other has trained its epochs (none left)
    but still evaluates and writes its results. The ETA is that work, as the first trial took it."""
    progress = SweepProgress(total=2, concurrency=2)
    progress.finished(trial_seconds=50.0, epochs_trained=4, training_seconds=30.0)  # 20 s beyond its epochs.
    assert progress.eta_seconds(epochs_left=0, trials_left=1) == pytest.approx(20.0)  # Not 0m00s.
    assert progress.eta_seconds(epochs_left=4, trials_left=2) == pytest.approx(4 * 30.0 / 4 / 2 + 2 * 20.0 / 2)
    resumed = SweepProgress(total=3, concurrency=2)
    resumed.finished(trial_seconds=14.0, epochs_trained=0, training_seconds=0.0)  # Only its results, 14 s.
    assert resumed.eta_seconds(epochs_left=0, trials_left=1) == pytest.approx(14.0)
    assert math.isnan(resumed.eta_seconds(epochs_left=120, trials_left=2))  # No epoch measured yet.


def test_a_trial_records_the_seconds_its_own_epochs_took(tmp_path: Path) -> None:
    from mnist_cnn.sweep.trials import seconds_trained

    run = RunFolder(tmp_path / "seed-0").create()
    scores = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}
    rows = [{"epoch": epoch, **scores, "seconds": 10.0 * epoch} for epoch in (1, 2, 3)]
    run.model("Model_A").write_history(rows)
    # Resumed after epoch 1 of Model_A; Model_B not started (no history yet).
    assert seconds_trained(run, {"Model_A": 1, "Model_B": 0}) == pytest.approx(20.0 + 30.0)


def test_a_trial_whose_worker_died_is_one_line_naming_the_resume_command(tmp_path: Path) -> None:
    """A worker killed under the sweep (out of memory, SIGKILL, a long SIGSTOP) is not a bug in
    mnist-cnn: one line, exit 2, the command that continues from the last epoch."""
    import ray

    class DeadWorkerRay:
        exceptions = ray.exceptions

        @staticmethod
        def get(reference: object) -> object:
            raise ray.exceptions.WorkerCrashedError()

    sweep = SweepFolder(tmp_path / "sweep")
    with pytest.raises(TrialLostError) as raised:
        trial_result(DeadWorkerRay, object(), 3, sweep)
    message = str(raised.value)
    assert message.startswith("seed 3: its Ray worker died (WorkerCrashedError")
    assert message.endswith(f"'mnist-cnn compare --resume {sweep.path}'") and "\n" not in message


def test_a_trial_taken_up_by_several_tasks_keeps_where_each_ran(tmp_path: Path) -> None:
    from mnist_cnn.report.sweep import SeedResults, trial_record

    run = RunFolder(tmp_path / "seed-0").create()
    first = {"seed": 0, "host": "node-1", "cpu": "AMD EPYC", "pid": 11, "started": "2026-11-25T08:00:00"}
    run.write_trial(first)
    assert run.read_trial() == first
    second = {**first, "host": "node-2", "cpu": "Intel Xeon", "pid": 7, "started": "2026-11-25T09:00:00"}
    run.write_trial(second)  # The first task was cancelled mid-way; another node took the trial up.
    run.write_trial({**second, "wall_seconds": 60.0})  # The same task, ending: it replaces its own record.
    trial = run.read_trial()
    assert trial["earlier"] == [first] and trial["wall_seconds"] == 60.0
    record = trial_record(SeedResults(seed=0, metrics={}, histories={}, trial=trial, environment={}))
    assert record.host == "node-1, node-2" and record.cpu == "AMD EPYC, Intel Xeon" and record.tasks == 2


# ---------------------------------------------------------------- real sweeps on Ray


@pytest.fixture(scope="module")
def straight_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 seeds x 2 models x 2 epochs on 300 images, on a local Ray (2 CPUs), uninterrupted."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "straight"
    tracking = f"sqlite:///{sweep_dir.parent / 'mlflow.db'}"  # test_tracking reads it back.
    result = cli("compare", "--seeds", len(SWEEP_SEEDS), *SWEEP_SETTINGS, "--out", sweep_dir, "--track", tracking)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("trials done") == len(SWEEP_SEEDS)
    assert "Verdict" in result.stdout
    return sweep_dir


@pytest.mark.slow
def test_sweep_writes_a_run_folder_per_seed_and_statistics_from_them(straight_sweep: Path) -> None:
    sweep = SweepFolder.existing(straight_sweep)
    statistics = SweepStatistics.from_json(sweep.read_statistics())
    assert statistics.seeds_finished == SWEEP_SEEDS
    for position, seed in enumerate(SWEEP_SEEDS):
        run = sweep.seed_run(seed)
        assert run.is_finished() and run.config().seed == seed
        trial = run.read_trial()
        assert trial["seed"] == seed and trial["cpus_reserved"] >= 1 and trial["pid"] != os.getpid()
        assert trial["epochs_trained"] == 2 * 2 and "earlier" not in trial  # Two models x two epochs, one task.
        for name in ("Model_A", "Model_B"):
            metrics = run.model(name).read_metrics()
            assert statistics.values(name, "test_accuracy")[position] == metrics.test_accuracy
            assert statistics.values(name, "training_seconds")[position] == metrics.training_seconds
    accuracies = {name: statistics.values(name, "test_accuracy") for name in ("Model_A", "Model_B")}
    assert len(set(accuracies["Model_A"])) > 1  # The seeds differ: different initial weights and orders.
    comparison = statistics.comparison
    assert comparison is not None
    expected = stats.paired_difference("test_accuracy", accuracies["Model_A"], accuracies["Model_B"])
    assert comparison.differences["test_accuracy"].summary.mean == pytest.approx(expected.summary.mean)
    assert comparison.verdict.startswith(f"With {len(SWEEP_SEEDS)} seeds, Model_B's test accuracy is")
    markdown = (straight_sweep / "statistics.md").read_text()
    assert comparison.verdict in markdown and "| seed |" in markdown
    for name in ("test_accuracy", "curves", "epoch_times"):
        with Image.open(sweep.figure_path(name)) as image:
            image.verify()


@pytest.mark.slow
def test_a_tracked_sweep_is_a_parent_run_with_a_child_per_seed_and_model(straight_sweep: Path) -> None:
    """Logged by the driver as each trial ended, then the statistics: what the folders hold, once."""
    from .test_tracking import all_runs, assert_run_matches_folder, runs_by_model

    uri = f"sqlite:///{straight_sweep.parent / 'mlflow.db'}"
    sweep = SweepFolder(straight_sweep)
    runs = all_runs(uri)
    parent = next(found for found in runs if found.data.tags.get("mnist_cnn.sweep_key") == sweep.identity())
    assert len(runs) == 1 + 2 * len(SWEEP_SEEDS) and parent.info.status == "FINISHED"
    for seed in SWEEP_SEEDS:
        for model, found in runs_by_model(uri, sweep.seed_run(seed)).items():
            assert found.data.tags["mlflow.parentRunId"] == parent.info.run_id and found.data.tags["seed"] == str(seed)
            assert found.data.tags["host"] == sweep.seed_run(seed).read_trial()["host"]
            assert_run_matches_folder(uri, found, sweep.seed_run(seed), model)
    statistics = SweepStatistics.from_json(sweep.read_statistics())
    assert statistics.comparison is not None
    difference = statistics.comparison.differences["test_accuracy"]
    assert parent.data.metrics["Model_B-Model_A/test_accuracy/difference"] == difference.summary.mean
    assert parent.data.metrics["seeds_finished"] == len(SWEEP_SEEDS)
    assert parent.data.tags["verdict.Model_B"] == statistics.comparison.verdict
    assert json.loads(parent.data.params["seeds"]) == list(SWEEP_SEEDS)


@pytest.mark.slow
def test_sweep_report_shows_the_verdict_and_links_every_seeds_report(straight_sweep: Path) -> None:
    from .test_report import assert_offline, decoded_images, parse

    sweep = SweepFolder(straight_sweep)
    page = parse(sweep.report_path)
    assert_offline(sweep.report_path, page)
    assert {"verdict", "models", "paired", "figures", "seeds"} <= page.ids
    assert len(decoded_images(page)) == 4  # Seed accuracies, mean curves, epoch times, accuracy against cost.
    comparison = SweepStatistics.from_json(sweep.read_statistics()).comparison
    assert comparison is not None and comparison.verdict in " ".join(" ".join(page.text).split())
    seed_links = [link for link in page.links if not link.startswith("#")]
    assert seed_links == [f"seed-{seed}/report.html" for seed in SWEEP_SEEDS]
    for link in seed_links:
        assert {"data", "mistakes", "predictions"} <= parse(straight_sweep / link).ids


@pytest.mark.slow
def test_a_trial_equals_the_same_experiment_run_alone(straight_sweep: Path, tmp_path: Path) -> None:
    """A trial is an ordinary run: single-threaded in a Ray worker, it learns exactly what
    `mnist-cnn experiment --seed 1` learns in this process."""
    from mnist_cnn.experiment import run_experiment

    alone = tmp_path / "alone"
    run_experiment(SWEEP_CONFIG.for_seed(1), alone, stream=io.StringIO())
    trial = SweepFolder(straight_sweep).seed_run(1)
    for name in ("Model_A", "Model_B"):
        ours, theirs = trial.model(name).read_history(), RunFolder(alone).model(name).read_history()
        for row, other in zip(ours, theirs, strict=True):
            assert {k: v for k, v in row.items() if k != "seconds"} == pytest.approx(
                {k: v for k, v in other.items() if k != "seconds"}, rel=1e-5
            )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--seeds", "0"), "at least 1 seed"),
        (("--seeds", "1"), "needs at least 2 seeds"),
        (("--seeds", "x"), "not a number of seeds"),
        (("--seeds", "2", "--ray-address", "127.0.0.1:9"), "no Ray cluster answers at 127.0.0.1:9"),
        (("--seeds", "2", "--ray-address", "nonsense"), "is not HOST:PORT"),
        (("--seeds", "2", "--cpus-per-trial", "512", "--limit", "100"), "no node of the Ray cluster has 512 CPUs"),
        (("--resume", "NOT_A_SWEEP"), "is not a sweep folder"),
    ],
)
def test_compare_bad_input_gives_one_line_and_exit_code_2(
    arguments: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    not_a_sweep = tmp_path / "plain"
    not_a_sweep.mkdir()
    (not_a_sweep / "notes.txt").write_text("hello")
    arguments = tuple(str(not_a_sweep) if argument == "NOT_A_SWEEP" else argument for argument in arguments)
    result = cli("compare", *arguments, "--out", tmp_path / "sweep")
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "sweep").exists()  # Refused before the sweep began: nothing left behind.


RAY_START_TIMED_OUT = (
    "The current node timed out during startup. This could happen because some of the raylet failed to "
    "startup or the GCS has become overloaded."
)  # What Ray 2.60's ray.init() raises, a bare Exception, when its node misses the start-up deadline.


def test_a_local_ray_that_does_not_start_is_one_line_saying_what_to_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node was given Ray's own longer deadline (RAY_raylet_start_wait_time_s, read by Ray's
    C++ core), once, not a loop of retries; when it still misses it, nothing is left behind."""
    import ray

    from mnist_cnn.sweep import trials

    monkeypatch.setenv(trials.RAYLET_START_WAIT, "")
    monkeypatch.delenv(trials.RAYLET_START_WAIT)  # Unset, and unset again after the test.
    deadlines = []

    def timed_out(**options: object) -> None:
        deadlines.append(os.environ.get(trials.RAYLET_START_WAIT))
        raise Exception(RAY_START_TIMED_OUT)  # Ray raises a bare Exception for it.

    monkeypatch.setattr(ray, "init", timed_out)
    result = cli("compare", "--seeds", "2", "--models", "A", "--limit", "100", "--epochs", "1", "--out", tmp_path / "s")
    assert result.returncode == 2, result.stderr
    said = f"mnist-cnn: error: Ray did not start on this machine: {RAY_START_TIMED_OUT.rstrip('.')}; close "
    assert result.stderr.startswith(said), result.stderr
    assert "run the command again" in result.stderr and "--ray-address HOST:PORT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert deadlines == [str(trials.LOCAL_RAY_START_WAIT_S)]
    assert not (tmp_path / "s").exists()  # A sweep that never began: no sweep.json, no folder.


@pytest.mark.slow
def test_the_start_up_deadline_given_is_the_one_rays_core_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """RAY_raylet_start_wait_time_s is how long Ray's C++ core looks for a node in its GCS before
    it gives up (Ray's default 30 s): on a real local Ray, asked for a node that never registers, it
    gives up after the seconds set. A value the user set is kept over LOCAL_RAY_START_WAIT_S."""
    import time

    from ray._private import services

    from mnist_cnn.sweep import trials

    monkeypatch.setenv(trials.RAYLET_START_WAIT, "4")
    ray = trials.start_ray(None)
    try:
        gcs_address = ray._private.worker.global_worker.node.gcs_address
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017  (Ray's RuntimeError, or its RPC's deadline)
            services.get_node(gcs_address, "ab" * 28)
        assert 4 <= time.monotonic() - started < 15
    finally:
        ray.shutdown()


# compare's refusals of its own flags: none needs Keras, Ray or the sweep folder.
COMPARE_REFUSALS = [
    (("--seeds", "0"), "at least 1 seed"),
    (("--seeds", "1"), "needs at least 2 seeds"),
    (("--seeds", "2", "--workers", "0"), "workers must be at least 1, got 0"),
    (("--seeds", "2", "--cpus-per-trial", "0"), "CPUs per trial must be at least 1, got 0"),
    (("--seeds", "2", "--ray-address", "nonsense"), "is not HOST:PORT"),
    (("--seeds", "2", "--ray-address", "127.0.0.1:9"), "no Ray cluster answers at 127.0.0.1:9"),
]


@pytest.mark.parametrize(("arguments", "message"), COMPARE_REFUSALS)
def test_compare_refuses_its_flags_before_keras_ray_or_a_folder(
    arguments: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from mnist_cnn.core import environment

    def started(*args: object, **options: object) -> None:
        raise AssertionError("started before the flags were checked")

    monkeypatch.setattr(environment, "select_backend", started)  # Where Keras's backend is fixed.
    monkeypatch.setattr(ray, "init", started)
    result = cli("compare", *arguments, "--out", tmp_path / "sweep")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(("arguments", "message"), [COMPARE_REFUSALS[0], *COMPARE_REFUSALS[2:5]])
def test_a_refused_compare_process_exits_at_once(arguments: tuple[str, ...], message: str, tmp_path: Path) -> None:
    """The real process, as a user runs it: the one line, exit 2, and the process gone well within
    the timeout (run_cli raises if it is not), with no sweep folder made."""
    result = run_cli("compare", *arguments, "--out", tmp_path / "sweep", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("mnist-cnn: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "sweep").exists()

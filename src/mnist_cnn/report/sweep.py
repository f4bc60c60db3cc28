"""A sweep's statistics (statistics.json, statistics.md) and figures, from its seed folders.

Everything here is read back from the run folders, so the statistics of a resumed sweep are
computed exactly as those of a straight one, and can be rebuilt at any time.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mnist_cnn.core import stats
from mnist_cnn.core.config import SweepConfig
from mnist_cnn.core.files import write_text
from mnist_cnn.core.results import HistoryRow, ModelMetrics
from mnist_cnn.core.version import version_text
from mnist_cnn.report.html import file_uri, template_environment, write_run_report
from mnist_cnn.store.runs import RunFolder
from mnist_cnn.store.sweeps import SweepFolder

# What is compared per seed: (field of ModelMetrics, label, how it is shown).
MEASURES = (
    ("test_accuracy", "test accuracy", "percent"),
    ("test_loss", "test loss", "plain"),
    ("best_val_accuracy", "best validation accuracy", "percent"),
    ("training_seconds", "training time (s)", "seconds"),
    ("seconds_per_epoch_median", "median s/epoch", "seconds"),
    ("inference_ms_per_image_batched", "inference ms/image (batched)", "milliseconds"),
)
# Differences B - A for these; ratios B/A for the times.
DIFFERENCE_MEASURES = ("test_accuracy", "test_loss", "best_val_accuracy")
RATIO_MEASURES = ("training_seconds", "seconds_per_epoch_median", "inference_ms_per_image_batched")


@dataclasses.dataclass(frozen=True)
class SeedResults:
    """One finished seed: each model's metrics and history, and where the trial ran."""

    seed: int
    metrics: dict[str, ModelMetrics]
    histories: dict[str, list[HistoryRow]]
    trial: dict[str, Any]
    environment: dict[str, Any]


def collect(sweep: SweepFolder, sweep_config: SweepConfig) -> list[SeedResults]:
    """Every finished seed of the sweep, in seed order (unfinished ones are left out)."""
    results = []
    for seed in sweep_config.seeds:
        run: RunFolder = sweep.seed_run(seed)
        if not run.is_finished():
            continue
        folders = run.model_folders()
        results.append(
            SeedResults(
                seed=seed,
                metrics={folder.name: folder.read_metrics() for folder in folders},
                histories={folder.name: folder.read_history() for folder in folders},
                trial=run.read_trial(),
                environment=run.read_record().get("environment", {}),
            )
        )
    return results


def compute_statistics(results: list[SeedResults], sweep_config: SweepConfig) -> dict[str, Any]:
    """statistics.json: per-model summaries, the paired B - A comparison, power, and where trials ran."""
    models = [spec.name for spec in sweep_config.experiment.model_specs()]
    per_model = {
        name: {
            field: stats.summarize([getattr(seed.metrics[name], field) for seed in results]).to_json()
            for field, _, _ in MEASURES
        }
        for name in models
    }
    document: dict[str, Any] = {
        "seeds_requested": list(sweep_config.seeds),
        "seeds_finished": [seed.seed for seed in results],
        "experiment": {**sweep_config.experiment.to_dict(), "seed": None},
        "models": per_model,
        "trials": [trial_record(seed) for seed in results],
    }
    if len(models) == 2 and len(results) >= 2:
        document["comparison"] = paired_comparison(results, models[0], models[1])
    return document


def paired_comparison(results: list[SeedResults], first: str, second: str) -> dict[str, Any]:
    def values(name: str, field: str) -> list[float]:
        return [getattr(seed.metrics[name], field) for seed in results]

    differences = {
        field: stats.paired_difference(field, values(first, field), values(second, field))
        for field in DIFFERENCE_MEASURES
    }
    ratios = {
        field: stats.ratio_summary(field, values(first, field), values(second, field)) for field in RATIO_MEASURES
    }
    accuracy = differences["test_accuracy"]
    return {
        "first": first,
        "second": second,
        "differences": {field: difference.to_json() for field, difference in differences.items()},
        "ratios": {field: ratio.to_json() for field, ratio in ratios.items()},
        "detectable_difference": stats.DETECTABLE_DIFFERENCE,
        "seeds_needed_for_detectable_difference": stats.seeds_needed(accuracy.summary.sd, stats.DETECTABLE_DIFFERENCE),
        "verdict": stats.accuracy_verdict(first, second, accuracy),
        "time_verdict": stats.time_verdict(first, second, ratios["training_seconds"]),
    }


def trial_record(seed: SeedResults) -> dict[str, Any]:
    """Where a seed's trial ran; a trial resumed elsewhere names every host and CPU it ran on."""
    environment = seed.environment
    tasks = [*seed.trial.get("earlier", []), seed.trial]
    return {
        "seed": seed.seed,
        "host": distinct(task.get("host") for task in tasks),
        "node_ip": seed.trial.get("node_ip"),
        "node_id": seed.trial.get("node_id"),
        "cpu": distinct(task.get("cpu", environment.get("cpu")) for task in tasks),
        "tasks": len(tasks) if seed.trial else 0,
        "cpus_reserved": seed.trial.get("cpus_reserved"),
        "wall_seconds": seed.trial.get("wall_seconds"),
        "backend": environment.get("backend"),
        "libraries": environment.get("libraries", {}),
        "resumed": any(metrics.resumed_from_epoch for metrics in seed.metrics.values()),
    }


def distinct(values: Iterable[str | None]) -> str | None:
    """The values without repeats or blanks, in order, comma-separated; None when there are none."""
    unique = list(dict.fromkeys(value for value in values if value))
    return ", ".join(unique) if unique else None


def write_sweep_statistics(sweep: SweepFolder, sweep_config: SweepConfig) -> tuple[dict[str, Any], str]:
    """Compute, write and return statistics.json/.md and the figures of a sweep."""
    from mnist_cnn.report.figures import plot_epoch_times, plot_mean_curves, plot_seed_accuracies

    results = collect(sweep, sweep_config)
    if not results:
        raise ValueError(f"{sweep.path} has no finished seed yet")
    statistics = compute_statistics(results, sweep_config)
    models = list(statistics["models"])
    plot_seed_accuracies(
        {name: [seed.metrics[name].test_accuracy for seed in results] for name in models},
        [seed.seed for seed in results],
        sweep.figure_path("test_accuracy"),
    )
    plot_mean_curves({name: [seed.histories[name] for seed in results] for name in models}, sweep.figure_path("curves"))
    plot_epoch_times(
        {name: [seed.metrics[name].seconds_per_epoch for seed in results] for name in models},
        sweep.figure_path("epoch_times"),
    )
    markdown = statistics_markdown(statistics, sweep)
    sweep.write_statistics(statistics, markdown)
    return statistics, markdown


def shown(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "percent":
        return f"{100 * value:.2f} %"
    if kind == "seconds":
        return f"{value:.1f}"
    if kind == "milliseconds":
        return f"{value:.4f}"
    return f"{value:.4f}"


def statistics_markdown(statistics: dict[str, Any], sweep: SweepFolder) -> str:
    """statistics.md: what a person reads; every number comes from statistics.json."""
    experiment = statistics["experiment"]
    finished, requested = statistics["seeds_finished"], statistics["seeds_requested"]
    lines = [
        "# Model_A vs Model_B over seeds",
        "",
        f"{len(finished)} of {len(requested)} seeds finished ({', '.join(map(str, finished))}); "
        f"{experiment['epochs']} epochs, batch {experiment['batch_size']}, {experiment['optimizer']} "
        f"(learning rate {experiment['learning_rate']}), backend {experiment['backend']}"
        + (f", first {experiment['limit']} images" if experiment.get("limit") else "")
        + ". Each seed trains every model with the same seed and data order, on one node.",
        "",
    ]
    comparison = statistics.get("comparison")
    if comparison:
        lines += ["## Verdict", "", comparison["verdict"], "", comparison["time_verdict"], ""]
        needed = comparison["seeds_needed_for_detectable_difference"]
        points = 100 * comparison["detectable_difference"]
        if needed is not None:
            lines += [
                f"Power: at this seed-to-seed noise, detecting a difference of {points:.1f} points "
                f"(paired t-test, 5 % level, 80 % power) needs about **{needed} seeds**.",
                "",
            ]
    lines += [
        "## Per model (mean ± sd, 95 % CI of the mean)",
        "",
        "| measure | " + " | ".join(statistics["models"]) + " |",
    ]
    lines.append("|---|" + "---:|" * len(statistics["models"]))
    for field, label, kind in MEASURES:
        cells = []
        for summary in (statistics["models"][name][field] for name in statistics["models"]):
            spread = f" ± {shown(summary['sd'], kind)}" if summary["sd"] is not None else ""
            interval = (
                f" [{shown(summary['ci_low'], kind)}, {shown(summary['ci_high'], kind)}]"
                if summary["ci_low"] is not None
                else ""
            )
            cells.append(f"{shown(summary['mean'], kind)}{spread}{interval}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if comparison:
        lines += paired_markdown(comparison)
    lines += seeds_markdown(statistics)
    lines += [
        "## Figures",
        "",
        f"![test accuracy per seed]({sweep.figure_path('test_accuracy').name})",
        f"![mean curves]({sweep.figure_path('curves').name})",
        f"![time per epoch]({sweep.figure_path('epoch_times').name})",
        "",
    ]
    return "\n".join(lines)


def paired_markdown(comparison: dict[str, Any]) -> list[str]:
    first, second = comparison["first"], comparison["second"]
    lines = [
        f"## Paired: {second} − {first}, seed by seed",
        "",
        "| measure | mean | 95 % CI (t) | 95 % CI (bootstrap) | paired t-test p | Wilcoxon p |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for field, label, kind in MEASURES:
        if field not in comparison["differences"]:
            continue
        difference = comparison["differences"][field]
        scale, unit = (100, " pt") if kind == "percent" else (1, "")
        lines.append(
            f"| {label} | {scale * difference['mean']:+.3f}{unit} "
            f"| [{scale * difference['ci_low']:+.3f}, {scale * difference['ci_high']:+.3f}] "
            f"| [{scale * difference['bootstrap_low']:+.3f}, {scale * difference['bootstrap_high']:+.3f}] "
            f"| {difference['t_test_p']:.3g} | {difference['wilcoxon_p']:.3g} |"
        )
    lines += ["", f"| ratio {second}/{first} | geometric mean | 95 % CI |", "|---|---:|---:|"]
    for field, label, _ in MEASURES:
        if field not in comparison["ratios"]:
            continue
        ratio = comparison["ratios"][field]
        interval = f"[{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]" if ratio["ci_low"] is not None else "–"
        lines.append(f"| {label} | {ratio['geometric_mean']:.3f}x | {interval} |")
    return [*lines, ""]


def seeds_markdown(statistics: dict[str, Any]) -> list[str]:
    models = list(statistics["models"])
    lines = [
        "## Each seed, and where it ran",
        "",
        "| seed | " + " | ".join(f"{name} test acc | {name} time (s)" for name in models) + " | host | CPU | resumed |",
        "|---:|" + "---:|---:|" * len(models) + "---|---|---|",
    ]
    for position, trial in enumerate(statistics["trials"]):
        cells = []
        for name in models:
            accuracy = statistics["models"][name]["test_accuracy"]["values"][position]
            seconds = statistics["models"][name]["training_seconds"]["values"][position]
            cells += [f"{100 * accuracy:.2f} %", f"{seconds:.0f}"]
        lines.append(
            f"| {trial['seed']} | " + " | ".join(cells) + f" | {trial['host'] or '–'} | {trial['cpu'] or '–'} "
            f"| {'yes' if trial['resumed'] else 'no'} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------- the sweep's report.html


def write_sweep_report(sweep_dir: str | Path, statistics: dict[str, Any] | None = None) -> Path:
    """Write ``report.html`` at a sweep's root: the statistics, the verdict, a link to each seed's report.

    Without ``statistics``, they are computed again from the seed folders (and written).
    Seeds whose own report is missing (a sweep run by an older version) get one first.
    """
    sweep = SweepFolder.existing(sweep_dir)
    if statistics is None:
        statistics, _ = write_sweep_statistics(sweep, SweepConfig.from_json(sweep.read_settings()))
    models = list(statistics["models"])
    per_seed = []
    for position, trial in enumerate(statistics["trials"]):
        run = sweep.seed_run(trial["seed"])
        if not run.report_path.is_file():
            write_run_report(run.path)
        values = [
            (
                statistics["models"][name]["test_accuracy"]["values"][position],
                statistics["models"][name]["training_seconds"]["values"][position],
            )
            for name in models
        ]
        per_seed.append({**trial, "link": f"{run.path.name}/{run.report_path.name}", "values": values})
    html = (
        template_environment()
        .get_template("sweep.html.j2")
        .render(
            title=f"mnist-cnn compare {sweep.path.name}",
            generated=datetime.datetime.now().isoformat(timespec="seconds"),
            version=version_text(),
            statistics=statistics,
            models=models,
            measures=MEASURES,
            per_seed=per_seed,
            figures={name: file_uri(sweep.figure_path(name)) for name in ("test_accuracy", "curves", "epoch_times")},
        )
    )
    write_text(sweep.report_path, html)
    return sweep.report_path

"""A sweep's statistics (statistics.json, statistics.md) and figures, from its seed folders.

Everything here is read back from the run folders, so the statistics of a resumed sweep are
computed exactly as those of a straight one, and can be rebuilt at any time.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import markupsafe

from mnist_cnn.core import stats
from mnist_cnn.core.config import SweepConfig
from mnist_cnn.core.errors import RunFolderError
from mnist_cnn.core.files import write_text
from mnist_cnn.core.results import HistoryRow, ModelMetrics
from mnist_cnn.core.sweep_results import PairedComparison, SweepStatistics, TrialRecord
from mnist_cnn.core.version import version_text
from mnist_cnn.report.html import file_uri, template_environment, write_run_report
from mnist_cnn.report.measures import (
    BY_FIELD,
    DIFFERENCE_MEASURES,
    MISSING,
    RATIO_MEASURES,
    SWEEP_MEASURES,
    Row,
    difference_rows,
    format_difference,
    format_ratio,
    format_summary,
    format_value,
    ratio_rows,
    summary_rows,
)
from mnist_cnn.store.runs import RunFolder
from mnist_cnn.store.sweeps import SweepFolder

# What the table of seeds shows of each model.
SEED_MEASURES = (BY_FIELD["test_accuracy"], BY_FIELD["training_seconds"])


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
        if not run.has_results():
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


def compute_statistics(results: list[SeedResults], sweep_config: SweepConfig) -> SweepStatistics:
    """statistics.json: per-model summaries, the paired comparison of two models, power, where trials ran."""
    models = [spec.name for spec in sweep_config.experiment.model_specs()]
    per_model = {
        name: {
            measure.field: stats.summarize([measure.value(seed.metrics[name]) for seed in results])
            for measure in SWEEP_MEASURES
        }
        for name in models
    }
    baseline = sweep_config.baseline_name()
    comparisons = (
        [paired_comparison(results, baseline, name) for name in models if name != baseline] if len(results) >= 2 else []
    )
    return SweepStatistics(
        seeds_requested=tuple(sweep_config.seeds),
        seeds_finished=tuple(seed.seed for seed in results),
        experiment=sweep_config.experiment,
        models=per_model,
        trials=tuple(trial_record(seed) for seed in results),
        comparisons=tuple(holm_adjusted(comparisons)),
    )


def holm_adjusted(comparisons: list[PairedComparison]) -> list[PairedComparison]:
    """Several variants against one baseline: each measure's t-test p-values Holm-adjusted across
    the comparisons, and the accuracy verdicts decided on the adjusted values. One comparison
    (the specification's A vs B) has nothing to adjust and is returned as it is."""
    if len(comparisons) < 2:
        return comparisons
    adjusted = {
        measure.field: stats.holm_adjust([comparison.differences[measure.field].t_test_p for comparison in comparisons])
        for measure in DIFFERENCE_MEASURES
    }
    result = []
    for position, comparison in enumerate(comparisons):
        differences = {
            field: dataclasses.replace(difference, holm_p=adjusted[field][position])
            for field, difference in comparison.differences.items()
        }
        verdict = stats.accuracy_verdict(comparison.first, comparison.second, differences["test_accuracy"])
        result.append(dataclasses.replace(comparison, differences=differences, verdict=verdict))
    return result


def paired_comparison(results: list[SeedResults], first: str, second: str) -> PairedComparison:
    """``second`` against ``first``, seed by seed: differences of the scores, ratios of the times."""

    def values(name: str, field: str) -> list[float]:
        return [getattr(seed.metrics[name], field) for seed in results]

    differences = {
        measure.field: stats.paired_difference(
            measure.field, values(first, measure.field), values(second, measure.field)
        )
        for measure in DIFFERENCE_MEASURES
    }
    ratios = {
        measure.field: stats.ratio_summary(measure.field, values(first, measure.field), values(second, measure.field))
        for measure in RATIO_MEASURES
    }
    accuracy = differences["test_accuracy"]
    return PairedComparison(
        first=first,
        second=second,
        differences=differences,
        ratios=ratios,
        detectable_difference=stats.DETECTABLE_DIFFERENCE,
        seeds_needed=stats.seeds_needed(accuracy.summary.sd, stats.DETECTABLE_DIFFERENCE),
        verdict=stats.accuracy_verdict(first, second, accuracy),
        time_verdict=stats.time_verdict(first, second, ratios["training_seconds"]),
    )


def trial_record(seed: SeedResults) -> TrialRecord:
    """Where a seed's trial ran; a trial resumed elsewhere names every host and CPU it ran on."""
    environment = seed.environment
    tasks = [*seed.trial.get("earlier", []), seed.trial]
    return TrialRecord(
        seed=seed.seed,
        host=distinct(task.get("host") for task in tasks),
        node_ip=seed.trial.get("node_ip"),
        node_id=seed.trial.get("node_id"),
        cpu=distinct(task.get("cpu", environment.get("cpu")) for task in tasks),
        tasks=len(tasks) if seed.trial else 0,
        cpus_reserved=seed.trial.get("cpus_reserved"),
        wall_seconds=seed.trial.get("wall_seconds"),
        backend=environment.get("backend"),
        libraries=environment.get("libraries", {}),
        resumed=any(metrics.resumed_from_epoch for metrics in seed.metrics.values()),
    )


def distinct(values: Iterable[str | None]) -> str | None:
    """The values without repeats or blanks, in order, comma-separated; None when there are none."""
    unique = list(dict.fromkeys(value for value in values if value))
    return ", ".join(unique) if unique else None


def write_sweep_statistics(sweep: SweepFolder, sweep_config: SweepConfig) -> tuple[SweepStatistics, str]:
    """Compute, write and return statistics.json/.md and the figures of a sweep."""
    from mnist_cnn.report.figures import (
        plot_accuracy_against_cost,
        plot_epoch_times,
        plot_mean_curves,
        plot_seed_accuracies,
    )

    results = collect(sweep, sweep_config)
    if not results:
        raise RunFolderError(
            f"{sweep.path}: no seed has finished yet, so there are no statistics to report; "
            f"train the seeds with 'mnist-cnn compare --resume {sweep.path}'"
        )
    statistics = compute_statistics(results, sweep_config)
    models = statistics.model_names
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
    plot_accuracy_against_cost(statistics, sweep.figure_path("cost"))
    markdown = statistics_markdown(statistics, sweep)
    sweep.write_statistics(statistics.to_json(), markdown)
    return statistics, markdown


def sweep_title(statistics: SweepStatistics) -> str:
    """The title of statistics.md: the sweep's models, whichever and however many ("M1 vs M2 over seeds")."""
    return f"{' vs '.join(statistics.model_names)} over seeds"


def settings_sentence(statistics: SweepStatistics) -> str:
    """How many seeds finished and what each ran: epochs, batch, optimizer, backend (and a limit)."""
    experiment = statistics.experiment
    finished, requested = statistics.seeds_finished, statistics.seeds_requested
    return (
        f"{len(finished)} of {len(requested)} seeds finished ({', '.join(map(str, finished))}); "
        f"{experiment.epochs} epochs, batch {experiment.batch_size}, {experiment.optimizer} "
        f"(learning rate {experiment.learning_rate}), backend {experiment.backend}"
        + (f", first {experiment.limit} images" if experiment.limit else "")
        + "."
    )


def power_sentence(comparison: PairedComparison, strong: Callable[[str], str] = "**{}**".format) -> str | None:
    """How many seeds it takes to detect the detectable difference; ``strong`` marks the answer."""
    if comparison.seeds_needed is None:
        return None
    return (
        f"At this seed-to-seed noise, detecting a difference of {100 * comparison.detectable_difference:.1f} points "
        f"(paired t-test, 5 % level, 80 % power) needs about {strong(f'{comparison.seeds_needed} seeds')}."
    )


def seed_rows(statistics: SweepStatistics) -> list[Row]:
    """Each finished seed: every model's test accuracy and training time, where it ran, resumed or not."""
    rows = []
    for position, trial in enumerate(statistics.trials):
        cells = [
            format_value(statistics.values(name, measure.field)[position], measure)
            for name in statistics.model_names
            for measure in SEED_MEASURES
        ]
        cells += [trial.host or "–", trial.cpu or "–", "yes" if trial.resumed else "no"]
        rows.append(Row(str(trial.seed), tuple(cells)))
    return rows


def seed_columns(statistics: SweepStatistics) -> list[str]:
    return [f"{name} {measure.label}" for name in statistics.model_names for measure in SEED_MEASURES]


def markdown_table(head: list[str], rows: list[Row], align: str) -> list[str]:
    """A Markdown table: ``align`` holds one "l" or "r" a column."""
    rule = "".join("---|" if side == "l" else "---:|" for side in align)
    return [
        "| " + " | ".join(head) + " |",
        f"|{rule}",
        *(f"| {row.label} | " + " | ".join(row.cells) + " |" for row in rows),
    ]


def statistics_markdown(statistics: SweepStatistics, sweep: SweepFolder) -> str:
    """statistics.md: what a person reads; every number comes from statistics.json."""
    lines = [
        f"# {sweep_title(statistics)}",
        "",
        settings_sentence(statistics) + " Each seed trains every model with the same seed and data order, on one node.",
        "",
    ]
    comparison = statistics.comparison
    if len(statistics.comparisons) > 1:
        lines += several_comparisons_markdown(statistics)
    if comparison is not None:
        lines += ["## Verdict", "", comparison.verdict, "", comparison.time_verdict, ""]
        power = power_sentence(comparison)
        if power is not None:
            lines += [f"Power: {power[0].lower()}{power[1:]}", ""]
    models = statistics.model_names
    lines += [
        "## Per model (mean ± sd, 95 % CI of the mean)",
        "",
        *markdown_table(["measure", *models], summary_rows(statistics.models), "l" + "r" * len(models)),
        "",
    ]
    if comparison is not None:
        lines += paired_markdown(comparison)
    lines += [
        "## Each seed, and where it ran",
        "",
        *markdown_table(
            ["seed", *seed_columns(statistics), "host", "CPU", "resumed"],
            seed_rows(statistics),
            "r" * (1 + len(seed_columns(statistics))) + "lll",
        ),
        "",
        "## Figures",
        "",
        f"![test accuracy per seed]({sweep.figure_path('test_accuracy').name})",
        f"![mean curves]({sweep.figure_path('curves').name})",
        f"![time per epoch]({sweep.figure_path('epoch_times').name})",
        f"![test accuracy against cost]({sweep.figure_path('cost').name})",
        "",
    ]
    return "\n".join(lines)


BASELINE_COLUMNS = [
    "variant",
    "parameters",
    "test accuracy − baseline",
    "95 % CI (t)",
    "paired t-test p",
    "Holm-adjusted p",
    "Wilcoxon p",
    "training time ratio [95 % CI]",
    "seeds for 0.1 pt",
]


def baseline_rows(statistics: SweepStatistics) -> list[Row]:
    """Each variant against the baseline: the accuracy difference with its tests, the time ratio, power."""
    accuracy, time = BY_FIELD["test_accuracy"], BY_FIELD["training_seconds"]
    parameters = {spec.name: spec.parameter_count() for spec in statistics.experiment.model_specs()}
    rows = []
    for comparison in statistics.comparisons:
        difference, ratio = comparison.differences[accuracy.field], comparison.ratios[time.field]
        interval = (
            f"[{format_difference(difference.summary.ci_low, accuracy, unit=False)}, "
            f"{format_difference(difference.summary.ci_high, accuracy, unit=False)}]"
        )
        ratio_text = (
            f"{format_ratio(ratio.geometric_mean)}x [{format_ratio(ratio.ci_low)}, {format_ratio(ratio.ci_high)}]"
        )
        rows.append(
            Row(
                comparison.second,
                (
                    f"{parameters.get(comparison.second, 0):,}",
                    format_difference(difference.summary.mean, accuracy),
                    interval,
                    f"{difference.t_test_p:.3g}",
                    f"{difference.holm_p:.3g}" if difference.holm_p is not None else MISSING,
                    f"{difference.wilcoxon_p:.3g}",
                    ratio_text,
                    str(comparison.seeds_needed) if comparison.seeds_needed is not None else MISSING,
                ),
            )
        )
    return rows


def ranking(statistics: SweepStatistics) -> list[str]:
    """The models by mean test accuracy, best first, with their cost: what a reader asks first."""
    accuracy, epoch = BY_FIELD["test_accuracy"], BY_FIELD["seconds_per_epoch_median"]
    parameters = {spec.name: spec.parameter_count() for spec in statistics.experiment.model_specs()}
    order = sorted(statistics.model_names, key=lambda name: -statistics.models[name][accuracy.field].mean)
    return [
        f"{name}: {format_summary(statistics.models[name][accuracy.field], accuracy)} test accuracy, "
        f"{parameters.get(name, 0):,} parameters, "
        f"{format_value(statistics.models[name][epoch.field].mean, epoch)} s/epoch"
        for name in order
    ]


def several_comparisons_markdown(statistics: SweepStatistics) -> list[str]:
    """Every variant against the baseline (Holm-adjusted), the verdicts, and the ranking."""
    count = len(statistics.comparisons)
    return [
        f"## Against the baseline, {statistics.baseline}, seed by seed",
        "",
        f"Paired differences (variant − baseline); p-values Holm-adjusted over the {count} comparisons, so that "
        "testing many variants does not turn noise into findings.",
        "",
        *markdown_table(BASELINE_COLUMNS, baseline_rows(statistics), "l" + "r" * (len(BASELINE_COLUMNS) - 1)),
        "",
        "## Verdicts",
        "",
        *(f"- {comparison.verdict} {comparison.time_verdict}" for comparison in statistics.comparisons),
        "",
        "## Ranking by mean test accuracy",
        "",
        *(f"{place}. {line}" for place, line in enumerate(ranking(statistics), start=1)),
        "",
    ]


PAIRED_COLUMNS = ["measure", "mean", "95 % CI (t)", "95 % CI (bootstrap)", "paired t-test p", "Wilcoxon p"]


def ratio_columns(comparison: PairedComparison) -> list[str]:
    return [f"ratio {comparison.second}/{comparison.first}", "geometric mean", "95 % CI"]


def paired_markdown(comparison: PairedComparison) -> list[str]:
    return [
        f"## Paired: {comparison.second} − {comparison.first}, seed by seed",
        "",
        *markdown_table(PAIRED_COLUMNS, difference_rows(comparison.differences), "lrrrrr"),
        "",
        *markdown_table(ratio_columns(comparison), ratio_rows(comparison.ratios), "lrr"),
        "",
    ]


# ---------------------------------------------------------------- the sweep's report.html


def write_sweep_report(sweep_dir: str | Path, statistics: SweepStatistics | None = None) -> Path:
    """Write ``report.html`` at a sweep's root: the statistics, the verdict, a link to each seed's report.

    Without ``statistics``, they are computed again from the seed folders (and written).
    Seeds whose own report is missing (a sweep run by an older version) get one first.
    """
    sweep = SweepFolder.existing(sweep_dir)
    if statistics is None:
        statistics, _ = write_sweep_statistics(sweep, SweepConfig.from_json(sweep.read_settings()))
    links = []
    for trial in statistics.trials:
        run = sweep.seed_run(trial.seed)
        if not run.report_path.is_file():
            write_run_report(run.path)
        links.append(f"{run.path.name}/{run.report_path.name}")
    comparison = statistics.comparison
    models = statistics.model_names
    # Only numbers and fixed words: safe to mark up.
    power = power_sentence(comparison, "<strong>{}</strong>".format) if comparison is not None else None
    html = (
        template_environment()
        .get_template("sweep.html.j2")
        .render(
            title=f"mnist-cnn compare {sweep.path.name}",
            heading=f"Is {comparison.second} better than {comparison.first}?"
            if comparison is not None
            else sweep_title(statistics),
            generated=datetime.datetime.now().isoformat(timespec="seconds"),
            version=version_text(),
            settings=settings_sentence(statistics),
            models=models,
            comparison=comparison,
            # Why there is no verdict: only where one was asked for (two models) and cannot be given yet.
            no_comparison="A paired comparison needs at least two finished seeds."
            if comparison is None and len(models) == 2
            else None,
            power=markupsafe.Markup(power) if power else None,
            summary_rows=summary_rows(statistics.models),
            paired_columns=PAIRED_COLUMNS,
            difference_rows=difference_rows(comparison.differences) if comparison else [],
            ratio_columns=ratio_columns(comparison) if comparison else [],
            ratio_rows=ratio_rows(comparison.ratios) if comparison else [],
            seed_columns=seed_columns(statistics),
            seeds=list(zip(seed_rows(statistics), links, strict=True)),
            figures={
                name: file_uri(sweep.figure_path(name)) for name in ("test_accuracy", "curves", "epoch_times", "cost")
            },
            several=len(statistics.comparisons) > 1,
            baseline=statistics.baseline,
            baseline_columns=BASELINE_COLUMNS,
            baseline_rows=baseline_rows(statistics) if len(statistics.comparisons) > 1 else [],
            verdicts=[f"{item.verdict} {item.time_verdict}" for item in statistics.comparisons],
            ranking=ranking(statistics),
        )
    )
    write_text(sweep.report_path, html)
    return sweep.report_path

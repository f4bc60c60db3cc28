"""The one table of measures: what every table shows of a model, under which label, in which format.

Each measure is a field of ``ModelMetrics`` with one label and one way to write its value
(one precision, never scientific notation). The run's comparison.md, its report.html, the
sweep's statistics.md and its report.html all take their rows and cells from here, so a
measure reads the same wherever it appears.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from mnist_cnn.core.results import ModelMetrics
from mnist_cnn.core.stats import PairedDifference, RatioSummary, Summary

Kind = Literal["percent", "plain", "seconds", "milliseconds", "count"]
MISSING = "–"
# A difference of means over seeds: three decimals in the measure's unit (points for a percentage).
DIFFERENCE_DIGITS = 3
RATIO_DIGITS = 3


@dataclasses.dataclass(frozen=True)
class Measure:
    """A field of ``ModelMetrics``, its label, and how its values are written."""

    field: str
    label: str
    kind: Kind
    digits: int = 0  # Decimals after the point; a count has none.
    # How a sweep compares two models on it, seed by seed: their difference, their ratio, or not at all.
    paired: Literal["difference", "ratio"] | None = None

    @property
    def title(self) -> str:
        """The label as a table row starts it: "Test accuracy"."""
        return self.label[:1].upper() + self.label[1:]

    def value(self, metrics: ModelMetrics) -> float:
        return getattr(metrics, self.field)


MEASURES = (
    Measure("parameters", "parameters", "count"),
    Measure("test_accuracy", "test accuracy", "percent", 2, paired="difference"),
    Measure("test_loss", "test loss", "plain", 4, paired="difference"),
    Measure("best_val_accuracy", "best validation accuracy", "percent", 2, paired="difference"),
    Measure("best_val_epoch", "epoch of best validation accuracy", "count"),
    Measure("epochs", "epochs", "count"),
    Measure("training_seconds", "training time (s)", "seconds", 1, paired="ratio"),
    Measure("seconds_per_epoch_median", "seconds per epoch (median after the first)", "seconds", 2, paired="ratio"),
    Measure("inference_ms_per_image_batched", "inference per image, batched (ms)", "milliseconds", 4, paired="ratio"),
    Measure("inference_ms_single_image", "inference, one image alone (ms)", "milliseconds", 2),
)
BY_FIELD = {measure.field: measure for measure in MEASURES}
# What a sweep summarises per model over its seeds: the measures it compares.
SWEEP_MEASURES = tuple(measure for measure in MEASURES if measure.paired)
DIFFERENCE_MEASURES = tuple(measure for measure in MEASURES if measure.paired == "difference")
RATIO_MEASURES = tuple(measure for measure in MEASURES if measure.paired == "ratio")


def format_value(value: float | None, measure: Measure) -> str:
    """One value of ``measure`` as every table writes it: "98.54 %", "0.0636", "1077.5", "1,103,230"."""
    if value is None:
        return MISSING
    if measure.kind == "count":
        return f"{int(value):,}"
    if measure.kind == "percent":
        return f"{100 * value:.{measure.digits}f} %"
    return f"{value:.{measure.digits}f}"


def format_summary(summary: Summary, measure: Measure) -> str:
    """Mean ± sd [95 % CI] over seeds ("98.54 % ± 0.10 % [98.41 %, 98.66 %]"); the mean alone for one seed."""
    text = format_value(summary.mean, measure)
    if summary.sd is not None:
        text += f" ± {format_value(summary.sd, measure)}"
    if summary.ci_low is not None:
        text += f" [{format_value(summary.ci_low, measure)}, {format_value(summary.ci_high, measure)}]"
    return text


def format_difference(value: float | None, measure: Measure, unit: bool = True) -> str:
    """A signed difference of ``measure``: "+0.010 pt" for a percentage (in points), "-0.006" otherwise."""
    if value is None:
        return MISSING
    if measure.kind == "percent":
        return f"{100 * value:+.{DIFFERENCE_DIGITS}f}" + (" pt" if unit else "")
    return f"{value:+.{DIFFERENCE_DIGITS}f}"


def format_ratio(value: float | None) -> str:
    return MISSING if value is None else f"{value:.{RATIO_DIGITS}f}"


def format_p(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3g}"


# ---------------------------------------------------------------- rows, for Markdown and HTML alike


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: its label and its cells, as text."""

    label: str
    cells: tuple[str, ...]


def metrics_rows(metrics: list[ModelMetrics]) -> list[Row]:
    """The run comparison table: every measure, one column per model (any number of models)."""
    return [
        Row(measure.title, tuple(format_value(measure.value(each), measure) for each in metrics))
        for measure in MEASURES
    ]


def summary_rows(models: dict[str, dict[str, Summary]]) -> list[Row]:
    """A sweep's per-model table: each measure's mean ± sd [95 % CI], one column per model."""
    return [
        Row(measure.label, tuple(format_summary(summaries[measure.field], measure) for summaries in models.values()))
        for measure in SWEEP_MEASURES
    ]


def difference_rows(differences: dict[str, PairedDifference]) -> list[Row]:
    """The paired table: mean, t and bootstrap intervals, t-test and Wilcoxon p-values of each difference."""
    return [
        difference_row(measure, differences[measure.field])
        for measure in DIFFERENCE_MEASURES
        if measure.field in differences
    ]


def difference_row(measure: Measure, difference: PairedDifference) -> Row:
    def interval(low: float | None, high: float | None) -> str:
        return f"[{format_difference(low, measure, unit=False)}, {format_difference(high, measure, unit=False)}]"

    return Row(
        measure.label,
        (
            format_difference(difference.summary.mean, measure),
            interval(difference.summary.ci_low, difference.summary.ci_high),
            interval(difference.bootstrap_low, difference.bootstrap_high),
            format_p(difference.t_test_p),
            format_p(difference.wilcoxon_p),
        ),
    )


def ratio_rows(ratios: dict[str, RatioSummary]) -> list[Row]:
    """The ratios table: each time's geometric mean ratio with its 95 % CI."""
    rows = []
    for measure in RATIO_MEASURES:
        if measure.field not in ratios:
            continue
        ratio = ratios[measure.field]
        interval = (
            f"[{format_ratio(ratio.ci_low)}, {format_ratio(ratio.ci_high)}]" if ratio.ci_low is not None else MISSING
        )
        rows.append(Row(measure.label, (f"{format_ratio(ratio.geometric_mean)}x", interval)))
    return rows

"""Statistics for a multi-seed comparison: is the second model better than the first, and at what cost?

Each seed trains both models with the same seed (same data order), so the comparison is
*paired*: the per-seed difference second - first removes what the seed does to both. Confidence
intervals use Student's t (few seeds), with a bootstrap interval beside it that assumes no
normality; a paired t-test and a Wilcoxon signed-rank test give p-values. Time ratios are
compared on a log scale (a ratio's natural scale), so their mean is a geometric mean.
Pure functions of numbers: no Keras, no files. Each result has one ``to_json`` and one
``from_json`` (statistics.json holds them; ``core.sweep_results`` assembles that document).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # The bootstrap is random: a fixed generator makes statistics.json reproducible.
# What the power estimate asks: seeds needed to detect a 0.1-point accuracy difference.
DETECTABLE_DIFFERENCE = 0.001
POWER = 0.8  # The usual target: an 80 % chance of detecting a difference that is really there.


def json_object(kind: str, document: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The document's values for ``keys``; ValueError when it is not a JSON object holding them all."""
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object for {kind}, got {type(document).__name__}")
    missing = [key for key in keys if key not in document]
    if missing:
        raise ValueError(f"{kind} lacks {missing}")
    return {key: document[key] for key in keys}


def json_number(value: Any, optional: bool = False) -> Any:
    """A float read back from JSON (None allowed when ``optional``); ValueError for anything else."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def json_integer(value: Any, optional: bool = False) -> Any:
    """An int read back from JSON (None allowed when ``optional``); ValueError for anything else."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def json_numbers(values: Any) -> tuple[float, ...]:
    if not isinstance(values, list):
        raise ValueError(f"expected a list of numbers, got {values!r}")
    return tuple(json_number(value) for value in values)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and t confidence interval of a few values."""

    values: tuple[float, ...]
    mean: float
    sd: float | None  # None for a single value: no spread can be measured.
    ci_low: float | None
    ci_high: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "values": list(self.values), "n": self.n}

    @classmethod
    def from_json(cls, document: Any) -> Summary:
        values = json_object(cls.__name__, document, ("values", "mean", "sd", "ci_low", "ci_high", "n"))
        summary = cls(
            values=json_numbers(values["values"]),
            mean=json_number(values["mean"]),
            sd=json_number(values["sd"], optional=True),
            ci_low=json_number(values["ci_low"], optional=True),
            ci_high=json_number(values["ci_high"], optional=True),
        )
        if values["n"] != summary.n:
            raise ValueError(f"summary says n = {values['n']} but holds {summary.n} values")
        return summary


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """The mean with its Student-t confidence interval (needs two values for an interval)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to summarize")
    mean = float(data.mean())
    if data.size < 2:
        return Summary(tuple(float(v) for v in data), mean, None, None, None)
    sd = float(data.std(ddof=1))
    half = t_half_width(sd, data.size, confidence)
    return Summary(tuple(float(v) for v in data), mean, sd, mean - half, mean + half)


def t_half_width(sd: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half the width of the t interval of a mean of ``n`` values with standard deviation ``sd``."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def bootstrap_interval(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values with replacement."""
    data = np.asarray(values, dtype=np.float64)
    generator = np.random.default_rng(BOOTSTRAP_SEED)
    means = data[generator.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_t_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (a one-sample t-test of the differences against 0)."""
    data = np.asarray(differences, dtype=np.float64)
    if np.all(data == data[0]):  # No spread: t is undefined (0/0) or infinite.
        return 1.0 if data[0] == 0 else 0.0
    return float(scipy_stats.ttest_1samp(data, 0.0).pvalue)


def wilcoxon_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test; 1.0 when every difference is zero."""
    data = np.asarray(differences, dtype=np.float64)
    if np.all(data == 0):
        return 1.0
    return float(scipy_stats.wilcoxon(data).pvalue)


def seeds_needed(sd: float | None, effect: float, confidence: float = CONFIDENCE, power: float = POWER) -> int | None:
    """How many paired seeds a paired t-test needs to detect ``effect`` with ``power``.

    Exact, from the noncentral t distribution, for differences of standard deviation ``sd``.
    None when the spread is unknown (fewer than two seeds).
    """
    if sd is None:
        return None
    if sd == 0:
        return 2
    alpha = 1 - confidence
    for n in range(2, 100_001):
        df = n - 1
        critical = scipy_stats.t.ppf(1 - alpha / 2, df)
        noncentrality = effect / (sd / math.sqrt(n))
        achieved = scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.cdf(-critical, df, noncentrality)
        if achieved >= power:
            return n
    return None


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """second - first per seed, with every interval and test the report shows."""

    quantity: str
    differences: tuple[float, ...]
    summary: Summary
    bootstrap_low: float | None
    bootstrap_high: float | None
    t_test_p: float | None
    wilcoxon_p: float | None
    # The t-test's p-value after Holm's adjustment over a sweep's comparisons with one baseline;
    # None with a single comparison (nothing to adjust; statistics.json then keeps its old layout).
    holm_p: float | None = None

    def to_json(self) -> dict[str, Any]:
        holm = {} if self.holm_p is None else {"holm_p": self.holm_p}
        return {
            "quantity": self.quantity,
            "differences": list(self.differences),
            "mean": self.summary.mean,
            "sd": self.summary.sd,
            "ci_low": self.summary.ci_low,
            "ci_high": self.summary.ci_high,
            "bootstrap_low": self.bootstrap_low,
            "bootstrap_high": self.bootstrap_high,
            "t_test_p": self.t_test_p,
            "wilcoxon_p": self.wilcoxon_p,
            **holm,
        }

    @classmethod
    def from_json(cls, document: Any) -> PairedDifference:
        keys = ("quantity", "differences", "mean", "sd", "ci_low", "ci_high")
        tests = ("bootstrap_low", "bootstrap_high", "t_test_p", "wilcoxon_p")
        values = json_object(cls.__name__, document, keys + tests)
        differences = json_numbers(values["differences"])
        return cls(
            quantity=str(values["quantity"]),
            differences=differences,
            summary=Summary(
                values=differences,
                mean=json_number(values["mean"]),
                sd=json_number(values["sd"], optional=True),
                ci_low=json_number(values["ci_low"], optional=True),
                ci_high=json_number(values["ci_high"], optional=True),
            ),
            **{key: json_number(values[key], optional=True) for key in tests},
            holm_p=json_number(document["holm_p"]) if "holm_p" in document else None,
        )


def paired_difference(quantity: str, first: Sequence[float], second: Sequence[float]) -> PairedDifference:
    """``second - first`` seed by seed: mean, t and bootstrap intervals, t-test and Wilcoxon p-values."""
    if len(first) != len(second):
        raise ValueError(f"paired values need the same seeds: {len(first)} vs {len(second)}")
    if len(first) < 2:
        raise ValueError("a paired difference needs at least 2 seeds")
    differences = np.asarray(second, dtype=np.float64) - np.asarray(first, dtype=np.float64)
    low, high = bootstrap_interval(differences)
    return PairedDifference(
        quantity=quantity,
        differences=tuple(float(v) for v in differences),
        summary=summarize(differences),
        bootstrap_low=low,
        bootstrap_high=high,
        t_test_p=paired_t_p_value(differences),
        wilcoxon_p=wilcoxon_p_value(differences),
    )


@dataclasses.dataclass(frozen=True)
class RatioSummary:
    """second / first per seed summarised on a log scale: geometric mean and its t interval."""

    quantity: str
    ratios: tuple[float, ...]
    geometric_mean: float
    ci_low: float | None
    ci_high: float | None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratios": list(self.ratios)}

    @classmethod
    def from_json(cls, document: Any) -> RatioSummary:
        values = json_object(cls.__name__, document, ("quantity", "ratios", "geometric_mean", "ci_low", "ci_high"))
        return cls(
            quantity=str(values["quantity"]),
            ratios=json_numbers(values["ratios"]),
            geometric_mean=json_number(values["geometric_mean"]),
            ci_low=json_number(values["ci_low"], optional=True),
            ci_high=json_number(values["ci_high"], optional=True),
        )


def ratio_summary(quantity: str, first: Sequence[float], second: Sequence[float]) -> RatioSummary:
    """``second / first`` seed by seed: the geometric mean with a t interval of the log ratios."""
    logs = np.log(np.asarray(second, dtype=np.float64) / np.asarray(first, dtype=np.float64))
    summary = summarize(logs)
    return RatioSummary(
        quantity=quantity,
        ratios=tuple(float(math.exp(v)) for v in logs),
        geometric_mean=math.exp(summary.mean),
        ci_low=math.exp(summary.ci_low) if summary.ci_low is not None else None,
        ci_high=math.exp(summary.ci_high) if summary.ci_high is not None else None,
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false finding among the tests at 5 %.

    The i-th smallest p (0-based) is multiplied by (m - i), kept at least as large as the one
    before it (so the order is kept) and capped at 1; returned in the order given.
    """
    count = len(p_values)
    order = sorted(range(count), key=lambda index: p_values[index])
    adjusted = [0.0] * count
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def accuracy_verdict(first: str, second: str, difference: PairedDifference) -> str:
    """One sentence in plain words: how much better or worse ``second`` is, and whether it shows.

    With several variants against one baseline, "detectable" is decided by the Holm-adjusted
    p-value (5 % level), so that testing many variants does not turn noise into findings.
    """
    points = 100 * difference.summary.mean
    low, high = 100 * (difference.summary.ci_low or 0.0), 100 * (difference.summary.ci_high or 0.0)
    direction = "higher" if points >= 0 else "lower"
    seeds = len(difference.differences)
    tests = f"paired t-test p = {difference.t_test_p:.3g}"
    if difference.holm_p is None:
        detected = low > 0 or high < 0
    else:
        detected = difference.holm_p < 1 - CONFIDENCE
        tests += f", Holm-adjusted p = {difference.holm_p:.3g}"
    conclusion = f"a detectable difference ({tests})" if detected else f"no detectable difference ({tests})"
    return (
        f"With {seeds} seeds, {second}'s test accuracy is {abs(points):.2f} points {direction} than {first}'s, "
        f"95 % CI [{low:+.2f}, {high:+.2f}]: {conclusion}."
    )


def time_verdict(first: str, second: str, ratio: RatioSummary) -> str:
    """One sentence: how many times longer ``second`` takes to train, with its interval."""
    interval = f", 95 % CI [{ratio.ci_low:.2f}, {ratio.ci_high:.2f}]" if ratio.ci_low is not None else ""
    return f"{second} takes {ratio.geometric_mean:.2f}x the training time of {first} (geometric mean{interval})."

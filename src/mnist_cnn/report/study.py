"""A study's table, stated once: per variant its network and what else it sets, its parameters,
its test accuracy (mean and 95 % CI over the seeds), the paired difference to the baseline with
its 95 % CI and Holm-adjusted p-value, and its median seconds per epoch as a ratio to the
baseline's (geometric mean over the seeds, with its 95 % CI).

Read from a published sweep's statistics.json (``docs/study``, ``docs/better``) by the README's
table (``bench/study_table.py``) and the documentation site's (``docs/site/_ext``): the two
cannot drift apart. Plain text cells; each caller writes them as its Markdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mnist_cnn.core.config import ModelSpec
from mnist_cnn.core.sweep_results import SweepStatistics


def network_text(spec: ModelSpec) -> str:
    """'32', '32, dropout 0.5' for the specification's family; the layers otherwise (without the
    Dense 10 readout every network ends with); then what the variant sets beyond its network."""
    if spec.layers:
        text = " → ".join(spec.network().describe().split(" → ")[:-1])
    else:
        text = f"{spec.filters}" + (f", dropout {spec.dropout:g}" if spec.dropout else "")
    extras = [f"{spec.optimizer} {spec.learning_rate:g}"] if spec.optimizer else []
    extras += ["augmented"] if spec.augment else []
    return text + (f" ({', '.join(extras)})" if extras else "")


def points(value: float) -> str:
    return f"{value * 100:+.2f}"


def study_header(statistics: Mapping[str, Any]) -> list[str]:
    baseline = statistics["baseline"]
    return [
        "model",
        "network",
        "parameters",
        "test accuracy, mean [95 % CI]",
        f"− {baseline}, points [95 % CI]",
        "Holm-adjusted p",
        f"s/epoch × {baseline}'s [95 % CI]",
    ]


def study_rows(statistics: Mapping[str, Any], parameters: Mapping[str, int]) -> list[list[str]]:
    """One row per model of the study, in its order; ``parameters`` by model name (a seed's metrics)."""
    specs = {spec.name: spec for spec in SweepStatistics.from_json(dict(statistics)).experiment.model_specs()}
    baseline = statistics["baseline"]
    comparisons = {comparison["second"]: comparison for comparison in statistics["comparisons"]}
    rows = []
    for name, measures in statistics["models"].items():
        accuracy = measures["test_accuracy"]
        cells = [
            name,
            network_text(specs[name]),
            f"{parameters[name]:,}",
            f"{accuracy['mean'] * 100:.2f} % [{accuracy['ci_low'] * 100:.2f}, {accuracy['ci_high'] * 100:.2f}]",
        ]
        if name == baseline:
            cells += ["(baseline)", "", "1"]
        else:
            difference = comparisons[name]["differences"]["test_accuracy"]
            ratio = comparisons[name]["ratios"]["seconds_per_epoch_median"]
            cells += [
                f"{points(difference['mean'])} [{points(difference['ci_low'])}, {points(difference['ci_high'])}]",
                f"{difference['holm_p']:.3g}",
                f"{ratio['geometric_mean']:.2f}x [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]",
            ]
        rows.append(cells)
    return rows

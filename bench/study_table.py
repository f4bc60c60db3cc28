"""The README's table of a study, printed from a published sweep (``docs/study``, ``docs/better``).

The numbers in README's "How many filters does this CNN need?" and "What makes this CNN better?"
come from here, not from a hand copy: per variant its network (its filters and dropout for the
specification's family, else its layers) and what else it sets, its parameters, its test accuracy (mean and
95 % CI over the seeds), the paired difference to the baseline with its 95 % CI and the
Holm-adjusted p-value, and its median seconds per epoch as a ratio to the baseline's
(geometric mean over the seeds, with its 95 % CI). Then one line per seed: where it ran
and how long it took.

    python bench/study_table.py docs/study
    python bench/study_table.py docs/better
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnist_cnn.core.config import ModelSpec
from mnist_cnn.core.sweep_results import SweepStatistics


def architecture(spec: ModelSpec) -> str:
    """'32', '32, dropout 0.5' for the specification's family; the layers otherwise; then what the
    variant sets beyond its network (its optimizer, augmentation)."""
    if spec.layers:
        text = " → ".join(spec.network().describe().split(" → ")[:-1])  # The Dense 10 readout is every network's.
    else:
        text = f"{spec.filters}" + (f", dropout {spec.dropout:g}" if spec.dropout else "")
    extras = [f"{spec.optimizer} {spec.learning_rate:g}"] if spec.optimizer else []
    extras += ["augmented"] if spec.augment else []
    return text + (f" ({', '.join(extras)})" if extras else "")


def parameters(study: Path, seed: int, name: str) -> int:
    return json.loads((study / f"seed-{seed}" / name / "metrics.json").read_text())["parameters"]


def points(value: float) -> str:
    return f"{value * 100:+.2f}"


def model_rows(study: Path, statistics: dict) -> list[str]:
    specs = {spec.name: spec for spec in SweepStatistics.from_json(statistics).experiment.model_specs()}
    baseline = statistics["baseline"]
    comparisons = {comparison["second"]: comparison for comparison in statistics["comparisons"]}
    first_seed = statistics["seeds_finished"][0]
    rows = [
        f"| model | network | parameters | test accuracy, mean [95 % CI] | − {baseline}, points [95 % CI] "
        f"| Holm-adjusted p | s/epoch × {baseline}'s [95 % CI] |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, measures in statistics["models"].items():
        accuracy = measures["test_accuracy"]
        cells = [
            name,
            architecture(specs[name]),
            f"{parameters(study, first_seed, name):,}",
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
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def seed_rows(study: Path, statistics: dict) -> list[str]:
    names = list(statistics["models"])
    rows = [
        "| seed | CPU | minutes | " + " | ".join(f"{name} (%)" for name in names) + " |",
        "|---:|---|---:|" + "---:|" * len(names),
    ]
    for trial in statistics["trials"]:
        index = statistics["seeds_finished"].index(trial["seed"])
        accuracies = [f"{statistics['models'][name]['test_accuracy']['values'][index] * 100:.2f}" for name in names]
        rows.append(
            f"| {trial['seed']} | {trial['cpu']} | {trial['wall_seconds'] / 60:.0f} | " + " | ".join(accuracies) + " |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a sweep folder with statistics.json (e.g. docs/study)")
    arguments = parser.parse_args()
    statistics = json.loads((arguments.study / "statistics.json").read_text())
    print(f"{len(statistics['seeds_finished'])} of {len(statistics['seeds_requested'])} seeds\n")
    print("\n".join(model_rows(arguments.study, statistics)))
    print()
    print("\n".join(seed_rows(arguments.study, statistics)))


if __name__ == "__main__":
    main()

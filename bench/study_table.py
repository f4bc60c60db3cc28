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

from mnist_cnn.report.study import study_header, study_rows


def parameters(study: Path, seed: int, name: str) -> int:
    return json.loads((study / f"seed-{seed}" / name / "metrics.json").read_text())["parameters"]


def model_rows(study: Path, statistics: dict) -> list[str]:
    """The study's table (mnist_cnn.report.study) as Markdown rows."""
    seed = statistics["seeds_finished"][0]
    counts = {name: parameters(study, seed, name) for name in statistics["models"]}
    header = study_header(statistics)
    rows = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    return rows + ["| " + " | ".join(cells) + " |" for cells in study_rows(statistics, counts)]


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

"""Seeds per hour of a sweep: one 2-thread trial at a time, or 1-thread trials side by side.

``mnist-cnn compare`` gives each trial one CPU while trials outnumber CPUs (``--cpus-per-trial``
auto), because on a small CPU two single-threaded trainings side by side did more epochs per
hour than one training on both threads. This benchmark checks that on the machine at hand,
with the real sweep on a local Ray, both layouts in one run:

- ``sequential``: 2 seeds, ``--workers 1 --cpus-per-trial <all CPUs>``: one trial at a time,
  XLA's thread pool over every CPU (what ``make experiment`` does, seed after seed);
- ``side by side``: 2 seeds, ``--cpus-per-trial 1``: both trials at once, single-threaded.

Each trial trains its models (Model_A then Model_B, or ``--models`` with ``--variants``, such
as the filter study's six) for ``--epochs`` epochs on all 54,000 images. The first epoch
(compilation) is left out; the median of the others, per model, gives the time of a 60-epoch
seed, and seeds per hour = trials side by side x 3600 / that time. Rounds alternate the order
of the layouts so drift on a shared machine hits both alike.

Usage: python bench/sweep_layout.py [--epochs 4] [--rounds 1] [--json results.json]
       python bench/sweep_layout.py --models F8,F16,A,B,F128,AD --variants examples/study.toml
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mnist_cnn.core.config import ExperimentConfig, SweepConfig
from mnist_cnn.core.environment import cpu_description
from mnist_cnn.core.variants import gather_variants
from mnist_cnn.store.sweeps import SweepFolder
from mnist_cnn.sweep.trials import train_seeds

SPEC_EPOCHS = 60
SEEDS = (0, 1)


def measure(layout: str, experiment: ExperimentConfig, cpus: int, root: Path) -> dict:
    """Run one 2-seed sweep in ``layout``; return its per-model median epoch times and seeds/hour."""
    side_by_side = 1 if layout == "sequential" else min(len(SEEDS), cpus)
    cpus_per_trial = cpus if layout == "sequential" else 1
    sweep = SweepFolder(root / layout.replace(" ", "-")).create()
    config = SweepConfig(experiment=experiment, seeds=SEEDS)
    started = time.perf_counter()
    train_seeds(config, sweep, workers=side_by_side, cpus_per_trial=cpus_per_trial, stream=io.StringIO())
    wall = time.perf_counter() - started
    medians = {}
    for name in (spec.name for spec in experiment.model_specs()):
        seconds = [row["seconds"] for seed in SEEDS for row in sweep.seed_run(seed).model(name).read_history()[1:]]
        medians[name] = statistics.median(seconds)
    seed_seconds = SPEC_EPOCHS * sum(medians.values())
    return {
        "layout": layout,
        "trials_side_by_side": side_by_side,
        "cpus_per_trial": cpus_per_trial,
        "median_seconds_per_epoch": medians,
        "seeds_per_hour": side_by_side * 3600 / seed_seconds,
        "wall_seconds": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per model and trial (default: 4)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both layouts (default: 1)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file (default: none)")
    parser.add_argument("--models", default="A,B", help="each trial's models, comma-separated keys (default: A,B)")
    parser.add_argument(
        "--variants", type=Path, action="append", default=[], help="a TOML file of variants (default: none)"
    )
    arguments = parser.parse_args()
    if arguments.epochs < 2 or arguments.rounds < 1:
        parser.error("--epochs must be at least 2 (the first is compilation) and --rounds at least 1")
    keys = tuple(key.strip() for key in arguments.models.split(","))
    variants = tuple(spec for spec in gather_variants(arguments.variants, []) if spec.key in keys)
    experiment = ExperimentConfig(models=keys, variants=variants, epochs=arguments.epochs, backend="jax")
    cpus = os.cpu_count() or 1
    print(f"CPU: {cpu_description()}; {', '.join(keys)}: {arguments.epochs} epochs per model, seeds {SEEDS}")
    results = []
    with tempfile.TemporaryDirectory(prefix="sweep-layout-") as temporary:
        for round_number in range(arguments.rounds):
            order = ["sequential", "side by side"]
            for layout in order if round_number % 2 == 0 else reversed(order):
                result = measure(layout, experiment, cpus, Path(temporary) / f"round-{round_number}")
                results.append({"round": round_number, **result})
                epochs = ", ".join(f"{name} {value:.1f}" for name, value in result["median_seconds_per_epoch"].items())
                print(
                    f"round {round_number}  {layout:<12}  {result['cpus_per_trial']} CPU(s) per trial, "
                    f"{result['trials_side_by_side']} at once: s/epoch {epochs} -> "
                    f"{result['seeds_per_hour']:.2f} seeds/hour (sweep wall time {result['wall_seconds']:.0f} s)",
                    flush=True,
                )
    per_layout = {
        layout: statistics.mean(r["seeds_per_hour"] for r in results if r["layout"] == layout)
        for layout in ("sequential", "side by side")
    }
    ratio = per_layout["side by side"] / per_layout["sequential"]
    print(
        f"seeds per hour: sequential {per_layout['sequential']:.2f}, side by side {per_layout['side by side']:.2f}: "
        f"side by side is {ratio:.2f}x ({'faster' if ratio > 1 else 'slower'})"
    )
    if arguments.json:
        summary = {"cpu": cpu_description(), "cpus": cpus, "epochs": arguments.epochs, "models": list(keys)}
        arguments.json.write_text(json.dumps({**summary, "results": results, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

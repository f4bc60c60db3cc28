"""What --augment buys and costs: the same experiment with and without it, side by side.

Trains both models twice in one process on one machine (plain, then --augment; same seed,
epochs and data), then reports MNIST test accuracy, the robustness sets' accuracy
(``mnist_cnn.data.robustness``) and the median seconds per epoch of each.

    python bench/augment_effect.py --epochs 5 --out runs/augment-effect     # make bench-augment

Finished runs in --out are reused (each is an ordinary, resumable run folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

from mnist_cnn.core.config import Augmentation, ExperimentConfig  # noqa: E402
from mnist_cnn.core.environment import cpu_model, select_backend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per model (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--count", type=int, default=1000, help="images per robustness set (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/augment-effect"), help="folder (default: %(default)s)")
    args = parser.parse_args()
    select_backend()

    from mnist_cnn.data.robustness import robustness_accuracy, robustness_sets
    from mnist_cnn.experiment import run_experiment
    from mnist_cnn.store.runs import RunFolder

    variants = {"plain": None, "--augment": Augmentation()}
    results: dict = {"cpu": cpu_model(), "epochs": args.epochs, "variants": {}}
    sets = robustness_sets(args.count)
    for label, augmentation in variants.items():
        run_dir = args.out / ("augmented" if augmentation else "plain")
        config = ExperimentConfig(epochs=args.epochs, limit=args.limit, augmentation=augmentation)
        with open(os.devnull, "w") as quiet:
            metrics = run_experiment(config, run_dir, stream=quiet)
        models = RunFolder(run_dir).load_models()
        results["variants"][label] = {
            "run": str(run_dir),
            "mnist_test_accuracy": {name: values.test_accuracy for name, values in metrics.items()},
            "seconds_per_epoch_median": {name: values.seconds_per_epoch_median for name, values in metrics.items()},
            "robustness": robustness_accuracy(models, sets),
        }
        print(f"{label}: trained and measured ({run_dir})", file=sys.stderr, flush=True)
    print_table(results, sets)
    (args.out / "augment-effect.json").write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: dict, sets: dict) -> None:
    plain, augmented = results["variants"]["plain"], results["variants"]["--augment"]
    models = list(plain["mnist_test_accuracy"])
    print(f"CPU: {results['cpu']}; {results['epochs']} epochs each; seed 42; SGD 0.01, batch 32\n")
    header = " | ".join(f"{model} plain | {model} --augment" for model in models)
    print(f"| test set | images | {header} |")
    print("|---|---:|" + "---:|---:|" * len(models))
    rows = [("MNIST test set", 10000, plain["mnist_test_accuracy"], augmented["mnist_test_accuracy"])]
    rows += [
        (name, len(sets[name][1]), plain["robustness"][name], augmented["robustness"][name])
        for name in plain["robustness"]
    ]
    for name, count, before, after in rows:
        cells = " | ".join(f"{before[model]:.1%} | {after[model]:.1%}" for model in models)
        print(f"| {name} | {count} | {cells} |")
    for model in models:
        base = plain["seconds_per_epoch_median"][model]
        cost = augmented["seconds_per_epoch_median"][model]
        print(
            f"\n{model}: {base:.2f} s/epoch plain, {cost:.2f} s/epoch with --augment ({cost / base - 1:+.1%})", end=""
        )
    print()


if __name__ == "__main__":
    main()

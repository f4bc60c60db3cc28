"""Training speed: the project's default path against the plain notebook way, side by side.

Reference ("the plain notebook way"): Keras ``model.fit`` on the TensorFlow backend with
default settings: batch 32, SGD(0.01), shuffle, validation on the 6,000 held-out images
every epoch (default validation batch size), ``steps_per_execution=1``, no XLA.
Project: ``mnist_cnn.training.train_model`` with the default ExperimentConfig
(the fused JAX trainer on this machine).

Each measurement runs in its own process (a Keras backend is fixed per process). The
order is interleaved: round 1 = ref A, project A, ref B, project B; round 2 swaps each
pair, and so on, so drift on a shared machine hits both paths alike. Each process trains
``--epochs`` epochs on the full data; the first epoch (compilation) is reported apart,
the others give the median seconds per epoch. Each round uses its own seed (round
number), and the test accuracy after the last epoch is compared across seeds.

The "% of peak" divides the FLOPs an epoch needs (``flops_per_image``, an upper bound) by
the CPU's arithmetic float32 peak: logical CPUs x clock x FLOP per cycle per core, read from
the CPU's flags (``flops_per_cycle``: 32 for AVX2, 64 for AVX-512, assuming two FMA units);
the table says which it assumed.

Usage: python bench/train_speed.py [--rounds 3] [--epochs 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPEC_EPOCHS = 60
TRAINING_IMAGES = 54000  # One epoch: the 60,000 training images less the 6,000 held out.


def flops_per_image(filters: int) -> float:
    """Forward + backward FLOPs for one training image (backward ~ 2x forward; the first
    layer needs no input gradient, which this ignores: an upper bound on the work)."""
    conv = 26 * 26 * filters * 9 * 2
    dense = 13 * 13 * filters * 200 * 2 + 200 * 100 * 2 + 100 * 10 * 2
    return 3 * (conv + dense)


def flops_per_cycle(flags: list[str] | set[str]) -> tuple[int, str]:
    """float32 FLOP one core can do per cycle, from the CPU's flags, and the assumption in words.

    The widest vector extension sets the lanes; two FMA units per core (2 FLOP each per lane)
    are assumed from AVX2 on, as on Intel cores since Haswell and AMD since Zen 2 (Zen 1: 16).
    For AVX-512 that is 2 x 16 x 2 = 64, true of Xeons with two 512-bit FMA units and of
    Zen 5; Zen 4 (512-bit work on 256-bit units) and Intel cores with one 512-bit FMA unit do
    32, and there the % of peak printed is half the real one. The flags cannot tell them apart.
    """
    flags = set(flags)
    if "avx512f" in flags:
        return 64, "AVX-512: 2 FMA units x 16 float32 lanes x 2 FLOP; half that on Zen 4 and one-FMA-unit Intel cores"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2: 2 FMA units x 8 float32 lanes x 2 FLOP"
    if "avx" in flags:
        return 16, "AVX, no FMA: 1 add + 1 multiply unit x 8 float32 lanes"
    if "asimd" in flags:  # 64-bit Arm: NEON, 128-bit.
        return 16, "Arm NEON: 2 FMA units x 4 float32 lanes x 2 FLOP"
    return 8, "SSE: 1 add + 1 multiply unit x 4 float32 lanes"


def cpu_flags_and_megahertz(path: str = "/proc/cpuinfo") -> tuple[list[str], float | None]:
    """The first core's flags (x86 "flags", Arm "Features") and clock, from /proc/cpuinfo."""
    flags: list[str] = []
    megahertz = None
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features") and not flags:
                    flags = value.split()
                elif key.strip() == "cpu MHz" and megahertz is None:
                    megahertz = float(value)
    except (OSError, ValueError):
        pass
    return flags, megahertz


def peak(cores: int, megahertz: float, flags: list[str] | set[str]) -> dict:
    """Arithmetic float32 peak (cores x clock x FLOP per cycle) and what it assumed."""
    per_cycle, vector = flops_per_cycle(flags)
    return {
        "peak_gflops": cores * megahertz * 1e6 * per_cycle / 1e9,
        "cores": cores,
        "megahertz": megahertz,
        "flops_per_cycle_per_core": per_cycle,
        "assumption": f"{cores} CPUs x {megahertz / 1000:.2f} GHz x {per_cycle} FLOP/cycle ({vector})",
    }


def this_cpus_peak() -> dict:
    flags, megahertz = cpu_flags_and_megahertz()
    result = peak(os.cpu_count() or 1, megahertz or 2500.0, flags)
    if megahertz is None:
        result["assumption"] += "; clock not found, 2.5 GHz assumed"
    return result


def fraction_of_peak(seconds_per_epoch: float, filters: int, peak_gflops: float) -> float:
    """The share of the arithmetic peak one epoch's training used (see flops_per_image)."""
    return TRAINING_IMAGES * flops_per_image(filters) / seconds_per_epoch / (peak_gflops * 1e9)


# --------------------------------------------------------------------------- child side


def child(path: str, model_key: str, epochs: int, seed: int) -> dict:
    """Train one model for ``epochs`` epochs on the full data; return timings and accuracy."""
    import resource

    os.environ["KERAS_BACKEND"] = (
        "tensorflow" if path == "reference" else os.environ.get("BENCH_PROJECT_BACKEND", "jax")
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from mnist_cnn.core.config import EVALUATION_BATCH_SIZE, MODEL_VARIANTS, ExperimentConfig
    from mnist_cnn.data.mnist import load_mnist
    from mnist_cnn.train.models import build_variant

    splits = load_mnist("bundled")
    spec = MODEL_VARIANTS[model_key]
    keras.utils.set_random_seed(seed)
    if path == "reference":
        # The notebook: nothing but the defaults.
        model = build_variant(spec)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.01),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        seconds: list[float] = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                seconds.append(time.perf_counter() - self.start)

        model.fit(
            splits.X_train,
            splits.y_train,
            batch_size=32,
            epochs=epochs,
            validation_data=(splits.X_valid, splits.y_valid),
            callbacks=[Timer()],
            verbose=0,
        )
    else:
        from mnist_cnn.train.loop import train_model
        from mnist_cnn.train.models import seeded_model

        config = ExperimentConfig(models=(model_key,), epochs=epochs, seed=seed, backend=keras.backend.backend())
        model = seeded_model(spec, config)
        result = train_model(model, splits, config)
        seconds = [row["seconds"] for row in result.history]
    _, accuracy = model.evaluate(splits.X_test, splits.y_test, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "path": path,
        "model": model_key,
        "seed": seed,
        "seconds": seconds,
        "test_accuracy": float(accuracy),
        "peak_rss_mib": peak_rss_mib,
    }


# --------------------------------------------------------------------------- parent side


def measure(path: str, model_key: str, epochs: int, seed: int) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", path, model_key, str(epochs), str(seed)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        sys.exit(f"benchmark child {path} {model_key} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(
        f"  {path:9} Model_{model_key} seed {seed}: epochs {', '.join(f'{s:.1f}' for s in result['seconds'])} s; "
        f"test acc {result['test_accuracy']:.4f}; peak RSS {result['peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    return result


def summarize(results: list[dict], epochs: int) -> dict:
    cpu = this_cpus_peak()
    summary: dict = {"peak_gflops": cpu["peak_gflops"], "peak": cpu, "models": {}}
    totals = {"reference": 0.0, "project": 0.0}
    for key, filters in (("A", 32), ("B", 64)):
        row = {}
        for path in ("reference", "project"):
            runs = [r for r in results if r["path"] == path and r["model"] == key]
            steady = [s for r in runs for s in r["seconds"][1:]]
            median = statistics.median(steady)
            accuracies = [r["test_accuracy"] for r in runs]
            row[path] = {
                "seconds_per_epoch_median": median,
                "first_epoch_seconds": statistics.median(r["seconds"][0] for r in runs),
                "images_per_second": TRAINING_IMAGES / median,
                "fraction_of_peak": fraction_of_peak(median, filters, cpu["peak_gflops"]),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "test_accuracy_mean": statistics.mean(accuracies),
                "test_accuracy_stdev": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "test_accuracies": accuracies,
            }
            totals[path] += median
        row["ratio_reference_over_project"] = (
            row["reference"]["seconds_per_epoch_median"] / row["project"]["seconds_per_epoch_median"]
        )
        summary["models"][f"Model_{key}"] = row
    summary["experiment"] = {
        "reference_minutes_60_epochs": totals["reference"] * SPEC_EPOCHS / 60,
        "project_minutes_60_epochs": totals["project"] * SPEC_EPOCHS / 60,
        "ratio_reference_over_project": totals["reference"] / totals["project"],
    }
    return summary


def print_summary(summary: dict, rounds: int, epochs: int) -> None:
    cpu = summary["peak"]
    print(
        f"\nPer model ({rounds} seeds x {epochs - 1} timed epochs each path; "
        f"peak {cpu['peak_gflops']:.0f} GFLOP/s = {cpu['assumption']}):"
    )
    print(
        f"| model | path | s/epoch (median) | first epoch s | images/s "
        f"| % of peak ({cpu['flops_per_cycle_per_core']} FLOP/cycle/core) | peak RSS MiB | test acc (mean ± sd) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, row in summary["models"].items():
        for path in ("reference", "project"):
            values = row[path]
            print(
                f"| {name} | {path} | {values['seconds_per_epoch_median']:.2f} "
                f"| {values['first_epoch_seconds']:.2f} | {values['images_per_second']:.0f} "
                f"| {values['fraction_of_peak'] * 100:.1f} | {values['peak_rss_mib']:.0f} | "
                f"{values['test_accuracy_mean']:.4f} ± {values['test_accuracy_stdev']:.4f} |"
            )
        print(f"| {name} | ratio reference/project | {row['ratio_reference_over_project']:.2f}x | | | | | |")
    experiment = summary["experiment"]
    print(
        f"\nWhole experiment (2 x {SPEC_EPOCHS} epochs, from the medians): "
        f"reference {experiment['reference_minutes_60_epochs']:.1f} min, "
        f"project {experiment['project_minutes_60_epochs']:.1f} min, "
        f"ratio {experiment['ratio_reference_over_project']:.2f}x"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, path, model_key, epochs, seed = sys.argv
        print(json.dumps(child(path, model_key, int(epochs), int(seed))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds, one seed each (default: %(default)s)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs per measurement, the first counted as compile (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (default: none)")
    args = parser.parse_args()
    if args.epochs < 2 or args.rounds < 1:
        parser.error("--epochs must be at least 2 and --rounds at least 1")
    results = []
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds}", flush=True)
        for model_key in ("A", "B"):
            paths = ("reference", "project") if round_index % 2 == 0 else ("project", "reference")
            for path in paths:
                results.append(measure(path, model_key, args.epochs, seed=round_index))
    summary = summarize(results, args.epochs)
    print_summary(summary, args.rounds, args.epochs)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

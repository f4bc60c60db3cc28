"""Training speed: the project's default path against the plain notebook way, side by side.

Reference ("the plain notebook way"): Keras ``model.fit`` on the TensorFlow backend with
default settings: batch 32, shuffle, validation on the 6,000 held-out images every epoch
(default validation batch size), ``steps_per_execution=1``, no XLA; the optimizer is the
variant's own when it states one (examples/anchors.toml: KERAS_IO Adam 0.001, PYTORCH Adadelta
1.0), else SGD(0.01), the specification's. Project: ``mnist_cnn.train.loop.train_model`` with the
default ExperimentConfig (the fused JAX trainer on this machine), the same optimizer. Both sides
build the network with the project's one builder (``build_variant`` / ``seeded_model``) and the
optimizer with ``make_optimizer``.

``--models`` picks the networks: the built-in Model_A and Model_B and the variants of
``--variants FILE`` (default: examples/anchors.toml, the networks people learn MNIST with).
Each measurement runs in its own process (a Keras backend is fixed per process). The order is
interleaved: round 1 = ref A, project A, ref B, project B, then the same for each further
network; round 2 swaps each pair, and so on, so drift on a shared machine hits both paths alike.
Each process trains ``--epochs`` epochs on the full data; the first epoch (compilation) is
reported apart, the others give the median seconds per epoch. Each round uses its own seed
(round number), and the test accuracy after the last epoch is compared across seeds. Model_A
and Model_B are measured exactly as before the other networks were added, so their numbers
compare with the earlier ones in docs/bench-results.json.

The "% of peak" divides the FLOPs an epoch needs (``flops_per_image``, from the parsed network:
its convolutions' and Dense layers' multiply-adds) by the CPU's arithmetic float32 peak: logical
CPUs x clock x FLOP per cycle per core, read from the CPU's flags (``flops_per_cycle``: 32 for
AVX2, 64 for AVX-512, assuming two FMA units); the table says which it assumed.

Usage: python bench/train_speed.py [--rounds 3] [--epochs 3] [--models A,B,KERAS_IO,...]
       [--variants examples/anchors.toml] [--json results.json] [--add-to docs/bench-results.json]
       [--note "what else ran"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mnist_cnn.core import network as net
from mnist_cnn.core.config import MODEL_VARIANTS, ModelSpec

SPEC_EPOCHS = 60
TRAINING_IMAGES = 54000  # One epoch: the 60,000 training images less the 6,000 held out.
ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT / "examples" / "anchors.toml"
SPEC_MODELS = ("A", "B")  # The specification's experiment: the "whole experiment" line sums these.
DEFAULT_MODELS = ("A", "B", "KERAS_IO", "PYTORCH", "A_BN", "A_CONV2")


def multiply_adds(network: net.Network) -> int:
    """One image's forward multiply-adds in the network's convolutions and Dense layers: a
    convolution's out_h x out_w x k x k x C_in x F, a Dense layer's inputs x units (the readout
    included). Pooling, BatchNorm, activations and dropout are elementwise and not counted."""
    total = 0
    for layer, before, after in zip(network.layers, network.input_shapes, network.shapes, strict=True):
        if isinstance(layer, net.Conv):
            height, width, filters = after
            total += height * width * layer.kernel * layer.kernel * before[2] * filters
        elif isinstance(layer, net.Dense):
            total += before[0] * layer.units
    return total


def flops_per_image(network: net.Network) -> int:
    """Forward + backward FLOPs for one training image: 2 FLOP per multiply-add, backward ~ 2x
    forward (the first layer needs no input gradient, which this ignores: an upper bound on the
    convolutions' and Dense layers' work, the elementwise layers left out)."""
    return 3 * 2 * multiply_adds(network)


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


def cpu_model_name(path: str = "/proc/cpuinfo") -> str:
    """The CPU's name as /proc/cpuinfo gives it (x86 "model name", some Arm kernels "Hardware"),
    else what the platform module says."""
    import platform

    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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


def fraction_of_peak(seconds_per_epoch: float, flops: float, peak_gflops: float) -> float:
    """The share of the arithmetic peak one epoch's training used, ``flops`` per image (see flops_per_image)."""
    return TRAINING_IMAGES * flops / seconds_per_epoch / (peak_gflops * 1e9)


def known_variants(variants: Path | None) -> dict[str, ModelSpec]:
    """The built-in variants and those of the ``variants`` file, by key (a wrong table is a
    ConfigError from read_variants_file, naming the file and line)."""
    from mnist_cnn.core.variants import read_variants_file

    return {**MODEL_VARIANTS, **({spec.key: spec for spec in read_variants_file(variants)} if variants else {})}


# --------------------------------------------------------------------------- child side


def child(path: str, model_key: str, epochs: int, seed: int, variants: Path | None = None) -> dict:
    """Train one model for ``epochs`` epochs on the full data; return timings and accuracy."""
    import resource

    os.environ["KERAS_BACKEND"] = (
        "tensorflow" if path == "reference" else os.environ.get("BENCH_PROJECT_BACKEND", "jax")
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from mnist_cnn.core.config import EVALUATION_BATCH_SIZE, ExperimentConfig
    from mnist_cnn.data.mnist import load_mnist
    from mnist_cnn.train.models import build_variant, make_optimizer

    splits = load_mnist("bundled")
    spec = known_variants(variants)[model_key]
    # The project's config of this model: its optimizer (the variant's own, else SGD 0.01) is
    # what both sides compile.
    config = ExperimentConfig(
        models=(model_key,),
        epochs=epochs,
        seed=seed,
        backend=keras.backend.backend(),
        variants=() if model_key in MODEL_VARIANTS else (spec,),
    )
    keras.utils.set_random_seed(seed)
    if path == "reference":
        # The notebook: nothing but the defaults (and the variant's optimizer).
        model = build_variant(spec)
        model.compile(
            optimizer=make_optimizer(config, spec),
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
        trainer = "model.fit"
    else:
        from mnist_cnn.train.loop import train_model
        from mnist_cnn.train.models import seeded_model
        from mnist_cnn.train.trainers import plan_trainers

        model = seeded_model(spec, config)
        choice = plan_trainers(config)[0]
        result = train_model(model, splits, config, trainer=choice)
        seconds = [row["seconds"] for row in result.history]
        trainer = "fused" if choice.trainer == "fused" else "model.fit"
    _, accuracy = model.evaluate(splits.X_test, splits.y_test, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    optimizer = model.optimizer
    return {
        "path": path,
        "model": model_key,
        "name": spec.name,
        "seed": seed,
        "backend": keras.backend.backend(),
        "trainer": trainer,
        "optimizer": f"{type(optimizer).__name__}({float(optimizer.learning_rate):g})",
        "seconds": seconds,
        "test_accuracy": float(accuracy),
        "peak_rss_mib": peak_rss_mib,
    }


# --------------------------------------------------------------------------- parent side


def child_command(path: str, model_key: str, epochs: int, seed: int, variants: Path | None) -> list[str]:
    """The command line of one measurement's process (``--child``, read back by ``main``)."""
    command = [sys.executable, __file__, "--child", path, model_key, str(epochs), str(seed)]
    return [*command, str(variants)] if variants and model_key not in MODEL_VARIANTS else command


def measure(path: str, model_key: str, epochs: int, seed: int, variants: Path | None = None) -> dict:
    completed = subprocess.run(
        child_command(path, model_key, epochs, seed, variants),
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        sys.exit(f"benchmark child {path} {model_key} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(
        f"  {path:9} {result['name']} seed {seed}: epochs {', '.join(f'{s:.1f}' for s in result['seconds'])} s; "
        f"test acc {result['test_accuracy']:.4f}; peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"({result['trainer']} on {result['backend']}, {result['optimizer']})",
        flush=True,
    )
    return result


def measurement_order(models: list[str] | tuple[str, ...], rounds: int) -> list[tuple[int, str, str]]:
    """(round, path, model) in the order measured: each model's pair in turn, the pair swapped each round."""
    order = []
    for round_index in range(rounds):
        paths = ("reference", "project") if round_index % 2 == 0 else ("project", "reference")
        order += [(round_index, path, model_key) for model_key in models for path in paths]
    return order


def summarize(results: list[dict], epochs: int, specs: dict[str, ModelSpec] | None = None) -> dict:
    """Per model (in the order first measured) and path: the medians, the share of peak, the
    accuracies; ``specs`` (by key; default the built-in ones) give each network's FLOPs."""
    specs = specs or MODEL_VARIANTS
    cpu = this_cpus_peak()
    summary: dict = {"peak_gflops": cpu["peak_gflops"], "peak": cpu, "cpu": cpu_model_name(), "models": {}}
    totals = {"reference": 0.0, "project": 0.0}
    for key in dict.fromkeys(r["model"] for r in results):
        spec = specs[key]
        network = spec.network()
        flops = flops_per_image(network)
        row: dict = {}
        for path in ("reference", "project"):
            runs = [r for r in results if r["path"] == path and r["model"] == key]
            steady = [s for r in runs for s in r["seconds"][1:]]
            median = statistics.median(steady)
            accuracies = [r["test_accuracy"] for r in runs]
            row[path] = {
                "seconds_per_epoch_median": median,
                "first_epoch_seconds": statistics.median(r["seconds"][0] for r in runs),
                "images_per_second": TRAINING_IMAGES / median,
                "fraction_of_peak": fraction_of_peak(median, flops, cpu["peak_gflops"]),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "test_accuracy_mean": statistics.mean(accuracies),
                "test_accuracy_stdev": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "test_accuracies": accuracies,
            }
            for field in ("trainer", "optimizer"):  # Older runs' records have neither.
                found = sorted({r[field] for r in runs if field in r})
                if found:
                    row[path][field] = ", ".join(found)
            if key in SPEC_MODELS:
                totals[path] += median
        row["ratio_reference_over_project"] = (
            row["reference"]["seconds_per_epoch_median"] / row["project"]["seconds_per_epoch_median"]
        )
        row["network"] = {
            "key": key,
            "layers": list(spec.layers) or [net.layer_text(layer) for layer in network.layers[:-1]],
            "describe": network.describe(),
            "parameters": network.parameter_count(),
            "flops_per_image": flops,
        }
        summary["models"][spec.name] = row
    if all(any(r["model"] == key for r in results) for key in SPEC_MODELS):
        summary["experiment"] = {
            "reference_minutes_60_epochs": totals["reference"] * SPEC_EPOCHS / 60,
            "project_minutes_60_epochs": totals["project"] * SPEC_EPOCHS / 60,
            "ratio_reference_over_project": totals["reference"] / totals["project"],
        }
    return summary


def print_summary(summary: dict, rounds: int, epochs: int) -> None:
    cpu = summary["peak"]
    print(f"\nCPU: {summary.get('cpu', cpu_model_name())}, {cpu['cores']} logical CPUs at {cpu['megahertz']:.0f} MHz")
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
    print(
        "\nPer network (project = the fused JAX trainer unless it says otherwise; "
        "model.fit on TensorFlow; the same optimizer on both sides):"
    )
    print(
        "| network | key | optimizer | parameters | MFLOP/image | fused s/epoch | model.fit (TF) s/epoch "
        "| speed-up | % of peak fused / model.fit |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, row in summary["models"].items():
        network, project, reference = row["network"], row["project"], row["reference"]
        trainer = project.get("trainer", "fused")
        fell_back = "" if trainer == "fused" else f" ({trainer} on JAX: no fused trainer)"
        print(
            f"| {name} | {network['key']} | {reference.get('optimizer', '')} | {network['parameters']:,} "
            f"| {network['flops_per_image'] / 1e6:.1f} | {project['seconds_per_epoch_median']:.2f}{fell_back} "
            f"| {reference['seconds_per_epoch_median']:.2f} | {row['ratio_reference_over_project']:.2f}x "
            f"| {project['fraction_of_peak'] * 100:.1f} / {reference['fraction_of_peak'] * 100:.1f} |"
        )
    experiment = summary.get("experiment")
    if experiment:
        print(
            f"\nWhole experiment (2 x {SPEC_EPOCHS} epochs of Model_A and Model_B, from the medians): "
            f"reference {experiment['reference_minutes_60_epochs']:.1f} min, "
            f"project {experiment['project_minutes_60_epochs']:.1f} min, "
            f"ratio {experiment['ratio_reference_over_project']:.2f}x"
        )


def add_measurement(path: Path, measurement: dict) -> None:
    """Append ``measurement`` to the ``measurements`` list of the JSON file at ``path`` (made
    when missing), keeping everything else in it: docs/bench-results.json's top-level
    ``summary`` and ``runs`` stay the published measurement the docs' table reads."""
    document = json.loads(path.read_text()) if path.exists() else {}
    document.setdefault("measurements", []).append(measurement)
    path.write_text(json.dumps(document, indent=2) + "\n")


def parse_models(text: str, known: dict[str, ModelSpec]) -> list[str]:
    """``A,B,KERAS_IO`` as keys, each known and named once; ValueError saying which is not."""
    keys = [part.strip().upper() for part in text.split(",") if part.strip()]
    if not keys:
        raise ValueError("--models names no model")
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r} in --models: choose from {', '.join(known)}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"a model is named twice in --models {text}")
    return keys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, model_key, epochs, seed, *variants = sys.argv[2:]
        result = child(path, model_key, int(epochs), int(seed), Path(variants[0]) if variants else None)
        print(json.dumps(result))
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
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="the networks measured, by key: A and B are built in, the others come from --variants "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--variants",
        type=Path,
        default=ANCHORS,
        help="TOML file of further variants (default: examples/anchors.toml)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (default: none)")
    parser.add_argument(
        "--add-to",
        type=Path,
        default=None,
        help="also append the results to this file's measurements list, e.g. docs/bench-results.json",
    )
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile, recorded with the results")
    args = parser.parse_args()
    if args.epochs < 2 or args.rounds < 1:
        parser.error("--epochs must be at least 2 and --rounds at least 1")
    from mnist_cnn.core.errors import ConfigError

    try:
        specs = known_variants(args.variants)
        models = parse_models(args.models, specs)
    except (ConfigError, ValueError) as error:
        parser.error(str(error))
    results = []
    for number, (round_index, path, model_key) in enumerate(measurement_order(models, args.rounds)):
        if number % (2 * len(models)) == 0:
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
        results.append(measure(path, model_key, args.epochs, seed=round_index, variants=args.variants))
    summary = summarize(results, args.epochs, specs)
    print_summary(summary, args.rounds, args.epochs)
    measured = {
        "date": datetime.date.today().isoformat(),
        "cpu": summary["cpu"],
        "command": shlex.join(["python", "bench/train_speed.py", *sys.argv[1:]]),
        "note": args.note,
    }
    document = {"measured": measured, "summary": summary, "runs": results}
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.add_to:
        add_measurement(args.add_to, document)


if __name__ == "__main__":
    main()

"""Result tables written from the published JSON files under ``docs/`` each time the site builds.

In a page::

    ```{result-table} study-variants
    ```

writes the table named ``study-variants`` from ``docs/study/statistics.json``: every number on
the site's result tables is read from the files the benchmarks and sweeps wrote, never copied by
hand. Each page is rebuilt when a file its tables read changes. A table reads the file it names
and nothing else; a missing file or key stops the build with the name of the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parents[2]  # docs/, where the benchmarks and sweeps publish.


class Source:
    """Reads JSON under docs/ and remembers which files it read (the page depends on them)."""

    def __init__(self, docs: Path) -> None:
        self.docs = docs
        self.read: list[Path] = []

    def json(self, relative: str) -> Any:
        path = self.docs / relative
        self.read.append(path)
        return json.loads(path.read_text(encoding="utf-8"))


# Formats, one each: percentages of accuracy, points of difference, p-values, ratios.
def percent(value: float, digits: int = 2) -> str:
    return f"{value * 100:.{digits}f} %"


def points(value: float) -> str:
    return f"{value * 100:+.2f}"


def p_value(value: float) -> str:
    return f"{value:.3g}"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def number(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table; ``align`` holds one letter per column: l(eft) or r(ight)."""
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[letter] for letter in align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the experiment: docs/full-run, one run of both models with every default --------------------


def full_run(source: Source) -> str:
    comparison = source.json("full-run/comparison.json")
    config = source.json("full-run/config.json")["config"]
    models = comparison["models"]
    names = list(models)
    measures: list[tuple[str, Callable[[dict], str]]] = [
        ("Parameters", lambda m: f"{m['parameters']:,}"),
        ("Test accuracy", lambda m: f"{m['test_accuracy']:.4f}"),
        ("Test loss", lambda m: f"{m['test_loss']:.4f}"),
        ("Best validation accuracy", lambda m: f"{m['best_val_accuracy']:.4f}"),
        ("Epoch of best validation accuracy", lambda m: str(m["best_val_epoch"])),
        ("Epochs", lambda m: str(m["epochs"])),
        ("Training time (s)", lambda m: number(m["training_seconds"])),
        ("Seconds per epoch (median)", lambda m: f"{m['seconds_per_epoch_median']:.2f}"),
        ("Inference per image, batched (ms)", lambda m: f"{m['inference_ms_per_image_batched']:.4f}"),
        ("Inference, one image alone (ms)", lambda m: f"{m['inference_ms_single_image']:.2f}"),
    ]
    rows = [[label, *(show(models[name]) for name in names)] for label, show in measures]
    second = comparison["second_vs_first"]
    pair = f"{second['second']}/{second['first']}"
    summary = [
        f"Backend {config['backend']}, {config['epochs']} epochs, batch {config['batch_size']}, "
        f"{config['optimizer']} (learning rate {config['learning_rate']:g}), seed {config['seed']}.",
        "",
        table(["", *names], rows, "l" + "r" * len(names)),
        "",
        f"- Training time ratio {pair}: {ratio(second['training_time_ratio'])} (per epoch "
        f"{ratio(second['seconds_per_epoch_ratio'])}, parameters {ratio(second['parameter_ratio'])})",
        f"- Inference time ratio {pair}: {ratio(second['inference_time_ratio'])}",
        f"- Test accuracy difference {second['second']} − {second['first']}: "
        f"{points(second['test_accuracy_difference'])} percentage points",
        f"- Training, all models: {sum(models[name]['training_seconds'] for name in names) / 60:.1f} minutes",
    ]
    return "\n".join(summary)


# --- sweeps: docs/compare (Model_A vs Model_B) and docs/study (six variants) ---------------------

MEASURES = [  # (field, label, format of one value)
    ("test_accuracy", "test accuracy", lambda v: percent(v)),
    ("test_loss", "test loss", lambda v: f"{v:.4f}"),
    ("best_val_accuracy", "best validation accuracy", lambda v: percent(v)),
    ("training_seconds", "training time (s)", lambda v: number(v)),
    ("seconds_per_epoch_median", "median s/epoch", lambda v: number(v)),
    ("inference_ms_per_image_batched", "inference ms/image (batched)", lambda v: f"{v:.4f}"),
]
ACCURACIES = {"test_accuracy", "best_val_accuracy"}
LABELS = {field: label for field, label, _ in MEASURES}


def comparisons(statistics: dict) -> list[dict]:
    """Every paired comparison: a two-model sweep has one (``comparison``), a larger one a list."""
    return statistics["comparisons"] if "comparisons" in statistics else [statistics["comparison"]]


def sweep_models(folder: str) -> Callable[[Source], str]:
    def write(source: Source) -> str:
        statistics = source.json(f"{folder}/statistics.json")
        names = list(statistics["models"])
        rows = []
        for field, label, show in MEASURES:
            cells = [label]
            for name in names:
                summary = statistics["models"][name][field]
                spread = f"{summary['sd'] * 100:.2f} %" if field in ACCURACIES else show(summary["sd"])
                interval = f"[{show(summary['ci_low'])}, {show(summary['ci_high'])}]"
                cells.append(f"{show(summary['mean'])} ± {spread} {interval}")
            rows.append(cells)
        return table(["measure", *names], rows, "l" + "r" * len(names))

    return write


def difference_text(field: str, value: float) -> str:
    return f"{value * 100:+.3f} pt" if field in ACCURACIES else f"{value:+.3f}"


def sweep_paired(folder: str) -> Callable[[Source], str]:
    def write(source: Source) -> str:
        statistics = source.json(f"{folder}/statistics.json")
        blocks = []
        for comparison in comparisons(statistics):
            rows = []
            for field, difference in comparison["differences"].items():
                show = lambda v, field=field: difference_text(field, v)  # noqa: E731
                rows.append(
                    [
                        LABELS.get(field, field),
                        show(difference["mean"]),
                        f"[{show(difference['ci_low'])}, {show(difference['ci_high'])}]",
                        f"[{show(difference['bootstrap_low'])}, {show(difference['bootstrap_high'])}]",
                        p_value(difference["t_test_p"]),
                        p_value(difference["wilcoxon_p"]),
                    ]
                )
            header = ["measure", "mean", "95 % CI (t)", "95 % CI (bootstrap)", "paired t-test p", "Wilcoxon p"]
            blocks.append(f"Paired, {comparison['second']} − {comparison['first']} seed by seed:")
            blocks.append(table(header, rows, "lrrrrr"))
            ratios = [
                [LABELS.get(field, field), f"{r['geometric_mean']:.3f}x", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"]
                for field, r in comparison["ratios"].items()
            ]
            pair = f"{comparison['second']}/{comparison['first']}"
            blocks.append(table([f"ratio {pair}", "geometric mean", "95 % CI"], ratios, "lrr"))
        return "\n\n".join(blocks)

    return write


def sweep_verdicts(folder: str) -> Callable[[Source], str]:
    def write(source: Source) -> str:
        statistics = source.json(f"{folder}/statistics.json")
        lines = [
            f"{len(statistics['seeds_finished'])} of {len(statistics['seeds_requested'])} seeds finished; "
            f"{statistics['experiment']['epochs']} epochs, batch {statistics['experiment']['batch_size']}, "
            f"{statistics['experiment']['optimizer']} (learning rate {statistics['experiment']['learning_rate']:g}), "
            f"backend {statistics['experiment']['backend']}.",
            "",
        ]
        for comparison in comparisons(statistics):
            seeds = comparison["seeds_needed_for_detectable_difference"]
            detectable = comparison["detectable_difference"] * 100
            lines.append(
                f"- {comparison['verdict']} {comparison['time_verdict']} Telling a {detectable:g}-point difference "
                f"apart at this noise takes about **{seeds} seeds**."
            )
        return "\n".join(lines)

    return write


def sweep_seeds(folder: str) -> Callable[[Source], str]:
    """One row per seed: each model's test accuracy; with two models also each one's training time,
    with more the trial's minutes (every model, one after the other on one node)."""

    def write(source: Source) -> str:
        statistics = source.json(f"{folder}/statistics.json")
        names = list(statistics["models"])
        pair = len(names) <= 2
        header = ["seed"] if pair else ["seed", "minutes"]
        for name in names:
            header += [f"{name} test accuracy", f"{name} time (s)"] if pair else [f"{name} (%)"]
        header.append("resumed")
        rows = []
        for trial in statistics["trials"]:
            index = statistics["seeds_finished"].index(trial["seed"])
            cells = [str(trial["seed"])] if pair else [str(trial["seed"]), f"{trial['wall_seconds'] / 60:.0f}"]
            for name in names:
                accuracy = statistics["models"][name]["test_accuracy"]["values"][index]
                if pair:
                    seconds = statistics["models"][name]["training_seconds"]["values"][index]
                    cells += [percent(accuracy), f"{seconds:.0f}"]
                else:
                    cells.append(f"{accuracy * 100:.2f}")
            cells.append("yes" if trial.get("resumed") else "no")
            rows.append(cells)
        return table(header, rows, "r" * (len(header) - 1) + "l")

    return write


def study_variants(source: Source) -> str:
    """The study's table (mnist_cnn.report.study, which the README's table uses too)."""
    from mnist_cnn.report.study import study_header, study_rows

    statistics = source.json("study/statistics.json")
    seed = statistics["seeds_finished"][0]
    counts = {
        name: source.json(f"study/seed-{seed}/{name}/metrics.json")["parameters"] for name in statistics["models"]
    }
    return table(study_header(statistics), study_rows(statistics, counts), "llrrrrr")


# --- benchmarks: docs/*.json --------------------------------------------------------------------


def train_speed(source: Source) -> str:
    summary = source.json("bench-results.json")["summary"]
    rows = []
    for name, model in summary["models"].items():
        rows.append(
            [
                name,
                f"{model['reference']['seconds_per_epoch_median']:.2f}",
                f"{model['project']['seconds_per_epoch_median']:.2f}",
                f"{model['ratio_reference_over_project']:.2f}×",
                " / ".join(percent(model[path]["test_accuracy_mean"]) for path in ("reference", "project")),
            ]
        )
    experiment = summary["experiment"]
    rows.append(
        [
            "whole experiment, 2 × 60 epochs",
            f"{experiment['reference_minutes_60_epochs']:.1f} min",
            f"{experiment['project_minutes_60_epochs']:.1f} min",
            f"**{experiment['ratio_reference_over_project']:.2f}×**",
            "",
        ]
    )
    header = ["", "notebook (s/epoch)", "mnist-cnn (s/epoch)", "speed-up", "test accuracy, notebook / mnist-cnn"]
    return table(header, rows, "lrrrr")


def train_speed_networks(source: Source) -> str:
    """The newest measurement of every network (the anchors' too): fused against model.fit."""
    measurement = source.json("bench-results.json")["measurements"][-1]
    rows = []
    for name, model in measurement["summary"]["models"].items():
        rows.append(
            [
                name,
                model["project"]["optimizer"],
                f"{model['network']['parameters']:,}",
                f"{model['reference']['seconds_per_epoch_median']:.2f}",
                f"{model['project']['seconds_per_epoch_median']:.2f}",
                f"{model['ratio_reference_over_project']:.2f}×",
            ]
        )
    header = ["network", "optimizer", "parameters", "model.fit (s/epoch)", "fused (s/epoch)", "speed-up"]
    return table(header, rows, "llrrrr")


def sweep_layout(source: Source) -> str:
    results = source.json("sweep-layout.json")
    rows = []
    for layout in ("sequential", "side by side"):
        rounds = [entry for entry in results["results"] if entry["layout"] == layout]
        first = rounds[0]
        name = (
            f"1 trial at a time, {first['cpus_per_trial']} CPUs"
            if first["trials_side_by_side"] == 1
            else f"{first['trials_side_by_side']} trials side by side, {first['cpus_per_trial']} CPU each"
        )
        rows.append(
            [
                name,
                ", ".join(f"{entry['median_seconds_per_epoch']['Model_A']:.1f}" for entry in rounds),
                ", ".join(f"{entry['median_seconds_per_epoch']['Model_B']:.1f}" for entry in rounds),
                ", ".join(f"{entry['seeds_per_hour']:.2f}" for entry in rounds),
            ]
        )
    rows[-1][-1] += f" (**{results['ratio']:.2f}x**)"
    header = ["layout", "Model_A s/epoch", "Model_B s/epoch", "seeds per hour (each round)"]
    return f"{results['epochs']} epochs per model, {results['cpus']} CPUs.\n\n" + table(header, rows, "lrrr")


def augment_effect(source: Source) -> str:
    results = source.json("augment-effect.json")
    plain, augmented = results["variants"]["plain"], results["variants"]["--augment"]
    names = list(plain["mnist_test_accuracy"])
    header = ["test set"] + [f"{name} {kind}" for name in names for kind in ("plain", "--augment")]
    rows = [["MNIST test set"] + [percent(v["mnist_test_accuracy"][n], 1) for n in names for v in (plain, augmented)]]
    for name in plain["robustness"]:
        rows.append([name] + [percent(v["robustness"][name][n], 1) for n in names for v in (plain, augmented)])
    rows.append(
        ["seconds per epoch (median)"]
        + [f"{v['seconds_per_epoch_median'][n]:.1f}" for n in names for v in (plain, augmented)]
    )
    intro = f"Both models trained {results['epochs']} epochs each way."
    return intro + "\n\n" + table(header, rows, "l" + "r" * 2 * len(names))


def current_rows(bench: dict, key: str) -> list[dict]:
    """A benchmark's own rows: those of a comparison checkout (``--against``) are left out."""
    against = (bench.get("against") or {}).get("label")
    return [row for row in bench[key] if not (against and row["server"].endswith(f", {against}"))]


def non_200(row: dict) -> str:
    return ", ".join(f"{status}: {count}" for status, count in row["errors"].items()) or "none"


def serve_summary(relative: str) -> Callable[[Source], str]:
    def write(source: Source) -> str:
        bench = source.json(relative)
        most = max(row["clients"] for row in bench["rows"])
        rows = [
            [
                row["server"],
                f"{row['requests_per_second']:,.0f}",
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                f"{row['server_cpu_ms_per_request']:.2f}",
            ]
            for row in current_rows(bench, "rows")
            if row["clients"] == most
        ]
        header = ["server", "requests/s", "p50 ms", "p99 ms", "server CPU ms/answer"]
        return f"{most} concurrent clients, {bench['seconds_per_level']:g} s:\n\n" + table(header, rows, "lrrrr")

    return write


def serve_levels(source: Source) -> str:
    bench = source.json("serve-bench.json")
    rows = [
        [
            row["server"],
            str(row["clients"]),
            f"{row['requests_per_second']:,.0f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['ok']}/{row['requests']}",
            non_200(row),
            f"{row['server_cpu_ms_per_request']:.2f}",
            f"{row['client_cpu_ms_per_request']:.2f}",
        ]
        for row in current_rows(bench, "rows")
    ]
    header = ["server", "clients", "requests/s", "p50 ms", "p99 ms", "answered", "non-200"]
    header += ["server CPU ms", "wrk CPU ms"]
    return table(header, rows, "lrrrrrlrr")


def serve_overload(source: Source) -> str:
    bench = source.json("serve-bench.json")
    rows = [
        [
            row["server"],
            row["refused_clients"],
            f"{row['ok']}/{row['requests']}",
            str(row["shed_503"]),
            f"{row['ok'] / bench['seconds_per_level']:.0f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            non_200(row),
        ]
        for row in current_rows(bench, "overload")
    ]
    connections = bench["overload"][0]["connections"]
    header = ["server", "refused clients", "answered", "shed (503)", "answered/s", "p50 ms", "p99 ms", "other non-200"]
    return f"{connections} connections for {bench['seconds_per_level']:g} s:\n\n" + table(header, rows, "llrrrrrl")


def serve_memory(source: Source) -> str:
    memory = source.json("serve-bench.json")["memory"]
    labels = {"jax": "JAX (default)", "onnx": "onnxruntime (--runtime onnx)"}
    rows = [
        [
            labels.get(runtime, runtime),
            f"{entry['rss_mib_after_start']:,.0f}",
            f"{entry['requests']:,}",
            f"{entry['growth_mib']:+.1f}",
        ]
        for runtime, entry in memory.items()
    ]
    return table(["server", "MiB after start-up", "then requests", "growth (MiB)"], rows, "lrrr")


def serve_preparation(source: Source) -> str:
    preparation = source.json("serve-bench.json")["preparation"]
    rows = [[step, f"{ms:.3f}"] for step, ms in preparation.items()]
    return table(["step (one thread, per image)", "median ms"], rows, "lr")


def browser_timing(source: Source) -> str:
    bench = source.json("browser-bench.json")
    rows = [["preparing the drawing (prepare.js)", bench["prepare"]]]
    rows += [[name, timing] for name, timing in bench["models"].items()]
    rows += [["both models", bench["both_models"]], ["the whole prediction", bench["total"]]]
    cells = [[label, f"{t['median_ms']:.1f}", f"{t['p99_ms']:.1f}"] for label, t in rows]
    intro = (
        f"onnxruntime-web {bench['onnxruntime_web']} on {bench['execution_provider']}, "
        f"{bench['strokes']} strokes, each timed by the page itself:"
    )
    return intro + "\n\n" + table(["ms per prediction", "median", "p99"], cells, "lrr")


HTTP_LIMITS = [  # (field of docs/faults-bench.json's limits, the limit, its unit, what happens past it)
    ("header_timeout_s", "request line and headers arrive within", "s of the first byte", "the connection is closed"),
    ("max_header_bytes", "request line and headers, in all", "bytes", "431"),
    ("body_timeout_s", "a body pauses at most", "s", "408, and the request is dropped"),
    ("keep_alive_s", "an idle kept-alive connection", "s", "closed"),
    ("max_connections", "open connections per server process", "", "a new one gets 503"),
    ("drain_s", "on SIGTERM, the accepted requests are answered within", "s", "the process exits"),
]


def fault_limits(source: Source) -> str:
    limits = source.json("faults-bench.json")["limits"]
    rows = [[limit, f"{limits[field]:,g} {unit}".strip(), past] for field, limit, unit, past in HTTP_LIMITS]
    rows.append(["HTTP/0.9 (a request line without a version)", "", "400 at once"])
    return table(["limit", "value", "past it"], rows, "lrl")


def fault_cases(source: Source) -> str:
    bench = source.json("faults-bench.json")
    rows = [[case["case"], "yes" if case["handled"] else "**no**", case["detail"]] for case in bench["cases"]]
    intro = f"{bench['handled']} of {bench['tried']} cases handled:"
    return intro + "\n\n" + table(["case", "handled", "what happened"], rows, "lll")


TABLES: dict[str, Callable[[Source], str]] = {
    "full-run": full_run,
    "compare-verdict": sweep_verdicts("compare"),
    "compare-models": sweep_models("compare"),
    "compare-paired": sweep_paired("compare"),
    "compare-seeds": sweep_seeds("compare"),
    "study-verdicts": sweep_verdicts("study"),
    "study-variants": study_variants,
    "study-seeds": sweep_seeds("study"),
    "train-speed": train_speed,
    "train-speed-networks": train_speed_networks,
    "sweep-layout": sweep_layout,
    "augment-effect": augment_effect,
    "serve-summary": serve_summary("serve-bench.json"),
    "serve-summary-faster-core": serve_summary("serve-bench-epyc-f25m1.json"),
    "serve-levels": serve_levels,
    "serve-overload": serve_overload,
    "serve-memory": serve_memory,
    "serve-preparation": serve_preparation,
    "browser-timing": browser_timing,
    "fault-limits": fault_limits,
    "fault-cases": fault_cases,
}


class ResultTable(SphinxDirective):
    """``{result-table} NAME``: the Markdown of TABLES[NAME], parsed in place."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in TABLES:
            raise self.error(f"unknown result table {name!r}; known: {', '.join(TABLES)}")
        source = Source(DOCS)
        try:
            markdown = TABLES[name](source)
        except (OSError, KeyError, ValueError, IndexError) as error:
            raise self.error(f"result table {name!r}: cannot read it from {source.read[-1:]}: {error!r}") from error
        for path in source.read:
            self.env.note_dependency(str(path))
        container = nodes.container(classes=["result-table"])
        self.state.nested_parse(StringList(markdown.splitlines(), source=f"result-table {name}"), 0, container)
        return [container]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("result-table", ResultTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

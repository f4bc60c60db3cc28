"""Figures and tables a person reads: learning curves, the comparison of the run's models, predictions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only: runs happen on machines with no screen.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from mnist_cnn.core.files import atomic_path  # noqa: E402
from mnist_cnn.core.results import Comparison, HistoryRow, ModelMetrics, PredictionsOnTestImages  # noqa: E402
from mnist_cnn.core.sweep_results import SweepStatistics  # noqa: E402
from mnist_cnn.report.measures import metrics_rows  # noqa: E402
from mnist_cnn.store.runs import ModelFolder, RunFolder  # noqa: E402

# Matplotlib's ten distinct colours: a study of six or more variants keeps each its own.
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan")  # fmt: skip


def save_figure(figure: plt.Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, bbox_inches="tight", format="png")
    plt.close(figure)


def epoch_axis(axis: plt.Axes) -> None:
    """Epochs are whole numbers: no 1.25 ticks on a short run's axis."""
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def curve_marker(epochs: int) -> str | None:
    """Dots on the curves of short runs, where a line of one or two points is hard to see."""
    return "." if epochs <= 20 else None


def column(history: list[HistoryRow], name: str) -> list[float]:
    return [row[name] for row in history]


def plot_learning_curves(history: list[HistoryRow], folder: ModelFolder) -> list[Path]:
    """loss.png and accuracy.png: train and validation against epoch for one model."""
    model_name = folder.name
    epochs = column(history, "epoch")
    written = []
    for metric, label in (("loss", "loss (cross-entropy)"), ("accuracy", "accuracy")):
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(epochs, column(history, metric), marker=".", label="train")
        axis.plot(epochs, column(history, f"val_{metric}"), marker=".", label="validation")
        axis.set(title=f"{model_name}: {metric} per epoch", xlabel="epoch", ylabel=label)
        epoch_axis(axis)
        axis.grid(alpha=0.3)
        axis.legend()
        path = folder.curve_path(metric)
        save_figure(figure, path)
        written.append(path)
    return written


def plot_comparison(histories: dict[str, list[HistoryRow]], path: Path) -> None:
    """comparison.png: every model's loss and accuracy in one figure."""
    save_figure(comparison_figure(histories), path)


def comparison_figure(
    histories: dict[str, list[HistoryRow]],
    size: tuple[float, float] = (12, 4.5),
    legend_size: float | None = None,
    metrics: tuple[str, ...] = ("loss", "accuracy"),
    colors: tuple[str, ...] = COLORS,
) -> plt.Figure:
    """One figure overlaying every model's ``metrics`` side by side (solid train, dashed validation)."""
    figure, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False)
    axes = axes[0]
    for color, (name, history) in zip(colors, histories.items(), strict=False):
        epochs = column(history, "epoch")
        for axis, metric in zip(axes, metrics, strict=True):
            marker = curve_marker(len(epochs))
            axis.plot(epochs, column(history, metric), color=color, marker=marker, label=f"{name} train")
            axis.plot(
                epochs,
                column(history, f"val_{metric}"),
                color=color,
                linestyle="--",
                marker=marker,
                label=f"{name} validation",
            )
    for axis, metric in zip(axes, metrics, strict=True):
        axis.set(title=f"{metric} per epoch", xlabel="epoch", ylabel=metric)
        epoch_axis(axis)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=legend_size)
    return figure


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison table (one column per model, however many) and, for a pair, the ratios, as Markdown."""
    names = list(comparison.models)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [
        f"| {row.label} | " + " | ".join(row.cells) + " |" for row in metrics_rows(list(comparison.models.values()))
    ]
    ratios = comparison.second_vs_first
    if ratios is not None:
        pair = f"{ratios.second}/{ratios.first}"
        lines += [
            "",
            f"- Training time ratio {pair}: {ratios.training_time_ratio:.2f}x "
            f"(per epoch {ratios.seconds_per_epoch_ratio:.2f}x, parameters {ratios.parameter_ratio:.2f}x)",
            f"- Inference time ratio {pair}: {ratios.inference_time_ratio:.2f}x",
            f"- Test accuracy difference {ratios.second} - {ratios.first}: "
            f"{ratios.test_accuracy_difference * 100:+.2f} percentage points",
        ]
    return "\n".join(lines) + "\n"


def write_comparison(metrics: dict[str, ModelMetrics], run: RunFolder, header: str = "") -> str:
    """comparison.json and comparison.md; returns the table as Markdown."""
    comparison = Comparison.of(metrics)
    text = comparison_markdown(comparison)
    title = "Model comparison" if len(metrics) > 1 else f"{', '.join(metrics)}: results"
    run.write_comparison(comparison, f"# {title}\n\n{header}{text}")
    return text


def plot_predictions(images: np.ndarray, result: PredictionsOnTestImages, path: Path) -> None:
    """Each test image with its true label and every model's predicted digit and probability."""
    indices = result.indices
    figure, axes = plt.subplots(1, len(indices), figsize=(3.2 * len(indices), 3.8), squeeze=False)
    for column_index, (axis, image_index) in enumerate(zip(axes[0], indices, strict=True)):
        true_label = result.true_labels[column_index]
        axis.imshow(images[column_index].reshape(28, 28), cmap="gray_r")
        axis.set_xticks([])
        axis.set_yticks([])
        lines = [f"X_test[{image_index}]  true: {true_label}"]
        for name, answers in result.predictions.items():
            answer = answers[column_index]
            mark = "ok" if answer.digit == true_label else "WRONG"
            lines.append(f"{name}: {answer.digit} ({answer.probability:.1%}) {mark}")
        axis.set_title("\n".join(lines), fontsize=9)
    save_figure(figure, path)


# ---------------------------------------------------------------- a sweep over seeds


def mean_and_sd(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation across seeds, epoch by epoch (sd 0 for one seed)."""
    data = np.asarray(curves, dtype=np.float64)
    spread = data.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(data.shape[1])
    return data.mean(axis=0), spread


def plot_seed_accuracies(accuracies: dict[str, list[float]], seeds: list[int], path: Path) -> None:
    """Each seed's test accuracy per model as dots, the mean with its 95 % CI beside them,
    and (for two models) each seed's paired difference."""
    from mnist_cnn.core.stats import summarize

    names = list(accuracies)
    paired = len(names) == 2 and len(seeds) > 1
    figure, axes = plt.subplots(1, 2 if paired else 1, figsize=(11 if paired else 6, 4.5), squeeze=False)
    axis = axes[0][0]
    offsets = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    for position, (color, name) in enumerate(zip(COLORS, names, strict=False)):
        values = 100 * np.asarray(accuracies[name])
        axis.scatter(position + offsets, values, color=color, alpha=0.7, label=f"{name} (each seed)")
        summary = summarize(values)
        if summary.ci_low is not None:
            axis.errorbar(
                position + 0.3,
                summary.mean,
                yerr=[[summary.mean - summary.ci_low], [summary.ci_high - summary.mean]],
                fmt="D",
                color="black",
                capsize=5,
            )
        else:
            axis.plot(position + 0.3, summary.mean, "D", color="black")
    if paired:
        for seed_position in range(len(seeds)):
            axis.plot(
                [0, 1],
                [100 * accuracies[names[0]][seed_position], 100 * accuracies[names[1]][seed_position]],
                color="grey",
                alpha=0.3,
                linewidth=0.8,
            )
    axis.set_xticks(range(len(names)), names)
    axis.set(title=f"test accuracy over {len(seeds)} seeds (diamond: mean, 95 % CI)", ylabel="test accuracy (%)")
    axis.grid(alpha=0.3)
    if paired:
        differences = 100 * (np.asarray(accuracies[names[1]]) - np.asarray(accuracies[names[0]]))
        summary = summarize(differences)
        right = axes[0][1]
        right.axhline(0, color="black", linewidth=0.8)
        right.scatter(np.arange(len(seeds)), differences, color="tab:purple", label="each seed")
        right.axhline(summary.mean, color="tab:purple", linestyle="--", label=f"mean {summary.mean:+.3f}")
        right.axhspan(summary.ci_low, summary.ci_high, color="tab:purple", alpha=0.15, label="95 % CI of the mean")
        right.set_xticks(np.arange(len(seeds)), [str(seed) for seed in seeds])
        right.set(
            title=f"{names[1]} − {names[0]}, same seed", xlabel="seed", ylabel="test accuracy difference (points)"
        )
        right.grid(alpha=0.3)
        right.legend()
    save_figure(figure, path)


def plot_mean_curves(histories: dict[str, list[list[HistoryRow]]], path: Path) -> None:
    """Validation accuracy and loss per epoch: the mean over seeds with a ±1 sd band, per model."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for color, (name, runs) in zip(COLORS, histories.items(), strict=False):
        epochs = column(runs[0], "epoch")
        for axis, metric in zip(axes, ("val_accuracy", "val_loss"), strict=True):
            mean, spread = mean_and_sd([column(history, metric) for history in runs])
            axis.plot(epochs, mean, color=color, label=f"{name} (mean of {len(runs)} seeds)")
            axis.fill_between(epochs, mean - spread, mean + spread, color=color, alpha=0.2, label=f"{name} ±1 sd")
    for axis, metric in zip(axes, ("validation accuracy", "validation loss"), strict=True):
        axis.set(title=f"{metric} per epoch", xlabel="epoch", ylabel=metric)
        epoch_axis(axis)
        axis.grid(alpha=0.3)
        axis.legend()
    save_figure(figure, path)


def plot_epoch_times(seconds_per_epoch: dict[str, list[list[float]]], path: Path) -> None:
    """Seconds per epoch, epoch by epoch: the mean over seeds with a ±1 sd band, per model."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for color, (name, runs) in zip(COLORS, seconds_per_epoch.items(), strict=False):
        mean, spread = mean_and_sd(runs)
        epochs = np.arange(1, len(mean) + 1)
        axis.plot(epochs, mean, color=color, label=f"{name} (mean of {len(runs)} seeds)")
        axis.fill_between(epochs, mean - spread, mean + spread, color=color, alpha=0.2)
    axis.set(title="time per epoch", xlabel="epoch", ylabel="seconds", ylim=(0, None))
    epoch_axis(axis)
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other beats on both: lower cost (x) and higher accuracy (y)."""
    return [
        index
        for index, (cost, score) in enumerate(points)
        if not any(
            other_cost <= cost and other_score >= score and (other_cost, other_score) != (cost, score)
            for other_cost, other_score in points
        )
    ]


def count_label(value: float) -> str:
    """12000 -> "12k", 2000000 -> "2M": a parameter count for an axis."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def plot_accuracy_against_cost(statistics: SweepStatistics, path: Path) -> None:
    """Mean test accuracy (95 % CI) against training cost (s/epoch) and against parameters, per
    model, the Pareto front marked: the models nothing else beats on both accuracy and cost."""
    names = statistics.model_names
    parameters = {spec.name: spec.parameter_count() for spec in statistics.experiment.model_specs()}
    accuracy = [statistics.models[name]["test_accuracy"] for name in names]
    costs = {
        "seconds per epoch (median after the first, mean over seeds)": [
            statistics.models[name]["seconds_per_epoch_median"].mean for name in names
        ],
        "parameters": [parameters.get(name, 0) for name in names],
    }
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, (label, values) in zip(axes, costs.items(), strict=True):
        front = pareto_front(list(zip(values, [summary.mean for summary in accuracy], strict=True)))
        for position, (name, summary, cost) in enumerate(zip(names, accuracy, values, strict=True)):
            low = summary.mean - (summary.ci_low if summary.ci_low is not None else summary.mean)
            high = (summary.ci_high if summary.ci_high is not None else summary.mean) - summary.mean
            axis.errorbar(
                cost, 100 * summary.mean, yerr=[[100 * low], [100 * high]], fmt="o", capsize=4,
                color=COLORS[position % len(COLORS)], label=name,
            )  # fmt: skip
        ordered = sorted(front, key=lambda index: values[index])
        axis.plot(
            [values[index] for index in ordered],
            [100 * accuracy[index].mean for index in ordered],
            color="black", linestyle=":", linewidth=1, label="Pareto front",
        )  # fmt: skip
        if label == "parameters":
            # Log scale, labelled at 1, 2 and 5 of each decade as "200k", "1M": matplotlib's own
            # labels of the minor ticks (3x10^5, 4x10^5...) run into each other.
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: count_label(value)))
            axis.xaxis.set_minor_formatter(NullFormatter())
        title = f"accuracy against {label.split(' (')[0]}"
        axis.set(xlabel=label, ylabel="test accuracy (%), mean and 95 % CI", title=title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(figure, path)

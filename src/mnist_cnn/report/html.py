"""report.html: one self-contained page per run (and per sweep) that people open instead of a folder.

The page follows the specification's order: data, models, training, test evaluation, the
comparison of the run's models (when it has several), where each model goes wrong
(confusion matrix, per-digit precision and recall, the most confidently wrong test
images), X_test[0..2], and the environment. Every figure is drawn here, in memory, and
inlined as a data: URI, so the file opens anywhere (a USB stick, an e-mail, no network).
The HTML comes from a Jinja2 template with autoescaping. A run folder that lacks something
(its models, its data) still gets a report of what it has, saying what is missing.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from mnist_cnn.core import network as net
from mnist_cnn.core.config import PREDICTION_INDICES, ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import UserError
from mnist_cnn.core.files import write_text
from mnist_cnn.core.results import Comparison, HistoryRow, ModelMetrics
from mnist_cnn.core.version import version_text
from mnist_cnn.data.mnist import MnistSplits, load_mnist
from mnist_cnn.report.figures import COLORS, comparison_figure, plt
from mnist_cnn.report.measures import Row, metrics_rows
from mnist_cnn.store.runs import ModelFolder, RunFolder

GALLERY_SIZE = 12  # Most confidently wrong test images shown per model.
SAMPLES_PER_DIGIT = 8
FIGURE_DPI = 90  # Sharp enough on a phone, small enough to keep a report near 1 MB.


def template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mnist_cnn.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,  # A missing value is a bug to see, not an empty cell.
        trim_blocks=True,
        lstrip_blocks=True,
    )


def figure_uri(figure: plt.Figure) -> str:
    """The figure as a PNG data: URI (and closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_uri(path: Path) -> str | None:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


# ---------------------------------------------------------------- what a run folder holds


@dataclasses.dataclass
class ModelSection:
    """Everything the report shows for one model; None where the folder lacks it."""

    spec: ModelSpec
    metrics: ModelMetrics | None
    history: list[HistoryRow] | None
    model: Any | None  # keras.Model
    missing: list[str]


def read_model_section(spec: ModelSpec, folder: ModelFolder, model: Any | None) -> ModelSection:
    missing = []
    metrics = folder.read_metrics() if folder.metrics_path.is_file() else None
    if metrics is None:
        missing.append(f"{folder.metrics_path.name} (the model has not finished training)")
    history = folder.read_history() if folder.history_path.is_file() else None
    if history is None:
        missing.append(f"{folder.history_path.name} (no learning curves)")
    if model is None and folder.model_path.is_file():
        try:
            model = folder.load_model()
        except UserError as error:
            missing.append(f"a readable {folder.model_path.name} ({error})")
    if model is None and not folder.model_path.is_file():
        missing.append(f"{folder.model_path.name} (no confusion matrix, mistakes or predictions)")
    return ModelSection(spec=spec, metrics=metrics, history=history, model=model, missing=missing)


# ---------------------------------------------------------------- figures


def sample_grid(splits: MnistSplits) -> str:
    """SAMPLES_PER_DIGIT training images of each digit, one row per digit."""
    figure, axes = plt.subplots(10, SAMPLES_PER_DIGIT, figsize=(SAMPLES_PER_DIGIT * 0.7, 10 * 0.7))
    for digit in range(10):
        positions = np.flatnonzero(splits.y_train == digit)[:SAMPLES_PER_DIGIT]
        for slot in range(SAMPLES_PER_DIGIT):
            axis = axes[digit][slot]
            axis.axis("off")
            if slot < len(positions):
                axis.imshow(splits.X_train[positions[slot]].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
    figure.subplots_adjust(wspace=0.05, hspace=0.05)
    return figure_uri(figure)


def curves_figure(histories: dict[str, list[HistoryRow]], colors: tuple[str, ...] = COLORS) -> list[str]:
    """Loss, then accuracy, per epoch, every model overlaid (solid train, dashed validation).

    One figure per metric: side by side on a wide screen, one under the other at full width on
    a phone (two panels in one image would be half a phone's width each).
    """
    return [
        figure_uri(comparison_figure(histories, size=(5.6, 4), legend_size=8, metrics=(metric,), colors=colors))
        for metric in ("loss", "accuracy")
    ]


def confusion_matrix(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """counts[t, p]: test images of digit t read as p."""
    counts = np.zeros((10, 10), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def confusion_figure(name: str, counts: np.ndarray) -> str:
    figure, axis = plt.subplots(figsize=(5.2, 4.6))
    # Log colour scale: the diagonal's ~1,000s would otherwise hide the off-diagonal 1s-10s.
    shades = np.log1p(counts)
    axis.imshow(shades, cmap="Blues")
    for true in range(10):
        for predicted in range(10):
            if counts[true, predicted]:
                color = "white" if shades[true, predicted] > 0.6 * shades.max() else "black"
                axis.text(
                    predicted, true, str(counts[true, predicted]), ha="center", va="center", fontsize=7, color=color
                )
    axis.set_xticks(range(10))
    axis.set_yticks(range(10))
    axis.set(title=f"{name}: confusion matrix (test set)", xlabel="predicted digit", ylabel="true digit")
    return figure_uri(figure)


def per_digit_scores(counts: np.ndarray) -> list[dict[str, Any]]:
    """Precision (of the images read as d, the share that are d) and recall (of the d's, the share read as d)."""
    rows = []
    for digit in range(10):
        predicted_as = counts[:, digit].sum()
        actual = counts[digit, :].sum()
        rows.append(
            {
                "digit": digit,
                "images": int(actual),
                "precision": float(counts[digit, digit] / predicted_as) if predicted_as else None,
                "recall": float(counts[digit, digit] / actual) if actual else None,
            }
        )
    return rows


def mistakes_figure(
    name: str, images: np.ndarray, true: np.ndarray, probabilities: np.ndarray
) -> tuple[str | None, int]:
    """The GALLERY_SIZE wrong answers given with the highest probability; and how many were wrong."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != true)
    if wrong.size == 0:
        return None, 0
    order = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:GALLERY_SIZE]
    columns = 6
    rows = int(np.ceil(len(order) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.95), squeeze=False)
    for slot, axis in enumerate(axes.flat):
        axis.axis("off")
        if slot < len(order):
            index = order[slot]
            axis.imshow(images[index].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
            axis.set_title(
                f"#{index}\ntrue {true[index]} → {predicted[index]}\n{probabilities[index, predicted[index]]:.2%}",
                fontsize=8,
            )
    return figure_uri(figure), int(wrong.size)


def prediction_figure(image: np.ndarray, true: int, probabilities: dict[str, np.ndarray]) -> str:
    """One test image and every model's ten probabilities as bars."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.5, 2.6), gridspec_kw={"width_ratios": [1, 2.6]})
    left.imshow(image.reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
    left.axis("off")
    left.set_title(f"true digit {true}", fontsize=9)
    width = 0.8 / max(1, len(probabilities))
    for position, (color, (name, values)) in enumerate(zip(COLORS, probabilities.items(), strict=False)):
        digit = int(values.argmax())
        right.bar(
            np.arange(10) + (position - (len(probabilities) - 1) / 2) * width,
            values,
            width=width,
            color=color,
            label=f"{name}: {digit} ({values[digit]:.1%})",
        )
    right.set_xticks(range(10))
    right.set(ylim=(0, 1.05), xlabel="digit", ylabel="probability")
    # Above the bars, not over them: the winning bar reaches the top of the axis.
    right.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(3, len(probabilities)))
    right.grid(axis="y", alpha=0.3)
    return figure_uri(figure)


# ---------------------------------------------------------------- the run report


def layer_table(model: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": layer.name,
            "kind": layer.__class__.__name__,
            "output_shape": " × ".join(str(size) for size in layer.output.shape[1:]),  # Per image: no batch axis.
            "parameters": int(layer.count_params()),
        }
        for layer in model.layers
    ]


def architecture(section: ModelSection) -> Any:
    """The model itself, or for a folder without it, the same architecture built from the config."""
    if section.model is not None:
        return section.model
    from mnist_cnn.train.models import build_variant

    return build_variant(section.spec)


def run_context(run: RunFolder, splits: MnistSplits | None, models: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the run template shows, computed from the run folder (plus what is in memory)."""
    from mnist_cnn.predict.inference import predict_probabilities

    config: ExperimentConfig = run.config()
    record = run.read_record()
    status = run.read_status()
    notes: list[str] = []
    if splits is None:
        try:
            splits = load_mnist(config.data, config.validation_size, config.limit)
        except UserError as error:
            notes.append(f"The data could not be loaded ({error}): no samples, confusion matrices or predictions.")
    sections = [
        read_model_section(spec, run.model(spec.name), (models or {}).get(spec.name)) for spec in config.model_specs()
    ]
    finished = {section.spec.name: section.metrics for section in sections if section.metrics is not None}
    histories = {section.spec.name: section.history for section in sections if section.history is not None}
    comparison = Comparison.of(finished) if finished else None
    names = [spec.name for spec in config.model_specs()]

    model_views = []
    test_probabilities: dict[str, np.ndarray] = {}
    for position, section in enumerate(sections):
        view: dict[str, Any] = {
            "name": section.spec.name,
            "network": section.spec.network().describe(),
            "missing": section.missing,
            "layers": layer_table(architecture(section)),
            "parameters": int(architecture(section).count_params()),
            "curves": (
                curves_figure({section.spec.name: section.history}, colors=(COLORS[position % len(COLORS)],))
                if section.history
                else None
            ),
            "confusion": None,
        }
        if section.model is not None and splits is not None:
            probabilities = predict_probabilities(section.model, splits.X_test)
            test_probabilities[section.spec.name] = probabilities
            counts = confusion_matrix(splits.y_test, probabilities.argmax(axis=1))
            gallery, wrong = mistakes_figure(section.spec.name, splits.X_test, splits.y_test, probabilities)
            view.update(
                confusion=confusion_figure(section.spec.name, counts),
                scores=per_digit_scores(counts),
                gallery=gallery,
                wrong=wrong,
                test_images=len(splits.y_test),
            )
        model_views.append(view)

    predictions = prediction_items(run, splits, test_probabilities)

    return {
        "title": f"mnist-cnn run {run.path.name}",
        "heading": f"{' vs '.join(names)} on MNIST",
        "architecture": architecture_sentences(config.model_specs()),
        "run_path": str(run.path),
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "version": version_text(),
        "config": config,
        "status": status,
        "environment": record.get("environment", {}),
        "trainer": record.get("trainer_used", "not recorded"),
        "notes": notes,
        "data": None
        if splits is None
        else {"sizes": splits.sizes(), "source": splits.source, "samples": sample_grid(splits)},
        "models": model_views,
        "overlay": curves_figure(histories) if len(histories) > 1 else None,
        "table_rows": comparison_rows(comparison),
        "table_models": list(finished),
        "ratios": comparison.second_vs_first if comparison else None,
        # The comparison section exists for a run of several models only.
        "comparison_title": " vs ".join(names) if len(names) > 1 else None,
        "comparison_waiting": comparison_waiting(names, list(finished)),
        "comparison_note": (
            f"Ratios compare a pair of models; this run has {len(names)}: the table above sets them side by side."
            if len(names) > 2
            else None
        ),
        "predictions": predictions,
        "resumed": {
            name: metrics.resumed_from_epoch for name, metrics in finished.items() if metrics.resumed_from_epoch
        },
    }


def prediction_items(
    run: RunFolder, splits: MnistSplits | None, test_probabilities: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """X_test[0..2] with every model's probabilities; without the models, what predictions.json kept."""
    if splits is None:
        return []
    note = ""
    if test_probabilities:
        per_image = {
            index: {name: values[index] for name, values in test_probabilities.items()}
            for index in PREDICTION_INDICES
            if index < len(splits.X_test)
        }
    else:
        try:
            stored = run.read_predictions()
        except UserError:
            return []
        per_image = {}
        for position, index in enumerate(stored.indices):
            per_image[index] = {}
            for name, answers in stored.predictions.items():
                values = np.zeros(10)
                for digit, probability in answers[position].top:
                    values[digit] = probability
                per_image[index][name] = values
        note = "From the predictions the run saved (its models are not in this folder): each model's top 3 digits only."
    return [
        {
            "index": index,
            "true": int(splits.y_test[index]),
            "answers": [
                {"model": name, "digit": int(values.argmax()), "probability": float(values.max())}
                for name, values in per_model.items()
            ],
            "figure": prediction_figure(splits.X_test[index], int(splits.y_test[index]), per_model),
            "note": note,
        }
        for index, per_model in per_image.items()
    ]


def comparison_rows(comparison: Comparison | None) -> list[Row]:
    """The test-evaluation table: the one table of measures, a column per finished model."""
    return metrics_rows(list(comparison.models.values())) if comparison is not None else []


def comparison_waiting(names: list[str], finished: list[str]) -> str | None:
    """For a run of several models, the ones the comparison still waits for (None when none)."""
    waiting = [name for name in names if name not in finished]
    if len(names) < 2 or not waiting:
        return None
    verb = "has" if len(waiting) == 1 else "have"
    return f"{', '.join(waiting)} {verb} not finished: the comparison needs every model of the run."


def architecture_sentences(specs: list[ModelSpec]) -> list[str]:
    """The networks of the run's models, from their layer lists (core.network): one sentence for the
    network they share and one for the filters of each when only the first convolution's filters
    differ (Model_A and Model_B), else one description per model."""

    def extras(spec: ModelSpec) -> str:
        """What a variant sets beyond its layers: its own optimizer, augmentation."""
        parts = []
        if spec.optimizer or spec.learning_rate:
            rate = spec.learning_rate or "of the run"
            parts.append(f"optimizer {spec.optimizer or 'of the run'} (learning rate {rate})")
        if spec.augment:
            parts.append("trained on augmented images")
        return f" ({', '.join(parts)})" if parts else ""

    def shared_shape(spec: ModelSpec) -> tuple | None:
        first, *rest = spec.network().layers
        return (dataclasses.replace(first, filters=0), *rest) if isinstance(first, net.Conv) else None

    shapes = {shared_shape(spec) for spec in specs}
    if len(shapes) == 1 and None not in shapes:
        (layers,) = shapes
        first = layers[0]
        described = [f"Conv2D(filters) {first.kernel}×{first.kernel}", *map(net.describe_layer, layers[1:])]
        filters = [f"{spec.name} {spec.network().layers[0].filters}{extras(spec)}" for spec in specs]
        filters[0] = f"{specs[0].name} has {specs[0].network().layers[0].filters} filters{extras(specs[0])}"
        return [f"One network: {' → '.join(described)}.", ", ".join(filters) + "."]
    return ["; ".join(f"{spec.name}: {spec.network().describe()}{extras(spec)}" for spec in specs) + "."]


def write_run_report(
    run_dir: str | Path, splits: MnistSplits | None = None, models: dict[str, Any] | None = None
) -> Path:
    """Write ``report.html`` into a run folder; ``splits`` and ``models`` spare reloading them."""
    run = RunFolder.existing(run_dir)
    html = template_environment().get_template("run.html.j2").render(**run_context(run, splits, models))
    write_text(run.report_path, html)
    return run.report_path

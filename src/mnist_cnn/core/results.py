"""Typed results that cross module boundaries, each with one ``to_json`` and one ``from_json``.

What a run writes (metrics.json, predictions.json, comparison.json, the checkpoint's state)
is built, read and printed through these classes instead of dicts read by string keys, so
a renamed field fails in one place. The JSON layout is the one runs have always written:
old run folders still load. Readers raise ``ValueError`` on a malformed document; the
run-folder module turns that into an error naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

import numpy as np

# One row of history.csv and of the checkpoint's history.
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
HistoryRow = dict[str, float]


def history_row(row: dict[str, Any]) -> HistoryRow:
    """A history row read back from CSV or JSON: the epoch an int, the rest floats."""
    missing = [field for field in HISTORY_FIELDS if field not in row]
    if missing:
        raise ValueError(f"history row lacks {missing}")
    try:
        return {field: int(float(row[field])) if field == "epoch" else float(row[field]) for field in HISTORY_FIELDS}
    except (TypeError, ValueError):  # float(None), float("abc"): not a number.
        raise ValueError(f"history row has a value that is not a number: {row}") from None


def _fields_of(cls: type, document: Any, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document's values for ``cls``'s fields; ValueError when it is not such a document."""
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object for {cls.__name__}, got {type(document).__name__}")
    names = [field.name for field in dataclasses.fields(cls)]
    missing = [name for name in names if name not in document and name not in optional]
    if missing:
        raise ValueError(f"{cls.__name__} lacks {missing}")
    return {name: document[name] for name in names if name in document}


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One model's answer for one image: the digit, its probability, the top 3 (and all 10)."""

    digit: int
    probability: float
    top: tuple[tuple[int, float], ...]
    probabilities: tuple[float, ...] | None = None

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, top: int = 3, keep_all: bool = False) -> Prediction:
        # In Python on a list of ten: a server builds one per model per request, and NumPy's
        # argsort and scalar conversions cost several times more at this size. The order is
        # np.argsort(...)[::-1]'s: by probability, a tie to the higher digit.
        values = np.asarray(probabilities).tolist()
        order = sorted(range(len(values)), key=lambda digit: (values[digit], digit), reverse=True)[:top]
        return cls(
            digit=order[0],
            probability=values[order[0]],
            top=tuple((digit, values[digit]) for digit in order),
            probabilities=tuple(values) if keep_all else None,
        )

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "digit": self.digit,
            "probability": self.probability,
            "top": [{"digit": digit, "probability": probability} for digit, probability in self.top],
        }
        if self.probabilities is not None:
            document["probabilities"] = list(self.probabilities)
        return document

    @classmethod
    def from_json(cls, document: Any) -> Prediction:
        values = _fields_of(cls, document, optional=("probabilities",))
        try:
            top = tuple((int(item["digit"]), float(item["probability"])) for item in values["top"])
        except (KeyError, TypeError):
            raise ValueError("prediction's top list is malformed") from None
        probabilities = values.get("probabilities")
        return cls(
            digit=int(values["digit"]),
            probability=float(values["probability"]),
            top=top,
            probabilities=tuple(float(value) for value in probabilities) if probabilities is not None else None,
        )

    def describe(self) -> str:
        """'7 (99.9%); top 3: 7 99.9%, 3 0.1%, 2 0.0%': how the CLI prints an answer."""
        top = ", ".join(f"{digit} {probability:.1%}" for digit, probability in self.top)
        return f"{self.digit} ({self.probability:.1%}); top {len(self.top)}: {top}"


@dataclasses.dataclass(frozen=True)
class PredictionsOnTestImages:
    """Every model's answers for X_test[i], i in ``indices`` (predictions.json)."""

    indices: list[int]
    true_labels: list[int]
    predictions: dict[str, list[Prediction]]

    def to_json(self) -> dict[str, Any]:
        return {
            "indices": list(self.indices),
            "true_labels": list(self.true_labels),
            "predictions": {
                name: [answer.to_json() for answer in answers] for name, answers in self.predictions.items()
            },
        }

    @classmethod
    def from_json(cls, document: Any) -> PredictionsOnTestImages:
        values = _fields_of(cls, document)
        if not isinstance(values["predictions"], dict):
            raise ValueError("predictions must map model names to lists of answers")
        return cls(
            indices=[int(index) for index in values["indices"]],
            true_labels=[int(label) for label in values["true_labels"]],
            predictions={
                name: [Prediction.from_json(answer) for answer in answers]
                for name, answers in values["predictions"].items()
            },
        )


@dataclasses.dataclass(frozen=True)
class ModelMetrics:
    """A trained model's test results, training times and inference times (metrics.json)."""

    model: str
    parameters: int
    test_loss: float
    test_accuracy: float
    best_val_accuracy: float
    best_val_epoch: int
    epochs: int
    training_seconds: float
    seconds_per_epoch: list[float]
    seconds_per_epoch_median: float
    first_epoch_seconds: float
    resumed_from_epoch: int | None
    inference_ms_per_image_batched: float
    inference_ms_single_image: float

    @classmethod
    def from_training(
        cls,
        model_name: str,
        parameters: int,
        history: list[HistoryRow],
        training_seconds: float,
        resumed_from_epoch: int | None,
        test: dict[str, float],
        inference: dict[str, float],
    ) -> ModelMetrics:
        """Summarise one model's history with its test and inference measurements."""
        epoch_seconds = [row["seconds"] for row in history]
        best = max(history, key=lambda row: row["val_accuracy"])
        return cls(
            model=model_name,
            parameters=parameters,
            test_loss=test["test_loss"],
            test_accuracy=test["test_accuracy"],
            best_val_accuracy=best["val_accuracy"],
            best_val_epoch=int(best["epoch"]),
            epochs=len(history),
            training_seconds=training_seconds,
            seconds_per_epoch=epoch_seconds,
            # The first epoch includes compiling the step: a 2-epoch run's median would be half compile time.
            seconds_per_epoch_median=statistics.median(epoch_seconds[1:] or epoch_seconds),
            first_epoch_seconds=epoch_seconds[0],
            resumed_from_epoch=resumed_from_epoch,
            inference_ms_per_image_batched=inference["inference_ms_per_image_batched"],
            inference_ms_single_image=inference["inference_ms_single_image"],
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: Any) -> ModelMetrics:
        values = _fields_of(cls, document, optional=("resumed_from_epoch",))
        values.setdefault("resumed_from_epoch", None)
        number_fields = [
            name for name, value in values.items() if name not in ("model", "seconds_per_epoch", "resumed_from_epoch")
        ]
        for name in number_fields:
            if (
                not isinstance(values[name], (int, float))
                or isinstance(values[name], bool)
                or not math.isfinite(values[name])
            ):
                raise ValueError(f"{name} must be a number, got {values[name]!r}")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class PairRatios:
    """The second model against the first: what the specification's comparison asks."""

    first: str
    second: str
    training_time_ratio: float
    seconds_per_epoch_ratio: float
    inference_time_ratio: float
    test_accuracy_difference: float
    parameter_ratio: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The run's models side by side (comparison.json): each one's metrics; for a pair, second/first ratios."""

    models: dict[str, ModelMetrics]
    second_vs_first: PairRatios | None = None

    @classmethod
    def of(cls, metrics: dict[str, ModelMetrics]) -> Comparison:
        names = list(metrics)
        if len(names) != 2:
            return cls(models=dict(metrics))
        first, second = metrics[names[0]], metrics[names[1]]
        ratios = PairRatios(
            first=names[0],
            second=names[1],
            training_time_ratio=second.training_seconds / first.training_seconds,
            seconds_per_epoch_ratio=second.seconds_per_epoch_median / first.seconds_per_epoch_median,
            inference_time_ratio=second.inference_ms_per_image_batched / first.inference_ms_per_image_batched,
            test_accuracy_difference=second.test_accuracy - first.test_accuracy,
            parameter_ratio=second.parameters / first.parameters,
        )
        return cls(models=dict(metrics), second_vs_first=ratios)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"models": {name: metrics.to_json() for name, metrics in self.models.items()}}
        if self.second_vs_first is not None:
            document["second_vs_first"] = dataclasses.asdict(self.second_vs_first)
        return document

    @classmethod
    def from_json(cls, document: Any) -> Comparison:
        values = _fields_of(cls, document, optional=("second_vs_first",))
        if not isinstance(values["models"], dict):
            raise ValueError("models must map model names to metrics")
        ratios = values.get("second_vs_first")
        return cls(
            models={name: ModelMetrics.from_json(metrics) for name, metrics in values["models"].items()},
            second_vs_first=PairRatios(**_fields_of(PairRatios, ratios)) if ratios is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """Where a model's training stands after an epoch: what a checkpoint holds besides arrays."""

    epochs_done: int
    history: list[HistoryRow]
    training_seconds: float
    seed: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: Any) -> CheckpointState:
        values = _fields_of(cls, document)
        if not isinstance(values["history"], list):
            raise ValueError("checkpoint history must be a list")
        history = [history_row(row) for row in values["history"]]
        if int(values["epochs_done"]) != len(history):
            raise ValueError(
                f"checkpoint says {values['epochs_done']} epochs done but holds {len(history)} history rows"
            )
        return cls(
            epochs_done=int(values["epochs_done"]),
            history=history,
            training_seconds=float(values["training_seconds"]),
            seed=int(values["seed"]),
        )

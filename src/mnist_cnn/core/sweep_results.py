"""A sweep's statistics (statistics.json) as typed records, each with one ``to_json`` and one ``from_json``.

``report.sweep.compute_statistics`` builds a ``SweepStatistics`` from the seed folders;
statistics.md, the sweep's report.html and the tests read its fields instead of string keys
five levels deep. The JSON layout is the one sweeps have always written: an old
statistics.json loads, and writes back byte for byte the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mnist_cnn.core.config import ExperimentConfig
from mnist_cnn.core.stats import (
    PairedDifference,
    RatioSummary,
    Summary,
    json_integer,
    json_number,
    json_object,
)


def _mapping(kind: str, document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ValueError(f"{kind} must be a JSON object, got {type(document).__name__}")
    return document


def _integers(kind: str, document: Any) -> tuple[int, ...]:
    if not isinstance(document, list):
        raise ValueError(f"{kind} must be a list of seeds, got {document!r}")
    return tuple(json_integer(value) for value in document)


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """Where one seed's trial ran; a trial taken up again elsewhere names every host and CPU."""

    seed: int
    host: str | None
    node_ip: str | None
    node_id: str | None
    cpu: str | None
    tasks: int
    cpus_reserved: int | None
    wall_seconds: float | None
    backend: str | None
    libraries: dict[str, str]
    resumed: bool

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "libraries": dict(self.libraries)}

    @classmethod
    def from_json(cls, document: Any) -> TrialRecord:
        # Copied from trial.json as it was written: kept as read, so it writes back the same.
        values = json_object(cls.__name__, document, [field.name for field in dataclasses.fields(cls)])
        values["seed"] = json_integer(values["seed"])
        values["libraries"] = dict(_mapping("libraries", values["libraries"]))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """The second model against the first, seed by seed: differences, time ratios, power, verdicts."""

    first: str
    second: str
    differences: dict[str, PairedDifference]  # By measure (a ModelMetrics field): second - first.
    ratios: dict[str, RatioSummary]  # By measure: second / first.
    detectable_difference: float
    seeds_needed: int | None  # Seeds needed to detect ``detectable_difference``; None when unknown.
    verdict: str
    time_verdict: str

    def to_json(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "differences": {field: difference.to_json() for field, difference in self.differences.items()},
            "ratios": {field: ratio.to_json() for field, ratio in self.ratios.items()},
            "detectable_difference": self.detectable_difference,
            "seeds_needed_for_detectable_difference": self.seeds_needed,
            "verdict": self.verdict,
            "time_verdict": self.time_verdict,
        }

    @classmethod
    def from_json(cls, document: Any) -> PairedComparison:
        keys = ("first", "second", "differences", "ratios", "detectable_difference")
        texts = ("seeds_needed_for_detectable_difference", "verdict", "time_verdict")
        values = json_object(cls.__name__, document, keys + texts)
        return cls(
            first=str(values["first"]),
            second=str(values["second"]),
            differences={
                field: PairedDifference.from_json(difference)
                for field, difference in _mapping("differences", values["differences"]).items()
            },
            ratios={
                field: RatioSummary.from_json(ratio) for field, ratio in _mapping("ratios", values["ratios"]).items()
            },
            detectable_difference=json_number(values["detectable_difference"]),
            seeds_needed=json_integer(values["seeds_needed_for_detectable_difference"], optional=True),
            verdict=str(values["verdict"]),
            time_verdict=str(values["time_verdict"]),
        )


@dataclasses.dataclass(frozen=True)
class SweepStatistics:
    """statistics.json: per-model summaries over the finished seeds, the paired comparison, the trials."""

    seeds_requested: tuple[int, ...]
    seeds_finished: tuple[int, ...]
    experiment: ExperimentConfig  # The settings every seed ran with (its own seed aside: written as null).
    models: dict[str, dict[str, Summary]]  # Model name -> measure (a ModelMetrics field) -> summary over seeds.
    trials: tuple[TrialRecord, ...]  # One per finished seed, in seed order.
    # Every other model against the baseline (the first), with at least two finished seeds.
    comparisons: tuple[PairedComparison, ...] = ()

    def __post_init__(self) -> None:
        # Each seed set its own: the experiment's seed means nothing here (as in SweepConfig).
        object.__setattr__(self, "experiment", dataclasses.replace(self.experiment, seed=0))

    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    @property
    def comparison(self) -> PairedComparison | None:
        """The one comparison of a two-model sweep (the specification's A vs B); None otherwise."""
        return self.comparisons[0] if len(self.comparisons) == 1 else None

    @property
    def baseline(self) -> str | None:
        return self.comparisons[0].first if self.comparisons else None

    def values(self, model: str, field: str) -> tuple[float, ...]:
        """Each finished seed's value of ``field`` for ``model``, in seed order."""
        return self.models[model][field].values

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "seeds_requested": list(self.seeds_requested),
            "seeds_finished": list(self.seeds_finished),
            "experiment": {**self.experiment.to_dict(), "seed": None},
            "models": {
                name: {field: summary.to_json() for field, summary in summaries.items()}
                for name, summaries in self.models.items()
            },
            "trials": [trial.to_json() for trial in self.trials],
        }
        if len(self.comparisons) == 1:  # Two models: the layout sweeps have always written.
            document["comparison"] = self.comparisons[0].to_json()
        elif self.comparisons:
            document["baseline"] = self.baseline
            document["comparisons"] = [comparison.to_json() for comparison in self.comparisons]
        return document

    @classmethod
    def from_json(cls, document: Any) -> SweepStatistics:
        keys = ("seeds_requested", "seeds_finished", "experiment", "models", "trials")
        values = json_object(cls.__name__, document, keys)
        experiment = _mapping("experiment", values["experiment"])
        try:
            config = ExperimentConfig.from_dict({**experiment, "seed": 0})
        except TypeError as error:  # A setting of the wrong type: the dataclass refuses it.
            raise ValueError(f"the experiment's settings are malformed ({error})") from None
        if not isinstance(values["trials"], list):
            raise ValueError("trials must be a list")
        comparisons = [document["comparison"]] if "comparison" in document else document.get("comparisons", [])
        if not isinstance(comparisons, list):
            raise ValueError("comparisons must be a list")
        return cls(
            seeds_requested=_integers("seeds_requested", values["seeds_requested"]),
            seeds_finished=_integers("seeds_finished", values["seeds_finished"]),
            experiment=config,
            models={
                name: {field: Summary.from_json(summary) for field, summary in _mapping(name, summaries).items()}
                for name, summaries in _mapping("models", values["models"]).items()
            },
            trials=tuple(TrialRecord.from_json(trial) for trial in values["trials"]),
            comparisons=tuple(PairedComparison.from_json(comparison) for comparison in comparisons),
        )

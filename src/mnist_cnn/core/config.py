"""What an experiment runs: the defaults of the specification, and the named model variants.

Like flax's examples, variants override only what differs: Model_A and Model_B are the
same builder with a different number of convolution filters.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

from mnist_cnn.core.errors import ConfigError, RunFolderError
from mnist_cnn.core.network import INPUT_SHAPE, Network, family_layers, parse_network

# The backend measured fastest for the whole seed protocol on the reference machine
# (2-core CPU): see README "Choosing the Keras backend" and docs/performance.md.
DEFAULT_BACKEND = "jax"
BACKENDS = ("tensorflow", "jax", "torch")
# Where training runs (--device; core.environment checks and selects it): a GPU JAX sees, else the CPU.
DEVICES = ("auto", "cpu", "gpu")
# adadelta: pytorch/examples' mnist optimizer (examples/anchors.toml).
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adadelta")
# "fused": the compiled JAX training step of fused.py (JAX backend only); "keras": model.fit;
# "auto": fused on JAX, model.fit on the other backends.
TRAINERS = ("auto", "fused", "keras")
# Evaluation and inference are forward passes only: big batches make them cheap without
# changing their results. One constant for validation, test evaluation and timing.
EVALUATION_BATCH_SIZE = 1000
# The specification's last step: every model's prediction for X_test[0], X_test[1], X_test[2].
PREDICTION_INDICES = (0, 1, 2)
# compare --seeds: CPUs each trial reserves. Measured on the reference machine (2 cores,
# README "Is Model_B better than Model_A?"): two 1-thread trials side by side finish more
# seeds per hour than one 2-thread trial.
DEFAULT_CPUS_PER_TRIAL = 1

# Which is the ink in a user's image (predict.preprocess): guessed from the image ("auto"), or
# said by whoever knows it. The guess takes the border for the paper; a drawing whose stroke
# runs along a whole edge (the bar of a 7 at the very top of the pad) fools it, and the pad,
# which knows its own colours, says so.
POLARITIES = ("auto", "light-on-dark", "dark-on-light")


# The fields that write the specification's family in short (core.network.family_layers).
FAMILY_FIELDS = ("filters", "kernel_size", "dense_units", "dropout")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named variant of the CNN: its network, and how it trains when that differs from the run.

    The network is a list of layers (``layers``, core.network), the only statement of it: the
    Keras builder (train.models), the fused trainer (train.fused), the parameter count and every
    description read ``network()``. The specification's family has a short form instead of a
    list: ``filters``, ``kernel_size``, ``dense_units`` and ``dropout`` expand to Conv2D(filters,
    k x k, 'valid', ReLU) -> MaxPooling 2x2 -> Flatten -> Dense(units, ReLU)... (Dropout after the
    pooling and each hidden Dense layer), and Model_A is ``filters=32`` with the defaults. A spec
    has one form or the other; each reads back unchanged from config.json.
    """

    key: str
    name: str
    filters: int | None = None
    kernel_size: int = 3
    dense_units: tuple[int, ...] = (200, 100)
    # Dropout rate after the pooling and after each hidden Dense layer; 0: none (the specification).
    dropout: float = 0.0
    # The variant's own optimizer and learning rate; None: the run's (--optimizer, --learning-rate).
    optimizer: str | None = None
    learning_rate: float | None = None
    # The network as a list of layers ("conv 32 3", "pool 2", ...): core.network's syntax.
    layers: tuple[str, ...] = ()
    # Train this variant on augmented images (--augment's defaults) whatever the run says.
    augment: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense_units", tuple(self.dense_units))
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.key or not self.key.replace("_", "").isalnum() or self.key != self.key.upper():
            raise ConfigError(f"variant key {self.key!r} must be capital letters, digits and _ (e.g. F16)")
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            # The name is a folder of the run and a Keras model name: no spaces, no slashes.
            raise ConfigError(f"variant name {self.name!r} must be letters, digits, _, - and . (e.g. Model_A_dropout)")
        if self.layers:
            stated = [name for name in FAMILY_FIELDS if getattr(self, name) != _FAMILY_DEFAULTS[name]]
            if stated:
                raise ConfigError(
                    f"{self.name}: {stated[0]} and layers both state the network: write the network as layers only"
                )
        else:
            self._check_family()
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{self.name}: optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.learning_rate is not None and (
            not isinstance(self.learning_rate, (int, float)) or isinstance(self.learning_rate, bool)
            or not self.learning_rate > 0
        ):  # fmt: skip
            raise ConfigError(f"{self.name}: learning_rate must be a positive number, got {self.learning_rate!r}")
        if not isinstance(self.augment, bool):
            raise ConfigError(f"{self.name}: augment must be true or false, got {self.augment!r}")
        self.network()  # A layer that cannot be built is refused now, before anything loads.

    def _check_family(self) -> None:
        if self.filters is None:
            raise ConfigError(f"{self.name}: a variant states its network: give layers = [...] or filters")
        if not _is_whole(self.filters) or self.filters < 1:
            raise ConfigError(f"{self.name}: filters must be a whole number of at least 1, got {self.filters!r}")
        largest_kernel = INPUT_SHAPE[0] - 1  # The 2x2 pooling needs a convolution output of at least 2x2.
        if not _is_whole(self.kernel_size) or not 1 <= self.kernel_size <= largest_kernel:
            raise ConfigError(
                f"{self.name}: kernel_size must be a whole number from 1 to {largest_kernel} on 28x28 images, "
                f"got {self.kernel_size!r}"
            )
        if any(not _is_whole(units) or units < 1 for units in self.dense_units):
            raise ConfigError(f"{self.name}: dense_units must be whole numbers of at least 1, got {self.dense_units}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"{self.name}: dropout must be a rate from 0 to below 1, got {self.dropout!r}")

    def layer_list(self) -> tuple[str, ...]:
        """The network as a list of layers: ``layers``, or the family fields expanded."""
        if self.layers:
            return self.layers
        return family_layers(self.filters, self.kernel_size, self.dense_units, self.dropout)

    def network(self) -> Network:
        """The parsed, checked network (core.network): layers, shapes, names, parameter count."""
        return _parsed_network(self.layer_list())

    def parameter_count(self) -> int:
        """Every parameter of the built model, as ``model.count_params()`` counts them (no Keras needed)."""
        return self.network().parameter_count()

    def changes(self) -> dict[str, Any]:
        """The fields that differ from Model_A's (the specification's), by name: what a variant states."""
        reference = ModelSpec(key="A", name="Model_A", filters=32)
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("key", "name") and getattr(self, field.name) != getattr(reference, field.name)
            and not (self.layers and field.name == "filters")
        }  # fmt: skip

    def describe(self) -> str:
        """'filters=16, dropout=0.5': what differs from Model_A, or 'the specification's Model_A'; a
        network stated as layers is described layer by layer."""
        changes = self.changes()
        if not changes:
            return "the specification's Model_A"
        if self.layers:
            changes.pop("layers")
            network = self.network().describe()
            return network + (f"; {_changes_text(changes)}" if changes else "")
        return _changes_text(changes)

    def to_json(self) -> dict[str, Any]:
        """What config.json records: the family fields, or the layers (never both), and what else is set."""
        values = {**dataclasses.asdict(self), "dense_units": list(self.dense_units), "layers": list(self.layers)}
        if self.layers:
            for name in FAMILY_FIELDS:
                del values[name]
        else:
            del values["layers"]  # A family spec keeps the config.json layout it always had.
        if not self.augment:
            del values["augment"]
        return values

    @classmethod
    def from_json(cls, document: Any) -> ModelSpec:
        """A spec from config.json (or a variants file's table): ConfigError naming a bad field."""
        if not isinstance(document, dict):
            raise ConfigError(f"a variant must be a table of fields, got {document!r}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            fields = ", ".join(sorted(known - {"key"}))
            raise ConfigError(f"unknown variant field {unknown[0]!r}: the fields are {fields}")
        values = dict(document)
        for name, example in (("dense_units", "[200, 100]"), ("layers", '["conv 32 3", "pool 2", "flatten"]')):
            if name in values:
                if not isinstance(values[name], (list, tuple)):
                    raise ConfigError(f"{name} must be a list such as {example}, got {values[name]!r}")
                values[name] = tuple(values[name])
        if "layers" in values:
            parse_network(values["layers"])  # Its own error first: it names the layer.
        try:
            return cls(**values)
        except TypeError as error:  # A missing field (key, name): the dataclass says which.
            raise ConfigError(f"a variant lacks a field ({error})") from None

    @property
    def pooled_size(self) -> int:
        """Side of the feature map after the first convolution and its pooling (13 for Model_A)."""
        return self.network().shapes[1][0]


_FAMILY_DEFAULTS = {"filters": None, "kernel_size": 3, "dense_units": (200, 100), "dropout": 0.0}


@functools.lru_cache(maxsize=256)
def _parsed_network(layers: tuple[str, ...]) -> Network:
    return parse_network(layers)


def _changes_text(changes: dict[str, Any]) -> str:
    shown = {name: ",".join(map(str, value)) if isinstance(value, tuple) else value for name, value in changes.items()}
    return ", ".join(f"{name}={value}" for name, value in shown.items())


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MODEL_VARIANTS: dict[str, ModelSpec] = {
    "A": ModelSpec(key="A", name="Model_A", filters=32),
    "B": ModelSpec(key="B", name="Model_B", filters=64),
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How strongly ``--augment`` redraws each training image (augment.py); every field a range.

    The defaults keep a digit a readable digit: a slant of 0.25 is about 14 degrees, an
    elastic displacement of 2 pixels bends a stroke without breaking it.
    """

    rotation_degrees: float = 12.0  # Rotated by up to this many degrees either way.
    scale: float = 0.12  # Scaled by a factor in [1 - scale, 1 + scale].
    shift_pixels: float = 2.0  # Moved by up to this many pixels along each axis.
    shear: float = 0.25  # Slanted: columns shift by up to this fraction of the row distance.
    elastic_alpha: float = 2.0  # Elastic distortion: displacement of up to this many pixels,
    elastic_sigma: float = 3.0  # smoothed by a Gaussian of this width (pixels).
    thickness_probability: float = 0.4  # Share of images with a thicker (half) or thinner (half) stroke.
    blur_probability: float = 0.3  # Share of images blurred, by a Gaussian of width 0.5 to blur_sigma.
    blur_sigma: float = 1.0
    contrast: float = 0.3  # Ink scaled by a factor in [1 - contrast, 1].
    noise: float = 0.05  # Gaussian noise of standard deviation up to this.

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ConfigError(f"augmentation {field.name} must be 0 or more, got {getattr(self, field.name)}")
        if self.scale >= 1 or self.thickness_probability > 1 or self.blur_probability > 1 or self.contrast > 1:
            raise ConfigError("augmentation scale must be below 1 and probabilities and contrast at most 1")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run; saved to config.json so a run can be reproduced and reloaded."""

    models: tuple[str, ...] = ("A", "B")
    epochs: int = 60
    batch_size: int = 32
    seed: int = 42
    data: str = "auto"
    limit: int | None = None
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    validation_size: int = 6000
    # Steps run per call of the compiled train function. It changes nothing in the maths
    # (same batches, same order, same updates) and cuts per-step overhead.
    steps_per_execution: int = 64
    # None: whatever backend Keras runs in this process. A run binds it (``for_backend``)
    # before training, so config.json always names the backend that really ran.
    backend: str | None = None
    trainer: str = "auto"
    # None: the specification's protocol, training images as they are. --augment sets the defaults.
    augmentation: Augmentation | None = None
    # Variants beyond the built-in ones that ``models`` names (from --variants FILE or --variant):
    # recorded whole in config.json, so the run folder rebuilds its models without the file.
    variants: tuple[ModelSpec, ...] = ()

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["models"] = list(self.models)
        values["variants"] = [spec.to_json() for spec in self.variants]
        if not self.variants:
            del values["variants"]  # Runs without variants keep the config.json layout of before.
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"config has unknown settings {unknown}; it was written by a newer "
                "mnist-cnn: upgrade mnist-cnn to read it"
            )
        values = dict(values)
        if "models" in values:
            values["models"] = tuple(values["models"])
        if isinstance(values.get("augmentation"), dict):
            values["augmentation"] = Augmentation(**values["augmentation"])
        if "variants" in values:
            values["variants"] = tuple(ModelSpec.from_json(document) for document in values["variants"])
        return cls(**values)

    def for_backend(self, backend: str) -> ExperimentConfig:
        """This config bound to the backend Keras actually runs; a clear error if it cannot be.

        Keras fixes its backend when first imported, so a config that names another one, or
        a trainer that does not fit it, is refused here, before any data is loaded.
        """
        if self.backend is not None and self.backend != backend:
            raise ConfigError(
                f"this run is for the {self.backend} backend but Keras is running {backend}: "
                f"use --backend {self.backend} (or set KERAS_BACKEND={self.backend} before Keras is imported)"
            )
        return dataclasses.replace(self, backend=backend)

    def known_variants(self) -> dict[str, ModelSpec]:
        """The built-in variants and this config's own, by key."""
        return {**MODEL_VARIANTS, **{spec.key: spec for spec in self.variants}}

    def model_specs(self) -> list[ModelSpec]:
        known = self.known_variants()
        return [known[key] for key in self.models]

    def augmentation_for(self, spec: ModelSpec) -> Augmentation | None:
        """How ``spec``'s training images are redrawn: the run's --augment, or the variant's own ``augment``."""
        if self.augmentation is None and spec.augment:
            return Augmentation()
        return self.augmentation


def validate_config(config: ExperimentConfig) -> None:
    """Raise ConfigError with a message a user can act on when a setting is out of range."""
    if not config.models:
        raise ConfigError("no models chosen: use --models A, B or A,B")
    keys = [spec.key for spec in config.variants]
    for key in keys:
        if key in MODEL_VARIANTS:
            raise ConfigError(f"variant {key!r} clashes with the built-in Model_{key}: give it another key")
        if keys.count(key) > 1:
            raise ConfigError(f"variant {key!r} is defined twice")
    known = config.known_variants()
    for key in config.models:
        if key not in known:
            raise ConfigError(
                f"unknown model {key!r}: choose from {', '.join(known)} (e.g. --models A,B), "
                "or define it with --variants FILE or --variant"
            )
    if len(set(config.models)) != len(config.models):
        raise ConfigError(f"a model is named twice in --models {','.join(config.models)}")
    _require_positive("epochs", config.epochs)
    _require_positive("batch size", config.batch_size)
    _require_positive("steps per execution", config.steps_per_execution)
    if config.limit is not None:
        _require_positive("limit", config.limit)
    if not 0 < config.validation_size < 60000:
        raise ConfigError(f"validation size must be between 1 and 59999, got {config.validation_size}")
    if config.seed < 0:
        raise ConfigError(f"seed must be 0 or more, got {config.seed}")
    if not config.learning_rate > 0:
        raise ConfigError(f"learning rate must be positive, got {config.learning_rate}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
    if config.trainer not in TRAINERS:
        raise ConfigError(f"unknown trainer {config.trainer!r}: choose from {', '.join(TRAINERS)}")
    if config.backend is not None and config.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {config.backend!r}: choose from {', '.join(BACKENDS)}")


def _require_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value}")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs: one experiment config, repeated for each seed (its own seed ignored)."""

    experiment: ExperimentConfig
    seeds: tuple[int, ...]
    # The model every other one is compared with, seed by seed (a key); None: the first in --models.
    baseline: str | None = None

    def __post_init__(self) -> None:
        if self.baseline is not None and self.baseline not in self.experiment.models:
            raise ConfigError(
                f"baseline {self.baseline!r} is not one of the compared models ({','.join(self.experiment.models)}): "
                "add it to --models"
            )
        # Each trial sets its own seed: the experiment's one means nothing here, so it is fixed
        # at 0 and two sweeps with the same settings compare equal.
        object.__setattr__(self, "experiment", dataclasses.replace(self.experiment, seed=0))
        if not self.seeds:
            raise ConfigError(
                "no seeds: at least 1 seed is needed (2 or more to compare models); use --seeds N (seeds 0 to N-1) "
                "or a list such as --seeds 3,7,11"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"a seed is named twice in --seeds {','.join(map(str, self.seeds))}")
        if min(self.seeds) < 0:
            raise ConfigError(f"seeds must be 0 or more, got {min(self.seeds)}")
        if len(self.experiment.models) > 1 and len(self.seeds) < 2:
            raise ConfigError(
                "comparing models needs at least 2 seeds to measure seed-to-seed noise; use --seeds 2 or more "
                "(5 or more for a useful answer)"
            )

    def for_seed(self, seed: int) -> ExperimentConfig:
        return dataclasses.replace(self.experiment, seed=seed)

    def baseline_name(self) -> str:
        """The baseline model's name (the first model's unless --baseline chose another)."""
        known = self.experiment.known_variants()
        return known[self.baseline or self.experiment.models[0]].name

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "experiment": {**self.experiment.to_dict(), "seed": None},
            "seeds": list(self.seeds),
        }
        if self.baseline is not None:  # Sweeps with the default baseline keep sweep.json's old layout.
            document["baseline"] = self.baseline
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> SweepConfig:
        try:
            experiment = ExperimentConfig.from_dict({**document["experiment"], "seed": 0})
            seeds = tuple(int(seed) for seed in document["seeds"])
            return cls(experiment=experiment, seeds=seeds, baseline=document.get("baseline"))
        except (KeyError, TypeError, ValueError) as error:
            raise RunFolderError(f"the sweep's settings are damaged ({error})") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """``5`` means seeds 0-4; ``3,7,11`` means those seeds. Only the conversion: a text that is not
    numbers is a ValueError; which seeds are allowed is SweepConfig's rule."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seeds or a comma-separated list of seeds") from None
    if len(numbers) == 1 and "," not in text:
        return tuple(range(numbers[0]))  # A count below 1 gives no seeds: SweepConfig says so.
    return tuple(numbers)


@dataclasses.dataclass(frozen=True)
class BatchingSettings:
    """How the worker groups requests. ``max_batch=1`` turns batching off (one request a pass)."""

    max_batch: int = 64
    # How long the first request of a batch waits for others to join it. 0: batch whatever is
    # already waiting (while a batch runs, the next one gathers), which measured the same
    # throughput as 2 ms and half the latency of a lone request (README, bench/serve_load.py).
    window_ms: float = 0.0
    queue_size: int = 1024  # Requests waiting beyond the batch in progress; more are refused (503).
    timeout_s: float = 10.0  # A request not answered by then gets a 504.

    def __post_init__(self) -> None:
        _require_positive("max batch", self.max_batch)
        _require_positive("queue size", self.queue_size)
        if not self.window_ms >= 0:
            raise ConfigError(f"batch window must be 0 ms or more, got {self.window_ms}")
        if not self.timeout_s > 0:
            raise ConfigError(f"request timeout must be positive, got {self.timeout_s}")

    def batch_sizes(self) -> tuple[int, ...]:
        """The padded batch shapes: 1, 4, 16, 64, ... up to max_batch (each compiled once)."""
        sizes, size = [], 1
        while size < self.max_batch:
            sizes.append(size)
            size *= 4
        return (*sizes, self.max_batch)


# What answers the server's forward passes: the run's Keras models (on JAX), or onnxruntime
# sessions on the run's ONNX exports (`mnist-cnn export RUN_DIR --format onnx`).
SERVE_RUNTIMES = ("jax", "onnx")


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """What one connection may take of the server, and how long it drains on shutdown (serve/http.py
    enforces them: a slow or silent client cannot hold a socket, a huge header is refused)."""

    header_timeout_s: float = 10.0  # From a request's first byte (or the connection) to its last header.
    body_timeout_s: float = 10.0  # The longest pause between two parts of a body.
    keep_alive_s: float = 5.0  # An idle keep-alive connection is closed after this long.
    max_header_bytes: int = 32 * 1024  # The request line and headers together (nginx's default total).
    max_connections: int = 1024  # Open connections per server process; past it a new one gets 503.
    drain_s: float = 10.0  # On shutdown, requests in progress get this long to be answered.
    shutdown_grace_s: float = 0.5  # On shutdown, an accepted connection not yet read waits this long for its request.

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"{field.name.replace('_', ' ')} must be positive, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Where ``serve`` listens, how many processes answer there, with which runtime, and the
    limits on each connection."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # Server processes on the one port, each with its own copy of the models.
    runtime: str = "jax"
    limits: HttpLimits = HttpLimits()

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be a whole number from 1 to 65535, got {self.port}")
        _require_positive("workers", self.workers)
        if self.runtime not in SERVE_RUNTIMES:
            raise ConfigError(f"unknown runtime {self.runtime!r}: choose {' or '.join(SERVE_RUNTIMES)}")


# --track with no URI: MLflow's own default since 3.7, a SQLite database in the current folder.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_TRACKING_EXPERIMENT = "mnist-cnn"
# The stores MLflow's client writes to; file: (./mlruns) is deprecated upstream but still works.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")


@dataclasses.dataclass(frozen=True)
class TrackingSettings:
    """``--track [URI]``: where runs and sweeps are also logged (MLflow), checked before any training."""

    uri: str = DEFAULT_TRACKING_URI
    experiment: str = DEFAULT_TRACKING_EXPERIMENT

    def __post_init__(self) -> None:
        from urllib.parse import urlsplit

        hint = "give sqlite:///PATH.db or http://HOST:PORT of an MLflow server"
        scheme, _, rest = self.uri.partition(":")
        scheme = scheme.lower().split("+")[0]  # postgresql+psycopg2:// and the like.
        if not rest or scheme not in TRACKING_SCHEMES:
            raise ConfigError(f"--track {self.uri!r} is not a tracking URI MLflow knows; {hint}")
        if scheme == "sqlite":
            path = self.sqlite_path()
            if path is None:
                raise ConfigError(f"--track {self.uri!r} names no database file; {hint}")
            if not path.parent.is_dir():
                raise ConfigError(f"--track {self.uri!r}: folder {path.parent} does not exist; create it or {hint}")
        elif scheme in ("http", "https"):
            try:
                parts = urlsplit(self.uri)
                parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
            except ValueError as error:
                raise ConfigError(f"--track {self.uri!r} is malformed ({error}); {hint}") from None
            if not parts.hostname:
                raise ConfigError(f"--track {self.uri!r} names no host; {hint}")
        if not self.experiment.strip():
            raise ConfigError("--track-experiment must not be empty")

    def sqlite_path(self) -> Path | None:
        """The database file of a ``sqlite:///`` URI (relative to the current folder, as SQLAlchemy reads it)."""
        prefix = "sqlite:///"
        if not self.uri.lower().startswith(prefix) or len(self.uri) == len(prefix):
            return None
        return Path(self.uri[len(prefix) :])

    @classmethod
    def chosen(cls, uri: str | None, experiment: str = DEFAULT_TRACKING_EXPERIMENT) -> TrackingSettings:
        """A bare ``--track`` (``uri`` None): ``$MLFLOW_TRACKING_URI`` if set, else the SQLite default."""
        import os

        return cls(uri=uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI, experiment=experiment)

"""Which trainer trains each model, decided from the config before any data loads.

Two trainers compute the same training: ``fused`` (train.fused: one compiled JAX step, the
fastest on a CPU) and ``keras`` (``model.fit``, any backend, any model). The fused trainer
computes only what it states here (``fused_refusal``), exactly; for anything else ``auto``
falls back to ``model.fit`` and says why, and ``--trainer fused`` is refused in one line. So a
spec the fused trainer does not know is never silently trained as a different network.

This module imports neither Keras nor JAX: a sweep's driver plans its trials with it.
"""

from __future__ import annotations

import dataclasses

from mnist_cnn.core.config import ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.network import Pool, layer_text

# What the fused trainer computes, by the spec's fields: each field it reads, and nothing else.
# (A variant's optimizer and learning rate are the compiled Keras optimizer's, which the fused
# step applies as model.fit does; dropout is Keras's, with masks from the fused trainer's own
# generator, train.fused.dropout_key.)
FUSED_FIELDS = frozenset(
    {"key", "name", "filters", "kernel_size", "dense_units", "dropout", "optimizer", "learning_rate", "layers",
     "augment"}
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TrainerChoice:
    """The trainer of one model, and why it is not the fastest one when it is not."""

    model: str
    trainer: str  # "fused" or "keras"
    reason: str | None = None  # Why auto fell back to model.fit.

    def describe(self) -> str:
        because = f" ({self.reason})" if self.reason else ""
        label = "fused JAX step" if self.trainer == "fused" else "model.fit"
        return f"{self.model}: trained by {label}{because}"


def fused_refusal(spec: ModelSpec, backend: str | None) -> str | None:
    """Why the fused trainer cannot train ``spec`` exactly on ``backend``; None when it can.

    It computes every layer of core.network's lists (convolutions of any kernel, stride and
    padding, BatchNorm, Dropout, Flatten, global average pooling, Dense, the activations) except
    a max-pooling whose stride is not its size. A spec field it does not read is a refusal: a
    new field added to ModelSpec stays on model.fit until the fused trainer learns it.
    """
    if (backend or "jax") != "jax":
        return f"the fused trainer needs the JAX backend, not {backend}"
    changed = [
        field.name
        for field in dataclasses.fields(spec)
        if field.name not in FUSED_FIELDS and getattr(spec, field.name) != field.default
    ]
    if changed:
        return f"the fused trainer does not compute {', '.join(changed)}"
    for layer in spec.network().layers:
        if isinstance(layer, Pool) and layer.stride != layer.size:
            return f"the fused trainer does not compute {layer_text(layer)!r} (a pooling whose stride is not its size)"
    return None


def plan_trainers(config: ExperimentConfig) -> list[TrainerChoice]:
    """Each model's trainer for this config; ConfigError when ``--trainer fused`` cannot be honoured."""
    choices = []
    for spec in config.model_specs():
        if config.trainer == "keras":
            choices.append(TrainerChoice(spec.name, "keras"))
            continue
        refusal = fused_refusal(spec, config.backend)
        if refusal is None:
            choices.append(TrainerChoice(spec.name, "fused"))
        elif config.trainer == "fused":
            raise ConfigError(f"{spec.name}: {refusal}; use --trainer keras or --trainer auto")
        else:
            choices.append(TrainerChoice(spec.name, "keras", reason=refusal))
    return choices


def trainer_summary(choices: list[TrainerChoice]) -> str:
    """'fused', 'keras', or 'fused, keras' when the models of a run differ: what config.json records."""
    return ", ".join(dict.fromkeys(choice.trainer for choice in choices))

"""Per-epoch checkpoints: one file holding weights, optimizer state and the training state.

One file, written to a temporary name and renamed, so a crash at any instant leaves either
the previous checkpoint or the new one, never a broken one. It holds no pickles: numeric
arrays plus a JSON document, read back with ``allow_pickle=False``. The module imports no
Keras, so a sweep's driver can read how far a trial got without loading a backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_cnn.core.errors import CheckpointError
from mnist_cnn.core.faults import fault_point
from mnist_cnn.core.files import atomic_path
from mnist_cnn.core.results import CheckpointState
from mnist_cnn.data.mnist import ARCHIVE_ERRORS
from mnist_cnn.store.runs import ModelFolder

if TYPE_CHECKING:
    import keras

FORMAT_VERSION = 1


def save_checkpoint(path: Path, model: keras.Model, state: CheckpointState) -> None:
    """Write weights, optimizer variables and ``state`` atomically to ``path``."""
    arrays = {f"weight_{i}": np.asarray(variable.value) for i, variable in enumerate(model.weights)}
    arrays.update(
        {f"optimizer_{i}": np.asarray(variable.value) for i, variable in enumerate(model.optimizer.variables)}
    )
    document = {"format": FORMAT_VERSION, "model": model.name, "state": state.to_json()}
    arrays["document"] = np.frombuffer(json.dumps(document).encode("utf-8"), dtype=np.uint8)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
        fault_point(f"checkpoint-write:{model.name}:{state.epochs_done}")  # Written, not yet renamed.


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return (document, arrays); any damage becomes a CheckpointError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        document = json.loads(arrays.pop("document").tobytes().decode("utf-8"))
    except ARCHIVE_ERRORS as error:
        raise CheckpointError(
            f"{path}: checkpoint is unreadable ({error.__class__.__name__}); delete it to restart this model"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("format"), int):
        raise CheckpointError(f"{path}: checkpoint has no valid state document; delete it to restart this model")
    if document["format"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {document['format']} is newer than this mnist-cnn reads; upgrade mnist-cnn"
        )
    return document, arrays


def read_checkpoint_state(path: Path) -> CheckpointState:
    """The training state a checkpoint holds (epochs done, history, time, seed)."""
    document, _ = read_checkpoint(path)
    return _state_of(path, document)


def _state_of(path: Path, document: dict[str, Any]) -> CheckpointState:
    try:
        return CheckpointState.from_json(document.get("state"))
    except ValueError as error:
        raise CheckpointError(
            f"{path}: checkpoint state is malformed ({error}); delete it to restart this model"
        ) from None


def epochs_done(folder: ModelFolder) -> int:
    """Epochs a model has trained so far: every one once finished, else its checkpoint's, else 0."""
    if folder.is_finished():
        return len(folder.read_history())
    if folder.has_checkpoint():
        return read_checkpoint_state(folder.checkpoint_path).epochs_done
    return 0


def restore_checkpoint(path: Path, model: keras.Model) -> CheckpointState:
    """Load a checkpoint into ``model`` (weights and optimizer state); return its state."""
    document, arrays = read_checkpoint(path)
    state = _state_of(path, document)
    if document.get("model") != model.name:
        raise CheckpointError(f"{path}: checkpoint is for {document.get('model')!r}, not {model.name}")
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    groups = (("weight", model.weights), ("optimizer", model.optimizer.variables))
    for prefix, variables in groups:
        for index, variable in enumerate(variables):
            value = arrays.get(f"{prefix}_{index}")
            if value is None or tuple(value.shape) != tuple(variable.shape):
                raise CheckpointError(
                    f"{path}: checkpoint does not fit {model.name} ({prefix} {index}); delete it to restart this model"
                )
        if len([name for name in arrays if name.startswith(prefix + "_")]) != len(variables):
            raise CheckpointError(
                f"{path}: checkpoint does not fit {model.name} ({prefix} count); delete it to restart this model"
            )
    for prefix, variables in groups:
        for index, variable in enumerate(variables):
            variable.assign(arrays[f"{prefix}_{index}"])
    return state

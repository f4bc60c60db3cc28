"""``export_run(plan)``: a run's models in a deployment format, each checked against Keras.

Every model is converted into a staging folder, run there by its format's own runtime on the
run's test set (its ``--limit`` applies, as ``evaluate_run``'s does) and compared with the
Keras model's ``predict``. Only when every model agrees are the files moved into place, and
manifest.json is written last: a failed export leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from typing import Any

import keras
import numpy as np

from mnist_cnn.core.environment import package_version, tensorflow_noise_dropped
from mnist_cnn.core.errors import ExportError
from mnist_cnn.core.files import move_into_place, path_sha256, remove_stale_staging_folders, staging_folder
from mnist_cnn.core.version import package_version as mnist_cnn_version
from mnist_cnn.data.mnist import load_mnist
from mnist_cnn.export.plan import LIBRARIES, ExportFormat, ExportPlan
from mnist_cnn.export.runtimes import convert, open_runtime, run_in_batches
from mnist_cnn.store.runs import ExportFolder, ModelFolder

# An exported model passes when it gives the same top digit as Keras on every test image and
# no probability differs by more than this (float32 arithmetic in another order: ~1e-7).
PARITY_TOLERANCE = 1e-5
# Images per call of Keras and of the runtime during the parity check.
PARITY_BATCH = 1000

# What every exported model expects and answers: the model's own input, prepared as MNIST's.
INPUT_CONTRACT = {
    "shape": [None, 28, 28, 1],
    "dtype": "float32",
    "range": [0.0, 1.0],
    "polarity": "white digit (1.0) on black (0.0), as MNIST",
    "preparation": "the digit scaled into a 20-pixel box and centred by its centre of mass on the 28x28 field, "
    "as mnist_cnn.predict.preprocess.prepare_digit produces it from any image",
}
OUTPUT_CONTRACT = {
    "shape": [None, 10],
    "dtype": "float32",
    "meaning": "softmax probabilities of the digits 0-9 (index = digit), each row summing to 1",
}


@dataclasses.dataclass(frozen=True)
class Parity:
    """How closely an exported model's answers match the Keras model's on the same images."""

    test_images: int
    same_top_digit: int
    max_abs_difference: float

    @property
    def passed(self) -> bool:
        return self.same_top_digit == self.test_images and self.max_abs_difference <= PARITY_TOLERANCE

    def describe(self) -> str:
        return (
            f"{self.same_top_digit}/{self.test_images} test images with Keras's top digit, "
            f"max probability difference {self.max_abs_difference:.1e}"
        )

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tolerance": PARITY_TOLERANCE, "passed": self.passed}


def measure_parity(keras_probabilities: np.ndarray, exported_probabilities: np.ndarray) -> Parity:
    """Compare two (N, 10) probability arrays: equal top digits, and the largest difference."""
    if keras_probabilities.shape != exported_probabilities.shape:
        raise ExportError(
            f"the exported model answers with shape {exported_probabilities.shape}, Keras with "
            f"{keras_probabilities.shape}: the export is broken"
        )
    same = int(np.sum(keras_probabilities.argmax(axis=1) == exported_probabilities.argmax(axis=1)))
    difference = np.abs(keras_probabilities.astype(np.float64) - exported_probabilities.astype(np.float64))
    return Parity(len(keras_probabilities), same, float(difference.max()) if difference.size else 0.0)


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """One model written in the format, with what its runtime reports and how it compared."""

    name: str
    key: str
    parity: Parity
    manifest_entry: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    destination: ExportFolder
    models: list[ExportedModel]


def export_run(plan: ExportPlan) -> ExportResult:
    """Export the plan's models, check each against Keras, then move them and the manifest in place."""
    config = plan.run.config()
    keys = {spec.name: spec.key for spec in config.model_specs()}
    test_images = load_mnist(config.data, config.validation_size, config.limit).X_test
    destination = plan.destination
    existed = destination.path.is_dir()
    remove_stale_staging_folders(destination.path)
    try:
        with staging_folder(destination.path) as staging:
            staged = ExportFolder(staging, destination.format)
            exported = [
                export_model(folder, keys[folder.name], plan.format, staged, test_images) for folder in plan.models
            ]
            refuse_disagreements(exported, plan.format)
            # From here the old manifest no longer tells the truth: a folder without one is unfinished.
            destination.manifest_path.unlink(missing_ok=True)
            for model in exported:
                move_into_place(staged.artifact_path(model.name), destination.artifact_path(model.name))
    except BaseException:
        if not existed:  # A folder this export made, and left empty: gone too.
            with contextlib.suppress(OSError):
                destination.path.rmdir()
        raise
    destination.write_manifest(manifest(plan, exported))
    return ExportResult(destination, exported)


def export_model(
    folder: ModelFolder, key: str, export_format: ExportFormat, staged: ExportFolder, test_images: np.ndarray
) -> ExportedModel:
    """Convert one model into ``staged``, run the file with its runtime, compare with Keras."""
    model = folder.load_model()
    # Keras's answers first: they also call the model once, which Keras's exporter wants.
    expected = model.predict(test_images, batch_size=PARITY_BATCH, verbose=0)
    path = staged.artifact_path(folder.name)
    convert(model, export_format, path)
    with tensorflow_noise_dropped():
        runtime = open_runtime(export_format, path)
    answered = run_in_batches(runtime, test_images, PARITY_BATCH)
    parity = measure_parity(expected, answered)
    entry = {
        "key": key,
        "file": path.name,
        "sha256": path_sha256(path),
        # The model.keras it was made from: a model trained again since makes this export stale.
        "model_sha256": path_sha256(folder.model_path),
        "inputs": [tensor.to_json() for tensor in runtime.inputs],
        "outputs": [tensor.to_json() for tensor in runtime.outputs],
        "parity": parity.to_json(),
    }
    keras.backend.clear_session()  # The next model starts from a clean graph.
    return ExportedModel(folder.name, key, parity, entry)


def refuse_disagreements(exported: list[ExportedModel], export_format: ExportFormat) -> None:
    """One line naming each model whose export does not answer as Keras does (nothing is moved in)."""
    failed = [model for model in exported if not model.parity.passed]
    if failed:
        details = "; ".join(f"{model.name}: {model.parity.describe()}" for model in failed)
        raise ExportError(
            f"the {export_format.name} export does not match Keras (every top digit equal and probabilities "
            f"within {PARITY_TOLERANCE:g} needed): {details}; nothing was written"
        )


def manifest(plan: ExportPlan, exported: list[ExportedModel]) -> dict[str, Any]:
    """manifest.json: what the folder holds, what each model expects and answers, how it was checked."""
    libraries = {name: library_version(name) for name in LIBRARIES}
    return {
        "format": plan.format.name,
        "run_id": plan.run.identity(),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "produced_by": plan.format.produced_by,
        "runtime": plan.format.runtime,
        "keras_backend": keras.backend.backend(),
        "sha256_of": "each file's bytes; of a folder (SavedModel), its sha256sum listing: one "
        "'<sha256>  <relative path>' line per file, sorted by path",
        "models": {model.name: model.manifest_entry for model in exported},
        "input_contract": INPUT_CONTRACT,
        "output": OUTPUT_CONTRACT,
        "mnist_cnn_version": mnist_cnn_version(),
        "libraries": {name: version for name, version in libraries.items() if version},
    }


def library_version(name: str) -> str | None:
    """A distribution's version; TensorFlow is installed as tensorflow or tensorflow-cpu."""
    if name == "tensorflow":
        return package_version("tensorflow") or package_version("tensorflow-cpu")
    return package_version(name)

"""What an export will do, checked before Keras loads: the format, its packages, the models.

Everything here is light (no Keras, no TensorFlow): the command line checks a bad run
folder, an unknown model or a missing converter in one line before it starts the
TensorFlow process that converts (``export.exporter``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mnist_cnn.core import environment
from mnist_cnn.core.errors import ConfigError, RunFolderError
from mnist_cnn.store.runs import ExportFolder, ModelFolder, RunFolder

INSTALL_COMMAND = "pip install -e '.[export]'"
# Exports are made on Keras's TensorFlow backend whatever backend trained the model (a .keras
# file loads under any). On JAX, Keras exports ONNX through jax2onnx, and that file fails in
# onnxruntime for these models ("MaxPool: Unsupported pooling size": jax2onnx writes the
# NHWC 4-D pool window) and keeps its weights in a separate .onnx.data file; on TensorFlow
# it goes through tf2onnx and runs in onnxruntime to within 1e-7 of Keras.
EXPORT_BACKEND = "tensorflow"


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One format: Keras's name for it, the runtime that runs it, the packages both need."""

    name: str
    keras_format: str
    runtime: str
    # Import name -> distribution name, for the converter and the runtime the parity check uses.
    packages: dict[str, str]
    produced_by: str


FORMATS = {
    "onnx": ExportFormat(
        name="onnx",
        keras_format="onnx",
        runtime="onnxruntime",
        packages={"tensorflow": "tensorflow-cpu", "tf2onnx": "tf2onnx", "onnx": "onnx", "onnxruntime": "onnxruntime"},
        produced_by="keras Model.export(format='onnx') on the TensorFlow backend (tf2onnx)",
    ),
    "saved_model": ExportFormat(
        name="saved_model",
        keras_format="tf_saved_model",
        runtime="tensorflow (tf.saved_model.load, serving_default signature)",
        packages={"tensorflow": "tensorflow-cpu"},
        produced_by="keras Model.export(format='tf_saved_model') on the TensorFlow backend",
    ),
    "litert": ExportFormat(
        name="litert",
        keras_format="litert",
        runtime="ai-edge-litert (ai_edge_litert.interpreter.Interpreter, built-in kernels, no XNNPACK delegate)",
        packages={"tensorflow": "tensorflow-cpu", "ai_edge_litert": "ai-edge-litert"},
        produced_by="keras Model.export(format='litert') on the TensorFlow backend (the TFLite converter)",
    ),
}
# The libraries a manifest records, by distribution name (TensorFlow may be installed as either).
LIBRARIES = ("keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """A checked export: which run, which of its trained models, in which format, into which folder."""

    run: RunFolder
    format: ExportFormat
    models: tuple[ModelFolder, ...]
    destination: ExportFolder


def require_export_packages(export_format: str) -> None:
    """One line naming the install command when a package the format needs is missing."""
    needed = FORMATS[export_format].packages
    # Looked up on the module at call time, so a test can stand in for a missing package.
    missing = [distribution for module, distribution in needed.items() if not environment.package_installed(module)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(
            f"exporting to {export_format} needs {', '.join(missing)}, which {verb} not installed: {INSTALL_COMMAND}"
        )


def plan_export(
    run_dir: str | Path, export_format: str, model_keys: tuple[str, ...] | None, out: str | Path | None
) -> ExportPlan:
    """Check everything an export needs before any model loads: a one-line error for each problem.

    ``model_keys`` are the keys the run's config knows (A, B, a variant's), None for all of
    the run's models; ``out`` replaces the run's own ``exports/<format>/`` folder.
    """
    if export_format not in FORMATS:
        raise ConfigError(f"unknown export format {export_format!r}: choose from {', '.join(FORMATS)}")
    require_export_packages(export_format)
    run = RunFolder.existing(run_dir)
    models = tuple(chosen_models(run, model_keys))
    destination = ExportFolder(out, export_format) if out is not None else run.exports(export_format)
    return ExportPlan(run=run, format=FORMATS[export_format], models=models, destination=destination)


def chosen_models(run: RunFolder, model_keys: tuple[str, ...] | None) -> list[ModelFolder]:
    """The trained models of the run that ``model_keys`` name, in the run's order (all when None)."""
    specs = run.config().model_specs()
    if model_keys is None:
        return run.trained_model_folders()
    known = {spec.key: spec for spec in specs}
    unknown = [key for key in model_keys if key not in known]
    if unknown:
        raise ConfigError(
            f"{run.path} has no model {', '.join(unknown)}: it trained {', '.join(known)} (--models takes those keys)"
        )
    folders = [run.model(spec.name) for spec in specs if spec.key in model_keys]
    untrained = [folder.name for folder in folders if not folder.model_path.is_file()]
    if untrained:
        raise RunFolderError(
            f"{run.path}: {', '.join(untrained)} not trained yet; finish or resume the run "
            f"(mnist-cnn experiment --resume {run.path})"
        )
    return folders

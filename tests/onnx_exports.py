"""ONNX exports of a run for the tests, until `mnist-cnn export RUN_DIR --format onnx` is merged.

The one stand-in for the export command: when it lands, ``export_onnx`` becomes one call of
it (``run_cli("export", run_dir, "--format", "onnx")``) and nothing else changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Keras exports ONNX through tf2onnx under the TensorFlow backend (the JAX backend's exporter
# writes a file onnxruntime cannot run for these models), so the export runs in a child process.
EXPORT_SCRIPT = """
import json, sys
from pathlib import Path
import keras, numpy as np, onnx

run, names = Path(sys.argv[1]), sys.argv[2:]
folder = run / "exports" / "onnx"
folder.mkdir(parents=True, exist_ok=True)
models = {}
for name in names:
    model = keras.saving.load_model(run / name / "model.keras")
    model(np.zeros((1, 28, 28, 1), "float32"))
    model.export(str(folder / f"{name}.onnx"), format="onnx", verbose=False)
    graph = onnx.load(str(folder / f"{name}.onnx")).graph
    models[name] = {
        "file": f"{name}.onnx",
        "inputs": [{"name": graph.input[0].name, "shape": [None, 28, 28, 1], "dtype": "float32"}],
        "outputs": [{"name": graph.output[0].name, "shape": [None, 10], "dtype": "float32"}],
    }
(folder / "manifest.json").write_text(json.dumps({"format": "onnx", "models": models}, indent=2))
"""


def export_onnx(run_dir: Path, models: tuple[str, ...] = ("Model_A", "Model_B")) -> Path:
    """Write ``run_dir/exports/onnx/<Model>.onnx`` and ``manifest.json``; return that folder."""
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_SCRIPT, str(run_dir), *models],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    folder = run_dir / "exports" / "onnx"
    assert set(json.loads((folder / "manifest.json").read_text())["models"]) == set(models)
    return folder

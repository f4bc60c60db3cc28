"""ONNX exports of a run for the tests, in the agreed layout, until `mnist-cnn export` lands.

TODO(integrator): once `mnist-cnn export RUN_DIR --format onnx` is merged, replace the body
of ``make_onnx_exports`` with one line, ``assert run_cli("export", run_dir, "--format",
"onnx").returncode == 0``; every test that needs exports goes through this function.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Runs in a child process: the export goes through TensorFlow (tf2onnx), whatever backend the
# suite's own process imported Keras with.
EXPORT_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
import keras, numpy as np
run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
models = {}
for name in sys.argv[3:]:
    model = keras.saving.load_model(run / name / "model.keras")
    model(np.zeros((1, 28, 28, 1), "float32"))
    path = out / f"{name}.onnx"
    model.export(str(path), format="onnx", verbose=False)
    models[name] = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "inputs": [{"name": "keras_tensor", "shape": [None, 28, 28, 1], "dtype": "float32"}],
        "outputs": [{"name": "Identity:0", "shape": [None, 10], "dtype": "float32"}],
    }
record = json.loads((run / "config.json").read_text())
manifest = {"format": "onnx", "run_id": record.get("run_id"), "models": models}
(out / "manifest.json").write_text(json.dumps(manifest, indent=2))
"""


def make_onnx_exports(run_dir: Path) -> Path:
    """``run_dir/exports/onnx/``: each trained model as ``<Model>.onnx`` and a manifest.json."""
    from mnist_cnn.store.runs import RunFolder

    run = RunFolder.existing(run_dir)
    names = [folder.name for folder in run.trained_model_folders()]
    folder = run.export_folder("onnx")
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", EXPORT_SCRIPT, str(run.path), str(folder), *names],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    return folder

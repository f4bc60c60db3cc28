"""notebooks/mnist_cnn.ipynb: committed clean, and it runs top to bottom with small parameters.

The parameters are injected the way papermill does (a cell tagged ``injected-parameters``
right after the cell tagged ``parameters``), without needing papermill.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "mnist_cnn.ipynb"
KERNEL_NAME = "python3"
# An address nothing listens on: keras.datasets.mnist's download fails at once, as offline,
# so the notebook takes the bundled MNIST even where the tests have a network.
NO_NETWORK_PROXY = "http://127.0.0.1:9"


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def parameters_index(notebook: nbformat.NotebookNode) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def inject_parameters(notebook: nbformat.NotebookNode, **parameters: object) -> None:
    """Insert papermill's ``injected-parameters`` cell after the ``parameters`` cell."""
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(parameters_index(notebook) + 1, cell)


def use_this_python_as_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ``python3`` kernel this interpreter (the venv's), whatever else is installed.

    A kernelspec in a private folder put first on JUPYTER_PATH wins over any user or system
    ``python3`` kernelspec that may point at another Python.
    """
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path / "jupyter-prefix"
    install(kernel_name=KERNEL_NAME, prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable


def outputs_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/markdown", ""))
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def test_committed_notebook_is_valid_and_clean() -> None:
    notebook = read_notebook()
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells)
    parameters = notebook.cells[parameters_index(notebook)].source
    for name in ("epochs = 60", "limit = None", "seed = 42", "batch_size = 32", 'out_dir = "runs/notebook"'):
        assert name in parameters


def test_papermill_knows_every_parameter_of_the_parameters_cell(caplog: pytest.LogCaptureFixture) -> None:
    """papermill reads the names it may set from the ``parameters`` cell, one assignment a line, and
    drops a line it cannot parse (one with a second ``=``, in its comment too): ``-p limit 600``, as
    the documentation runs it, then warned "Passed unknown parameter: limit"."""
    import papermill

    notebook = read_notebook()
    source = notebook.cells[parameters_index(notebook)].source
    assigned = [node.targets[0].id for node in ast.parse(source).body if isinstance(node, ast.Assign)]
    with caplog.at_level("WARNING", logger="papermill"):
        known = papermill.inspect_notebook(str(NOTEBOOK))
    assert list(known) == assigned == ["epochs", "limit", "seed", "batch_size", "out_dir"]
    assert caplog.records == [], [record.getMessage() for record in caplog.records]


@pytest.mark.slow
def test_notebook_runs_with_injected_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    use_this_python_as_kernel(tmp_path, monkeypatch)
    # The kernel inherits this environment: KERAS_HOME and KERAS_BACKEND from conftest.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, NO_NETWORK_PROXY)
    for name in ("no_proxy", "NO_PROXY", "MPLBACKEND"):  # MPLBACKEND=Agg would stop inline figures.
        monkeypatch.delenv(name, raising=False)
    # TensorFlow logs on import on AVX-512 CPUs; this makes it do so on any CPU: no cell may show it.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")

    out_dir = tmp_path / "out"
    notebook = read_notebook()
    inject_parameters(notebook, epochs=1, limit=600, out_dir=str(out_dir))
    client = NotebookClient(notebook, timeout=300, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(ROOT)}})
    client.execute()

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert errors == []
    text = "\n".join(outputs_text(cell) for cell in code_cells)

    for noise in ("absl::InitializeLog", "cpu_feature_guard", "oneDNN custom operations"):
        assert noise not in text, f"TensorFlow's start-up line {noise!r} reached a cell's output"
    assert "Loaded from bundled" in text, "offline, the notebook must fall back to the bundled MNIST"
    assert "X_train (600, 28, 28, 1)" in text and "X_valid (6000, 28, 28, 1)" in text
    assert "X_test  (10000, 28, 28, 1)" in text
    for name in ("Model_A", "Model_B"):
        assert f"{name}: 1 epochs in" in text
        assert re.search(rf"{name} test accuracy: [01]\.\d{{4}}", text), f"no test accuracy printed for {name}"

    tables = [
        output.data["text/markdown"]
        for cell in code_cells
        for output in cell.outputs
        if output.output_type == "display_data" and "text/markdown" in output.data
    ]
    assert len(tables) == 1
    for row in ("| | Model_A | Model_B | B/A |", "| Parameters |", "| Test accuracy |", "| Seconds per epoch |"):
        assert row in tables[0]

    (predictions_cell,) = [cell for cell in code_cells if "predictions.png" in cell.source]
    assert any("image/png" in output.get("data", {}) for output in predictions_cell.outputs)

    for figure in ("Model_A_history.png", "Model_B_history.png", "predictions.png"):
        assert (out_dir / figure).stat().st_size > 0


@pytest.mark.slow
def test_make_notebook_serves_the_notebook_in_jupyterlab(tmp_path: Path) -> None:
    """What `make notebook` starts: JupyterLab, serving the page and the notebook's contents."""
    import secrets
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_hex(16)
    jupyter = Path(sys.executable).parent / "jupyter"
    server = subprocess.Popen(
        [
            str(jupyter), "lab", "notebooks/mnist_cnn.ipynb", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # As make notebook does (CI runs as root).
        ],
        cwd=ROOT,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, "jupyter lab exited"
            try:
                if httpx.get(f"{base}/api/status", params={"token": token}, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "jupyter lab did not answer within 90 s"
            time.sleep(0.5)
        page = httpx.get(f"{base}/lab/tree/notebooks/mnist_cnn.ipynb", params={"token": token}, timeout=10)
        assert page.status_code == 200 and "JupyterLab" in page.text
        contents = httpx.get(f"{base}/api/contents/notebooks/mnist_cnn.ipynb", params={"token": token}, timeout=10)
        assert contents.status_code == 200
        cells = contents.json()["content"]["cells"]
        assert any("digit_mnist = keras.datasets.mnist" in "".join(cell["source"]) for cell in cells)
        assert httpx.get(f"{base}/api/contents/notebooks/mnist_cnn.ipynb", timeout=10).status_code == 403
    finally:
        server.terminate()
        server.wait(timeout=30)

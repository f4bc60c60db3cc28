"""The wheel works anywhere: built from the checkout, installed in a fresh virtual environment,
and run from an empty folder outside the checkout. The bundled models answer predict, the page
and export at once, and the page's onnxruntime-web files come from the wheel, not npm."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from mnist_cnn.serve.fast_path import PREDICT_PATH
from mnist_cnn.serve.site import RUNTIME_FILES
from mnist_cnn.store.bundled import checksum_problems
from tests.conftest import drawn_seven_png, free_port

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parent.parent
WHEEL_LIMIT_BYTES = 60 * 2**20  # PyPI takes up to 100 MB a file; the wheel stays well under.


def run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    # No PYTHONPATH or virtual environment of the checkout leaks into the fresh one.
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout and the pinned runtime dependencies."""
    root = tmp_path_factory.mktemp("wheel")
    building = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", root / "dist", CHECKOUT]
    built = run(building, root)
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("mnist_cnn-*.whl")
    venv = root / "venv"
    assert run([sys.executable, "-m", "venv", venv], root).returncode == 0
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    installing = run([*pip, "-r", CHECKOUT / "requirements" / "runtime.txt", wheel], root, timeout=1200)
    assert installing.returncode == 0, installing.stderr
    return wheel


def venv_of(wheel: Path) -> Path:
    return wheel.parent.parent / "venv"


def test_the_wheel_carries_the_bundled_run_the_page_and_its_runtime_under_the_size_limit(installed: Path) -> None:
    assert installed.stat().st_size < WHEEL_LIMIT_BYTES
    names = set(zipfile.ZipFile(installed).namelist())
    assert {f"mnist_cnn/serve/web/ort/{name}" for name in RUNTIME_FILES} <= names
    assert {"mnist_cnn/serve/web/index.html", "mnist_cnn/serve/web/prepare.js", "mnist_cnn/data/mnist.npz"} <= names
    bundled = {"SHA256SUMS", "config.json", "Model_A/model.keras", "Model_B/model.keras", "exports/onnx/Model_A.onnx"}
    assert {f"mnist_cnn/bundled/{name}" for name in bundled} <= names


def test_the_installed_tool_trains_predicts_serves_and_exports_from_an_empty_folder(
    installed: Path, tmp_path: Path
) -> None:
    venv = venv_of(installed)
    tool = str(venv / "bin" / "mnist-cnn")
    (tmp_path / "seven.jpg").write_bytes(drawn_seven_png())

    trained = run([tool, "experiment", "--limit", "600", "--epochs", "1", "--out", "smoke"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "smoke" / "Model_B" / "model.keras").is_file()

    predicted = run([tool, "predict", "seven.jpg"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert "using the bundled run" in predicted.stderr
    assert "Model_A: 7" in predicted.stdout and "Model_B: 7" in predicted.stdout

    exported = run([tool, "export", "--format", "web"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    site = tmp_path / "exports" / "web"
    assert (site / "index.html").is_file() and (site / "ort" / "ort-wasm-simd-threaded.wasm").is_file()

    check_the_page_answers(tool, tmp_path)
    site_packages = next((venv / "lib").glob("python*/site-packages"))
    assert checksum_problems(site_packages / "mnist_cnn" / "bundled") == []  # Nothing wrote into it.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exports", "seven.jpg", "smoke"]


def check_the_page_answers(tool: str, folder: Path) -> None:
    """serve with the bundled run: ready, its page's runtime served from the wheel, a digit answered."""
    port = free_port()
    server = subprocess.Popen(
        [tool, "serve", "--port", str(port)], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.2)
        config = httpx.get(f"{url}/models.json").json()
        assert config["runtime"] == "ort/" and [model["onnx"] for model in config["models"]] == [
            "models/Model_A.onnx",
            "models/Model_B.onnx",
        ]
        assert httpx.get(f"{url}/ort/ort-wasm-simd-threaded.wasm").status_code == 200
        answer = httpx.post(f"{url}{PREDICT_PATH}", content=drawn_seven_png(), timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        server.terminate()
        server.wait(timeout=30)

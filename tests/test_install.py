"""The install: a backend whose package is missing is refused in one line; the two lock files agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mnist_cnn.core import environment
from mnist_cnn.core.environment import package_installed, select_backend
from mnist_cnn.core.errors import ConfigError
from tests.conftest import cli

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)(\s*;\s*\S.*)?$")
# What the runtime lock must not pull in: the backend it does not need, the exporters and the development tools.
NOT_AT_RUNTIME = (
    "tensorflow",
    "playwright",
    "ipykernel",
    "jupyter",
    "ruff",
    "pytest",
    "onnx",
    "tf2onnx",
    "ai-edge-litert",
)


def pins(path: Path) -> dict[str, str]:
    """name -> version of every line of a lock file; each must be an exact pin (an environment marker may follow)."""
    found: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: not an exact name==version pin: {raw!r}"
        name = re.sub(r"[-_.]+", "-", match["name"]).lower()
        assert name not in found, f"{path.name}: {name} pinned twice"
        found[name] = match["version"]
    return found


def test_package_installed_finds_packages_without_importing_them() -> None:
    assert package_installed("json") and package_installed("jax")
    assert not package_installed("no_such_package_for_mnist_cnn")


@pytest.mark.parametrize(
    ("backend", "package", "install"),
    [
        ("tensorflow", "TensorFlow", "pip install -e '.[tensorflow]'"),
        ("torch", "PyTorch", "pip install torch (mnist-cnn does not pin it"),
        ("jax", "JAX", "pip install -e ."),
    ],
)
def test_a_backend_whose_package_is_missing_is_refused_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, backend: str, package: str, install: str
) -> None:
    asked: list[str] = []

    def nothing_installed(name: str) -> bool:
        asked.append(name)
        return False

    monkeypatch.setattr(environment, "package_installed", nothing_installed)
    with pytest.raises(ConfigError) as raised:
        select_backend(backend)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"the {backend} backend needs {package}, which is not installed: ")
    assert install in message
    assert asked == [environment.BACKEND_PACKAGES[backend][0]]


def test_the_installed_backend_is_still_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "package_installed", lambda name: name == "jax")
    assert select_backend("jax") == "jax"  # The suite runs JAX; without TensorFlow nothing is captured.


def test_import_tensorflow_quietly_does_nothing_without_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "package_installed", lambda name: False)
    monkeypatch.delitem(environment.sys.modules, "tensorflow", raising=False)

    def no_descriptor_games(*_: object) -> None:
        raise AssertionError("stderr was captured although TensorFlow is not installed")

    monkeypatch.setattr(environment.os, "dup", no_descriptor_games)
    environment.import_tensorflow_quietly()


@pytest.mark.skipif(package_installed("torch"), reason="torch is installed here")
def test_the_cli_names_a_missing_torch_in_one_line_and_exits_2(tmp_path: Path) -> None:
    result = cli("experiment", "--backend", "torch", "--epochs", "1", "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "torch" in lines[0] and "pip install torch" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_runtime_lock_is_lean_and_the_dev_lock_contains_it() -> None:
    runtime = pins(REQUIREMENTS / "runtime.txt")
    dev = pins(REQUIREMENTS / "dev.txt")
    assert {"keras", "jax", "jaxlib", "numpy", "fastapi", "ray"} <= set(runtime)
    heavy = sorted(name for name in runtime if name.startswith(NOT_AT_RUNTIME))
    assert heavy == [], f"the runtime lock pins development or TensorFlow packages: {heavy}"
    assert {"tensorflow-cpu", "pytest", "ruff", "playwright", "ipykernel"} <= set(dev)
    assert {"tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"} <= set(dev)  # The export extra, tested.
    differing = {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version}
    assert differing == {}, f"runtime pins missing from the dev lock or at another version: {differing}"


ZEN_5_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
"""


def test_the_cpu_is_named_with_its_family_and_model_so_two_generations_of_one_name_differ() -> None:
    assert environment.cpu_model(ZEN_5_CPUINFO) == "AMD EPYC (family 26, model 2)"  # The first processor's.
    zen_4 = ZEN_5_CPUINFO.replace("26", "25").replace("model\t\t: 2\n", "model\t\t: 17\n")
    assert environment.cpu_model(zen_4) == "AMD EPYC (family 25, model 17)"
    assert environment.cpu_model("model name\t: Some ARM core\n") == "Some ARM core"  # No numbers: the name alone.


def test_the_gpu_lock_is_the_runtime_lock_plus_jaxs_cuda_plugin_at_jaxs_version() -> None:
    runtime = pins(REQUIREMENTS / "runtime.txt")
    gpu = pins(REQUIREMENTS / "gpu.txt")
    assert gpu["jax-cuda12-plugin"] == gpu["jax-cuda12-pjrt"] == runtime["jax"] == runtime["jaxlib"]
    assert any(name.startswith("nvidia-") for name in gpu)  # The CUDA libraries come with it.
    differing = {name: (version, gpu.get(name)) for name, version in runtime.items() if gpu.get(name) != version}
    assert differing == {}, f"runtime pins missing from the gpu lock or at another version: {differing}"

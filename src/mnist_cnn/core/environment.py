"""Choosing the Keras backend (before keras is imported) and describing the machine a run used."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from mnist_cnn.core.config import BACKENDS, DEFAULT_BACKEND, DEVICES
from mnist_cnn.core.errors import ConfigError

# What TensorFlow writes straight to the stderr file descriptor when it loads, whatever
# TF_CPP_MIN_LOG_LEVEL says: absl's "All log messages before absl::InitializeLog()" banner and
# glog-style lines such as "I0000 00:00:... port.cc:153] oneDNN custom operations are on"
# (on CPUs where oneDNN switches on, e.g. AVX-512 ones), and the continuation of the
# cpu_feature_guard notice.
TENSORFLOW_START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|To enable the following instructions:"
    # TensorFlow Lite's interpreter (LiteRT), on its first model: "INFO: Created TensorFlow Lite XNNPACK delegate".
    r"|INFO: Created TensorFlow Lite XNNPACK delegate)"
)


# Each Keras backend's package, its name for people, and how to install it. JAX is one of
# mnist-cnn's own dependencies; TensorFlow is the `tensorflow` extra; PyTorch is not pinned.
BACKEND_PACKAGES = {
    "tensorflow": ("tensorflow", "TensorFlow", "pip install -e '.[tensorflow]' (or choose --backend jax)"),
    "jax": ("jax", "JAX", "pip install -e . (JAX is one of mnist-cnn's own dependencies)"),
    "torch": ("torch", "PyTorch", "pip install torch (mnist-cnn does not pin it; or choose --backend jax)"),
}


def package_installed(name: str) -> bool:
    """Whether the top-level package ``name`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # A broken or half-imported package counts as missing.
        return False


def select_backend(backend: str | None = None) -> str:
    """Fix the Keras backend for this process: the argument, else $KERAS_BACKEND, else the default.

    Keras reads KERAS_BACKEND once, when it is first imported, so this must run before any
    module that imports keras. A backend whose package is not installed is refused with a
    one-line ConfigError that says how to install it.
    """
    chosen = backend or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        raise ConfigError(f"unknown Keras backend {chosen!r}: choose from {', '.join(BACKENDS)}")
    package, name, install = BACKEND_PACKAGES[chosen]
    if not package_installed(package):
        raise ConfigError(f"the {chosen} backend needs {name}, which is not installed: {install}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != chosen:
            raise ConfigError(
                f"Keras already runs the {keras.backend.backend()} backend in this process, so {chosen} cannot be "
                f"chosen: set KERAS_BACKEND={chosen} before Keras is imported"
            )
    os.environ["KERAS_BACKEND"] = chosen
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is noise here.
    # Keras imports TensorFlow, when it is installed, on every backend (to seed its generator,
    # to recognise its types when saving a model), and TensorFlow logs on import. Importing
    # it here, quietly, means no command prints a line that is not mnist-cnn's own.
    import_tensorflow_quietly()
    return chosen


# --device (core.config.DEVICES): where JAX trains. JAX's GPU support is a plugin package beside
# jaxlib, which the `gpu` extra installs (jax[cuda12]); without it JAX only ever sees the CPU.
JAX_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}  # $JAX_PLATFORMS for each device ("auto": JAX's own choice).


def check_device(device: str, backend: str | None) -> None:
    """``--device``, checked before anything loads: gpu needs the JAX backend and JAX's CUDA plugin."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}: choose from {', '.join(DEVICES)}")
    if device != "gpu":
        return
    chosen = backend or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if chosen != "jax":
        raise ConfigError(
            f"--device gpu trains on the jax backend, not {chosen}: leave out --backend or use --device cpu"
        )
    if not any(package_installed(plugin) for plugin in JAX_GPU_PLUGINS):
        raise ConfigError(
            "--device gpu: this installation's JAX has no GPU support (no CUDA plugin); on a machine with an "
            "NVIDIA GPU, pip install -e '.[gpu]', else use --device cpu"
        )


def select_device(device: str) -> None:
    """Before JAX loads: cpu keeps JAX off any accelerator, gpu asks it for CUDA (require_device checks)."""
    if device in JAX_PLATFORMS:
        os.environ["JAX_PLATFORMS"] = JAX_PLATFORMS[device]


def require_device(device: str) -> None:
    """Once the backend has loaded: ``--device gpu`` where JAX sees no GPU is one line, not a traceback."""
    if device != "gpu":
        return
    import jax

    try:
        found = any(device.platform == "gpu" for device in jax.devices())
    except (RuntimeError, AssertionError):  # JAX could not start the CUDA platform it was asked for
        found = False  # (a RuntimeError, or in jax 0.10 a bare assertion when no CUDA plugin registered).
    if not found:
        raise ConfigError("--device gpu: JAX sees no GPU on this machine (its driver or CUDA); use --device cpu")


def training_device() -> str:
    """What trains on this backend: 'cpu', or the accelerator's name ('NVIDIA H200')."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        first = jax.devices()[0]
        return "cpu" if first.platform == "cpu" else first.device_kind
    found = accelerators()
    return found[0] if found else "cpu"


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up log lines dropped; any other stderr output is kept.

    Those lines are written by C++ code to file descriptor 2 before TensorFlow reads its
    log settings, so only capturing the descriptor itself silences them. Without TensorFlow
    installed (the lean install) it does nothing, and captures nothing.
    """
    if "tensorflow" in sys.modules or not package_installed("tensorflow"):
        return
    # Without it, Keras says so itself, clearly, when it needs the missing backend.
    with tensorflow_noise_dropped(), contextlib.suppress(ImportError):
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def tensorflow_noise_dropped() -> Iterator[None]:
    """Capture file descriptor 2 while the block runs; then print what it got, less
    TensorFlow's log lines (``TENSORFLOW_START_UP_NOISE``), which C++ code writes there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines()
            kept = [line for line in lines if line.strip() and not TENSORFLOW_START_UP_NOISE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def first_processor(cpuinfo: str) -> dict[str, str]:
    """The fields of the first processor's block of /proc/cpuinfo text (the others repeat them)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            if fields:
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's name, with its family and model numbers where /proc/cpuinfo gives them.

    A cloud VM's name is often just "AMD EPYC" whatever the generation underneath, and the
    generations differ twice over in training speed here (Zen 4 against Zen 5): the numbers
    tell runs of one machine from another's. ``cpuinfo``: the text to read (the machine's own by default).
    """
    fields = first_processor(read_cpuinfo() if cpuinfo is None else cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def cpu_description() -> str:
    """Model, core count and widest vector extension: what a benchmark's ratios depend on."""
    cpuinfo = read_cpuinfo()
    flags = first_processor(cpuinfo).get("flags")
    if flags is None:
        return platform.processor() or platform.machine()
    flags = flags.split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpu_model(cpuinfo)}, {os.cpu_count()} cores, {vector}"


def memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def accelerators() -> list[str]:
    """GPUs the active backend can see (empty on a CPU-only machine)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [device.name for device in tf.config.list_physical_devices("GPU")]
        if backend == "jax":
            import jax

            return [str(device) for device in jax.devices() if device.platform != "cpu"]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # A broken driver must not stop a run from recording what it can.
        return []
    return []


def describe_environment() -> dict[str, Any]:
    """Library versions and hardware, recorded in every run's config.json."""
    import keras

    libraries = {
        name: package_version(name)
        for name in (
            "mnist-cnn",
            "keras",
            "numpy",
            "tensorflow",
            "tensorflow-cpu",
            "jax",
            "jaxlib",
            "torch",
            "matplotlib",
        )
    }
    return {
        "backend": keras.backend.backend(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "accelerators": accelerators(),
        "device": training_device(),
        "libraries": {name: version for name, version in libraries.items() if version},
    }

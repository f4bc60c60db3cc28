"""Choosing the Keras backend (before keras is imported) and describing the machine a run used."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from mnist_cnn.config import BACKENDS, DEFAULT_BACKEND


def select_backend(backend: str | None = None) -> str:
    """Fix the Keras backend for this process: the argument, else $KERAS_BACKEND, else the default.

    Keras reads KERAS_BACKEND once, when it is first imported, so this must run before any
    module that imports keras.
    """
    chosen = backend or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        raise ValueError(f"unknown Keras backend {chosen!r}: choose from {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != chosen:
            raise RuntimeError(f"keras was imported with backend {keras.backend.backend()!r} before {chosen!r} was chosen")
    os.environ["KERAS_BACKEND"] = chosen
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is noise here.
    return chosen


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        for name in ("mnist-cnn", "keras", "numpy", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "matplotlib")
    }
    return {
        "backend": keras.backend.backend(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "accelerators": accelerators(),
        "libraries": {name: version for name, version in libraries.items() if version},
    }

"""What ``serve`` checks before anything starts: the run folder, its models (or ONNX exports),
and the address. Light on purpose (no uvicorn, no Keras): the command line runs it before it
chooses a backend, so a bad folder or a taken port is one line in a second, not after Keras,
JAX and TensorFlow have loaded."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from mnist_cnn.core.config import ServerSettings
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.store.runs import RunFolder


def check_serve(run_dir: Path, server: ServerSettings) -> RunFolder:
    """The run ``serve`` would answer with, checked: a folder of trained models (and, for the
    onnx runtime, onnxruntime and the models' exports), and ``host:port`` free to listen on."""
    from mnist_cnn.predict.inference import check_onnxruntime

    run = RunFolder.existing(run_dir)
    run.trained_model_folders()  # A bad folder fails here, in one line, not in each worker.
    if server.runtime == "onnx":  # So do a missing onnxruntime and missing exports.
        check_onnxruntime()
        run.onnx_exports()
    check_address_free(server.host, server.port)  # Announce no server that cannot be there.
    return run


def address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_address_free(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will (SO_REUSEADDR), then let go: a taken port is one
    clear line before anything is announced, not uvicorn's errno after the models load."""
    family = address_family(host)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except socket.gaierror:
        raise ConfigError(f"cannot listen on {host}: no such address; choose another with --host") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use: stop what uses it or choose another with --port"
            ) from None
        if error.errno == errno.EACCES:
            raise ConfigError(
                f"port {port} on {host} needs administrator rights (ports below 1024 do): choose another with --port"
            ) from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"{host} is not an address of this machine: choose another with --host (127.0.0.1 or 0.0.0.0)"
            ) from None
        raise ConfigError(
            f"cannot listen on {host} port {port} ({error.strerror}): choose another with --port"
        ) from None

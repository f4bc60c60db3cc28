"""``mnist-cnn serve``: the server as processes on a port. One process runs uvicorn on the app;
``--workers N`` runs N under uvicorn's own supervisor (restarts, signals, health checks), each
worker listening on a socket of its own. Every connection gets the HTTP limits of serve/http.py,
and SIGTERM drains: what was accepted is answered before the process exits."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from mnist_cnn.core.config import BatchingSettings, HttpLimits, ServerSettings
from mnist_cnn.serve.http import DrainingServer, uvicorn_options
from mnist_cnn.serve.preflight import address_family, check_serve

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

SERVE_ENVIRONMENT = "MNIST_CNN_SERVE"  # How `serve --workers N` hands its settings to each worker process.
# How long uvicorn's supervisor waits for a worker's answer to its health check before it kills
# the worker and starts another. uvicorn's 5 s is less than a new worker takes on a busy 2-core
# machine just to import its modules and start answering (a killed worker was restarted about 6
# times in a row that way); a worker that really hangs is still replaced, later.
WORKER_HEALTHCHECK_S = 60


def serve(run_dir: Path, server: ServerSettings | None = None, settings: BatchingSettings | None = None) -> None:
    """Serve the page and the API; ``server.workers`` > 1 runs that many processes on one port.

    The address is announced once the server answers on it (/readyz 200): the models are loaded
    and compiled by then, and the image preparation is compiled in the background
    (serve.preparation), NumPy's answering meanwhile. Before, one line says it is loading."""
    import uvicorn

    from mnist_cnn.serve.app import create_app
    from mnist_cnn.serve.preparation import WORD_FILE, OwnProcessCompile

    server = server or ServerSettings()
    host, port, workers = server.host, server.port, server.workers
    check_serve(run_dir, server)  # The folder, its models and the port: one line each, before anything starts.
    how = f"{server.runtime}, {workers} workers" if workers > 1 else server.runtime
    print(f"mnist-cnn: loading {run_dir} ({how}) to serve on port {port}", flush=True)
    address = (
        f"mnist-cnn: serving {run_dir} ({server.runtime}) on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops"
    )
    options = server_options(server.limits)
    if workers == 1:
        app = create_app(run_dir, settings, server.runtime)
        config = uvicorn.Config(app, host=host, port=port, **options)
        instance = DrainingServer(config, on_started=lambda: print(address, flush=True))
        # As uvicorn.run: once drained, uvicorn hands the signal that stopped it on (Ctrl-C, SIGTERM).
        with contextlib.suppress(KeyboardInterrupt):
            instance.run()
        if not instance.started:
            sys.exit(STARTUP_FAILURE)
        return
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-serve-") as folder:
        # Compiled once, here, in the background: every worker loads it from numba's cache when
        # the word file says so, and answers with NumPy's preparation until then.
        compiling = OwnProcessCompile(word_file=Path(folder) / WORD_FILE)
        threading.Thread(target=compiling.wait, name="mnist-cnn-preparation", daemon=True).start()
        announcing = threading.Event()
        threading.Thread(
            target=announce_when_a_worker_is_ready, args=(Path(folder), address, announcing), daemon=True
        ).start()
        settings = settings or BatchingSettings()
        handed = {"run_dir": str(run_dir), "runtime": server.runtime, "folder": folder, **dataclasses.asdict(settings)}
        os.environ[SERVE_ENVIRONMENT] = json.dumps(handed)
        factory = "mnist_cnn.serve.process:app_from_environment"
        config = uvicorn.Config(
            factory,
            factory=True,
            workers=workers,
            host=host,
            port=port,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            **options,
        )
        try:
            if REUSE_PORT:
                supervise_own_socket_workers(config)
            else:  # uvicorn's own way: one socket, shared by the workers.
                uvicorn.run(factory, factory=True, workers=workers, host=host, port=port, **options)
        finally:
            announcing.set()
            compiling.stop()


READY_PREFIX = "ready-"  # A worker's file there once its app is ready (ready-PID).
ANNOUNCE_POLL_S = 0.1


def announce_when_a_worker_is_ready(folder: Path, address: str, stop: threading.Event) -> None:
    """``serve --workers N``: the address, once the first worker's app answers (its ready- file)."""
    while not stop.wait(ANNOUNCE_POLL_S):
        if any(entry.name.startswith(READY_PREFIX) for entry in os.scandir(folder)):
            print(address, flush=True)
            return


def server_options(limits: HttpLimits) -> dict[str, Any]:
    """uvicorn's settings for every server process: the HTTP limits, and no access log (at
    "warning" it prints nothing, but uvicorn still formats every request's line)."""
    return {"log_level": "warning", "access_log": False, **uvicorn_options(limits)}


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``serve --workers N`` (uvicorn's app factory)."""
    from mnist_cnn.serve.app import create_app
    from mnist_cnn.serve.preparation import WORD_FILE, CompiledBySupervisor

    settings = json.loads(os.environ[SERVE_ENVIRONMENT])
    run_dir, runtime, folder = Path(settings.pop("run_dir")), settings.pop("runtime"), Path(settings.pop("folder"))
    app = create_app(run_dir, BatchingSettings(**settings), runtime, CompiledBySupervisor(folder / WORD_FILE))
    (folder / f"{READY_PREFIX}{os.getpid()}").touch()  # Listening a moment later: the supervisor announces it.
    return app


# Linux spreads the connections to one port over the sockets that listen on it with
# SO_REUSEPORT; elsewhere (macOS, Windows) the option does not balance, and uvicorn's shared
# socket is used.
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` beside the other workers' (SO_REUSEPORT)."""
    listener = socket.socket(address_family(host), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    return listener


def supervise_own_socket_workers(config: uvicorn.Config) -> None:
    """uvicorn's supervisor, with workers that listen on sockets of their own (OwnSocketProcess).

    uvicorn has no setting for that: its supervisor makes each worker with the module-level
    name ``uvicorn.supervisors.multiprocess.Process``, so that name is OwnSocketProcess while
    the supervisor runs, and uvicorn's own again after. This is the one place that reaches into
    uvicorn (tests/test_serve.py runs it with real workers, one of them killed).
    """
    uvicorns_process = multiprocess.Process
    multiprocess.Process = OwnSocketProcess
    try:
        multiprocess.Multiprocess(config, sockets=[]).run()
    finally:
        multiprocess.Process = uvicorns_process


class OwnSocketProcess(multiprocess.Process):
    """A worker of ``serve --workers N``: uvicorn's worker process, listening on a socket of its
    own instead of the parent's.

    Why: with one shared socket, the worker that wakes first accepts every connection waiting,
    so a crowd that connects at once (a class opening the page, a load test) lands on one
    worker while the other idles: 16 clients measured 150 requests/s on one process of two,
    419 when each worker has its socket and the kernel spreads the connections (SO_REUSEPORT;
    bench/serve_load.py).
    """

    def target(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            listener = reuse_port_socket(self.config.host, self.config.port)
        except OSError as error:  # Taken since the check: uvicorn's supervisor stops, not restarts.
            where = f"{self.config.host}:{self.config.port}"
            print(f"mnist-cnn: cannot listen on {where} ({error.strerror}): choose another --port", file=sys.stderr)
            sys.exit(STARTUP_FAILURE)
        super().target([listener])

    @property
    def server(self) -> DrainingServer:
        """The worker's server: uvicorn's, taking its queued connections before it closes (http.py)."""
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server

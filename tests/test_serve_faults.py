"""The server against hostile and faulty clients, over real sockets on loopback: slow and silent
clients, stalled bodies, huge headers, HTTP/0.9, too many connections, a client that leaves
mid-upload, SIGTERM under load and a killed worker. Every loop here is bounded in count and time."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mnist_cnn.core.config import HttpLimits
from tests.conftest import bench_script, free_port, served

faults = bench_script("faults")  # The probes: the benchmark's and these tests' alike.

LIMITS = HttpLimits(header_timeout_s=2.0, body_timeout_s=1.0, keep_alive_s=5.0, max_connections=400)


@pytest.fixture(scope="module")
def server(onnx_run: Path) -> Iterator[str]:
    """The real app (onnxruntime, the lighter runtime) with short timeouts, so the tests wait seconds."""
    from mnist_cnn.serve.app import create_app

    with served(create_app(onnx_run, runtime="onnx"), LIMITS) as url:
        yield url


def test_slowloris_connections_are_closed_within_the_header_timeout_while_others_are_served(server: str) -> None:
    """200 clients send their headers one byte a second; each is closed within the header
    timeout, and a normal client, meanwhile, is answered at its usual pace."""
    loris = faults.slowloris(server, 200, LIMITS.header_timeout_s + 3)
    print(f"slowloris: {loris}")
    assert loris["closed"] == 200, loris
    assert loris["closed_after_s"] < LIMITS.header_timeout_s + 3, loris
    assert loris["normal_statuses"] == [200] and loris["normal_p99_ms"] < 2000, loris


def test_a_silent_connection_is_closed_after_the_header_timeout(server: str) -> None:
    with faults.connect(server) as connection:
        received, waited = faults.read_until_closed(connection, LIMITS.header_timeout_s + 5)
    assert received == b"" and LIMITS.header_timeout_s - 0.5 < waited < LIMITS.header_timeout_s + 3, waited


def test_a_stalled_body_gets_408_and_is_dropped_after_the_body_timeout(server: str) -> None:
    with faults.connect(server) as connection:
        connection.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
            + faults.digit_png()[:100]
        )
        received, waited = faults.read_until_closed(connection, LIMITS.body_timeout_s + 5)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"stopped" in received and waited < LIMITS.body_timeout_s + 3, waited


@pytest.mark.parametrize("dribbled", [False, True])
def test_a_one_megabyte_header_is_refused_with_431(server: str, dribbled: bool) -> None:
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"
    with faults.connect(server) as connection:
        with contextlib.suppress(OSError):  # The server may close before the whole megabyte is sent.
            if dribbled:
                for start in range(0, len(header), 8192):
                    connection.sendall(header[start : start + 8192])
            else:
                connection.sendall(header)
        received, _ = faults.read_until_closed(connection, 5)
    assert received.startswith(b"HTTP/1.1 431"), received[:200]
    assert b"32 KB" in received


def test_an_http_0_9_request_is_answered_at_once(server: str) -> None:
    with faults.connect(server) as connection:
        connection.sendall(b"GET /\r\n")
        received, waited = faults.read_until_closed(connection, 5)
    assert received.startswith(b"HTTP/1.1 400") and b"HTTP/0.9" in received, received
    assert waited < 2.0


def test_past_the_connection_cap_a_new_connection_gets_503(onnx_run: Path) -> None:
    from mnist_cnn.serve.app import create_app

    limits = HttpLimits(max_connections=5)
    with served(create_app(onnx_run, runtime="onnx"), limits) as url:
        held = [faults.connect(url) for _ in range(5)]
        time.sleep(0.2)
        with faults.connect(url) as extra:
            received, _ = faults.read_until_closed(extra, 5)
        for connection in held:
            connection.close()
        time.sleep(0.2)
        assert httpx.get(f"{url}/healthz").status_code == 200  # Served again once the others left.
    assert received.startswith(b"HTTP/1.1 503") and b"too many connections" in received


def test_a_client_that_leaves_mid_upload_is_one_quiet_line(server: str, caplog: pytest.LogCaptureFixture) -> None:
    """Multipart and plain bodies alike: no traceback in the server's log."""
    boundary = "x" * 16
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 100000\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.INFO):
        for body in (
            head + faults.digit_png()[:50],
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\nab",
        ):
            with faults.connect(server) as connection:
                connection.sendall(body)
                time.sleep(0.2)
            time.sleep(0.3)
        assert httpx.get(f"{server}/healthz").status_code == 200
    assert not [record for record in caplog.records if record.exc_info], [r.getMessage() for r in caplog.records]
    assert "a client left before its upload was read" in caplog.text


def test_a_middleware_added_to_the_app_sees_fast_path_predictions(onnx_run: Path) -> None:
    """The documented rule (serve/fast_path.py): what a user adds to the app wraps the fast path."""
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from mnist_cnn.serve.app import create_app

    app = create_app(onnx_run, runtime="onnx")

    @app.middleware("http")
    async def require_token(request, call_next):
        if request.headers.get("authorization") != "Bearer secret":
            return JSONResponse({"detail": "no token"}, status_code=401)
        return await call_next(request)

    with TestClient(app) as client:
        refused = client.post("/api/predict", content=faults.digit_png(), headers={"Content-Type": "image/png"})
        allowed = client.post(
            "/api/predict",
            content=faults.digit_png(),
            headers={"Content-Type": "image/png", "Authorization": "Bearer secret"},
        )
    assert refused.status_code == 401 and allowed.status_code == 200, (refused.text, allowed.text)


def test_the_models_endpoint_names_the_run_by_its_id_not_its_path(server: str, onnx_run: Path) -> None:
    from mnist_cnn.store.runs import RunFolder

    listing = httpx.get(f"{server}/api/models")
    assert listing.json()["run"] == RunFolder.existing(onnx_run).identity()
    assert str(onnx_run) not in listing.text and str(onnx_run.parent) not in listing.text


# Real `mnist-cnn serve` processes.


@pytest.mark.slow
def test_sigterm_under_32_clients_answers_every_accepted_request_then_exits(onnx_run: Path) -> None:
    drain = faults.sigterm_under_load(onnx_run, free_port(), clients=32)
    print(f"SIGTERM under 32 clients: {drain}")
    assert drain["answered_before_signal"] > 0
    assert drain["resets"] == 0, drain["errors"]
    assert drain["other_statuses"] == 0 and drain["exit_code"] == 0 and not drain["traceback"], drain
    assert drain["exit_after_s"] < HttpLimits().drain_s + 5, drain  # The drain, then the process ends.


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (uvicorn starts them by spawn; the resource tracker is not one)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
                if int(fields[1]) == supervisor and b"multiprocessing.spawn" in command:
                    children.add(int(entry.name))
    return children


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_is_replaced_once_and_ready_within_its_start_up_time(
    onnx_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy core, from an empty numba cache (a first start on a machine): the preparation is
    compiled once, by the supervisor's process of its own while the workers answer, so a
    replacement only loads it from the cache, and answers in time. The start-up counted here is
    the first start's up to the compiled preparation in both workers (what it was when the
    workers waited for the compile)."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-cache"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    process = faults.start_serve(onnx_run, port, "--workers", "2")
    try:
        faults.wait_ready(url, process)
        deadline = time.monotonic() + 600
        compiled_in: set[int] = set()
        while len(compiled_in) < 2:
            assert time.monotonic() < deadline, f"the preparation was compiled in {compiled_in} only"
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{url}/readyz", timeout=2).json()
                if ready["preparation"] == "compiled":
                    compiled_in.add(ready["process"])
            time.sleep(0.1)
        start_up_s = time.monotonic() - started
        workers = worker_pids(process.pid)
        assert workers == compiled_in, (workers, compiled_in)
        victim = min(workers)
        with faults.busy_core(spinners=4), faults.Crowd(url, 8) as crowd:
            time.sleep(1)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replacement = None
            while replacement is None:
                assert time.monotonic() - killed < start_up_s + 60, "no replacement worker"
                new = worker_pids(process.pid) - workers
                replacement = next(iter(new), None)
                time.sleep(0.1)
            ready_after = None
            while ready_after is None and time.monotonic() - killed < start_up_s + 60:
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(f"{url}/readyz", timeout=2).json()
                    # Loaded from numba's cache (the word file says it is filled), never compiled again.
                    if ready["process"] == replacement and ready["preparation"] == "compiled":
                        ready_after = time.monotonic() - killed
                time.sleep(0.05)
            time.sleep(6)  # A restart loop would show as further new workers here.
            seen = worker_pids(process.pid)
        assert ready_after is not None, "the replacement never answered"
        assert seen == (workers - {victim}) | {replacement}, (workers, victim, replacement, seen)
        print(f"first start {start_up_s:.1f} s; a killed worker's replacement answered after {ready_after:.1f} s")
        assert crowd.answered > 0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        process.communicate(timeout=30)


class FakeTransport:
    """What the protocol writes and whether it closed: enough of asyncio's transport for it."""

    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_write_buffer_limits(self, *args: object, **kwargs: object) -> None: ...


def test_a_connection_accepted_but_not_yet_read_at_shutdown_is_answered_not_reset() -> None:
    """Under load the event loop falls behind its sockets: at SIGTERM a connection can be
    accepted with its request still unread. uvicorn's own protocol closes it at once (a reset,
    with the request in the socket); here it is read and answered, then closed."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from mnist_cnn.serve.process import server_options

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> FakeTransport:
        config = uvicorn.Config(app, **server_options(HttpLimits()))
        config.load()
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.shutdown()  # SIGTERM, before the loop read the request.
        assert not transport.closed
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(20):
            await asyncio.sleep(0.01)
        return transport

    transport = asyncio.run(scenario())
    assert transport.written.startswith(b"HTTP/1.1 200") and b"connection: close" in transport.written.lower()
    assert transport.closed

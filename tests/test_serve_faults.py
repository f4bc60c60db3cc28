"""The server against hostile and faulty clients, over real sockets on loopback: slow and silent
clients, stalled bodies, huge headers, HTTP/0.9, too many connections, a client that leaves
mid-upload, SIGTERM under load and a killed worker. Every loop here is bounded in count and time."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mnist_cnn.core.config import HttpLimits
from tests.conftest import free_port, served

LIMITS = HttpLimits(header_timeout_s=2.0, body_timeout_s=1.0, keep_alive_s=5.0, max_connections=400)


def upload() -> bytes:
    """A small drawn digit (a vertical bar: a 1), as a PNG."""
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (28, 8, 36, 56))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(onnx_run: Path) -> Iterator[str]:
    """The real app (onnxruntime, the lighter runtime) with short timeouts, so the tests wait seconds."""
    from mnist_cnn.serve.app import create_app

    with served(create_app(onnx_run, runtime="onnx"), LIMITS) as url:
        yield url


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def connect(url: str) -> socket.socket:
    return socket.create_connection(address(url), timeout=10)


def read_until_closed(connection: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, received = time.monotonic(), b""
    connection.settimeout(limit_s)
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := connection.recv(65536):
            received += chunk
    return received, time.monotonic() - start


def test_slowloris_connections_are_closed_within_the_header_timeout_while_others_are_served(server: str) -> None:
    """200 clients send their headers one byte a second; each is closed within the header
    timeout, and a normal client, meanwhile, is answered at its usual pace."""
    selector = selectors.DefaultSelector()
    opened = time.monotonic()
    slow = [connect(server) for _ in range(200)]
    for connection in slow:
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    closed_after: dict[int, float] = {}
    latencies: list[float] = []
    with httpx.Client(base_url=server, timeout=10) as client:
        for step in range(int(LIMITS.header_timeout_s) + 4):  # Bounded: a few seconds past the timeout.
            for connection in slow:
                if connection.fileno() not in closed_after:
                    with contextlib.suppress(OSError):
                        connection.send(request[step : step + 1])
            began = time.monotonic()
            while time.monotonic() - began < 1.0:
                for key, _ in selector.select(timeout=0.05):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        closed_after[key.fileobj.fileno()] = time.monotonic() - opened
                        selector.unregister(key.fileobj)
                sent = time.monotonic()
                assert client.post("/api/predict", content=upload()).status_code == 200
                latencies.append(time.monotonic() - sent)
            if len(closed_after) == len(slow):
                break
    for connection in slow:
        connection.close()
    assert len(closed_after) == 200, f"{200 - len(closed_after)} slow connections still open"
    assert max(closed_after.values()) < LIMITS.header_timeout_s + 1.5, max(closed_after.values())
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    print(
        f"slowloris: 200 closed after {max(closed_after.values()):.2f} s at most; normal client p99 {p99 * 1000:.0f} ms"
    )
    assert p99 < 2.0, latencies


def test_a_silent_connection_is_closed_after_the_header_timeout(server: str) -> None:
    with connect(server) as connection:
        received, waited = read_until_closed(connection, LIMITS.header_timeout_s + 3)
    assert received == b"" and LIMITS.header_timeout_s - 0.5 < waited < LIMITS.header_timeout_s + 1.5, waited


def test_a_stalled_body_gets_408_and_is_dropped_after_the_body_timeout(server: str) -> None:
    with connect(server) as connection:
        connection.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
            + upload()[:100]
        )
        received, waited = read_until_closed(connection, LIMITS.body_timeout_s + 3)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"stopped" in received and waited < LIMITS.body_timeout_s + 1.5, waited


@pytest.mark.parametrize("dribbled", [False, True])
def test_a_one_megabyte_header_is_refused_with_431(server: str, dribbled: bool) -> None:
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"
    with connect(server) as connection:
        with contextlib.suppress(OSError):  # The server may close before the whole megabyte is sent.
            if dribbled:
                for start in range(0, len(header), 8192):
                    connection.sendall(header[start : start + 8192])
            else:
                connection.sendall(header)
        received, _ = read_until_closed(connection, 5)
    assert received.startswith(b"HTTP/1.1 431"), received[:200]
    assert b"32 KB" in received


def test_an_http_0_9_request_is_answered_at_once(server: str) -> None:
    with connect(server) as connection:
        connection.sendall(b"GET /\r\n")
        received, waited = read_until_closed(connection, 5)
    assert received.startswith(b"HTTP/1.1 400") and b"HTTP/0.9" in received, received
    assert waited < 1.0


def test_past_the_connection_cap_a_new_connection_gets_503(onnx_run: Path) -> None:
    from mnist_cnn.serve.app import create_app

    limits = HttpLimits(max_connections=5)
    with served(create_app(onnx_run, runtime="onnx"), limits) as url:
        held = [connect(url) for _ in range(5)]
        time.sleep(0.2)
        with connect(url) as extra:
            received, _ = read_until_closed(extra, 5)
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
        for body in (head + upload()[:50], b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\nab"):
            with connect(server) as connection:
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
        refused = client.post("/api/predict", content=upload(), headers={"Content-Type": "image/png"})
        allowed = client.post(
            "/api/predict", content=upload(), headers={"Content-Type": "image/png", "Authorization": "Bearer secret"}
        )
    assert refused.status_code == 401 and allowed.status_code == 200, (refused.text, allowed.text)


def test_the_models_endpoint_names_the_run_by_its_id_not_its_path(server: str, onnx_run: Path) -> None:
    from mnist_cnn.store.runs import RunFolder

    listing = httpx.get(f"{server}/api/models")
    assert listing.json()["run"] == RunFolder.existing(onnx_run).identity()
    assert str(onnx_run) not in listing.text and str(onnx_run.parent) not in listing.text


# Real `mnist-cnn serve` processes.


def start_serve(run: Path, port: int, *extra: str) -> subprocess.Popen:
    """``mnist-cnn serve`` on one core (its workers too), where busy_core can crowd it."""
    command = [sys.executable, "-m", "mnist_cnn.cli", "serve", str(run), "--runtime", "onnx", "--port", str(port)]
    return subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CORE}),
    )


SERVER_CORE = 0


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """A busy machine, as in production under load: a process spinning on the server's core, so
    that the server's event loop falls behind its sockets (and a new worker starts slowly)."""
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.monotonic() + 300\nwhile time.monotonic() < end: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CORE}),
    )
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen, limit_s: float = 300) -> float:
    """Seconds until /readyz answers 200 (the process must stay up meanwhile)."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"not ready in {limit_s} s")


class Crowd:
    """Clients that post uploads until stopped, half on kept-alive connections and half on a new
    connection each time, counting answers, refused connections (after the listener closed) and
    resets (a request the server accepted and dropped)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.stop = url, threading.Event()
        self.answered = self.refused = self.resets = self.other = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(n % 2 == 0,)) for n in range(clients)]

    def client(self, keep_alive: bool) -> None:
        body = upload()
        session = httpx.Client(timeout=30, transport=httpx.HTTPTransport(retries=0)) if keep_alive else None
        for _ in range(10_000):  # Bounded; stopped long before.
            if self.stop.is_set():
                break
            try:
                if session is not None:
                    response = session.post(f"{self.url}/api/predict", content=body)
                else:
                    response = httpx.post(f"{self.url}/api/predict", content=body, timeout=30)
                with self.lock:
                    self.answered += response.status_code == 200
                    self.other += response.status_code != 200
            except httpx.ConnectError:
                with self.lock:
                    self.refused += 1
                time.sleep(0.05)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as error:
                with self.lock:
                    self.resets += 1
                    self.errors.append(repr(error))
        if session is not None:
            session.close()

    def __enter__(self) -> Crowd:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.mark.slow
def test_sigterm_under_32_clients_answers_every_accepted_request_then_exits(onnx_run: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(onnx_run, port)
    try:
        wait_ready(url, process)
        with busy_core(), Crowd(url, 32) as crowd:
            time.sleep(3)
            answered_before = crowd.answered
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=HttpLimits().drain_s + 10)
            exited_after = time.monotonic() - signalled
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)
    print(
        f"SIGTERM under 32 clients: {crowd.answered} answered ({answered_before} before the signal), "
        f"{crowd.resets} resets, {crowd.refused} refused after close, exit after {exited_after:.2f} s"
    )
    assert answered_before > 0
    assert crowd.resets == 0, crowd.errors[:5]
    assert crowd.other == 0
    assert code == 0, stderr
    assert exited_after < HttpLimits().drain_s + 2
    assert "Traceback" not in stderr, stderr


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
    compiled once before the workers start, so a replacement only loads it, and answers in time."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-cache"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(onnx_run, port, "--workers", "2")
    try:
        start_up_s = wait_ready(url, process)
        deadline = time.monotonic() + 120
        while len(workers := worker_pids(process.pid)) < 2:
            assert time.monotonic() < deadline, "two workers never came up"
            time.sleep(0.2)
        victim = min(workers)
        with busy_core(), Crowd(url, 8) as crowd:
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
                    if httpx.get(f"{url}/readyz", timeout=2).json().get("process") == replacement:
                        ready_after = time.monotonic() - killed
                time.sleep(0.05)
            time.sleep(10)  # A restart loop would show as further new workers here.
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

"""How the server holds up against hostile and faulty clients: ``make bench-faults``.

Starts ``mnist-cnn serve RUN --runtime onnx`` on loopback and tries each case on it: slow,
silent and stalled clients, a huge header, HTTP/0.9, uploads that are not images or are traps
for decoders, and a SIGTERM under 32 clients. Prints, and writes as JSON, what was tried, what
was handled, and what was lost (requests the server accepted and dropped). Every loop is
bounded in count and time, and every address is on this machine. The probes are also the test
suite's (tests/test_serve_faults.py imports them).

    python bench/faults.py RUN_DIR [--out docs/faults-bench.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench_helpers import digit_png, free_port

SERVER_CORE = 0


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


def slowloris(url: str, connections: int, limit_s: float) -> dict[str, Any]:
    """``connections`` clients that send their headers one byte a second, for at most
    ``limit_s``, while a normal client posts digits: when each slow one was closed, and the
    normal client's latencies."""
    selector = selectors.DefaultSelector()
    opened = time.monotonic()
    slow = [connect(url) for _ in range(connections)]
    for connection in slow:
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * int(limit_s + 10)
    closed_after: dict[int, float] = {}
    latencies, statuses = [], []
    with httpx.Client(base_url=url, timeout=10) as client:
        for step in range(int(limit_s) + 1):
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
                statuses.append(client.post("/api/predict", content=digit_png()).status_code)
                latencies.append(time.monotonic() - sent)
            if len(closed_after) == len(slow):
                break
    for connection in slow:
        connection.close()
    return {
        "closed": len(closed_after),
        "closed_after_s": max(closed_after.values(), default=None),
        "normal_p99_ms": 1000 * (statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]),
        "normal_statuses": sorted(set(statuses)),
    }


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


@contextlib.contextmanager
def busy_core(spinners: int = 1) -> Iterator[None]:
    """A busy machine, as in production under load: processes spinning on the server's core, so
    that the server's event loop falls behind its sockets (and a new worker starts slowly)."""
    spinning = [
        subprocess.Popen(
            [sys.executable, "-c", "import time\nend = time.monotonic() + 300\nwhile time.monotonic() < end: pass"],
            preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CORE}),
        )
        for _ in range(spinners)
    ]
    try:
        yield
    finally:
        for spinner in spinning:
            spinner.kill()
            spinner.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen, limit_s: float = 300) -> float:
    """Seconds until /readyz answers 200 (the process must stay up meanwhile)."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.communicate()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.2)
    raise RuntimeError(f"not ready in {limit_s} s")


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
        body = digit_png()
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


def sigterm_under_load(run: Path, port: int, clients: int = 32) -> dict[str, Any]:
    """A server on a busy core, ``clients`` posting, then SIGTERM: what was answered and lost."""
    url = f"http://127.0.0.1:{port}"
    process = start_serve(run, port)
    try:
        wait_ready(url, process)
        with busy_core(), Crowd(url, clients) as crowd:
            time.sleep(3)
            before = crowd.answered
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            exited_after = time.monotonic() - signalled
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)
    return {
        "answered": crowd.answered,
        "answered_before_signal": before,
        "resets": crowd.resets,
        "other_statuses": crowd.other,
        "refused_after_close": crowd.refused,
        "exit_code": code,
        "exit_after_s": exited_after,
        "traceback": "Traceback" in stderr,
        "errors": crowd.errors[:5],
    }


def png_of_size(width: int, height: int) -> bytes:
    """A valid PNG header for any size (one black IDAT row): a decoder trap that stays tiny."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    row = zlib.compress(b"\x00" * (width + 1) * min(height, 1), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def hostile_uploads() -> dict[str, bytes]:
    """Uploads that are not usable images, or are traps for an image decoder."""
    sample = Image.new("L", (32, 32), 128)

    def saved(kind: str) -> bytes:
        buffer = io.BytesIO()
        sample.save(buffer, format=kind)
        return buffer.getvalue()

    return {
        "EPS (runs Ghostscript if decoded)": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n",
        "PDF": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
        "SPIDER": saved("SPIDER"),
        "TIFF": saved("TIFF"),
        "a 19,999,999 x 1 PNG line": png_of_size(19_999_999, 1),
        "a PNG whose header says 100,000 x 100,000": png_of_size(100_000, 100_000),
        "a truncated PNG": digit_png()[:60],
        "text, not an image": b"hello, this is not a picture",
    }


def hostile_upload_cases(url: str) -> list[dict[str, Any]]:
    cases = []
    for name, body in hostile_uploads().items():
        sent = time.monotonic()
        response = httpx.post(f"{url}/api/predict", content=body, timeout=30)
        cases.append(
            {
                "case": f"upload: {name}",
                "handled": 400 <= response.status_code < 500 and set(response.json()) == {"detail"},
                "detail": f"{response.status_code} in {1000 * (time.monotonic() - sent):.0f} ms",
            }
        )
    return cases


def connection_cases(url: str) -> list[dict[str, Any]]:
    """The silent client, the stalled body, the 1 MB header and HTTP/0.9, on one server."""
    cases = []
    with connect(url) as connection:
        received, waited = read_until_closed(connection, 30)
    cases.append({"case": "a silent connection", "handled": received == b"", "detail": f"closed after {waited:.1f} s"})
    with connect(url) as connection:
        connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
        received, waited = read_until_closed(connection, 30)
    stalled = received[:12].decode(errors="replace")
    cases.append(
        {"case": "a stalled body", "handled": b" 408 " in received[:13], "detail": f"{stalled} {waited:.1f} s"}
    )
    with connect(url) as connection:
        with contextlib.suppress(OSError):
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n")
        received, waited = read_until_closed(connection, 10)
    cases.append({"case": "a 1 MB header", "handled": b" 431 " in received[:13], "detail": received[:12].decode()})
    with connect(url) as connection:
        connection.sendall(b"GET /\r\n")
        received, waited = read_until_closed(connection, 10)
    cases.append({"case": "HTTP/0.9", "handled": b" 400 " in received[:13], "detail": f"answered in {waited:.2f} s"})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder with ONNX exports")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON (default: print only)")
    args = parser.parse_args()
    from mnist_cnn.core.config import HttpLimits
    from mnist_cnn.core.environment import cpu_description

    limits = HttpLimits()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(args.run_dir, port)
    try:
        wait_ready(url, process)
        loris = slowloris(url, 200, limits.header_timeout_s + 5)
        cases = [
            {
                "case": "200 slowloris connections (a header byte a second)",
                "handled": loris["closed"] == 200 and loris["normal_statuses"] == [200],
                "detail": f"{loris['closed']} closed after {loris['closed_after_s']:.1f} s at most; "
                f"a normal client's p99 {loris['normal_p99_ms']:.0f} ms",
            },
            *connection_cases(url),
            *hostile_upload_cases(url),
        ]
        up = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    drain = sigterm_under_load(args.run_dir, free_port())
    cases.append(
        {
            "case": "SIGTERM under 32 clients on a busy core",
            "handled": drain["resets"] == 0 and drain["exit_code"] == 0 and not drain["traceback"],
            "detail": f"{drain['resets']} resets, {drain['answered']} answered, "
            f"exit after {drain['exit_after_s']:.1f} s",
        }
    )
    handled = sum(case["handled"] for case in cases)
    print(f"mnist-cnn serve against hostile and faulty clients, on {cpu_description()}")
    for case in cases:
        print(f"  {'handled' if case['handled'] else 'FAILED '}  {case['case']}: {case['detail']}")
    print(f"{len(cases)} cases tried, {handled} handled; requests lost on SIGTERM: {drain['resets']}; up after: {up}")
    if args.out:
        figures = {
            "cpu": cpu_description(),
            "limits": dataclasses.asdict(limits),
            "cases": cases,
            "slowloris": loris,
            "sigterm": drain,
            "tried": len(cases),
            "handled": handled,
        }
        args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

"""`serve --runtime onnx`: onnxruntime answers as the JAX server does, and a crowd is shed at admission."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.conftest import cli, free_port, served
from tests.test_serve import MALFORMED, mnist_upload

CLIENTS = 32
REQUESTS_PER_CLIENT = 8


@pytest.fixture(scope="module")
def servers(onnx_run: Path) -> Iterator[dict[str, str]]:
    """The JAX server and the ONNX server of the same run, side by side."""
    from mnist_cnn.serve.app import create_app

    with served(create_app(onnx_run)) as jax_url, served(create_app(onnx_run, runtime="onnx")) as onnx_url:
        yield {"jax": jax_url, "onnx": onnx_url}


def send_concurrently(url: str, bodies: list[bytes]) -> list[tuple[int, dict | None]]:
    """``CLIENTS`` clients at once, each sending its share of ``bodies``; (status, answer) per body."""
    outcomes: list[tuple[int, dict | None] | None] = [None] * len(bodies)

    def client(number: int) -> None:
        with httpx.Client(timeout=60) as http:
            for slot in range(number, len(bodies), CLIENTS):
                response = http.post(f"{url}/api/predict", content=bodies[slot])
                outcomes[slot] = (response.status_code, response.json())

    threads = [threading.Thread(target=client, args=(number,)) for number in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert None not in outcomes
    return outcomes


def test_the_onnx_server_answers_a_crowd_as_the_jax_server_does(servers: dict[str, str]) -> None:
    """32 concurrent clients on each server, the same uploads (digits and malformed bodies):
    the same statuses, the same digits and probabilities within 1e-5, batches shared."""
    uploads = [mnist_upload(index, ("PNG", "JPEG")[index % 2], dark_on_light=index % 4 < 2) for index in range(24)]
    bodies = [
        MALFORMED[slot % len(MALFORMED)][0] if slot % 5 == 4 else uploads[slot % len(uploads)]
        for slot in range(CLIENTS * REQUESTS_PER_CLIENT)
    ]
    answers = {runtime: send_concurrently(url, bodies) for runtime, url in servers.items()}
    for slot, ((jax_status, jax_answer), (onnx_status, onnx_answer)) in enumerate(
        zip(answers["jax"], answers["onnx"], strict=True)
    ):
        expected_status = MALFORMED[slot % len(MALFORMED)][1] if slot % 5 == 4 else 200
        assert (jax_status, onnx_status) == (expected_status, expected_status), slot
        if expected_status != 200:
            assert onnx_answer == jax_answer, slot  # The same one-line message.
            continue
        assert onnx_answer["model_input_png"] == jax_answer["model_input_png"]
        assert set(onnx_answer["predictions"]) == {"Model_A", "Model_B"}
        for name, want in jax_answer["predictions"].items():
            got = onnx_answer["predictions"][name]
            assert got["digit"] == want["digit"], (slot, name)
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
    ready = httpx.get(f"{servers['onnx']}/readyz").json()
    assert ready["answered"] == sum(1 for status, _ in answers["onnx"] if status == 200)
    assert ready["batches"] < ready["answered"]  # Requests really shared forward passes.


def test_the_runtime_is_reported_and_the_models_are_the_same(servers: dict[str, str]) -> None:
    described = {runtime: httpx.get(f"{url}/api/models").json() for runtime, url in servers.items()}
    ready = {runtime: httpx.get(f"{url}/readyz").json() for runtime, url in servers.items()}
    for runtime in ("jax", "onnx"):
        assert described[runtime]["runtime"] == runtime and ready[runtime]["runtime"] == runtime
        assert ready[runtime]["ready"] is True and ready[runtime]["models"] == ["Model_A", "Model_B"]
    for jax_model, onnx_model in zip(described["jax"]["models"], described["onnx"]["models"], strict=True):
        assert {**onnx_model, "runtime": "jax"} == jax_model
    assert [model["parameters"] for model in described["onnx"]["models"]] == [1_103_230, 2_185_150]


@contextlib.contextmanager
def serve_process(run_dir: Path, *options: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`mnist-cnn serve RUN_DIR OPTIONS` as a real process, until /readyz says ready."""
    port = free_port()
    command = [sys.executable, "-m", "mnist_cnn.cli", "serve", str(run_dir), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # Generous: the other test process works meanwhile (the image preparation is compiled in
        # the background, and no longer holds readiness back).
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the server did not come up"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_onnx_server_process_loads_neither_jax_nor_tensorflow(onnx_run: Path) -> None:
    """The ONNX runtime's point: `mnist-cnn serve --runtime onnx` is a process with neither
    JAX nor TensorFlow mapped in (read from /proc/PID/maps), answering from onnxruntime."""
    with serve_process(onnx_run, "--runtime", "onnx") as (process, url):
        assert httpx.get(f"{url}/readyz").json()["runtime"] == "onnx"
        libraries = Path(f"/proc/{process.pid}/maps").read_text()
        assert "onnxruntime" in libraries
        for package in ("jaxlib", "tensorflow"):  # Their native libraries (Keras itself is Python).
            assert package not in libraries, package
    # One line while it loads, and the address once it answers there (/readyz said 200 above).
    lines = process.stdout.read().splitlines()
    assert lines[0].startswith("mnist-cnn: loading") and "http://" not in lines[0], lines
    assert any("(onnx) on http://127.0.0.1:" in line for line in lines[1:]), lines


@pytest.mark.slow
def test_two_onnx_server_processes_answer_on_one_port(onnx_run: Path) -> None:
    """`--workers 2` hands the runtime to each worker process: both answer with onnxruntime,
    and a crowd that connects at once is spread over both (each worker listens on a socket of
    its own: with one shared socket, the first worker to wake took every connection)."""
    upload = mnist_upload(4, "PNG", dark_on_light=True)
    with serve_process(onnx_run, "--runtime", "onnx", "--workers", "2") as (_, url):
        deadline = time.monotonic() + 120  # /readyz said ready in one worker; wait for both.
        while len({httpx.get(f"{url}/readyz").json()["process"] for _ in range(16)}) < 2:
            assert time.monotonic() < deadline, "the second worker never answered"
            time.sleep(0.5)
        answers = [httpx.post(f"{url}/api/predict", content=upload, timeout=60) for _ in range(8)]
        runtimes = {httpx.get(f"{url}/api/models").json()["runtime"] for _ in range(8)}
        # 16 connections opened in a burst, before any request (as a class opening the page, or
        # wrk): with one shared socket, the worker that woke first accepted all of them.
        host, port = urlsplit(url).hostname, urlsplit(url).port
        crowd = [http.client.HTTPConnection(host, port, timeout=60) for _ in range(16)]
        for connection in crowd:
            connection.connect()
        answered_by = []
        for connection in crowd:
            connection.request("GET", "/readyz")
            answered_by.append(json.loads(connection.getresponse().read())["process"])
            connection.close()
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({answer.content for answer in answers}) == 1  # Either process, the same answer.
    assert runtimes == {"onnx"}
    shares = sorted(Counter(answered_by).values())
    assert len(shares) == 2 and shares[0] >= 2, shares  # Both workers hold some of the 16 connections.


def one_line_error(*arguments: object) -> str:
    """``mnist-cnn ARGUMENTS`` must exit 2 with one line on stderr and no server announced."""
    result = cli(*arguments)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "serving" not in result.stdout and "http://" not in result.stdout
    return lines[0]


def test_serve_onnx_without_exports_names_the_export_command(smoke_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"  # A copy without exports, whatever another test did to the shared run.
    shutil.copytree(smoke_run, run_dir, ignore=shutil.ignore_patterns("exports"))
    line = one_line_error("serve", run_dir, "--runtime", "onnx", "--port", free_port())
    assert "no ONNX export" in line and f"mnist-cnn export {run_dir} --format onnx" in line


def test_serve_onnx_with_an_export_missing_names_the_export_command(onnx_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(onnx_run, run_dir)
    (run_dir / "exports" / "onnx" / "Model_B.onnx").unlink()
    line = one_line_error("serve", run_dir, "--runtime", "onnx", "--port", free_port())
    assert "Model_B.onnx is missing" in line and "--format onnx" in line


def retrained_copy(onnx_run: Path, tmp_path: Path) -> Path:
    """A copy of the run whose Model_B was trained again after its export (here: given other weights)."""
    run_dir = tmp_path / "run"
    shutil.copytree(onnx_run, run_dir)
    shutil.copyfile(run_dir / "Model_A" / "model.keras", run_dir / "Model_B" / "model.keras")
    return run_dir


def test_serve_onnx_with_a_model_trained_again_names_the_export_command(onnx_run: Path, tmp_path: Path) -> None:
    run_dir = retrained_copy(onnx_run, tmp_path)
    line = one_line_error("serve", run_dir, "--runtime", "onnx", "--port", free_port())
    assert "export of Model_B was made from an earlier model.keras" in line, line
    assert "Model_A" not in line and f"mnist-cnn export {run_dir} --format onnx" in line


def test_serve_onnx_without_onnxruntime_names_the_install(onnx_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails.
    line = one_line_error("serve", onnx_run, "--runtime", "onnx", "--port", free_port())
    assert "onnxruntime" in line and "pip install -e '.[export]'" in line


def test_an_unknown_runtime_is_one_line_and_the_help_states_the_default(smoke_run: Path) -> None:
    line = one_line_error("serve", smoke_run, "--runtime", "tflite", "--port", free_port())
    assert "unknown runtime 'tflite'" in line and "jax or onnx" in line
    help_text = " ".join(cli("serve", "--help").stdout.split())
    assert "--runtime {jax,onnx}" in help_text and "(default: jax)" in help_text


def test_requests_being_decoded_count_against_the_queue(onnx_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crowd is shed at admission: with a queue of 2 and two uploads still being decoded
    (the worker's queue itself empty), a third request is refused at once with 503."""
    from fastapi.testclient import TestClient

    from mnist_cnn.core.config import BatchingSettings
    from mnist_cnn.serve import app as app_module

    release = threading.Event()
    decoding = threading.Semaphore(0)
    prepare = app_module.prepare_upload

    def slow_prepare(content: bytes, polarity: str = "auto"):
        decoding.release()
        release.wait(timeout=60)
        return prepare(content, polarity)

    monkeypatch.setattr(app_module, "prepare_upload", slow_prepare)
    app = app_module.create_app(onnx_run, BatchingSettings(max_batch=1, queue_size=2), runtime="onnx")
    upload = mnist_upload(3, "PNG", dark_on_light=True)
    statuses: list[int] = []
    with TestClient(app) as http:
        waiting = [
            threading.Thread(target=lambda: statuses.append(http.post("/api/predict", content=upload).status_code))
            for _ in range(2)
        ]
        for thread in waiting:
            thread.start()
        assert decoding.acquire(timeout=30) and decoding.acquire(timeout=30), "the uploads never reached decoding"
        assert app.state.worker._queue.qsize() == 0
        refused = http.post("/api/predict", content=upload)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1" and "busy" in refused.json()["detail"]
        release.set()
        for thread in waiting:
            thread.join(timeout=60)
        assert statuses == [200, 200]
        assert http.post("/api/predict", content=upload).status_code == 200  # Places are given back.

"""The web app: the JSON API over real HTTP, recognition of non-MNIST digits, and the page in Chromium."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image, ImageFont

from mnist_cnn.data.robustness import fonts, printed_digit
from tests.conftest import cli

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """Both models trained a little (12,000 images, 3 epochs of Adam): enough to read clear digits."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    arguments = [
        "experiment",
        "--limit",
        "12000",
        "--epochs",
        "3",
        "--optimizer",
        "adam",
        "--learning-rate",
        "0.001",
        "--out",
    ]
    result = cli(*arguments, run_dir)
    assert result.returncode == 0, result.stderr
    return run_dir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_run: Path):
    """The real app, served by uvicorn on a loopback port in a background thread."""
    from mnist_cnn.serve.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(trained_run), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def font_digit(digit: int, font: ImageFont.FreeTypeFont, dark_on_light: bool) -> bytes:
    """A printed digit (the robustness set's own drawing) as the PNG bytes a browser would upload."""
    buffer = io.BytesIO()
    printed_digit(digit, font, dark_on_light).save(buffer, format="PNG")
    return buffer.getvalue()


def test_models_endpoint_and_openapi(server: str) -> None:
    models = httpx.get(f"{server}/api/models").json()["models"]
    assert [model["name"] for model in models] == ["Model_A", "Model_B"]
    assert models[0]["parameters"] == 1_103_230 and models[1]["parameters"] == 2_185_150
    assert models[0]["augmented"] is False and models[1]["augmented"] is False
    schema = httpx.get(f"{server}/openapi.json").json()
    assert "/api/predict" in schema["paths"] and "/api/models" in schema["paths"]
    assert httpx.get(f"{server}/docs").status_code == 200


def test_predict_answers_for_every_model_as_the_library_does(server: str, trained_run: Path) -> None:
    font = fonts()[0]
    response = httpx.post(
        f"{server}/api/predict", content=font_digit(3, font, dark_on_light=True), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result["predictions"]) == {"Model_A", "Model_B"}
    for answer in result["predictions"].values():
        assert len(answer["probabilities"]) == 10
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert answer["digit"] == int(np.argmax(answer["probabilities"]))
    assert result["model_input_png"].startswith("data:image/png;base64,")
    # The server and `mnist-cnn predict` share one prediction path: the same image, the same answer.
    from mnist_cnn.predict.inference import predict_digit
    from mnist_cnn.predict.preprocess import prepare_digit, read_image_bytes
    from mnist_cnn.store.runs import RunFolder

    digit = prepare_digit(read_image_bytes(font_digit(3, font, dark_on_light=True)))
    expected = predict_digit(RunFolder(trained_run).load_models(), digit)
    for name, answer in result["predictions"].items():
        assert answer["digit"] == expected[name].digit
        np.testing.assert_allclose(answer["probabilities"], expected[name].probabilities, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "empty request body"),
        (b"%PDF-1.4 not an image", 422, "not a readable image"),
        (None, 422, "blank"),
        (b"\x00" * (10 * 1024 * 1024 + 1), 413, "10 MB limit"),
    ],
    ids=["empty", "not-an-image", "blank", "oversized"],
)
def test_bad_uploads_get_a_clear_4xx_and_the_server_stays_up(
    server: str, body: bytes | None, status: int, message: str
) -> None:
    if body is None:
        buffer = io.BytesIO()
        Image.new("L", (64, 64), 255).save(buffer, format="PNG")
        body = buffer.getvalue()
    response = httpx.post(f"{server}/api/predict", content=body)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert httpx.get(f"{server}/api/models").status_code == 200


def mnist_upload(index: int, kind: str, dark_on_light: bool) -> bytes:
    """An MNIST test digit as a user would send it: upscaled to 112 px, PNG or JPEG, either polarity."""
    from mnist_cnn.data.mnist import load_raw

    pixels = load_raw("bundled")[1][0][index]
    image = Image.fromarray(255 - pixels if dark_on_light else pixels).resize((112, 112), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="PNG")
    return buffer.getvalue()


MALFORMED = [
    (b"", 400),
    (b"GIF89a this is no image", 422),
    (blank_png(), 422),
    (mnist_upload(0, "PNG", True)[:60], 422),
]


def test_32_concurrent_clients_get_every_answer_right_and_no_5xx(server: str, trained_run: Path) -> None:
    """A classroom at once: 32 clients x 20 requests, real digits interleaved with malformed bodies.

    Every good request is answered with what a serial prediction of the same image gives."""
    from mnist_cnn.predict.inference import predict_digit
    from mnist_cnn.predict.preprocess import prepare_digit, read_image_bytes
    from mnist_cnn.store.runs import RunFolder

    uploads = [mnist_upload(index, ("PNG", "JPEG")[index % 2], dark_on_light=index % 4 < 2) for index in range(24)]
    models = RunFolder(trained_run).load_models()
    expected = [predict_digit(models, prepare_digit(read_image_bytes(upload))) for upload in uploads]
    outcomes: list[tuple[int, int, dict | None]] = []  # (what was sent, status, answer)
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(timeout=60) as http:
            for request in range(20):
                slot = number * 20 + request
                body = MALFORMED[slot % len(MALFORMED)][0] if slot % 5 == 4 else uploads[slot % len(uploads)]
                response = http.post(f"{server}/api/predict", content=body)
                answer = response.json() if response.status_code == 200 else None
                with lock:
                    outcomes.append((slot, response.status_code, answer))

    threads = [threading.Thread(target=client, args=(number,)) for number in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(outcomes) == 32 * 20
    assert [status for _, status, _ in outcomes if status >= 500] == []
    for slot, status, answer in outcomes:
        if slot % 5 == 4:
            assert status == MALFORMED[slot % len(MALFORMED)][1], slot
            continue
        assert status == 200, slot
        for name, want in expected[slot % len(uploads)].items():
            got = answer["predictions"][name]
            assert got["digit"] == want.digit
            np.testing.assert_allclose(got["probabilities"], want.probabilities, atol=1e-5)
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["batches"] < ready["answered"]  # Requests really shared forward passes.


def test_a_multipart_upload_is_answered_like_a_raw_body(server: str) -> None:
    upload = mnist_upload(1, "PNG", dark_on_light=True)
    raw = httpx.post(f"{server}/api/predict", content=upload).json()
    form = httpx.post(f"{server}/api/predict", files={"image": ("two.png", upload, "image/png")})
    assert form.status_code == 200, form.text
    assert form.json() == raw
    other_field = httpx.post(f"{server}/api/predict", files={"file": ("two.png", upload, "image/png")})
    assert other_field.json() == raw
    no_file = httpx.post(f"{server}/api/predict", data={"note": "no image here"}, files={"x": ("", b"", "text/plain")})
    assert no_file.status_code == 400 and "the form has no file" in no_file.json()["detail"]
    empty = httpx.post(f"{server}/api/predict", files={"image": ("empty.png", b"", "image/png")})
    assert empty.status_code == 400 and "the uploaded file is empty" in empty.json()["detail"]


def test_health_and_readiness(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["models"] == ["Model_A", "Model_B"]


def test_a_full_queue_answers_503_with_retry_after(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-pressure: a slow worker with a queue of 2 refuses the rest at once, and recovers."""
    from fastapi.testclient import TestClient

    from mnist_cnn.core.config import BatchingSettings
    from mnist_cnn.serve import batching
    from mnist_cnn.serve.app import create_app

    release = threading.Event()

    def slow_forward(model):
        def forward(images):
            if len(images) and images.any():  # Warm-up batches are blank: they pass at once.
                release.wait(timeout=60)
            return np.full((len(images), 10), 0.1, dtype=np.float32)

        return forward

    monkeypatch.setattr(batching, "compiled_forward", slow_forward)
    app = create_app(trained_run, BatchingSettings(max_batch=1, queue_size=2))
    upload = mnist_upload(2, "PNG", dark_on_light=False)
    statuses: list[int] = []
    with TestClient(app) as http:

        def post() -> None:
            statuses.append(http.post("/api/predict", content=upload).status_code)

        waiting = [threading.Thread(target=post) for _ in range(3)]  # One in the worker, two queued.
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 30
        while app.state.worker._queue.qsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = http.post("/api/predict", content=upload)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1" and "busy" in refused.json()["detail"]
        release.set()
        for thread in waiting:
            thread.join(timeout=60)
        assert statuses == [200, 200, 200]
        assert http.post("/api/predict", content=upload).status_code == 200


def test_a_briefly_trained_model_reads_most_printed_digits(trained_run: Path) -> None:
    """Digits rendered from fonts, dark on light and light on dark: no MNIST image among them.

    Measured: 88% for this briefly trained run, 93% for the full 60-epoch models (the misses
    are mostly a 6 read as 5 and a serif 1 read as 2).
    """
    from mnist_cnn.predict.preprocess import prepare_digit, read_image_bytes
    from mnist_cnn.store.runs import RunFolder

    model = RunFolder(trained_run).model("Model_B").load_model()
    samples, labels = [], []
    for font in fonts():
        for digit in range(10):
            for dark in (True, False):
                samples.append(prepare_digit(read_image_bytes(font_digit(digit, font, dark))))
                labels.append(digit)
    predictions = np.asarray(model.predict_on_batch(np.stack(samples)[..., None])).argmax(axis=1)
    rate = float(np.mean(predictions == np.asarray(labels)))
    print(f"printed digits read correctly: {rate:.1%} of {len(labels)}")
    assert rate >= 0.75


def test_the_page_draws_a_digit_and_shows_both_models(server: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 390, "height": 844})  # A phone-sized screen.
        page.goto(server)
        page.wait_for_selector('[data-model="Model_B"]')
        box = page.locator("#pad").bounding_box()
        stroke = [(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)]  # A seven.
        page.mouse.move(box["x"] + stroke[0][0] * box["width"], box["y"] + stroke[0][1] * box["height"])
        page.mouse.down()
        for fx, fy in stroke[1:]:
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=12)
        page.mouse.up()
        for name in ("Model_A", "Model_B"):
            page.wait_for_function(
                f"document.querySelector('[data-model=\"{name}\"] .answer').textContent.includes('%')", timeout=20000
            )
        answers = {name: page.locator(f'[data-model="{name}"] .answer').inner_text() for name in ("Model_A", "Model_B")}
        assert page.locator("#seen").get_attribute("src").startswith("data:image/png")
        assert "trained without augmentation" in page.locator('[data-model="Model_A"] .training').inner_text()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        if os.environ.get("MNIST_CNN_SCREENSHOT"):
            shutil.copy(tmp_path / "page.png", os.environ["MNIST_CNN_SCREENSHOT"])
        browser.close()
    assert all(answer.split()[0].isdigit() for answer in answers.values()), answers
    assert (tmp_path / "page.png").stat().st_size > 1000

"""The web app: the JSON API over real HTTP, recognition of non-MNIST digits, and the page in Chromium."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFont

from mnist_cnn.data.robustness import fonts, printed_digit
from tests.conftest import cli, free_port, served

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
MODELS = ("Model_A", "Model_B")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """Model_B, the one read, trained a little (12,000 images, 3 epochs of Adam): enough to read clear digits."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    arguments = [
        "experiment",
        "--models",
        "B",
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


@pytest.fixture(scope="module")
def server(smoke_run: Path) -> Iterator[str]:
    """The real app, served by uvicorn on a loopback port in a background thread."""
    from mnist_cnn.serve.app import create_app

    app = create_app(smoke_run)
    # The compiled preparation in use before the tests compare the server's digits with their own.
    assert app.state.preparation.done.wait(timeout=600), "the image preparation was never compiled"
    with served(app) as url:
        yield url


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


def test_predict_answers_for_every_model_as_the_library_does(server: str, smoke_run: Path) -> None:
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
    expected = predict_digit(RunFolder(smoke_run).load_models(), digit)
    for name, answer in result["predictions"].items():
        assert answer["digit"] == expected[name].digit
        np.testing.assert_allclose(answer["probabilities"], expected[name].probabilities, atol=1e-6)


def test_a_drawing_that_says_its_polarity_is_not_guessed(server: str) -> None:
    """The page's pad says light-on-dark: a 7 whose bar runs along the top edge, which the
    guess inverts, is then prepared as `prepare_digit(..., polarity="light-on-dark")` makes it."""
    import base64

    from mnist_cnn.predict.preprocess import digit_png, prepare_digit
    from tests.test_preprocess import seven_along_the_top_edge

    buffer = io.BytesIO()
    seven_along_the_top_edge().save(buffer, format="PNG")
    seen = {}
    for polarity in ("auto", "light-on-dark"):
        response = httpx.post(f"{server}/api/predict?polarity={polarity}", content=buffer.getvalue())
        assert response.status_code == 200, response.text
        seen[polarity] = base64.b64decode(response.json()["model_input_png"].partition(",")[2])
    said = digit_png(prepare_digit(seven_along_the_top_edge(), polarity="light-on-dark"))
    assert seen["light-on-dark"] == said and seen["auto"] != said
    response = httpx.post(f"{server}/api/predict?polarity=white", content=buffer.getvalue())
    assert response.status_code == 400
    assert response.json() == {"detail": "unknown polarity 'white': choose from auto, light-on-dark, dark-on-light"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "empty request body"),
        (b"%PDF-1.4 not an image", 422, "PDF images are not read; use a PNG, JPEG, BMP, GIF or WebP file"),
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


def test_the_plain_body_path_refuses_as_fastapi_would(server: str) -> None:
    """FastPredict answers a plain image body before FastAPI routes it: a body streamed without
    a length past the limit, an empty polarity and a repeated one get FastAPI's answers."""

    def chunks():
        for _ in range(11):
            yield b"\x00" * 2**20

    streamed = httpx.post(f"{server}/api/predict", content=chunks())  # Chunked: no content-length.
    assert streamed.status_code == 413 and "10 MB limit" in streamed.json()["detail"]
    assert streamed.headers["content-type"] == "application/json"
    blank = httpx.post(f"{server}/api/predict?polarity=", content=mnist_upload(1, "PNG", False))
    assert blank.status_code == 400 and blank.json() == {
        "detail": "unknown polarity '': choose from auto, light-on-dark, dark-on-light"
    }
    upload = mnist_upload(1, "PNG", True)
    repeated = httpx.post(f"{server}/api/predict?polarity=white&polarity=dark-on-light", content=upload)
    said = httpx.post(f"{server}/api/predict?polarity=dark-on-light", content=upload)
    assert repeated.status_code == 200 and repeated.json() == said.json()  # The last one counts, as in FastAPI.


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


def test_32_concurrent_clients_get_every_answer_right_and_no_5xx(server: str, smoke_run: Path) -> None:
    """A classroom at once: 32 clients x 20 requests, real digits interleaved with malformed bodies.

    Every good request is answered with what a serial prediction of the same image gives."""
    from mnist_cnn.predict.inference import predict_digit
    from mnist_cnn.predict.preprocess import prepare_digit, read_image_bytes
    from mnist_cnn.store.runs import RunFolder

    uploads = [mnist_upload(index, ("PNG", "JPEG")[index % 2], dark_on_light=index % 4 < 2) for index in range(24)]
    models = RunFolder(smoke_run).load_models()
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


def forward_held_until(release: threading.Event, busy: threading.Event | None = None):
    """A stand-in for ``compiled_forward`` whose forward holds every real batch until ``release``
    is set (``busy`` set once it holds one), then answers 0.1 for every digit. Warm-up batches
    are blank: they pass at once."""

    def build(model):
        def forward(images):
            if len(images) and images.any():
                if busy is not None:
                    busy.set()
                release.wait(timeout=60)
            return np.full((len(images), 10), 0.1, dtype=np.float32)

        return forward

    return build


def test_a_full_queue_answers_503_with_retry_after(smoke_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-pressure: a slow worker with a queue of 2 refuses the rest at once, and recovers."""
    from fastapi.testclient import TestClient

    from mnist_cnn.core.config import BatchingSettings
    from mnist_cnn.serve import batching
    from mnist_cnn.serve.app import create_app

    release = threading.Event()
    busy = threading.Event()  # Set once the worker holds a real request (not a warm-up batch).
    monkeypatch.setattr(batching, "compiled_forward", forward_held_until(release, busy))
    app = create_app(smoke_run, BatchingSettings(max_batch=1, queue_size=2))
    upload = mnist_upload(2, "PNG", dark_on_light=False)
    statuses: list[int] = []
    with TestClient(app) as http:

        def post() -> None:
            statuses.append(http.post("/api/predict", content=upload).status_code)

        waiting = [threading.Thread(target=post) for _ in range(3)]  # One in the worker, two queued.
        # The first one alone, until the worker holds it: requests still being decoded count
        # against the queue too, so three sent at once could refuse the third before the worker
        # takes the first; and until it has, a fourth request would still fit (then a 504).
        waiting[0].start()
        assert busy.wait(timeout=30), "the worker never started on a request"
        for thread in waiting[1:]:
            thread.start()
        deadline = time.monotonic() + 30
        while app.state.worker._queue.qsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.worker._queue.qsize() == 2
        refused = http.post("/api/predict", content=upload)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1" and "busy" in refused.json()["detail"]
        release.set()
        for thread in waiting:
            thread.join(timeout=60)
        assert statuses == [200, 200, 200]
        assert http.post("/api/predict", content=upload).status_code == 200


def test_a_request_the_models_do_not_answer_in_time_gets_a_504_and_frees_its_place(
    smoke_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for the models is bounded (timeout_s): a stuck worker costs the client a 504 with
    Retry-After, not a hang, and neither the late answer nor the refusal leaks a place in the queue."""
    from fastapi.testclient import TestClient

    from mnist_cnn.core.config import BatchingSettings
    from mnist_cnn.serve import batching
    from mnist_cnn.serve.app import create_app

    release = threading.Event()
    monkeypatch.setattr(batching, "compiled_forward", forward_held_until(release))
    app = create_app(smoke_run, BatchingSettings(max_batch=1, queue_size=4, timeout_s=0.5))
    upload = mnist_upload(2, "PNG", dark_on_light=False)
    with TestClient(app) as http:
        late = http.post("/api/predict", content=upload)
        assert late.status_code == 504, late.text
        assert late.headers["Retry-After"] == "1" and "no answer within 0.5 s" in late.json()["detail"]
        release.set()  # The worker answers at last, to a request that has gone: nothing breaks.
        answered = http.post("/api/predict", content=upload)
        assert answered.status_code == 200 and set(answered.json()["predictions"]) == {"Model_A", "Model_B"}
        assert app.state.worker._preparing == 0 and app.state.worker._queue.qsize() == 0


@pytest.mark.parametrize(("pad_batches", "expected"), [(True, [1, 16]), (False, [1, 5])])
def test_batches_are_padded_only_for_a_forward_that_compiles_per_shape(pad_batches: bool, expected: list[int]) -> None:
    """JAX's jitted forward sees only the batch sizes compiled at start-up (1, 4, 16, 64);
    onnxruntime takes any batch, and five queued digits cost it five images, not sixteen."""
    from mnist_cnn.core.config import BatchingSettings
    from mnist_cnn.serve.batching import InferenceWorker

    shapes: list[int] = []
    release = threading.Event()

    def build_forward(model):
        def forward(images):
            if images.any():  # Warm-up batches are blank and not recorded.
                shapes.append(len(images))
                release.wait(timeout=30)  # Hold the first batch while five more queue behind it.
            return np.full((len(images), 10), 0.1, dtype=np.float32)

        return forward

    worker = InferenceWorker({"Model_A": None}, BatchingSettings(), build_forward, pad_batches=pad_batches).start()
    worker.wait_ready(timeout=30)
    digits = np.ones((28, 28), dtype=np.float32)
    futures = [worker.submit(digits)]
    deadline = time.monotonic() + 30
    while not shapes and time.monotonic() < deadline:
        time.sleep(0.01)
    futures += [worker.submit(digits) for _ in range(5)]
    release.set()
    assert all(len(future.result(timeout=30)) == 1 for future in futures)
    worker.stop()
    assert shapes == expected


@pytest.mark.slow
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


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed")


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


@dataclasses.dataclass
class OfflinePage:
    """A page that can reach the app's own origin and nothing else, and what it tried and logged."""

    page: Page
    blocked: list[str]
    errors: list[str]
    asked: list[str] = dataclasses.field(default_factory=list)  # The app's addresses the page asked for.

    def predictions_asked(self) -> list[str]:
        """The query strings of the page's requests for a prediction."""
        return [url.partition("?")[2] for url in self.asked if "/api/predict" in url]


def offline_page(browser: Browser, server: str, width: int, height: int) -> OfflinePage:
    page = browser.new_page(viewport={"width": width, "height": height})
    watched = OfflinePage(page, [], [])

    def only_the_app(route) -> None:
        if route.request.url.startswith(f"{server}/"):
            watched.asked.append(route.request.url)
            route.continue_()
        else:
            watched.blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_app)
    page.on("console", lambda message: watched.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    return watched


def draw(page: Page, points: list[tuple[float, float]]) -> None:
    """Mouse down at the first point (a fraction of the pad), move through the rest, up."""
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=12)
    page.mouse.up()


def wait_for_answers(page: Page) -> dict[str, str]:
    for name in MODELS:
        page.wait_for_function(
            f"document.querySelector('[data-model=\"{name}\"] .answer').textContent.includes('%')", timeout=20000
        )
    return {name: page.locator(f'[data-model="{name}"] .answer').inner_text() for name in MODELS}


PAD_BRIGHTNESS = """() => {
  const pad = document.getElementById('pad');
  const pixels = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
  let sum = 0, max = 0;
  for (let i = 0; i < pixels.length; i += 4) { sum += pixels[i]; max = Math.max(max, pixels[i]); }
  return { mean: sum / (pixels.length / 4), max };
}"""
RECORD_MESSAGES = """() => {
  window.shownMessages = [];
  const message = document.getElementById('message');
  new MutationObserver(() => { if (message.textContent) window.shownMessages.push(message.textContent); })
    .observe(message, { childList: true, characterData: true, subtree: true });
}"""


@pytest.mark.slow
def test_the_page_draws_a_digit_and_shows_both_models(server: str, tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        watched = offline_page(browser, server, 390, 844)  # A phone-sized screen.
        page = watched.page
        page.goto(server)
        page.wait_for_selector('[data-model="Model_B"]')
        draw(page, [(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)])  # A seven.
        answers = wait_for_answers(page)
        assert page.locator("#seen").get_attribute("src").startswith("data:image/png")
        assert "trained without augmentation" in page.locator('[data-model="Model_A"] .training').inner_text()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        if os.environ.get("MNIST_CNN_SCREENSHOT"):
            shutil.copy(tmp_path / "page.png", os.environ["MNIST_CNN_SCREENSHOT"])
        browser.close()
    assert all(answer.split()[0].isdigit() for answer in answers.values()), answers
    # The pad is light ink on dark, and says so: the server does not guess a drawing's polarity.
    assert watched.predictions_asked() and set(watched.predictions_asked()) == {"polarity=light-on-dark"}
    assert (tmp_path / "page.png").stat().st_size > 1000
    assert watched.blocked == [] and watched.errors == []
    assert overflow <= 1


@pytest.mark.slow
def test_the_page_on_a_laptop_tap_stroke_upload_and_a_bad_upload(server: str, tmp_path: Path) -> None:
    """The issue's defects, as a new user met them on a 1280x800 screen with no network."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        watched = offline_page(browser, server, 1280, 800)
        page = watched.page
        page.goto(server)
        page.wait_for_selector('[data-model="Model_B"]')
        page.evaluate(RECORD_MESSAGES)
        # Before any drawing: no "what the models saw" frame, so no broken-image icon.
        assert not page.locator("#seen").is_visible()

        # A tap: a dot of ink where it landed, answers, and no error at any moment.
        box = page.locator("#pad").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert page.evaluate(PAD_BRIGHTNESS)["max"] == 255
        assert (
            page.evaluate("document.getElementById('pad').getContext('2d').getImageData(140, 140, 1, 1).data[0]") > 200
        )
        wait_for_answers(page)
        assert page.locator("#seen").is_visible()

        # A stroke after Clear: answers for both models, on screen beside the pad.
        page.click("#clear")
        assert page.evaluate(PAD_BRIGHTNESS)["max"] == 0 and not page.locator("#seen").is_visible()
        draw(page, [(0.3, 0.2), (0.7, 0.2), (0.55, 0.5), (0.45, 0.85)])
        wait_for_answers(page)
        for name in MODELS:
            answer = page.locator(f'[data-model="{name}"] .answer').bounding_box()
            assert answer["x"] + answer["width"] <= 1280 and answer["y"] + answer["height"] <= 800, (name, answer)
        page.screenshot(path=str(tmp_path / "laptop.png"))
        shown = page.evaluate("window.shownMessages")
        assert shown == [] and page.locator("#message").inner_text() == ""
        assert watched.errors == []

        # An upload replaces the drawing: the pad shows the photo (dark ink on white paper) and its answer.
        drawn_seen = page.locator("#seen").get_attribute("src")
        photo = {"name": "two.png", "mimeType": "image/png", "buffer": mnist_upload(1, "PNG", dark_on_light=True)}
        page.set_input_files("#file", files=[photo])
        page.wait_for_function(
            "src => (document.getElementById('seen').getAttribute('src') || src) !== src", arg=drawn_seen
        )
        wait_for_answers(page)
        assert page.evaluate(PAD_BRIGHTNESS)["mean"] > 128  # White paper now, not a white 7 on black.

        # A bad upload: a sentence without an exception's name, and nothing of the last picture beside it.
        page.set_input_files("#file", files=[{"name": "notes.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1"}])
        page.wait_for_function("document.getElementById('message').textContent !== ''")
        error = page.locator("#message").inner_text()
        answers = [page.locator(f'[data-model="{name}"] .answer').inner_text() for name in MODELS]
        pad = page.evaluate(PAD_BRIGHTNESS)
        seen_visible = page.locator("#seen").is_visible()
        beside = page.locator('[data-model="Model_B"] h2').bounding_box()  # A long message wraps under the pad.
        page.screenshot(path=str(tmp_path / "bad-upload.png"))
        browser.close()
    assert error.startswith("notes.pdf: PDF images are not read"), error
    assert "Error" not in error and "upload:" not in error
    assert answers == ["", ""] and pad["max"] == 0 and not seen_visible
    assert beside["y"] < 200, beside
    assert watched.blocked == []
    # Drawings say their polarity; the photos uploaded are the server's to guess.
    assert set(watched.predictions_asked()) == {"polarity=light-on-dark", "polarity=auto"}


@pytest.mark.slow
@pytest.mark.parametrize(("path", "ready"), [("/docs", "swagger"), ("/redoc", "redoc")])
def test_the_api_documentation_renders_without_a_network(server: str, path: str, ready: str) -> None:
    """Swagger UI and ReDoc come from the app itself: no CDN, no font or validator service."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        watched = offline_page(browser, server, 1280, 800)
        page = watched.page
        page.goto(f"{server}{path}")
        if ready == "swagger":
            operation = page.locator('.opblock-summary-path[data-path="/api/predict"]')
            operation.wait_for(state="visible", timeout=20000)
            shown = operation.inner_text().replace("\u200b", "")
        else:
            operation = page.locator("h2", has_text="Predict the digit in an image").first
            operation.wait_for(state="visible", timeout=20000)
            shown = page.locator("body").inner_text()
        browser.close()
    assert "/api/predict" in shown
    assert watched.blocked == [], watched.blocked
    assert watched.errors == [], watched.errors


def test_the_favicon_is_an_icon(server: str) -> None:
    response = httpx.get(f"{server}/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)


def test_openapi_declares_every_error_answer_with_its_body(server: str) -> None:
    schema = httpx.get(f"{server}/openapi.json").json()
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    assert schema["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == "string"
    predict = schema["paths"]["/api/predict"]["post"]["responses"]
    for status in ("400", "413", "422", "503", "504"):
        assert predict[status]["content"]["application/json"]["schema"] == error_body, status
        assert predict[status]["description"], status
    assert predict["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert "predictions" in schema["components"]["schemas"]["Prediction"]["properties"]
    readiness = schema["paths"]["/readyz"]["get"]["responses"]
    assert readiness["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    # What the app really answers has the declared shape.
    refused = httpx.post(f"{server}/api/predict", content=b"")
    assert refused.status_code == 400 and set(refused.json()) == {"detail"}


def test_serve_on_a_taken_port_says_so_in_one_line_and_exits_2(smoke_run: Path) -> None:
    from mnist_cnn.serve.preflight import check_address_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", smoke_run, "--port", port)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0] and "--port" in lines[0]
    assert "serving" not in result.stdout and "http://" not in result.stdout
    # Once free, the check lets go of the port again: the server can bind it right after.
    check_address_free("127.0.0.1", port)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))


def test_a_worker_whose_port_was_taken_stops_the_server_in_one_line(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port taken between serve's check and a worker's bind: the worker exits with uvicorn's
    start-up failure code, which stops its supervisor instead of restarting it, and says why."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from mnist_cnn.serve import process

    port = free_port()
    with socket.socket() as taken:  # A listener without SO_REUSEPORT: no worker may join it.
        taken.bind(("127.0.0.1", port))
        taken.listen()
        worker = process.OwnSocketProcess(uvicorn.Config("x:y", host="127.0.0.1", port=port, workers=2), [])
        monkeypatch.setattr(uvicorn.supervisors.multiprocess.Process, "target", lambda self, sockets=None: None)
        with pytest.raises(SystemExit) as stopped:
            worker.target()
    assert stopped.value.code == STARTUP_FAILURE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0] and "--port" in lines[0], lines


class HeldCompile:
    """A preparation source (serve.preparation.Source) whose kernels are ready once ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = threading.Event()

    def wait(self) -> bool:
        self.waiting.set()
        return self.release.wait(timeout=120)

    def stop(self) -> None:
        self.release.set()


def test_the_server_is_ready_before_the_compiled_preparation_and_switches_to_it(
    smoke_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz waits for the models only: while the kernels compile (held here), the server is
    ready and answers with the NumPy preparation; once they are ready it prepares with them, and
    the answers are the same (the digits to the preparations' 1e-6: the probabilities to 1e-5, as
    the 32-client test holds them, and the models' input PNG to one level of 255)."""
    from fastapi.testclient import TestClient

    from mnist_cnn.predict import kernels, preprocess
    from mnist_cnn.serve.app import create_app

    monkeypatch.setattr(preprocess, "_compiled", None)  # As in a new server process (restored after).
    calls: list[int] = []
    compiled_prepare = kernels.prepare

    def counted_prepare(*arguments):
        calls.append(1)
        return compiled_prepare(*arguments)

    monkeypatch.setattr(kernels, "prepare", counted_prepare)
    held = HeldCompile()
    app = create_app(smoke_run, preparation=held)
    uploads = [mnist_upload(index, ("PNG", "JPEG")[index % 2], dark_on_light=index % 4 < 2) for index in range(8)]
    with TestClient(app) as http:
        assert held.waiting.wait(timeout=60)
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert ready.json()["preparation"] == "compiling"
        before = [http.post("/api/predict", content=upload) for upload in uploads]
        assert [response.status_code for response in before] == [200] * len(uploads)
        assert calls == [] and preprocess._compiled is None  # The NumPy preparation answered.

        held.release.set()
        assert app.state.preparation.done.wait(timeout=600)
        assert http.get("/readyz").json()["preparation"] == "compiled"
        calls.clear()  # The switch's own warm-up.
        after = [http.post("/api/predict", content=upload) for upload in uploads]
        assert len(calls) == len(uploads)  # The compiled kernels answered now.
    for old, new in zip(before, after, strict=True):
        assert new.status_code == 200
        old_answer, new_answer = old.json(), new.json()
        seen = [
            np.asarray(Image.open(io.BytesIO(data_url_bytes(answer["model_input_png"]))))
            for answer in (old_answer, new_answer)
        ]
        assert np.abs(seen[0].astype(int) - seen[1]).max() <= 1  # A digit to 1e-6, rounded to bytes.
        for name, answer in new_answer["predictions"].items():
            assert answer["digit"] == old_answer["predictions"][name]["digit"]
            np.testing.assert_allclose(
                answer["probabilities"], old_answer["predictions"][name]["probabilities"], atol=1e-5
            )


def data_url_bytes(url: str) -> bytes:
    import base64

    return base64.b64decode(url.partition(",")[2])


def test_workers_load_the_preparation_once_the_supervisor_says_it_is_compiled(tmp_path: Path) -> None:
    """``serve --workers N``: each worker waits for the supervisor's word file, compiled or not,
    and gives up when it is stopped (the server shutting down)."""
    from mnist_cnn.serve.preparation import CompiledBySupervisor

    word = tmp_path / "preparation"
    waiting = CompiledBySupervisor(word)
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(waiting.wait()))
    thread.start()
    word.write_text("compiled", encoding="utf-8")
    thread.join(timeout=30)
    assert outcome == [True]
    word.write_text("numpy", encoding="utf-8")  # numba did not import in the supervisor's process.
    assert CompiledBySupervisor(word).wait() is False
    stopped = CompiledBySupervisor(tmp_path / "never")
    stopped.stop()
    assert stopped.wait() is False


def test_the_compile_process_fills_numbas_cache_and_says_so_to_the_workers(tmp_path: Path) -> None:
    """The real ``python -m mnist_cnn.serve.preparation``, as serve starts it: it exits 0 (numba's
    cache filled, or found filled) and writes the workers' word."""
    from mnist_cnn.serve.preparation import OwnProcessCompile

    word = tmp_path / "preparation"
    assert OwnProcessCompile(word_file=word).wait() is True
    assert word.read_text(encoding="utf-8") == "compiled"


def test_a_compile_that_takes_a_while_says_so_and_a_load_from_the_cache_does_not(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_cnn.serve import preparation

    printed = ""

    def compiling() -> bool:  # Compiles until the notice is out (no clock: as long as that takes).
        nonlocal printed
        deadline = time.monotonic() + 60
        while "compiling the image preparation" not in printed and time.monotonic() < deadline:
            printed += capsys.readouterr().out
            time.sleep(0.01)
        return True

    monkeypatch.setattr(preparation, "COMPILE_NOTICE_AFTER_S", 0.0)
    monkeypatch.setattr(preparation, "use_compiled_preparation", compiling)
    assert preparation.fill_numba_cache() == 0
    printed += capsys.readouterr().out
    assert "compiling the image preparation for this machine in the background" in printed
    assert printed.rstrip().endswith("the image preparation is compiled; the server prepares with it from now on")
    monkeypatch.setattr(preparation, "COMPILE_NOTICE_AFTER_S", 600.0)
    monkeypatch.setattr(preparation, "use_compiled_preparation", lambda: True)  # Loaded from the cache.
    assert preparation.fill_numba_cache() == 0
    assert capsys.readouterr().out == ""

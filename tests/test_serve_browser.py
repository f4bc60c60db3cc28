"""The page's models in the browser: prepare.js against prepare_digit, onnxruntime-web against
the server's answers, the fall-back to the API, and the static site of ``export --format web``."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_cnn.predict.preprocess import prepare_digit, read_image_bytes, to_grayscale
from tests.conftest import cli, free_port, served
from tests.test_serve import MODELS, draw, launch, offline_page, require_chromium

PREPARE_JS = Path(__file__).resolve().parent.parent / "src" / "mnist_cnn" / "serve" / "web" / "prepare.js"
# Strokes as fractions of the pad, the way a person draws each digit: (digit, strokes).
DIGITS = [
    (1, [[(0.5, 0.15), (0.52, 0.85)]]),
    (7, [[(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)]]),
    (0, [[(0.5, 0.15), (0.3, 0.3), (0.28, 0.65), (0.5, 0.85), (0.7, 0.65), (0.7, 0.3), (0.5, 0.15)]]),
    (4, [[(0.55, 0.15), (0.3, 0.55), (0.75, 0.55)], [(0.62, 0.35), (0.62, 0.85)]]),
    (2, [[(0.3, 0.3), (0.5, 0.15), (0.68, 0.3), (0.3, 0.82), (0.72, 0.82)]]),
    (3, [[(0.3, 0.2), (0.65, 0.22), (0.45, 0.48), (0.68, 0.65), (0.32, 0.82)]]),
    (7, [[(0.42, 0.4), (0.55, 0.4), (0.47, 0.6)]]),  # A small digit: the local background is not zero.
]
PARITY_BOUND = 1e-6  # prepare.js against prepare_digit, per pixel (float32 rounding).
PROBABILITY_BOUND = 1e-4  # onnxruntime-web against the server's Keras models.
PAD_PNG = "document.getElementById('pad').toDataURL('image/png')"
LAST_ANSWER = """() => ({
  input: Array.from(window.mnistCnn.lastInput),
  answers: window.mnistCnn.lastAnswers,
  engine: document.getElementById('engine').dataset.engine,
  label: document.getElementById('engine').textContent,
})"""


# ------------------------------------------------------------- prepare.js in Node, no browser


def drawing(kind: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A light-on-dark drawing: a pen stroke, a filled blob or a digit crossed by a thin line."""
    width, height = size
    image = Image.new("RGB", size, (0, 0, 0))
    pen = ImageDraw.Draw(image)
    if kind == 0:
        points = [(rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height) for _ in range(5)]
        pen.line(points, fill=(255, 255, 255), width=max(2, int(rng.uniform(0.04, 0.2) * min(size))), joint="curve")
    elif kind == 1:
        left, top = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
        right, bottom = left + rng.uniform(0.2, 0.45) * width, top + rng.uniform(0.2, 0.45) * height
        pen.ellipse([left, top, right, bottom], fill="white")
    elif kind == 2:
        pen.line([(0.05 * width, 0.5 * height), (0.97 * width, 0.52 * height)], fill=(200, 200, 200), width=3)
        pen.line([(0.3 * width, 0.2 * height), (0.6 * width, 0.8 * height)], fill=(255, 255, 255), width=22)
    else:  # A 7 whose bar runs along an edge, touching it (extend_background's stroke rule).
        thickness = max(2, int(rng.uniform(0.03, 0.08) * min(size)))
        start, end = rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0)
        bar = [(start * width, thickness / 3), (end * width, thickness / 3)]
        pen.line([*bar, (0.4 * width, 0.9 * height)], fill=(255, 255, 255), width=thickness)
        image = image.rotate(90 * int(rng.integers(4)), expand=True)
    return image


def prepare_in_node(images: list[Image.Image], folder: Path) -> list[np.ndarray | None]:
    """prepare.js's prepareDigit on each image's grayscale (to_grayscale's), in one Node process."""
    cases = []
    for index, image in enumerate(images):
        to_grayscale(image).astype(np.float32).tofile(folder / f"{index}.gray")
        cases.append({"gray": str(folder / f"{index}.gray"), "width": image.width, "height": image.height})
    script = """
const fs = require("fs");
const prepare = require(process.argv[1]);
for (const [index, item] of JSON.parse(fs.readFileSync(process.argv[2], "utf8")).entries()) {
  const bytes = fs.readFileSync(item.gray);
  const gray = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const digit = prepare.prepareDigit(gray, item.width, item.height);
  fs.writeFileSync(item.gray + ".out", digit ? Buffer.from(digit.buffer) : Buffer.alloc(0));
}
"""
    (folder / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run(
        ["node", "-e", script, str(PREPARE_JS), str(folder / "cases.json")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outputs = [np.fromfile(f"{case['gray']}.out", dtype=np.float32) for case in cases]
    return [output.reshape(28, 28) if output.size else None for output in outputs]


def test_prepare_js_equals_prepare_digit_on_drawings(tmp_path: Path) -> None:
    """Strokes, blobs (a local background above zero), ruled lines and strokes along an edge, on
    pads of five sizes."""
    if shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node is missing: .ci/run installs Debian's npm (and node with it)")
        pytest.skip("node is not installed")
    rng = np.random.default_rng(7)
    sizes = [(280, 280), (280, 280), (50, 40), (300, 200), (120, 280)]
    images = [drawing(index % 4, sizes[index % len(sizes)], rng) for index in range(40)]
    blank = Image.new("RGB", (280, 280), (0, 0, 0))
    prepared = prepare_in_node([*images, blank], tmp_path)
    assert prepared[-1] is None  # Blank: the server's 422, the page's "blank" message.
    pairs = zip(images, prepared[:-1], strict=True)
    # The pad's polarity, said, as the page sends it: a stroke along an edge fools the guess.
    differences = [float(np.abs(js - prepare_digit(image, polarity="light-on-dark")).max()) for image, js in pairs]
    print(f"prepare.js against prepare_digit, worst pixel: {max(differences):.2e}")
    assert max(differences) <= PARITY_BOUND, differences
    # The cases include what makes the path differ from a plain crop and scale.
    from mnist_cnn.predict.preprocess import BACKGROUND_SIDE, _shrunk, extend_background, local_background

    assert any(float(local_background(to_grayscale(image)).max()) > 0.1 for image in images)
    smalls = [_shrunk(to_grayscale(image), BACKGROUND_SIDE) for image in images]
    strokes_along_an_edge = [
        not np.array_equal(extend_background(small, 8), np.pad(small, 8, mode="edge")) for small in smalls
    ]
    assert sum(strokes_along_an_edge) >= 5, strokes_along_an_edge


# ------------------------------------------------------------- the served page, in Chromium


def test_the_empty_pad_says_where_to_draw_and_the_hint_never_reaches_the_models() -> None:
    """The page's own files, with no models behind them (the hint needs none): over the empty pad,
    "Draw a digit here"; gone once there is ink or an upload, back after Clear. It lies over the pad,
    not in it (the pad stays black: the models never read the words), and strokes go through it."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    from tests.test_serve import PAD_BRIGHTNESS

    origin, web = "http://page.test", PREPARE_JS.parent

    def page_files(route) -> None:
        name = route.request.url.removeprefix(f"{origin}/") or "index.html"
        if name == "models.json":
            route.fulfill(json={"api": False, "runtime": None, "models": []})
        elif name in ("index.html", "prepare.js"):
            route.fulfill(path=web / name)
        else:
            route.abort()

    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.route("**/*", page_files)
        page.goto(f"{origin}/")
        hint, pad = page.locator("#pad-hint"), page.locator("#pad")
        seen = [(hint.is_visible(), hint.inner_text(), page.evaluate(PAD_BRIGHTNESS)["max"])]
        hint_box, pad_box = hint.bounding_box(), pad.bounding_box()
        draw(page, [(0.4, 0.5), (0.6, 0.5)])  # Across the words.
        seen.append((hint.is_visible(), page.evaluate(PAD_BRIGHTNESS)["max"]))
        page.click("#clear")
        seen.append((hint.is_visible(), page.evaluate(PAD_BRIGHTNESS)["max"]))
        upload = {"name": "seven.png", "mimeType": "image/png", "buffer": seven_png()}
        page.set_input_files("#file", files=[upload])
        page.wait_for_function("!document.getElementById('pad-hint').checkVisibility()")
        browser.close()
    assert seen == [(True, "Draw a digit here", 0), (False, 255), (True, 0)]
    assert hint_box == pad_box


def seven_png() -> bytes:
    image = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(image).line([(20, 20), (80, 20), (45, 90)], fill="black", width=10)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def onnx_server(onnx_run: Path) -> Iterator[str]:
    """The real app over the run with exports, served by uvicorn on a loopback port."""
    from mnist_cnn.serve.app import create_app

    with served(create_app(onnx_run)) as url:
        yield url


def test_the_app_serves_the_models_and_only_the_runtime_files(onnx_server: str, onnx_run: Path) -> None:
    from mnist_cnn.serve.site import RUNTIME_FILES, runtime_folder

    config = httpx.get(f"{onnx_server}/models.json").json()
    assert config["api"] is True
    assert [(model["name"], model["onnx"]) for model in config["models"]] == [
        (name, f"models/{name}.onnx") for name in MODELS
    ]
    served = httpx.get(f"{onnx_server}/models/Model_A.onnx")
    assert served.content == (onnx_run / "exports" / "onnx" / "Model_A.onnx").read_bytes()
    assert httpx.get(f"{onnx_server}/models/Model_C.onnx").status_code == 404
    require_runtime()
    assert config["runtime"] == "ort/"
    for name, media_type in RUNTIME_FILES.items():
        response = httpx.get(f"{onnx_server}/ort/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type), name
        assert response.content == (runtime_folder() / name).read_bytes()
    assert httpx.get(f"{onnx_server}/ort/ort.min.js").status_code == 404  # Only what the page loads.
    assert httpx.get(f"{onnx_server}/ort/..%2Fpackage.json").status_code == 404


def require_runtime() -> None:
    """onnxruntime-web's files (make's npm ci): CI must have them, a bare checkout may not."""
    from mnist_cnn.serve.site import runtime_folder

    if runtime_folder() is None:
        if os.environ.get("CI"):
            pytest.fail("onnxruntime-web is missing: make setup runs npm ci")
        pytest.skip("onnxruntime-web is not installed (npm ci in the checkout)")


def draw_digit(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Clear the pad, draw the strokes, and wait until the page has answered the whole drawing."""
    page.click("#clear")
    answered = page.evaluate("window.mnistCnn.answered")
    for stroke in strokes:
        draw(page, stroke)
    page.wait_for_function(f"window.mnistCnn.answered > {answered} && window.mnistCnn.idle()", timeout=20000)


def pad_png(page) -> bytes:
    return base64.b64decode(page.evaluate(PAD_PNG).split(",", 1)[1])


@pytest.mark.slow
def test_the_page_predicts_in_the_browser_as_the_server_does(onnx_server: str) -> None:
    """Each digit: the browser's 28x28 input equals prepare_digit on the pad's PNG, and its
    probabilities equal the server's answer to that PNG; no request leaves the app, and the
    drawing is never sent to the API."""
    require_chromium()
    require_runtime()
    from playwright.sync_api import sync_playwright

    comparisons = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        watched = offline_page(browser, onnx_server, 1280, 800)
        page = watched.page
        asked_api = []
        page.on("request", lambda request: asked_api.append(request.url) if "/api/" in request.url else None)
        page.goto(onnx_server)
        page.wait_for_function("window.mnistCnn.engine !== null", timeout=60000)
        assert page.evaluate("window.mnistCnn.engine") == "browser"
        for digit, strokes in DIGITS:
            draw_digit(page, strokes)
            comparisons.append((digit, page.evaluate(LAST_ANSWER), pad_png(page)))
        browser.close()
    assert watched.blocked == [] and watched.errors == []
    assert asked_api == []  # Every answer came from the browser.
    worst_pixel = worst_probability = 0.0
    for digit, shown, png in comparisons:
        assert shown["engine"] == "browser" and shown["label"] == "answered in your browser"
        expected = prepare_digit(read_image_bytes(png))
        worst_pixel = max(worst_pixel, float(np.abs(np.asarray(shown["input"]).reshape(28, 28) - expected).max()))
        server = httpx.post(f"{onnx_server}/api/predict", content=png).json()["predictions"]
        for name in MODELS:
            browser_answer, server_answer = shown["answers"][name], server[name]
            assert browser_answer["digit"] == server_answer["digit"], (digit, name)
            difference = np.abs(np.subtract(browser_answer["probabilities"], server_answer["probabilities"])).max()
            worst_probability = max(worst_probability, float(difference))
    print(f"browser against server: input {worst_pixel:.2e} per pixel, probabilities {worst_probability:.2e}")
    assert worst_pixel <= PARITY_BOUND
    assert worst_probability <= PROBABILITY_BOUND


@pytest.mark.slow
def test_without_the_runtime_the_page_asks_the_server(onnx_server: str) -> None:
    """onnxruntime-web's files unreachable (as when npm ci never ran): the API answers, labelled."""
    require_chromium()
    require_runtime()  # Installed but unreachable: the refused script is the one error expected.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        watched = offline_page(browser, onnx_server, 1280, 800)
        page = watched.page
        page.route("**/ort/**", lambda route: route.abort())
        page.goto(onnx_server)
        page.wait_for_function("window.mnistCnn.engine !== null", timeout=60000)
        engine = page.evaluate("window.mnistCnn.engine")
        draw_digit(page, DIGITS[1][1])
        label = page.locator("#engine").inner_text()
        answers = [page.locator(f'[data-model="{name}"] .answer').inner_text() for name in MODELS]
        browser.close()
    assert engine == "server" and label == "answered on the server"
    assert all(answer.split()[0].isdigit() for answer in answers), answers
    assert watched.errors == ["Failed to load resource: net::ERR_FAILED"]  # The refused script, nothing else.


# ------------------------------------------------------------- the static site


def test_export_web_makes_the_onnx_exports_it_needs(smoke_run: Path, tmp_path: Path) -> None:
    """A run without ONNX exports gets them first (checked against Keras as any export), then its site."""
    require_runtime()
    run_dir = tmp_path / "run"  # A copy: the shared smoke run must stay without exports.
    shutil.copytree(smoke_run, run_dir, ignore=shutil.ignore_patterns("exports"))
    result = cli("export", run_dir, "--format", "web", "--out", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert "Model_A: " in result.stdout and "with Keras's top digit" in result.stdout
    assert (run_dir / "exports" / "onnx" / "manifest.json").is_file()
    assert [model["name"] for model in json.loads((tmp_path / "site" / "models.json").read_text())["models"]] == list(
        MODELS
    )


def test_a_stale_export_is_left_to_the_server_and_made_again_by_export_web(
    onnx_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model trained again after its export: the page asks the server for it (a warning says
    why), and ``export --format web`` exports it again before writing the site."""
    from mnist_cnn.core.files import path_sha256
    from mnist_cnn.serve.site import onnx_exports
    from mnist_cnn.store.runs import RunFolder
    from tests.test_serve_onnx import retrained_copy

    require_runtime()
    run_dir = retrained_copy(onnx_run, tmp_path)
    assert list(onnx_exports(RunFolder(run_dir))) == ["Model_A"]
    assert "export of Model_B was made from an earlier model.keras" in capsys.readouterr().err
    result = cli("export", run_dir, "--format", "web", "--out", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((run_dir / "exports" / "onnx" / "manifest.json").read_text())
    assert manifest["models"]["Model_B"]["model_sha256"] == path_sha256(run_dir / "Model_B" / "model.keras")
    assert list(onnx_exports(RunFolder(run_dir))) == list(MODELS)


def test_export_web_refuses_a_folder_that_is_not_a_site(onnx_run: Path, tmp_path: Path) -> None:
    require_runtime()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    result = cli("export", onnx_run, "--format", "web", "--out", tmp_path / "notes")
    assert result.returncode == 2 and "not empty" in result.stderr
    assert [path.name for path in (tmp_path / "notes").iterdir()] == ["mine.txt"]


def test_export_web_without_the_runtime_names_npm_ci(onnx_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MNIST_CNN_ORT_DIST", str(tmp_path / "nowhere"))
    result = cli("export", onnx_run, "--format", "web", "--out", tmp_path / "site")
    assert result.returncode == 2 and "npm ci" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "site").exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def site(onnx_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_runtime()
    out = tmp_path_factory.mktemp("site") / "site"
    result = cli("export", onnx_run, "--format", "web", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "python -m http.server" in result.stdout
    again = cli("export", onnx_run, "--format", "web", "--out", out)  # A site written before is replaced.
    assert again.returncode == 0, again.stderr
    return out


def test_the_site_holds_the_page_the_models_and_the_runtime(site: Path, onnx_run: Path) -> None:
    from mnist_cnn.serve.site import RUNTIME_FILES

    files = sorted(str(path.relative_to(site)) for path in site.rglob("*") if path.is_file())
    assert files == sorted(
        [
            "favicon.ico",
            "index.html",
            "models.json",
            "prepare.js",
            *(f"models/{name}.onnx" for name in MODELS),
            *(f"ort/{name}" for name in RUNTIME_FILES),
        ]
    )
    config = json.loads((site / "models.json").read_text())
    assert config["api"] is False and config["runtime"] == "ort/"
    assert [model["name"] for model in config["models"]] == list(MODELS)
    for name in MODELS:
        exported = onnx_run / "exports" / "onnx" / f"{name}.onnx"
        assert (site / "models" / f"{name}.onnx").read_bytes() == exported.read_bytes()
    assert not list(site.parent.glob(".*partial*"))  # Nothing left of the writing.


@pytest.fixture()
def static_server(site: Path):
    """``python -m http.server`` on a free loopback port, serving the site as any static host would."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{address}/models.json", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)
    yield address
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.slow
def test_the_static_site_answers_in_the_browser_as_keras_does(static_server: str, onnx_run: Path) -> None:
    """The site on a plain static server, the network blocked but for it: every digit answered
    in the browser, with the Keras models' digits and probabilities for the same input."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    from mnist_cnn.store.runs import RunFolder

    shown = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        watched = offline_page(browser, static_server, 390, 844)  # A phone.
        page = watched.page
        page.goto(f"{static_server}/")
        page.wait_for_function("window.mnistCnn.engine !== null", timeout=60000)
        upload_hidden = not page.locator("label.upload").is_visible()
        for _, strokes in DIGITS[:4]:
            draw_digit(page, strokes)
            shown.append(page.evaluate(LAST_ANSWER))
            texts = [page.locator(f'[data-model="{name}"] .answer').inner_text() for name in MODELS]
            assert all(text.split()[0].isdigit() for text in texts), texts
        browser.close()
    assert watched.blocked == [] and watched.errors == []
    assert upload_hidden  # No server to prepare a photo.
    models = RunFolder(onnx_run).load_models()
    inputs = np.stack([np.asarray(answer["input"], dtype=np.float32).reshape(28, 28, 1) for answer in shown])
    for name, model in models.items():
        expected = np.asarray(model.predict_on_batch(inputs))
        for row, answer in zip(expected, shown, strict=True):
            assert answer["engine"] == "browser"
            assert answer["answers"][name]["digit"] == int(row.argmax())
            assert np.abs(np.asarray(answer["answers"][name]["probabilities"]) - row).max() <= PROBABILITY_BOUND


def test_export_web_writes_into_the_run_by_default(onnx_run: Path, tmp_path: Path) -> None:
    require_runtime()
    run_dir = tmp_path / "run"  # A copy: the session's onnx run is read by other test processes meanwhile.
    shutil.copytree(onnx_run, run_dir)
    result = cli("export", run_dir, "--format", "web")
    assert result.returncode == 0, result.stderr
    site = run_dir / "exports" / "web"
    assert str(site) in result.stdout
    assert json.loads((site / "models.json").read_text())["api"] is False
    assert (site / "ort" / "ort-wasm-simd-threaded.wasm").is_file()

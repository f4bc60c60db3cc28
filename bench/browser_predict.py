"""Time per prediction of the draw-a-digit page's models in the browser (onnxruntime-web).

Writes the run's static site (``mnist-cnn export RUN_DIR --format web``) to a temporary folder,
serves it with ``python -m http.server`` on loopback, and draws in headless Chromium (Debian's
/usr/bin/chromium, every other address blocked): one short stroke after another, each waited
for until the page has answered it, so that each timing is one prediction alone, not a queue.
The page times itself (``window.mnistCnn.timings``): preparing the drawing (prepare.js), each
model's ``session.run``, and the whole, with ``performance.now()`` (which Chromium rounds to
0.1 ms on a page that is not cross-origin isolated).

    python bench/browser_predict.py RUN_DIR --json docs/browser-bench.json
    python bench/browser_predict.py RUN_DIR --screenshot docs/serve-browser.png

The run needs its ONNX exports (``mnist-cnn export RUN_DIR --format onnx``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_helpers import free_port
from mnist_cnn.core.environment import cpu_description
from mnist_cnn.core.errors import UserError
from mnist_cnn.serve.site import runtime_folder, write_site

CHROMIUM = "/usr/bin/chromium"
# Strokes of a 2, a 3 and a 7, as fractions of the pad: the benchmark goes round them.
PATHS = [
    [(0.3, 0.3), (0.5, 0.15), (0.68, 0.3), (0.3, 0.82), (0.72, 0.82)],
    [(0.3, 0.2), (0.65, 0.22), (0.45, 0.48), (0.68, 0.65), (0.32, 0.82)],
    [(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)],
]
SEGMENTS_PER_PATH = 20


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile: the value below which ``share`` of the values lie."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


def points_along(path: list[tuple[float, float]], count: int) -> list[tuple[float, float]]:
    """``count`` + 1 points evenly spaced along a polyline."""
    lengths = [math.dist(a, b) for a, b in zip(path, path[1:], strict=False)]
    total, points = sum(lengths), []
    for step in range(count + 1):
        distance, index = total * step / count, 0
        while index < len(lengths) - 1 and distance > lengths[index]:
            distance -= lengths[index]
            index += 1
        (x0, y0), (x1, y1) = path[index], path[index + 1]
        share = min(1.0, distance / lengths[index]) if lengths[index] else 0.0
        points.append((x0 + (x1 - x0) * share, y0 + (y1 - y0) * share))
    return points


def serve_site(site: Path) -> tuple[subprocess.Popen, str]:
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
            return process, address
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise SystemExit("http.server did not start") from None
            time.sleep(0.1)


def open_page(playwright, address: str, width: int, height: int):
    """Headless Chromium on the site, every other address refused; returns (browser, page, blocked)."""
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )
    page = browser.new_page(viewport={"width": width, "height": height})
    blocked: list[str] = []

    def only_the_site(route) -> None:
        if route.request.url.startswith(f"{address}/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_site)
    page.goto(f"{address}/")
    page.wait_for_function("window.mnistCnn.engine !== null", timeout=120000)
    if page.evaluate("window.mnistCnn.engine") != "browser":
        raise SystemExit("the page could not load the models into the browser")
    return browser, page, blocked


def answered_stroke(page, box: dict, start: tuple[float, float], end: tuple[float, float]) -> None:
    """One short stroke (pointer down, one move, up), then wait until the page answered it."""
    answered = page.evaluate("window.mnistCnn.answered")
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"])
    page.mouse.up()
    page.wait_for_function(f"window.mnistCnn.answered > {answered} && window.mnistCnn.idle()", timeout=20000)


def measure(page, strokes: int) -> list[dict]:
    """``strokes`` strokes along the digits' paths, the pad cleared after each digit; the
    page's own timing of the last prediction of each stroke."""
    box = page.locator("#pad").bounding_box()
    timings: list[dict] = []
    digit = 0
    while len(timings) < strokes:
        page.click("#clear")
        points = points_along(PATHS[digit % len(PATHS)], SEGMENTS_PER_PATH)
        for start, end in zip(points, points[1:], strict=False):
            if len(timings) == strokes:
                break
            answered_stroke(page, box, start, end)
            timings.append(page.evaluate("window.mnistCnn.timings.at(-1)"))
        digit += 1
    return timings


def screenshot(page, path: Path) -> None:
    """The page with a 7 drawn and answered in the browser."""
    box = page.locator("#pad").bounding_box()
    page.click("#clear")
    answered = page.evaluate("window.mnistCnn.answered")
    page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    for fx, fy in [(0.7, 0.2), (0.55, 0.5), (0.45, 0.85)]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=12)
    page.mouse.up()
    page.wait_for_function(f"window.mnistCnn.answered > {answered} && window.mnistCnn.idle()", timeout=20000)
    page.screenshot(path=str(path), full_page=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder with ONNX exports")
    parser.add_argument("--strokes", type=int, default=200, help="strokes to time (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--screenshot", type=Path, default=None, help="also save the page, a digit answered")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    if runtime_folder() is None:
        raise SystemExit("onnxruntime-web is missing: run npm ci in the checkout (make setup)")

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch:
        try:
            site = write_site(args.run_dir, Path(scratch) / "site")
        except UserError as error:  # No ONNX exports yet, not a run folder...
            raise SystemExit(f"bench/browser_predict.py: {error}") from None
        config = json.loads((site / "models.json").read_text())
        server, address = serve_site(site)
        try:
            with sync_playwright() as playwright:
                browser, page, blocked = open_page(playwright, address, 1280, 800)
                version = browser.version
                timings = measure(page, args.strokes)
                if args.screenshot is not None:
                    page.set_viewport_size({"width": 900, "height": 620})
                    screenshot(page, args.screenshot)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    if blocked:
        raise SystemExit(f"the page asked for outside addresses: {blocked}")

    names = [model["name"] for model in config["models"]]
    results = {
        "cpu": cpu_description(),
        "browser": f"Chromium {version} (headless)",
        "onnxruntime_web": json.loads((runtime_folder().parent / "package.json").read_text())["version"],
        "execution_provider": "wasm (SIMD, 1 thread)",
        "strokes": len(timings),
        "run": args.run_dir.name,
        "parameters": {model["name"]: model["parameters"] for model in config["models"]},
        "prepare": summary([timing["prepare_ms"] for timing in timings]),
        "models": {name: summary([timing["models_ms"][name] for timing in timings]) for name in names},
        "both_models": summary([sum(timing["models_ms"].values()) for timing in timings]),
        "total": summary([timing["total_ms"] for timing in timings]),
    }
    print(f"CPU: {results['cpu']}; {results['browser']}; onnxruntime-web {results['onnxruntime_web']}, wasm, 1 thread")
    print(f"{len(timings)} strokes, each answered alone; ms per prediction:")
    print(f"{'':<22}{'median':>8}{'p99':>8}")
    rows = [("prepare (prepare.js)", results["prepare"])]
    rows += [(name, results["models"][name]) for name in names]
    rows += [("both models", results["both_models"]), ("whole prediction", results["total"])]
    for label, row in rows:
        print(f"{label:<22}{row['median_ms']:>8.2f}{row['p99_ms']:>8.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""docs/mlflow.png: the MLflow UI comparing the 5-seed sweep's runs, back-filled from docs/compare.

    python bench/tracking_screenshot.py [--sweep docs/compare] [--out docs/mlflow.png]

Back-fills the sweep into a fresh SQLite store (``mnist-cnn track``), starts a real
``mlflow server`` on a free loopback port, and photographs its compare-runs page in headless
Chromium with every request off the loopback blocked (the UI works offline).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_helpers import free_port

CHROMIUM = "/usr/bin/chromium"


def start_server(store: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        ],
        cwd=store,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit("mlflow server did not start within 2 minutes")


def choose_plot(page: Any) -> None:
    """Filters against test accuracy and training time (the page opens on the last epoch's loss);
    the assistant's side panel closed. Best effort: the page stays as it opened if the UI differs."""
    steps = [
        lambda: page.get_by_role("button", name="Clear All").click(timeout=10_000),
        lambda: pick(page, 0, "model.filters"),
        lambda: pick(page, 1, "test_accuracy"),
        lambda: pick(page, 1, "training_seconds"),
        lambda: page.get_by_role("button", name="Close").last.click(timeout=10_000),
    ]
    for step in steps:
        try:
            step()
        except Exception as error:  # noqa: BLE001  (a picture without this step beats none)
            print(f"note: a UI step did not work ({error.__class__.__name__}); kept the page as it is")
        page.wait_for_timeout(1_000)
    page.keyboard.press("Escape")  # Close any open drop-down.
    page.get_by_text("Comparing").first.scroll_into_view_if_needed()
    page.wait_for_timeout(3_000)


def pick(page: Any, position: int, option: str) -> None:
    """Type ``option`` into the ``position``-th select (0: parameters, 1: metrics) and take it."""
    box = page.locator(".ant-select-selector, [role=combobox]").nth(position)
    box.click(timeout=10_000)
    page.keyboard.type(option)
    page.wait_for_timeout(500)
    page.keyboard.press("Enter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("docs/compare"), help="sweep folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow.png"), help="PNG to write (default: %(default)s)")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    from mnist_cnn.core.config import TrackingSettings
    from mnist_cnn.track.mlflow_tracking import PARENT_TAG, track_folders

    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder)
        settings = TrackingSettings(uri=f"sqlite:///{store / 'mlflow.db'}")
        print(track_folders([args.sweep], settings, io.StringIO()))
        client = MlflowClient(settings.uri)
        experiment = client.get_experiment_by_name(settings.experiment)
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{PARENT_TAG}` != ''")
        # One model's five seeds: the compare page then shows seed-to-seed spread, curves overlaid.
        chosen = [run.info.run_id for run in runs if run.data.tags.get("mnist_cnn.model") == "Model_B"]
        chosen += [run.info.run_id for run in runs if run.data.tags.get("mnist_cnn.model") == "Model_A"]
        port = free_port()
        server = start_server(store, port)
        try:
            origin = f"http://127.0.0.1:{port}"
            address = (
                f"{origin}/#/compare-runs?runs={json.dumps(chosen)}"
                f"&experiments={json.dumps([experiment.experiment_id])}"
            )
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.route(
                    "**/*",
                    lambda route: route.continue_() if route.request.url.startswith(origin) else route.abort(),
                )
                page.goto(address, wait_until="load", timeout=300_000)
                # The UI is a large script bundle: wait for the comparison table itself, then for its charts.
                page.get_by_text("Metrics", exact=False).first.wait_for(timeout=300_000)
                page.wait_for_timeout(5_000)
                choose_plot(page)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=False)
                browser.close()
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The draw-a-digit page's models in the browser: ONNX exports run by onnxruntime-web.

When a run has ONNX exports (``mnist-cnn export RUN_DIR --format onnx``) and onnxruntime-web's
files are installed (``npm ci``, which ``make setup`` runs), the page loads every model into
the browser's WebAssembly runtime and answers each stroke there, without a request. The app
serves those files itself (``add_browser_routes``: no CDN, it works offline), and
``write_site`` packs the same page, models and runtime into a static folder that any web server
can host, with no API behind it (``mnist-cnn export RUN_DIR --format web``). Without exports or
runtime, the page asks the server's API as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response

from mnist_cnn.core.errors import ConfigError, RunFolderError
from mnist_cnn.core.files import TEMPORARY_MARK, write_json
from mnist_cnn.core.text import say
from mnist_cnn.serve.icon import favicon_png
from mnist_cnn.store.runs import RunFolder

# Where onnxruntime-web's files are: this variable's folder when set; else the package's own copy
# (a wheel carries one, put there at build time by setup.py); else npm's folder in this checkout.
RUNTIME_ENVIRONMENT = "MNIST_CNN_ORT_DIST"
PACKAGED_RUNTIME_FOLDER = Path(__file__).resolve().parent / "web" / "ort"
CHECKOUT = Path(__file__).resolve().parents[3]
DEFAULT_RUNTIME_FOLDER = CHECKOUT / "node_modules" / "onnxruntime-web" / "dist"
# The WebAssembly-only build of onnxruntime-web 1.30: the script the page loads, the Emscripten
# module it imports at run time, and the WebAssembly binary that module fetches (the SIMD build
# with threads; the page runs it on one thread, which needs no cross-origin isolation).
RUNTIME_FILES = {
    "ort.wasm.min.js": "text/javascript",
    "ort-wasm-simd-threaded.mjs": "text/javascript",
    "ort-wasm-simd-threaded.wasm": "application/wasm",
}
PAGE_FILES = {"index.html": "text/html", "prepare.js": "text/javascript"}
# The page's URLs, relative to the page, so that a site works under any path of a host.
PAGE_CONFIG_URL = "models.json"
MODELS_URL = "models"
RUNTIME_URL = "ort"
ONNX_SUFFIX = ".onnx"
FAVICON = "favicon.ico"


def runtime_folder() -> Path | None:
    """onnxruntime-web's ``dist`` folder when it holds every file the page loads, else None."""
    configured = os.environ.get(RUNTIME_ENVIRONMENT)
    folders = [Path(configured)] if configured else [PACKAGED_RUNTIME_FOLDER, DEFAULT_RUNTIME_FOLDER]
    return next((folder for folder in folders if all((folder / name).is_file() for name in RUNTIME_FILES)), None)


def onnx_exports(run: RunFolder) -> dict[str, Path]:
    """Each trained model's current ONNX file, by model name (RunFolder.export_state).

    A model without one, or whose export is older than its model.keras, is left out: the page
    then asks the server for it, and a warning line says why and how to export again.
    """
    state = run.export_state("onnx")
    if state.stale:
        say(sys.stderr, f"mnist-cnn: warning: {state.problem(run.path)}; until then the page asks the server")
    return {name: state.artifact(name) for name in state.current}


def page_config(summaries: list[dict[str, Any]], exports: dict[str, Path], api: bool, runtime: bool) -> dict[str, Any]:
    """What the page reads first (``models.json``): the models, where their ONNX files are,
    whether the runtime is there and whether an API answers (False on a static site)."""
    return {
        "api": api,
        "runtime": f"{RUNTIME_URL}/" if runtime else None,
        "models": [
            {**summary, "onnx": f"{MODELS_URL}/{summary['name']}{ONNX_SUFFIX}" if summary["name"] in exports else None}
            for summary in summaries
        ],
    }


def page_file(name: str) -> bytes:
    return (resources.files("mnist_cnn.serve") / "web" / name).read_bytes()


def add_browser_routes(app: FastAPI, run: RunFolder, summaries: list[dict[str, Any]]) -> None:
    """The page's script, its ``models.json``, the ONNX models and onnxruntime-web's files.

    The exports and the runtime folder are looked up once, when the app starts: the page then
    loads what was there (an export made later is served after a restart).
    """
    exports = onnx_exports(run)
    runtime = runtime_folder()
    config = page_config(summaries, exports, api=True, runtime=runtime is not None)

    @app.get("/prepare.js", include_in_schema=False)
    def prepare_script() -> Response:
        return Response(page_file("prepare.js"), media_type=PAGE_FILES["prepare.js"])

    @app.get(f"/{PAGE_CONFIG_URL}", include_in_schema=False)
    def models_config() -> JSONResponse:
        return JSONResponse(config)

    @app.get(f"/{MODELS_URL}/{{file_name}}", include_in_schema=False)
    def onnx_model(file_name: str) -> FileResponse:
        name = file_name.removesuffix(ONNX_SUFFIX)
        if not file_name.endswith(ONNX_SUFFIX) or name not in exports:
            raise HTTPException(status_code=404, detail=f"no ONNX export of {name} in this run")
        return FileResponse(exports[name], media_type="application/octet-stream")

    @app.get(f"/{RUNTIME_URL}/{{file_name}}", include_in_schema=False)
    def runtime_file(file_name: str) -> FileResponse:
        if runtime is None or file_name not in RUNTIME_FILES:
            raise HTTPException(status_code=404, detail=f"{file_name} is not a file of the page's runtime")
        return FileResponse(runtime / file_name, media_type=RUNTIME_FILES[file_name])


def model_summaries(run: RunFolder) -> list[dict[str, Any]]:
    """What the page shows of each trained model, from the run folder alone (no Keras)."""
    specs = {spec.name: spec for spec in run.config().model_specs()}
    augmented = run.config().augmentation is not None
    summaries = []
    for folder in run.trained_model_folders():
        metrics = folder.read_metrics() if folder.metrics_path.is_file() else None
        summaries.append(
            {
                "name": folder.name,
                "parameters": specs[folder.name].parameter_count(),
                "test_accuracy": metrics.test_accuracy if metrics else None,
                "epochs": metrics.epochs if metrics else None,
                "augmented": augmented,
            }
        )
    return summaries


def write_site(run_dir: Path, out_dir: Path) -> Path:
    """A static folder with the page, the run's ONNX models and onnxruntime-web: it predicts in
    the browser from any static web server (``python -m http.server -d OUT``), with no API.

    Needs the run's ONNX exports (RunFolderError naming the command that makes them) and the
    runtime's files (ConfigError naming ``npm ci``). The folder is written beside ``out_dir``
    and renamed into place: a failure leaves no half-written site, and a site written before
    is replaced whole. A folder that holds anything else is refused.
    """
    run = RunFolder.existing(run_dir)
    state = run.export_state("onnx")
    if not state.complete:
        raise RunFolderError(state.problem(run.path))
    exports = {name: state.artifact(name) for name in state.current}
    runtime = runtime_folder()
    if runtime is None:
        folder = os.environ.get(RUNTIME_ENVIRONMENT) or DEFAULT_RUNTIME_FOLDER
        raise ConfigError(
            f"onnxruntime-web's files are not in {folder}: run 'npm ci' in {CHECKOUT} (make setup does), "
            f"or set {RUNTIME_ENVIRONMENT} to its dist folder"
        )
    out_dir = Path(out_dir)
    check_site_target(out_dir)
    config = page_config(model_summaries(run), exports, api=False, runtime=True)
    with site_folder(out_dir) as folder:
        for name in PAGE_FILES:
            (folder / name).write_bytes(page_file(name))
        (folder / FAVICON).write_bytes(favicon_png())
        (folder / MODELS_URL).mkdir()
        for name, path in exports.items():
            shutil.copyfile(path, folder / MODELS_URL / f"{name}{ONNX_SUFFIX}")
        (folder / RUNTIME_URL).mkdir()
        for name in RUNTIME_FILES:
            shutil.copyfile(runtime / name, folder / RUNTIME_URL / name)
        write_json(folder / PAGE_CONFIG_URL, config)
    return out_dir


def check_site_target(out_dir: Path) -> None:
    """Refuse a file, or a folder with anything in it but an earlier site."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file, not a folder: choose another --out")
    earlier_site = all((out_dir / name).is_file() for name in (PAGE_CONFIG_URL, *PAGE_FILES))
    if out_dir.is_dir() and any(out_dir.iterdir()) and not earlier_site:
        raise ConfigError(f"{out_dir} is not empty and holds no site written before: choose another --out")


@contextlib.contextmanager
def site_folder(out_dir: Path):
    """A fresh folder beside ``out_dir`` to write into; renamed to ``out_dir`` when all is written."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{TEMPORARY_MARK}", dir=out_dir.parent))
    except OSError as error:
        raise ConfigError(f"cannot write the site beside {out_dir} ({error.strerror}): choose another --out") from None
    try:
        yield building
        building.chmod(0o755)  # mkdtemp makes it private; a site is for a web server to read.
        if out_dir.exists():
            previous = out_dir.with_name(f".{out_dir.name}{TEMPORARY_MARK}old")
            shutil.rmtree(previous, ignore_errors=True)
            out_dir.rename(previous)
            building.rename(out_dir)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            building.rename(out_dir)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise ConfigError(f"cannot write the site into {out_dir} ({error.strerror}): choose another --out") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise

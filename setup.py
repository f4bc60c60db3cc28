"""The wheel carries onnxruntime-web's files, so the draw-a-digit page runs its models in the
browser from an installed package that never needs npm (pyproject.toml holds everything else).

``build_py`` copies the three files the page loads from ``node_modules/onnxruntime-web/dist``
(``npm ci``, pinned by package-lock.json) into ``mnist_cnn/serve/web/ort/`` of the build. An
editable install skips it: a checkout serves them from node_modules itself.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ONNXRUNTIME_WEB = Path(__file__).resolve().parent / "node_modules" / "onnxruntime-web" / "dist"
# The same three names as mnist_cnn.serve.site.RUNTIME_FILES (a test checks that they agree).
ONNXRUNTIME_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PACKAGED_FOLDER = Path("mnist_cnn") / "serve" / "web" / "ort"


class BuildWithOnnxruntimeWeb(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        missing = [name for name in ONNXRUNTIME_WEB_FILES if not (ONNXRUNTIME_WEB / name).is_file()]
        if missing:
            raise SystemExit(
                f"error: onnxruntime-web's {', '.join(missing)} not in {ONNXRUNTIME_WEB}: run 'npm ci' "
                "(make setup does) before building the wheel"
            )
        destination = Path(self.build_lib) / PACKAGED_FOLDER
        destination.mkdir(parents=True, exist_ok=True)
        for name in ONNXRUNTIME_WEB_FILES:
            shutil.copy2(ONNXRUNTIME_WEB / name, destination / name)


setup(cmdclass={"build_py": BuildWithOnnxruntimeWeb})

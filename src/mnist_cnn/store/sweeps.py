"""Sweep folders (``compare``): ordinary run folders ``seed-<n>/`` under one root with its statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_cnn.core.errors import RunFolderError
from mnist_cnn.core.files import read_json, write_json, write_text
from mnist_cnn.store.layout import (
    LOCK_FILE,
    REPORT_FILE,
    SEED_FOLDER_PREFIX,
    STATISTICS_JSON,
    STATISTICS_MARKDOWN,
    SWEEP_FIGURES,
    SWEEP_FILE,
)
from mnist_cnn.store.lock import RunLock
from mnist_cnn.store.runs import RunFolder, content_identity, fresh_path


class SweepFolder:
    """``compare --seeds``: a folder of ordinary run folders ``seed-<n>/`` and their statistics::

    sweep.json  statistics.json  statistics.md  seed-accuracy.png  mean-curves.png  epoch-times.png
    seed-0/  seed-1/  ...   (each a run folder, plus trial.json and train.log)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def new(cls, root: str | Path = "runs") -> SweepFolder:
        """A fresh ``runs/compare-<timestamp>`` folder."""
        return cls(fresh_path(Path(root), "compare-"))

    @classmethod
    def existing(cls, path: str | Path) -> SweepFolder:
        sweep = cls(path)
        if not sweep.path.is_dir():
            raise RunFolderError(
                f"sweep folder {sweep.path} does not exist; pass a folder written by 'mnist-cnn compare'"
            )
        if not sweep.settings_path.is_file():
            raise RunFolderError(
                f"{sweep.path} is not a sweep folder (no {SWEEP_FILE}); pass a folder written by 'mnist-cnn compare'"
            )
        return sweep

    def create(self) -> SweepFolder:
        RunFolder(self.path).create()
        return self

    @property
    def settings_path(self) -> Path:
        return self.path / SWEEP_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def statistics_path(self) -> Path:
        return self.path / STATISTICS_JSON

    @property
    def statistics_markdown_path(self) -> Path:
        return self.path / STATISTICS_MARKDOWN

    def is_sweep(self) -> bool:
        return self.settings_path.is_file()

    def holds_other_files(self) -> bool:
        return any(path.name != LOCK_FILE for path in self.path.iterdir())

    def write_settings(self, settings: dict[str, Any]) -> None:
        write_json(self.settings_path, settings)

    def read_settings(self) -> dict[str, Any]:
        settings = read_json(self.settings_path)
        if not isinstance(settings, dict) or not isinstance(settings.get("experiment"), dict):
            raise RunFolderError(f"{self.settings_path} is not an mnist-cnn sweep; the sweep folder is damaged")
        return settings

    def identity(self) -> str:
        """sweep.json's ``sweep_id``; for sweeps written before ids existed, the hash of sweep.json."""
        settings = self.read_settings()
        if isinstance(settings.get("sweep_id"), str):
            return settings["sweep_id"]
        return content_identity(self.settings_path)

    def seed_run(self, seed: int) -> RunFolder:
        return RunFolder(self.path / f"{SEED_FOLDER_PREFIX}{seed}")

    def lock(self) -> RunLock:
        return RunLock(self.path / LOCK_FILE)

    def figure_path(self, name: str) -> Path:
        return self.path / SWEEP_FIGURES[name]

    def write_statistics(self, statistics: dict[str, Any], markdown: str) -> None:
        write_json(self.statistics_path, statistics)
        write_text(self.statistics_markdown_path, markdown)

    def read_statistics(self) -> dict[str, Any]:
        return read_json(self.statistics_path)

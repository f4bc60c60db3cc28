"""Sweep folders (``compare``): ordinary run folders ``seed-<n>/`` under one root with its statistics."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from mnist_cnn.core.config import SweepConfig
from mnist_cnn.core.errors import RunFolderError
from mnist_cnn.core.files import read_json, write_json, write_text
from mnist_cnn.store.layout import (
    CHECKPOINT_FILE,
    LOCK_FILE,
    MODEL_FILE,
    REPORT_FILE,
    SEED_FOLDER_PREFIX,
    STATISTICS_JSON,
    STATISTICS_MARKDOWN,
    SWEEP_FIGURES,
    SWEEP_FILE,
)
from mnist_cnn.store.lock import RunLock
from mnist_cnn.store.runs import RunFolder, content_identity, fresh_path


def copy_folder_files(source: Path, destination: Path) -> None:
    """The files directly in ``source`` (not its folders, not a lock) into ``destination``."""
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != LOCK_FILE:
            shutil.copy2(path, destination / path.name)


@dataclasses.dataclass(frozen=True)
class PublishedSeeds:
    """What ``publish`` copied: the finished seeds, and each unfinished seed's finished models."""

    finished: list[int]
    partial: dict[int, list[str]]

    def describe(self) -> str:
        text = f"finished seeds: {', '.join(map(str, self.finished)) or 'none'}"
        for seed, names in self.partial.items():
            text += f"; seed {seed} unfinished, its {len(names)} finished model(s) kept ({', '.join(names)})"
        return text


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
        if not sweep.path.exists():
            raise RunFolderError(
                f"sweep folder {sweep.path} does not exist; pass a folder written by 'mnist-cnn compare'"
            )
        if not sweep.path.is_dir():
            raise RunFolderError(
                f"{sweep.path} is not a folder; pass a sweep folder, as written by 'mnist-cnn compare'"
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

    def has_trials(self) -> bool:
        """Whether a seed's run folder is there: a trial of the sweep has started."""
        return any(path.name.startswith(SEED_FOLDER_PREFIX) for path in self.path.iterdir())

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

    def publish(self, destination: str | Path) -> list[int]:
        """Copy the sweep's results, without model files or checkpoints, to ``destination``.

        For a repository or a web site (docs/compare, docs/study): everything a reader and the
        statistics need (sweep.json, the statistics, figures and reports, each finished seed's
        config, status, trial record, log, metrics and history) in a few megabytes instead of
        the models' hundreds. A copy of it resumes: ``compare --resume`` keeps its seeds (their
        results are there) and trains only the others, so a long sweep can go on in another
        session or on another machine. Of an unfinished seed, only its finished models are kept
        (their results and predictions; ``compare --resume`` trains the rest). Publishing again into
        the same destination replaces it; the old copy goes only once the new one is complete.
        Returns the seeds published.
        """
        destination = Path(destination)
        if destination.resolve() == self.path.resolve():
            raise RunFolderError(f"{destination} is the sweep itself; publish into another folder")
        if destination.exists() and not destination.is_dir():
            raise RunFolderError(f"{destination} is not a folder; publish into a folder (new or a copy of this sweep)")
        if destination.exists() and any(destination.iterdir()):
            published = SweepFolder(destination)
            if not published.is_sweep() or published.identity() != self.identity():
                raise RunFolderError(
                    f"{destination} holds something other than a copy of this sweep; choose another folder"
                )
        seeds = [seed for seed in self.seeds() if self.seed_run(seed).has_results()]
        partial = self.unfinished_seeds_with_results(seeds)
        staging = destination.with_name(f".{destination.name}.publishing")
        shutil.rmtree(staging, ignore_errors=True)
        leave_out = shutil.ignore_patterns(MODEL_FILE, CHECKPOINT_FILE, LOCK_FILE)
        try:
            staging.mkdir(parents=True)
            copy_folder_files(self.path, staging)
            for seed in seeds:
                shutil.copytree(self.seed_run(seed).path, staging / self.seed_run(seed).path.name, ignore=leave_out)
            for seed, names in partial.items():  # The run's own files, and only its finished models.
                run = self.seed_run(seed)
                copied = staging / run.path.name
                copied.mkdir()
                copy_folder_files(run.path, copied)
                for name in names:
                    shutil.copytree(run.model(name).path, copied / name, ignore=leave_out)
            replaced = destination.with_name(f".{destination.name}.replaced")
            if destination.exists():
                destination.rename(replaced)
            staging.rename(destination)
            shutil.rmtree(replaced, ignore_errors=True)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise RunFolderError(f"could not publish {self.path} to {destination}: {error.strerror or error}") from None
        return PublishedSeeds(finished=seeds, partial=partial)

    def unfinished_seeds_with_results(self, finished: list[int]) -> dict[int, list[str]]:
        """Each unfinished seed's finished models (results and predictions, ModelFolder.has_results),
        by seed; seeds with none are left out. Published, they spare a resume their training."""
        partial = {}
        for seed in self.seeds():
            run = self.seed_run(seed)
            if seed in finished or not run.is_run():
                continue
            names = [folder.name for folder in run.model_folders() if folder.has_results()]
            if names:
                partial[seed] = names
        return partial

    def seeds(self) -> list[int]:
        """The seeds sweep.json asks for, in its order."""
        return list(SweepConfig.from_json(self.read_settings()).seeds)


def existing_run_or_sweep(path: str | Path) -> RunFolder | SweepFolder:
    """The sweep folder at ``path`` when it is one (it has sweep.json), else the run folder there;
    one line when it is neither, or missing, or not a folder."""
    return SweepFolder.existing(path) if SweepFolder(path).is_sweep() else RunFolder.existing(path)

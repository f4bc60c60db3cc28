"""``mnist-cnn compare --seeds N`` end to end: the trials on Ray, then the statistics and the reports.

The last step of the story: ``sweep`` trains the seeds, ``sweep_report`` computes the
statistics from their run folders, ``report`` renders the page. Like ``run_experiment`` for
one run, ``run_sweep`` is the one entry point the CLI calls.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TextIO

from mnist_cnn.core.config import SweepConfig, TrackingSettings
from mnist_cnn.core.sweep_results import SweepStatistics
from mnist_cnn.core.text import say
from mnist_cnn.report.html import write_run_report
from mnist_cnn.report.sweep import write_sweep_report, write_sweep_statistics
from mnist_cnn.store.sweeps import SweepFolder
from mnist_cnn.sweep.trials import check_sweep_options, train_seeds
from mnist_cnn.track.mlflow_tracking import Tracker


def run_sweep(
    sweep_config: SweepConfig,
    sweep_dir: str | Path,
    ray_address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: int | None = None,
    stream: TextIO | None = None,
    tracking: TrackingSettings | None = None,
) -> SweepStatistics:
    """Train every seed not finished yet on Ray, then write and return the sweep's statistics.

    Into a folder that already holds this sweep, this resumes: finished seeds are kept,
    unfinished ones continue from their checkpoints, and the statistics come out the same.
    With ``tracking``, this driver (never the Ray workers, which may be on machines that
    cannot reach the store) logs each trial from its folder as it finishes, under one
    parent run that ends up holding the statistics. A new sweep that fails before its first
    trial starts leaves nothing behind: no sweep.json, and no folder if this made it.
    """
    stream = stream or sys.stdout
    check_sweep_options(ray_address, workers, cpus_per_trial)
    sweep = SweepFolder(sweep_dir)
    new_folder = not sweep.path.exists()
    sweep.create()
    tracker = Tracker(tracking, stream, hint=sweep.path) if tracking else None
    on_trial = None if tracker is None else lambda seed: tracker.sync_sweep(sweep, seeds=[seed])
    try:
        with sweep.lock():
            new_sweep = not sweep.is_sweep()
            try:
                train_seeds(sweep_config, sweep, ray_address, workers, cpus_per_trial, stream, on_trial)
            except BaseException:
                if new_sweep and not sweep.has_trials():
                    # It never began (Ray did not start, no node fits a trial): nothing to resume or track.
                    sweep.settings_path.unlink(missing_ok=True)
                elif tracker is not None:
                    tracker.sync_sweep(sweep)
                raise
            statistics, markdown = write_sweep_statistics(sweep, sweep_config)
            report = write_sweep_report(sweep.path, statistics)
            if tracker is not None:
                tracker.sync_sweep(sweep)
    except BaseException:
        if new_folder:
            with contextlib.suppress(OSError):  # Only when empty: made by this command, for nothing.
                sweep.path.rmdir()
        raise
    say(stream, "\n" + markdown.rstrip() + f"\n\nEverything is in {sweep.path}; open {report}")
    return statistics


def write_report(path: str | Path) -> Path:
    """``mnist-cnn report PATH``: the sweep report for a sweep folder, the run report for a run folder."""
    return write_sweep_report(path) if SweepFolder(path).is_sweep() else write_run_report(path)

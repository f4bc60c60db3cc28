"""How the command line words things: one line at a time, durations one way everywhere."""

from __future__ import annotations

import math
from typing import TextIO


def say(stream: TextIO, text: str) -> None:
    """Print a line now (flushed: a run's log is read while it trains)."""
    print(text, file=stream, flush=True)


def format_duration(seconds: float | None) -> str:
    """'4m05s', '1h02m03s'; '?' when not known yet (None or NaN)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"

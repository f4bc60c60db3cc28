"""A progress bar over one epoch's training images, on a terminal only.

On a terminal, each epoch draws a bar (rich's, as Keras itself imports rich) with the images
trained so far, the images per second and the epoch's ETA; the bar is cleared when the epoch
ends, and the epoch's one line prints where it stood. Anywhere else (a file such as a run's
train.log, a pipe, CI, a Ray trial, pytest's capture) nothing is drawn and the output is the
one line per epoch alone.

The trainers tell a bar how many of the epoch's images are trained: the steps whose results
are ready, asked without waiting (JAX runs a step after the call that dispatches it returns,
and may dispatch a whole epoch ahead). Training never waits for a bar: it runs as it runs
without one, and computes the same numbers (the tests compare the weights).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Task
    from rich.text import Text

# Told the number of the epoch's training images trained so far (a running total).
OnImages = Callable[[int], None]
# (epoch, 0-based; the epoch's training images) -> a context in which the epoch trains, giving
# the OnImages to call, or None where no bar is drawn.
EpochBars = Callable[[int, int], contextlib.AbstractContextManager["OnImages | None"]]

REFRESHES_PER_SECOND = 4  # Redrawn by rich's own thread: the clock and the ETA move between batches too.


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal a bar can be drawn on: a TTY, and not one that declares it
    cannot move the cursor (TERM=dumb, as Emacs's shell sets)."""
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # A closed or detached stream.
        return False
    return tty and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


@contextlib.contextmanager
def no_bars(epoch: int, images: int) -> Iterator[OnImages | None]:
    """The EpochBars that draw nothing."""
    yield None


@contextlib.contextmanager
def epoch_bar(stream: TextIO, description: str, images: int) -> Iterator[OnImages]:
    """A bar over ``images`` training images on ``stream`` (the caller has checked it is a
    terminal), cleared when the context ends."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
    from rich.table import Column

    class Speed(ProgressColumn):
        """'12,800/54,000 images  3,120 images/s  ETA 0:10' (the rate and ETA once measured)."""

        def render(self, task: Task) -> Text:
            from rich.text import Text

            done, total = int(task.completed), int(task.total or 0)
            speed = task.speed
            rate = f"{speed:,.0f} images/s" if speed else "- images/s"
            remaining = task.time_remaining
            eta = "?" if remaining is None else clock(remaining)
            return Text(f"{done:,}/{total:,} images  {rate}  ETA {eta}", no_wrap=True)

    console = Console(file=stream, force_terminal=True, force_jupyter=False, highlight=False, soft_wrap=False)
    bar = Progress(  # One line: the text as it is, the bar in the width left (on a narrow terminal, none).
        TextColumn("{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=None, table_column=Column(ratio=1)),
        Speed(table_column=Column(no_wrap=True)),
        console=console,
        transient=True,  # Cleared at the end: the epoch's line prints in its place.
        refresh_per_second=REFRESHES_PER_SECOND,
        # Other writes to stdout and stderr stay where they go (stderr may be a file).
        redirect_stdout=False,
        redirect_stderr=False,
        expand=True,
    )
    task = bar.add_task(description, total=images)

    def advance(done: int) -> None:
        bar.update(task, completed=done)

    with bar:
        yield advance


def clock(seconds: float) -> str:
    """'0:07', '12:34', '1:02:03'."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"

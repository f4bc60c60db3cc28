"""The bar within an epoch: drawn on a terminal only, cleared before the epoch's line, the same weights."""

from __future__ import annotations

import io
import os
import pty
import re
import threading
import time

import keras
import numpy as np
import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig
from mnist_cnn.data.mnist import load_mnist
from mnist_cnn.train.loop import ExperimentProgress, train_model
from mnist_cnn.train.models import seeded_model
from mnist_cnn.train.progress import clock, epoch_bar, is_terminal, no_bars

LIMIT = 640
# ExperimentProgress.report's line, as train.log and the tests of the CLI read it.
EPOCH_LINE = re.compile(
    r"Model_A epoch +\d+/\d+  loss \d\.\d{4}  acc \d\.\d{4}  val_loss \d\.\d{4}  val_acc \d\.\d{4}  "
    r"\d+\.\ds  \| experiment \d+/\d+ epochs, ETA \S+"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"Model_A epoch +1/1 .*[\d,]+/640 images  [\d,]+ images/s  ETA \d+:\d\d")


class TerminalLike(io.StringIO):
    """A stream that says it is a terminal, as sys.stdout does in a shell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def small_splits():
    return load_mnist("bundled", limit=LIMIT)


def train_once(splits, stream, trainer: str, bar: bool | None = None) -> keras.Model:
    config = ExperimentConfig(
        models=("A",), epochs=1, seed=5, limit=LIMIT, steps_per_execution=4, trainer=trainer
    ).for_backend(keras.backend.backend())
    model = seeded_model(MODEL_VARIANTS["A"], config)
    progress = ExperimentProgress(plan={"Model_A": (1, model.count_params())}, stream=stream, bar=bar)
    train_model(model, splits, config, progress)
    return model


def test_a_bar_is_drawn_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TERM", raising=False)
    assert is_terminal(TerminalLike()) and not is_terminal(io.StringIO())
    assert ExperimentProgress(plan={}, stream=io.StringIO()).epoch_bars("Model_A", 1) is no_bars
    assert ExperimentProgress(plan={}, stream=TerminalLike()).epoch_bars("Model_A", 1) is not no_bars
    assert ExperimentProgress(plan={}, stream=TerminalLike(), bar=False).epoch_bars("Model_A", 1) is no_bars
    monkeypatch.setenv("TERM", "dumb")  # A terminal that cannot move its cursor (Emacs's shell).
    assert not is_terminal(TerminalLike())
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)


def test_the_bar_shows_the_count_the_rate_and_the_eta_then_clears() -> None:
    stream = TerminalLike()
    with epoch_bar(stream, "Model_A epoch   1/1", 1000) as advance:
        for done in (100, 200, 300):
            advance(done)
            time.sleep(0.1)
    text = ANSI.sub("", stream.getvalue())
    # 200 images in about 0.2 s: about 1,000 images/s, 700 left, about a second.
    assert re.search(r"Model_A epoch   1/1 .*300/1,000 images  [\d,]+ images/s  ETA 0:0\d", text), text
    assert stream.getvalue().endswith("\x1b[2K")  # The bar's line erased: what prints next starts clean.
    assert (clock(7.4), clock(754), clock(3723)) == ("0:07", "12:34", "1:02:03")


@pytest.mark.parametrize("trainer", ["fused", "keras"])
def test_an_epoch_draws_its_bar_on_a_pseudo_terminal_and_prints_its_line_after_it(small_splits, trainer) -> None:
    leader, follower = pty.openpty()
    received: list[bytes] = []

    def read() -> None:  # The pty's buffer is small: read it while training writes.
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # The follower closed (EIO on Linux).
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    terminal = open(follower, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below, before the join)
    try:
        train_once(small_splits, terminal, trainer)
    finally:
        terminal.close()
        reader.join(timeout=10)
        os.close(leader)
    raw = b"".join(received).decode("utf-8").replace("\r\n", "\n")
    assert BAR.search(ANSI.sub("", raw)), raw
    # After the bar's last erase, exactly the epoch's line, as without a terminal.
    after_bar = raw.rsplit("\x1b[2K", 1)[1]
    assert EPOCH_LINE.fullmatch(after_bar.rstrip("\n")), repr(after_bar)
    assert after_bar.count("\n") == 1


@pytest.mark.parametrize("trainer", ["fused", "keras"])
def test_without_a_terminal_only_the_epoch_lines_print_and_the_weights_are_those_with_the_bar(
    small_splits, trainer
) -> None:
    plain = io.StringIO()
    without = train_once(small_splits, plain, trainer)  # Not a terminal: no bar.
    assert EPOCH_LINE.fullmatch(plain.getvalue().rstrip("\n")), plain.getvalue()
    assert plain.getvalue().count("\n") == 1 and "\x1b" not in plain.getvalue()

    drawn = TerminalLike()
    with_bar = train_once(small_splits, drawn, trainer, bar=True)
    assert "images/s" in drawn.getvalue()
    for variable, got, want in zip(with_bar.weights, with_bar.get_weights(), without.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want, err_msg=variable.path)
    for got, want in zip(with_bar.optimizer.variables, without.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(got.value), np.asarray(want.value), err_msg=got.path)
    # The metrics too: the line differs in the epoch's seconds at most.
    seconds = re.compile(r"  \d+\.\ds  ")
    line_with_bar = ANSI.sub("", drawn.getvalue()).rsplit("\r", 1)[-1]
    assert seconds.sub("  s  ", line_with_bar) == seconds.sub("  s  ", plain.getvalue())

"""A test hook that stops the process at a named point, so every kill test is exact and repeatable.

``MNIST_CNN_FAULT=kill@POINT`` (SIGKILL), ``interrupt@POINT`` (SIGINT, as Ctrl-C) or
``pause@POINT`` (SIGSTOP: the test does something, e.g. stops a server, then sends SIGCONT)
makes the process stop itself when it reaches ``fault_point(POINT)``. Unset, it does nothing:
a point is one environment lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENVIRONMENT = "MNIST_CNN_FAULT"


def fault_point(point: str) -> None:
    """Stop this process here if the test hook names ``point`` (no-op otherwise)."""
    wanted = os.environ.get(FAULT_ENVIRONMENT, "")
    action, _, where = wanted.partition("@")
    if where == point:
        signals = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP}
        os.kill(os.getpid(), signals.get(action, signal.SIGINT))

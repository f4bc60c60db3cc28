"""A test hook that stops the process at a named point, so every kill test is exact and repeatable.

``MNIST_CNN_FAULT=kill@POINT`` (SIGKILL) or ``interrupt@POINT`` (SIGINT, as Ctrl-C) makes the
process stop itself when it reaches ``fault_point(POINT)``. Unset, it does nothing: a point is
one environment lookup.
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
        os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGINT)

"""What several benchmark scripts share: a free loopback port and a drawn digit to post.

The scripts run as ``python bench/NAME.py`` (bench/ is then on the import path) and are loaded
by path in the tests (``tests.conftest.bench_script`` puts bench/ on the path first).
"""

from __future__ import annotations

import io
import socket

from PIL import Image


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def digit_png() -> bytes:
    """A small drawn digit (a vertical bar: a 1), as a PNG."""
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (28, 8, 36, 56))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

"""The page's icon, shared by the app (/favicon.ico, ReDoc's logo) and the static site."""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageDraw


@functools.cache
def favicon_png() -> bytes:
    """A 32x32 icon drawn here: a white 7 on the drawing pad's black, as a PNG."""
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    ImageDraw.Draw(image).line([(8, 8), (24, 8), (14, 26)], fill=(255, 255, 255), width=4, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

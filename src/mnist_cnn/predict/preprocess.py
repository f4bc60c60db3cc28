"""Turn a photo, scan or drawing of a digit into the 28x28 image an MNIST model expects.

MNIST digits are light ink on a dark background, cropped to the digit, scaled so the longer
side is 20 pixels (keeping the aspect ratio) and centred by centre of mass in a 28x28 frame.
A digit that differs in any of these ways (dark on white paper, off-centre, another size)
is often misread; this module applies the same steps to any image. One function,
``prepare_digit``, used by the CLI and the web page alike.
"""

from __future__ import annotations

import functools
import importlib
import io
import struct
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from scipy.linalg import lapack

from mnist_cnn.core.config import POLARITIES
from mnist_cnn.core.errors import ImageInputError

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 20_000_000
DIGIT_BOX = 20
FRAME = 28
INK_THRESHOLD = 0.2  # Fraction of the image's ink range above which a pixel counts as ink.
WORKING_SIDE = 512  # Larger images are shrunk to this (longer side) before anything else.
RULED_LINE_THICKNESS = 0.03  # Lines of ruled paper: at most this fraction of the image thick.
BACKGROUND_SIDE = 32  # The background (paper, lamp light, shadows) is estimated on a copy this size.
EDGE_STROKE_CONTRAST = 0.1  # An edge pixel this much brighter than the paper just inside it is a stroke's.
SPECKLE_SIDE = 64  # From this size (shorter side) up, a lone strong pixel is noise, not a stroke.
BLANK_INK = 0.15  # An image whose strongest ink is weaker than this is blank.


def read_image_bytes(content: bytes, name: str = "image") -> Image.Image:
    """Decode PNG, JPEG, BMP, GIF (first frame), WebP... with size caps; errors name ``name``."""
    if not content:
        raise ImageInputError(f"{name}: empty file, expected an image (PNG, JPEG, BMP, GIF or WebP)")
    if len(content) > MAX_BYTES:
        raise ImageInputError(
            f"{name}: {len(content) / 2**20:.1f} MB is over the {MAX_BYTES // 2**20} MB limit; use a smaller image"
        )
    try:
        image = Image.open(io.BytesIO(content))
        if image.width * image.height > MAX_PIXELS:
            raise ImageInputError(
                f"{name}: {image.width}x{image.height} is over the {MAX_PIXELS // 1_000_000} megapixel limit; "
                "use a smaller image"
            )
        image.seek(0)  # GIF and other animations: the first frame.
        image.load()
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageInputError(
            f"{name}: not a readable image (the file is damaged or is not a picture); "
            "use a PNG, JPEG, BMP, GIF or WebP file"
        ) from None
    if image.width == 0 or image.height == 0:
        raise ImageInputError(f"{name}: image has no pixels")
    return image


def read_image_file(path: Path) -> Image.Image:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ImageInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageInputError(f"{path}: is a folder, not an image") from None
    except OSError as error:
        raise ImageInputError(f"{path}: cannot read it ({error.strerror})") from None
    return read_image_bytes(content, str(path))


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Grayscale in [0, 1]; transparent pixels count as background (drawn on white). A 16-bit
    image (a PNG's I;16) keeps its range: Pillow's conversion to L clips it at 255 of 65535."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image)
        gray = values.astype(np.float32) / np.float32(65535.0)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):
            gray[values == transparent] = 1.0
        return gray
    if image.mode == "La":  # Premultiplied alpha (Pillow's, for resizing), which converts only back to LA.
        image = image.convert("LA")
    if image.has_transparency_data:  # An alpha band, or a PNG's or GIF's transparent colour.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def ink_map(gray: np.ndarray, polarity: str = "auto") -> np.ndarray:
    """Ink in [0, 1] on a 0 background: inverted when the digit is dark on light (``polarity``
    one of POLARITIES: "auto" decides it from the image, as below).

    The background (paper, board or screen) is estimated on a small copy of the image, so
    that a lamp's gradient across the whole sheet, or a shadow across part of it, is not
    taken for ink: the polarity is decided against a smooth surface fitted to the border
    (``dark_on_light``), not a fixed grey level, and ink is measured against the paper's
    brightness at each spot (``local_background``). Lines of ruled paper are then removed.
    """
    small = _shrunk(gray, BACKGROUND_SIDE)
    inverted = dark_on_light(small) if polarity == "auto" else polarity == "dark-on-light"
    if inverted:
        gray, small = 1.0 - gray, 1.0 - small
    local = local_background(gray, small)
    # Ink relative to the paper's own brightness at that spot: under dim light the paper and
    # the ink both darken, and their ratio stays (for ink dark on light paper, exactly).
    ink = np.clip((gray - local) / np.maximum(1.0 - local, 0.05), 0.0, 1.0)
    return remove_ruled_lines(ink)


def _shrunk(gray: np.ndarray, side: int) -> np.ndarray:
    """A float32 copy of ``gray`` whose longer side is at most ``side`` (area-averaged)."""
    return np.asarray(
        Image.fromarray(gray, mode="F").resize(_fit(gray.shape, side), Image.Resampling.BILINEAR), dtype=np.float32
    )


def paper_surface(small: np.ndarray) -> tuple[np.ndarray, float]:
    """A smooth surface (quadratic in x and y) fitted to the border of ``small``, and the
    spread of the border about it.

    The border is the paper (a digit rarely touches all four edges), and a lamp's light
    varies smoothly across a sheet, so the surface is the paper's brightness under that
    light, extended over the image. A trimmed fit: the 30 % of border pixels farthest from
    the surface (where the digit or a line touches an edge) are left out, three times over.
    """
    design, ring, samples = _surface_design(*small.shape)
    values = small[ring].astype(np.float64)
    keep = np.ones(values.shape, dtype=bool)
    for _ in range(4):
        coefficients = _least_squares(samples[keep], values[keep])
        residuals = np.abs(values - samples @ coefficients)
        keep = residuals <= _quantile(residuals, 0.7)
    spread = 1.4826 * _median(residuals)  # A standard deviation, from the median.
    return (design @ coefficients).astype(np.float32), spread


@functools.lru_cache(maxsize=16)
def _surface_design(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The quadratic surface's terms at every pixel of a height x width image, the mask of its
    border and the terms there: the same for every image of that size (read-only, cached)."""
    v, u = np.meshgrid(np.linspace(-1.0, 1.0, height), np.linspace(-1.0, 1.0, width), indexing="ij")
    design = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], axis=-1)
    ring = np.zeros((height, width), dtype=bool)
    ring[[0, -1], :] = ring[:, [0, -1]] = True
    samples = design[ring]
    for array in (design, ring, samples):
        array.flags.writeable = False
    return design, ring, samples


def _least_squares(samples: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The least-squares coefficients, by the normal equations (a 6x6 solve, a few times
    faster than NumPy's SVD-based lstsq, for a server that fits one surface per upload) where
    the border pins all six terms well: at least four samples a term (the border of an image
    8 pixels a side or more). Else, for a tiny image, lstsq."""
    if len(values) >= 4 * samples.shape[1]:
        # LAPACK's gesv, as np.linalg.solve calls it, without its wrapper's checks (a quarter of the time).
        _, _, solution, info = lapack.dgesv(samples.T @ samples, samples.T @ values)
        if info == 0:
            return solution
    return np.linalg.lstsq(samples, values, rcond=None)[0]


def _quantile(values: np.ndarray, fraction: float) -> float:
    """np.quantile(values, fraction) (linear interpolation) by a partial sort of two elements."""
    position = fraction * (len(values) - 1)
    below = int(position)
    above = min(below + 1, len(values) - 1)
    low, high = np.partition(values, [below, above])[[below, above]]
    return float(low + (high - low) * (position - below))


def _median(values: np.ndarray) -> float:
    """np.median(values) (the mean of the two middle values of an even count), by a partial sort."""
    middle = len(values) // 2
    if len(values) % 2:
        return float(np.partition(values, middle)[middle])
    low, high = np.partition(values, [middle - 1, middle])[[middle - 1, middle]]
    return float((low + high) / 2)


def dark_on_light(small: np.ndarray) -> bool:
    """Whether the digit is darker than its background: the sign of the strongest departures
    from the paper's surface (``paper_surface``), beyond its noise.

    Not a fixed grey level: white paper in dim light, or far from a lamp, can be darker than
    mid-grey and still be the lighter side of a dark digit. An image with no departure at
    all (blank) is dark on light when its border is lighter than mid-grey.
    """
    paper, spread = paper_surface(small)
    departure = small - paper
    margin = 3.0 * spread + 2.0 / 255.0
    darker = float(np.square(np.clip(-departure - margin, 0.0, None)).sum())
    lighter = float(np.square(np.clip(departure - margin, 0.0, None)).sum())
    if darker == lighter:
        border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
        return float(np.median(border)) > 0.5
    return darker > lighter


def local_background(gray: np.ndarray, small: np.ndarray | None = None) -> np.ndarray:
    """The slowly varying background under bright ink, on windows wider than a stroke (a
    quarter of the image), computed on ``small``, a copy at most BACKGROUND_SIDE pixels.

    An opening (minimum, then maximum) removes every bright stroke narrower than the window
    and keeps a gradient as it is, up to the edges: the copy is first extended by a window's
    width of the background at its edges (``extend_background``), so that the darkest corner
    of a sheet is not under-estimated (and taken for ink) for want of a window that fits
    inside the image there.
    """
    if small is None:
        small = _shrunk(gray, BACKGROUND_SIDE)
    window = max(3, max(small.shape) // 4)
    extended = extend_background(small, window)
    opened = grey_opening(extended, window)[window:-window, window:-window]
    # A small blur softens the opening's steps. The background is smooth, so it goes on in a
    # straight line past the edges (two pixels, then one after the blur): the blur and the
    # enlargement back to full size then follow a gradient up to the edge instead of levelling
    # off half a pixel of the copy (8 pixels of a 512-pixel image) before it.
    smooth = box_blur(extend_linearly(opened, 2))[1:-1, 1:-1]
    height, width = opened.shape
    return np.asarray(
        Image.fromarray(smooth.astype(np.float32), mode="F").resize(
            gray.shape[::-1], Image.Resampling.BILINEAR, box=(1, 1, width + 1, height + 1)
        ),
        dtype=np.float32,
    )


def grey_opening(image: np.ndarray, window: int) -> np.ndarray:
    """``ndimage.grey_opening(image, size=(window, window))``, the same numbers, as its four
    one-dimensional passes called directly: the n-dimensional wrapper's argument handling cost
    more than the filtering itself on a 48x48 copy, once per upload. grey_dilation mirrors the
    window, which for an even width moves its origin by one."""
    origin = 0 if window % 2 else -1
    eroded = ndimage.minimum_filter1d(ndimage.minimum_filter1d(image, window, axis=0), window, axis=1)
    return ndimage.maximum_filter1d(
        ndimage.maximum_filter1d(eroded, window, axis=0, origin=origin), window, axis=1, origin=origin
    )


def box_blur(image: np.ndarray) -> np.ndarray:
    """``ndimage.uniform_filter(image, size=3)`` (the same numbers) by its two one-dimensional passes."""
    return ndimage.uniform_filter1d(ndimage.uniform_filter1d(image, 3, axis=0), 3, axis=1)


def extend_linearly(image: np.ndarray, by: int) -> np.ndarray:
    """``np.pad(image, by, mode="reflect", reflect_type="odd")`` (the same numbers): each edge
    continued in a straight line (2 * edge - its mirror), rows first, then columns. An image
    ``by`` pixels thin or less (the copy of a sliver of an image) takes np.pad itself, which
    reflects again past the far edge."""
    if min(image.shape) <= by:
        return np.pad(image, by, mode="reflect", reflect_type="odd")
    rows = np.concatenate([2 * image[:1] - image[by:0:-1], image, 2 * image[-1:] - image[-2 : -by - 2 : -1]])
    return np.concatenate(
        [2 * rows[:, :1] - rows[:, by:0:-1], rows, 2 * rows[:, -1:] - rows[:, -2 : -by - 2 : -1]], axis=1
    )


def extend_background(small: np.ndarray, by: int) -> np.ndarray:
    """``small`` extended by ``by`` pixels on every side with its background at each edge:
    np.pad's "edge" mode (each edge pixel repeated outwards), except where a stroke runs along
    the edge.

    Repeating an edge pixel that is ink turns a stroke along the edge (the bar of a 7 drawn
    at the top of the pad) into a band wider than the opening's window, which the opening then
    keeps as background, and the stroke is lost. So each edge pixel is compared with the
    darkest pixel within half a window inwards (a stroke is narrower than that: the opening
    removes anything narrower than the window): more than EDGE_STROKE_CONTRAST brighter, it
    is ink, and that darkest pixel is repeated instead. A lamp's gradient changes far less over
    half a window, and its edge pixels are repeated as before. Rows first, then columns of
    the taller array, as np.pad does (so corners come from the padded rows).
    """
    depth = max(1, by // 2)
    rows = _extend_axis(small, by, depth)
    return _extend_axis(rows.T, by, depth).T


def _extend_axis(image: np.ndarray, by: int, depth: int) -> np.ndarray:
    """``image`` extended by ``by`` rows above and below (``extend_background``'s rule)."""
    depth = min(depth, image.shape[0])
    top = _background_line(image[0], image[:depth].min(axis=0))
    bottom = _background_line(image[-1], image[-depth:].min(axis=0))
    return np.concatenate([np.repeat(top[None], by, axis=0), image, np.repeat(bottom[None], by, axis=0)])


def _background_line(edge: np.ndarray, darkest: np.ndarray) -> np.ndarray:
    return np.where(edge - darkest > np.float32(EDGE_STROKE_CONTRAST), darkest, edge).astype(np.float32)


def _fit(shape: tuple[int, ...], side: int) -> tuple[int, int]:
    """(width, height) of ``shape`` scaled so its longer side is at most ``side``."""
    scale = min(1.0, side / max(shape))
    return max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))


def remove_ruled_lines(ink: np.ndarray) -> np.ndarray:
    """Erase thin lines that cross the whole image (ruled or squared paper), keep the digit.

    A line is a row (or column) inked across at least 90% of the image and at most
    RULED_LINE_THICKNESS of its height thick; a digit's strokes cross the whole image
    only when the digit fills it, and are thicker.
    """
    strong = ink > INK_THRESHOLD * max(float(ink.max()), 1e-6)  # What cropping would count as ink.
    cleaned = ink.copy()
    for axis in (0, 1):
        coverage = strong.mean(axis=1 - axis)
        lines = coverage > 0.9
        if not lines.any() or lines.all():
            continue
        labels, count = ndimage.label(lines)
        limit = max(1, round(RULED_LINE_THICKNESS * ink.shape[axis]))
        for index in range(1, count + 1):
            run = labels == index
            if run.sum() <= limit:
                if axis == 0:
                    cleaned[run, :] = 0.0
                else:
                    cleaned[:, run] = 0.0
    return cleaned if cleaned.max() > 0 else ink


def prepare_digit(image: Image.Image, name: str = "image", polarity: str = "auto") -> np.ndarray:
    """Any digit image -> float32 (28, 28) in [0, 1], prepared the way MNIST's digits were.

    ``polarity`` (POLARITIES): "auto" guesses whether the digit is dark on light from the
    image; "light-on-dark" or "dark-on-light" says it (a ValueError for anything else).
    """
    if polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {polarity!r}: choose from {', '.join(POLARITIES)}")
    if max(image.size) > WORKING_SIDE:  # A photo's detail is lost at 20 pixels anyway; work faster.
        image = image.resize(_fit(image.size[::-1], WORKING_SIDE), Image.Resampling.LANCZOS)
    gray = to_grayscale(image)
    small_width, small_height = _fit(gray.shape, BACKGROUND_SIDE)
    # The compiled path wants a border that pins the surface's six terms (a copy 8 pixels a
    # side or more); a sliver of an image takes the reference path.
    if _compiled is None or min(small_width, small_height) < 8:
        return prepare_gray(gray, name, polarity)
    design, ring, _ = _surface_design(small_height, small_width)
    frame, outcome = _compiled.prepare(gray, _compiled.POLARITY_CODES[polarity], design, ring)
    if outcome == _compiled.BLANK:
        raise ImageInputError(blank_message(name))
    return frame if outcome == _compiled.PREPARED else prepare_gray(gray, name, polarity)


_compiled: ModuleType | None = None  # predict.kernels, once use_compiled_preparation() has run.


def use_compiled_preparation() -> bool:
    """Prepare every image from now on with predict.kernels (numba: a third of the time, and
    without the GIL, so that a server's preparing threads run side by side); False, and the
    NumPy path as before, where numba does not import (a Python it does not support yet).

    For a server, called once at start-up: the first time on a machine numba compiles the
    kernels (about a minute on 2 cores) and caches them; every later start loads them in
    under a second. A one-off ``predict`` of a few images keeps the NumPy path.
    """
    global _compiled
    try:
        _compiled = importlib.import_module("mnist_cnn.predict.kernels")
    except ImportError:
        return False
    # Compiles for the types every call passes (to_grayscale's array, the cached read-only design).
    sample = Image.new("L", (64, 64), 0)
    sample.paste(255, (20, 12, 44, 52))
    prepare_digit(sample, "warm-up")
    return True


def blank_message(name: str) -> str:
    return f"{name}: the image is blank (no ink found); draw or photograph a digit"


def prepare_gray(gray: np.ndarray, name: str = "image", polarity: str = "auto") -> np.ndarray:
    """prepare_digit from the grayscale image on, in NumPy, SciPy and Pillow: the reference
    that predict.kernels compiles (and the path where numba is missing)."""
    ink = ink_map(gray, polarity)
    if ink.max() < BLANK_INK:
        raise ImageInputError(blank_message(name))
    strong = strong_ink(ink)
    rows = np.flatnonzero(strong.any(axis=1))
    columns = np.flatnonzero(strong.any(axis=0))
    cropped = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    scale = DIGIT_BOX / max(cropped.shape)
    height = max(1, round(cropped.shape[0] * scale))
    width = max(1, round(cropped.shape[1] * scale))
    resized = np.asarray(
        Image.fromarray(cropped, mode="F").resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32
    )
    resized = np.clip(resized, 0.0, 1.0)
    return centre_by_mass(resized)


def strong_ink(ink: np.ndarray) -> np.ndarray:
    """The pixels the crop keeps: above INK_THRESHOLD of the strongest ink, and not alone.

    Ink is measured relative to the paper, so where the paper is dark (far from the lamp)
    the sensor's and JPEG's noise is magnified with it, and a stray pixel there would stretch
    the crop to a corner. In an image of SPECKLE_SIDE pixels or more a stroke is wider than
    one pixel, so a strong pixel with fewer than two strong neighbours is noise; smaller
    images are cropped to every strong pixel.
    """
    strong = ink > INK_THRESHOLD * ink.max()
    if min(ink.shape) < SPECKLE_SIDE:
        return strong
    padded = np.zeros((strong.shape[0] + 2, strong.shape[1] + 2), dtype=np.uint8)  # np.pad(strong, 1), faster.
    padded[1:-1, 1:-1] = strong
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    in_square = rows[:-2] + rows[1:-1] + rows[2:]  # Strong pixels in each 3x3 square.
    kept = strong & (in_square >= 3)  # Itself and at least two of its eight neighbours.
    return kept if kept.any() else strong


def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place ``digit`` in a 28x28 frame so its centre of mass is at the frame's centre."""
    total = float(digit.sum())
    ys, xs = np.indices(digit.shape)
    centre_y = float((ys * digit).sum() / total)
    centre_x = float((xs * digit).sum() / total)
    top = int(round(FRAME / 2 - 0.5 - centre_y))
    left = int(round(FRAME / 2 - 0.5 - centre_x))
    top = min(max(top, 0), FRAME - digit.shape[0])
    left = min(max(left, 0), FRAME - digit.shape[1])
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return frame


def digit_png(digit: np.ndarray) -> bytes:
    """The prepared 28x28 digit as PNG bytes: what the models saw, for a person to look at.

    Written directly (an 8-bit grayscale PNG is a header, the zlib-compressed rows and an end
    chunk): the server sends one with every answer, and Pillow's encoder spent 2.5 times as
    long on its set-up as zlib on the 800 bytes."""
    pixels = np.clip(digit * 255, 0, 255).round().astype(np.uint8)
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # Each row led by filter type 0 (none).
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, no interlace.
    # Fastest zlib level: a 28x28 image compresses little either way.
    image_data = zlib.compress(rows.tobytes(), 1)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", image_data) + _chunk(b"IEND", b"")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

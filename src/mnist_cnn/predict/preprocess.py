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
import warnings
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np

# FORMATS' plugins register with Image.open as they are imported (else Image.open would import
# every plugin Pillow has, Image.init, the first time it is asked for WebP).
from PIL import BmpImagePlugin, GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401
from scipy import ndimage
from scipy.linalg import lapack

from mnist_cnn.core.config import POLARITIES
from mnist_cnn.core.errors import ImageInputError

# The formats read, as Pillow names them (the only plugins Image.open may try) and as people
# know them. No TIFF, EPS, PDF, PSD, SPIDER or any other: a digit comes as none of them, and
# Pillow's other plugins are where untrusted bytes reach odd code (EPS runs Ghostscript when a
# ``gs`` is on PATH; PSD and SPIDER failed with EOFError).
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "BMP": "BMP", "GIF": "GIF", "WEBP": "WebP"}
IMAGE_TYPES = ", ".join(list(FORMATS.values())[:-1]) + " or " + list(FORMATS.values())[-1]
# Well-known formats that are not read, by their first bytes: named in the refusal, so that a
# TIFF scan or an iPhone's HEIC photo is not called damaged.
FOREIGN_SIGNATURES = {
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"%PDF": "PDF",
    b"%!PS": "PostScript (EPS)",
    b"\xc5\xd0\xd3\xc6": "PostScript (EPS)",
    b"8BPS": "Photoshop (PSD)",
}
FOREIGN_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}  # An ISO media file's "ftyp".

# Limits on what an image may cost to read (read_image_bytes), chosen from measurements (below).
MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 20_000_000
MAX_SIDE = 10_000  # Pixels, each of width and height: a 12 MP photo is 4000x3000.
MAX_PNG_CHUNKS = 20_000  # Pillow reads a PNG chunk by chunk in Python, about 5 us each.
MAX_JPEG_STEPS = 10_000  # Segments (and stray bytes) before a JPEG's image data: Pillow's parser, 2 us each.
MAX_JPEG_SCANS = 100  # Each scan of a progressive JPEG is a pass over the whole image (encoders write 6 to 10).
MAX_GIF_STEPS = 10_000  # Extension blocks (and stray bytes) before a GIF's first image: Pillow's parser.
MAX_RLE_PIXELS = 1_000_000  # A run-length compressed BMP: Pillow's decoder is Python (holding the GIL), 0.4 us a pixel.
DIGIT_BOX = 20
FRAME = 28
INK_THRESHOLD = 0.2  # Fraction of the image's ink range above which a pixel counts as ink.
WORKING_SIDE = 512  # Larger images are shrunk to this (longer side) before anything else.
RULED_LINE_THICKNESS = 0.03  # Lines of ruled paper: at most this fraction of the image thick.
BACKGROUND_SIDE = 32  # The background (paper, lamp light, shadows) is estimated on a copy this size.
EDGE_STROKE_CONTRAST = 0.1  # An edge pixel this much brighter than the paper just inside it is a stroke's.
SPECKLE_SIDE = 64  # From this size (shorter side) up, a lone strong pixel is noise, not a stroke.
BLANK_INK = 0.15  # An image whose strongest ink is weaker than this is blank.

# Pillow warns when it opens an image of over Image.MAX_IMAGE_PIXELS (89 megapixels); every such
# image is refused here with its own sentence (MAX_PIXELS), and the warning would only add a
# second, technical line to it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def read_image_bytes(content: bytes, name: str = "image") -> Image.Image:
    """Decode an image file's bytes: one of FORMATS (GIF, WebP and APNG: the first frame) within
    the limits above, or an ImageInputError, one sentence that names ``name``.

    The bytes may be anyone's (the server's uploads): only FORMATS' decoders see them; width,
    height and pixels are checked from the header, before anything is decoded; a PNG, JPEG or
    GIF whose structure would keep the parser busy is refused first (``check_structure``); and
    whatever a decoder raises on damaged bytes (EOFError, struct.error, IndexError,
    MemoryError...) becomes the sentence. A JPEG of over twice WORKING_SIDE is decoded at 1/2 to
    1/8 of its size (Image.draft: libjpeg scales as it decodes), never below WORKING_SIDE on its
    longer side, which is all prepare_digit keeps of any image.

    The budget, measured on the dearest image of each format within the limits (20 megapixels
    or 10 MB) on the 2-core AMD EPYC: decoding and preparing one costs at most about 1.3 s of a
    core and 320 MB. A 16-bit RGBA PNG 1.3 s and 160 MB (an 8-bit one 1.0 s); a WebP 1.1 s and
    315 MB (libwebp's two canvases and Pillow's copies); a progressive JPEG 0.6 s and 155 MB (its
    coefficients), a baseline one 0.15 s and 10 MB; a GIF or BMP 0.2 s and 30 MB; a run-length
    BMP 0.3 s. Pillow lets go of the GIL as it decodes (except a run-length BMP's), so the
    server's two preparing threads work side by side: two of the dearest at once take 1.5 s and
    650 MB, and a request behind ten of them is still answered within the 10 s timeout. (Before
    these limits, one 19,999,999 x 1 PNG took 3.5 to 3.9 s and 1 GB here, resampling coefficients
    for a 20-million-pixel row, and one 460 KB JPEG of 10,000 scans 17 s.)
    """
    if not content:
        raise ImageInputError(f"{name}: empty file, expected an image ({IMAGE_TYPES})")
    if len(content) > MAX_BYTES:
        raise ImageInputError(
            f"{name}: {len(content) / 2**20:.1f} MB is over the {MAX_BYTES // 2**20} MB limit; use a smaller image"
        )
    foreign = foreign_format(content)
    if foreign is not None:
        raise ImageInputError(f"{name}: {foreign} images are not read; use a {IMAGE_TYPES} file")
    check_structure(content, name)
    unreadable = f"{name}: not a readable image (the file is damaged or is not a picture); use a {IMAGE_TYPES} file"
    try:
        image = Image.open(io.BytesIO(content), formats=list(FORMATS))
    except Image.DecompressionBombError:  # Over twice Image.MAX_IMAGE_PIXELS: Pillow refuses it as it opens.
        raise ImageInputError(
            f"{name}: the image is over the {MAX_PIXELS // 1_000_000} megapixel limit; use a smaller image"
        ) from None
    except Exception:  # UnidentifiedImageError, or what a plugin's header parser raised.
        raise ImageInputError(unreadable) from None
    check_size(image, name)
    try:
        if image.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with a second picture.
            image.draft(None, _fit(image.size[::-1], WORKING_SIDE))
        image.load()
    except Exception:
        raise ImageInputError(unreadable) from None
    return image


def check_size(image: Image.Image, name: str = "image") -> None:
    """An ImageInputError for an opened (not yet decoded) image of no pixels, over MAX_SIDE or
    MAX_PIXELS, or a run-length compressed BMP over MAX_RLE_PIXELS."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{name}: image has no pixels")
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"{name}: {width}x{height} is over the {MAX_PIXELS // 1_000_000} megapixel limit; use a smaller image"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageInputError(
            f"{name}: {width}x{height} is over the limit of {MAX_SIDE:,} pixels a side; use a smaller image"
        )
    if image.format == "BMP" and image.info.get("compression") in (1, 2) and width * height > MAX_RLE_PIXELS:
        raise ImageInputError(
            f"{name}: {width}x{height} is over the {MAX_RLE_PIXELS / 1e6:g} megapixel limit of a run-length "
            "compressed BMP; save the image again as a PNG or an uncompressed BMP"
        )


def foreign_format(content: bytes) -> str | None:
    """The name of a well-known format that is not read (TIFF, PDF, HEIC...), from its first bytes."""
    for signature, kind in FOREIGN_SIGNATURES.items():
        if content.startswith(signature):
            return kind
    if content[4:8] == b"ftyp":
        return FOREIGN_BRANDS.get(content[8:12])
    return None


def check_structure(content: bytes, name: str = "image") -> None:
    """An ImageInputError for a PNG, JPEG or GIF built to keep its reader busy: Pillow walks a
    PNG's chunks, a JPEG's segments and a GIF's blocks in Python, holding the GIL (10 MB of empty
    chunks took it 4 s here, of empty comments 5 s, of one-byte GIF blocks 1.1 s and 440 MB),
    and libjpeg reads each scan of a progressive JPEG over the whole image (10,000 scans of 30
    bytes over 20 megapixels took 15 s). Counted here up to the limits, in a few ms; anything
    else wrong with the bytes is left to the decoder."""
    again = "save the image again as a plain PNG or JPEG"
    if content.startswith(PNG_SIGNATURE):
        if png_chunks(content) > MAX_PNG_CHUNKS:
            raise ImageInputError(f"{name}: the PNG has over {MAX_PNG_CHUNKS:,} chunks; {again}")
    elif content.startswith(b"\xff\xd8\xff"):
        steps, scans = jpeg_structure(content)
        if steps > MAX_JPEG_STEPS:
            raise ImageInputError(f"{name}: the JPEG has over {MAX_JPEG_STEPS:,} segments before its image; {again}")
        if scans > MAX_JPEG_SCANS:
            raise ImageInputError(f"{name}: the JPEG has {scans:,} scans, at most {MAX_JPEG_SCANS} are read; {again}")
    elif content.startswith((b"GIF87a", b"GIF89a")) and gif_steps(content) > MAX_GIF_STEPS:
        raise ImageInputError(f"{name}: the GIF has over {MAX_GIF_STEPS:,} blocks before its image; {again}")


def png_chunks(content: bytes) -> int:
    """How many chunks a PNG has up to its IEND (where Pillow stops), counted up to MAX_PNG_CHUNKS + 1."""
    position, count = len(PNG_SIGNATURE), 0
    while position + 8 <= len(content) and count <= MAX_PNG_CHUNKS:
        length, kind = struct.unpack_from(">I4s", content, position)
        count += 1
        if kind == b"IEND":
            break
        position += 12 + length
    return count


def jpeg_structure(content: bytes) -> tuple[int, int]:
    """(steps, scans) of a JPEG: the steps Pillow's parser takes before the first scan (one a
    segment, a fill byte or a stray byte), counted up to MAX_JPEG_STEPS + 1; and the scans (SOS
    markers) from there on. Entropy-coded data never holds the bytes 0xFF 0xDA (a 0xFF in it is
    followed by 0x00 or a restart marker's 0xD0-0xD7), so counting them counts the scans."""
    position, steps = 2, 0  # After the start-of-image marker.
    while position + 1 < len(content) and steps <= MAX_JPEG_STEPS:
        steps += 1
        marker = content[position + 1]
        if content[position] != 0xFF or marker in (0x00, 0xFF):
            position += 1  # A stray or fill byte, which Pillow's parser skips one at a time.
        elif marker == 0xDA:  # Start of scan: the header is over.
            return steps, content.count(b"\xff\xda", position)
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:  # RSTn, SOI, EOI, TEM: markers without a length.
            position += 2
        else:
            position += 2 + int.from_bytes(content[position + 2 : position + 4], "big")
    return steps, 0


def gif_steps(content: bytes) -> int:
    """The steps Pillow's GIF parser takes before the first image (one an extension's block, or a
    stray byte), counted up to MAX_GIF_STEPS + 1."""
    flags = content[10] if len(content) > 10 else 0
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # After the header and global palette.
    steps = 0
    while position < len(content) and steps <= MAX_GIF_STEPS:
        steps += 1
        introducer = content[position]
        if introducer in (0x2C, 0x3B):  # The first image, or the end of the file.
            break
        position += 1 if introducer != 0x21 else 2  # A stray byte, or an extension and its label.
        while introducer == 0x21 and position < len(content) and steps <= MAX_GIF_STEPS:
            steps += 1
            size = content[position]
            position += 1 + size
            if size == 0:  # The extension's last block.
                break
    return steps


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
    compiled = _compiled  # Read once: a server switches to the kernels while it answers (serve.app).
    if compiled is None:
        return prepare_gray(gray, name, polarity)
    return _prepare_compiled(compiled, gray, name, polarity)


def _prepare_compiled(kernels: ModuleType, gray: np.ndarray, name: str, polarity: str) -> np.ndarray:
    """prepare_digit from the grayscale image on, with predict.kernels (``kernels``)."""
    small_width, small_height = _fit(gray.shape, BACKGROUND_SIDE)
    # The compiled path wants a border that pins the surface's six terms (a copy 8 pixels a
    # side or more); a sliver of an image takes the reference path.
    if min(small_width, small_height) < 8:
        return prepare_gray(gray, name, polarity)
    design, ring, _ = _surface_design(small_height, small_width)
    frame, outcome = kernels.prepare(gray, kernels.POLARITY_CODES[polarity], design, ring)
    if outcome == kernels.BLANK:
        raise ImageInputError(blank_message(name))
    return frame if outcome == kernels.PREPARED else prepare_gray(gray, name, polarity)


_compiled: ModuleType | None = None  # predict.kernels, once use_compiled_preparation() has run.


def use_compiled_preparation() -> bool:
    """Prepare every image from now on with predict.kernels (numba: a third of the time, and
    without the GIL, so that a server's preparing threads run side by side); False, and the
    NumPy path as before, where numba does not import (a Python it does not support yet).

    The kernels are compiled (or loaded from numba's cache) first, and only then used: until
    this returns, every image takes the NumPy path, the same digits to 1e-6, so a thread may
    call this while others prepare images. The first time on a machine numba compiles them
    (about 20 s of a core, a minute on a busy 2-core machine) and caches them; every later
    call loads them in under a second. A server has a short-lived process of its own fill the
    cache first (serve.app.Preparation); a one-off ``predict`` of a few images keeps the
    NumPy path.
    """
    global _compiled
    try:
        kernels = importlib.import_module("mnist_cnn.predict.kernels")
    except ImportError:
        return False
    # Compiles for the types every call passes (to_grayscale's array, the cached read-only design).
    sample = Image.new("L", (64, 64), 0)
    sample.paste(255, (20, 12, 44, 52))
    _prepare_compiled(kernels, to_grayscale(sample), "warm-up", "auto")
    _compiled = kernels
    return True


def compiled_preparation_in_use() -> bool:
    """Whether prepare_digit prepares with predict.kernels (use_compiled_preparation has run)."""
    return _compiled is not None


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

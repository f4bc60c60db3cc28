"""The MNIST-style preparation of user images, on synthetic digits with known answers."""

import io
import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mnist_cnn.core.config import POLARITIES
from mnist_cnn.core.errors import ImageInputError
from mnist_cnn.predict.preprocess import ink_map, prepare_digit, read_image_bytes, strong_ink, to_grayscale


def drawn_seven(
    size: int = 200, box=(40, 30, 160, 170), ink: int = 255, paper: int = 0, width: int = 14
) -> Image.Image:
    image = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    draw.line([(left, top), (right, top), (left + (right - left) // 3, bottom)], fill=ink, width=width)
    return image


def centre_of_mass(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(frame.shape)
    return float((ys * frame).sum() / frame.sum()), float((xs * frame).sum() / frame.sum())


def test_dark_on_light_and_light_on_dark_give_the_same_digit() -> None:
    light_on_dark = prepare_digit(drawn_seven(ink=255, paper=0))
    dark_on_light = prepare_digit(drawn_seven(ink=0, paper=255))
    np.testing.assert_allclose(dark_on_light, light_on_dark, atol=1e-5)
    assert light_on_dark.shape == (28, 28) and light_on_dark.dtype == np.float32
    assert light_on_dark.max() <= 1.0 and light_on_dark.min() >= 0.0


def seven_along_the_top_edge(ink: int = 255, paper: int = 0) -> Image.Image:
    """A 7 whose bar runs along the whole top edge: the border the guess takes for paper is half ink."""
    return drawn_seven(box=(0, 3, 199, 190), ink=ink, paper=paper, width=10)


def test_a_stroke_along_a_whole_edge_fools_the_guess_and_the_polarity_said_is_kept() -> None:
    """The page's pad says light-on-dark, as the browser's own preparation assumes: the server
    then reads the stroke as ink where its guess would have read the background."""
    image = seven_along_the_top_edge()
    middle_of_the_stroke = (100, 130)  # (row, column) on the 7's diagonal, far from every edge.
    guessed = ink_map(to_grayscale(image))
    said = ink_map(to_grayscale(image), "light-on-dark")
    assert guessed[middle_of_the_stroke] < 0.1 and said[middle_of_the_stroke] > 0.9
    assert said[150:, 150:].max() == 0  # The pad's black is background.
    # The bar along the edge is ink too, not taken for background (extend_background): the
    # prepared digit is a 7, its bar across the top of the 20-pixel box, not a lone diagonal.
    assert said[:7, :].min() > 0.9
    prepared = prepare_digit(image, polarity="light-on-dark")
    top = int(np.flatnonzero(prepared.max(axis=1) > 0.5)[0])
    assert (prepared[top] > 0.5).sum() >= 15
    # The same drawing in pen on paper, said so, is the same ink.
    paper = ink_map(to_grayscale(seven_along_the_top_edge(ink=0, paper=255)), "dark-on-light")
    np.testing.assert_allclose(paper, said, atol=1e-5)
    np.testing.assert_allclose(
        prepare_digit(seven_along_the_top_edge(ink=0, paper=255), polarity="dark-on-light"),
        prepare_digit(image, polarity="light-on-dark"),
        atol=1e-5,
    )


def test_a_polarity_said_agrees_with_the_guess_where_the_guess_is_right() -> None:
    np.testing.assert_array_equal(prepare_digit(drawn_seven(), polarity="light-on-dark"), prepare_digit(drawn_seven()))
    pen = drawn_seven(ink=0, paper=255)
    np.testing.assert_array_equal(prepare_digit(pen, polarity="dark-on-light"), prepare_digit(pen))


def test_an_unknown_polarity_is_a_value_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown polarity 'white': choose from auto, light-on-dark, dark-on-light"):
        prepare_digit(drawn_seven(), polarity="white")


@pytest.mark.parametrize(
    "box",
    [(5, 5, 45, 60), (150, 130, 195, 195), (90, 90, 110, 115), (0, 0, 199, 199)],
    ids=["top-left", "bottom-right", "small", "large"],
)
def test_off_centre_small_or_large_digits_end_up_centred_at_mnist_scale(box) -> None:
    frame = prepare_digit(drawn_seven(box=box, width=max(3, (box[2] - box[0]) // 10)))
    centre_y, centre_x = centre_of_mass(frame)
    assert abs(centre_y - 13.5) <= 1.0 and abs(centre_x - 13.5) <= 1.0
    rows = np.flatnonzero((frame > 0.2 * frame.max()).any(axis=1))
    columns = np.flatnonzero((frame > 0.2 * frame.max()).any(axis=0))
    longer_side = max(rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1)
    assert 18 <= longer_side <= 21


def test_colour_and_transparent_images_are_read_as_ink_on_background() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse((30, 20, 70, 80), outline=(20, 20, 200, 255), width=8)
    frame = prepare_digit(rgba)
    assert frame.max() > 0.5 and frame[0].max() == 0.0


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB" if format == "JPEG" else image.mode).save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_png_transparent_colour_is_paper(mode: str) -> None:
    """A dark digit on a transparent background stored as black (a PNG's tRNS colour, not an
    alpha band): the transparent pixels are white paper, as an RGBA image's are, not black."""
    buffer = io.BytesIO()
    drawn_seven(ink=60, paper=0).convert(mode).save(buffer, format="PNG", transparency=0 if mode == "L" else (0, 0, 0))
    frame = prepare_digit(read_image_bytes(buffer.getvalue()))
    np.testing.assert_allclose(frame, prepare_digit(drawn_seven(ink=60, paper=255)), atol=1e-5)


def test_a_16_bit_image_keeps_its_range() -> None:
    """A 16-bit scan (dark ink at 12,079 on paper at 59,881 of 65,535): Pillow's conversion to 8
    bits clips both to white, and the digit was called blank."""
    eight_bit = drawn_seven(ink=47, paper=233)
    sixteen_bit = encoded(Image.fromarray(np.asarray(eight_bit).astype(np.uint16) * 257), "PNG")
    assert read_image_bytes(sixteen_bit).mode == "I;16"
    np.testing.assert_allclose(prepare_digit(read_image_bytes(sixteen_bit)), prepare_digit(eight_bit), atol=1e-5)


MODES = ["I", "F", "I;16", "I;16B", "I;16L", "La", "RGBa", "RGBX", "YCbCr", "HSV", "PA", "LA", "1"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_prepared(mode: str) -> None:
    """Images made in code (not decoded) in any mode Pillow converts, premultiplied ones too."""
    digit = drawn_seven()
    if mode.startswith("I;16"):  # From the bytes: Pillow's conversions between 16-bit modes clip at 255.
        pixels = np.asarray(digit).astype(">u2" if mode == "I;16B" else "<u2") * 257
        image = Image.frombytes(mode, digit.size, pixels.tobytes())
    elif mode in ("La", "RGBa"):
        image = digit.convert(mode[:-1] + "A").convert(mode)
    else:
        image = digit.convert(mode)
    frame = prepare_digit(image)
    np.testing.assert_allclose(frame, prepare_digit(digit), atol=0.02)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_common_formats_decode(format: str) -> None:
    frame = prepare_digit(read_image_bytes(encoded(drawn_seven(), format), f"seven.{format.lower()}"))
    assert frame.sum() > 10


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"hello, not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a readable image"),
    ],
)
def test_bad_bytes_are_refused_clearly(content: bytes, message: str) -> None:
    with pytest.raises(ImageInputError, match=message) as refused:
        read_image_bytes(content, "upload")
    assert "Error" not in str(refused.value)  # A sentence for people, no exception class (UnidentifiedImageError).


def test_blank_and_oversized_images_are_refused() -> None:
    with pytest.raises(ImageInputError, match="blank"):
        prepare_digit(Image.new("L", (50, 50), 255))
    huge = encoded(Image.new("L", (5000, 5000), 0), "PNG")  # 25 megapixels, a small file.
    with pytest.raises(ImageInputError, match="megapixel limit"):
        read_image_bytes(huge, "huge.png")


def test_a_shadow_across_the_paper_is_not_taken_for_ink() -> None:
    """A photo lit from one side: the paper goes from white to mid-grey across the image."""
    clean = prepare_digit(drawn_seven(ink=0, paper=255))
    pixels = np.asarray(drawn_seven(ink=0, paper=255), dtype=np.float32)
    shading = np.linspace(1.0, 0.45, pixels.shape[1])[None, :]
    shaded = prepare_digit(Image.fromarray((pixels * shading).astype(np.uint8)))
    assert np.abs(shaded - clean).mean() < 0.03
    assert np.abs(np.array(centre_of_mass(shaded)) - centre_of_mass(clean)).max() < 0.5


def test_lines_of_ruled_paper_are_removed() -> None:
    clean = prepare_digit(drawn_seven(ink=0, paper=255))
    ruled = drawn_seven(ink=0, paper=255)
    draw = ImageDraw.Draw(ruled)
    for y in range(12, 200, 25):
        draw.line([(0, y), (199, y)], fill=150, width=2)
    draw.line([(20, 0), (20, 199)], fill=120, width=2)  # The margin line.
    prepared = prepare_digit(ruled)
    # The same seven, where a line crossed a stroke a pixel's worth chipped off it.
    assert similarity(prepared, clean) > 0.85
    rows = np.flatnonzero((prepared > 0.2).any(axis=1))
    assert rows[-1] - rows[0] + 1 >= 18  # No line left above or below the digit to shrink it.


def test_a_large_photo_is_shrunk_first_and_reads_the_same() -> None:
    small = drawn_seven(ink=0, paper=255)
    large = small.resize((4000, 4000), Image.Resampling.BILINEAR)
    assert similarity(prepare_digit(large), prepare_digit(small)) > 0.85


def similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Correlation of two 28x28 digits, blurred so that a pixel's shift barely counts."""
    return float(
        np.corrcoef(ndimage.gaussian_filter(first, 1).ravel(), ndimage.gaussian_filter(second, 1).ravel())[0, 1]
    )


# --------------------------------------------------------------------------- a lamp's light across the sheet

SHEET = (270, 360)  # A landscape photo of a sheet of paper, (height, width).
# Where the light comes from: the paper's brightness falls from the lamp's side (or corner)
# to the opposite one, linearly, or as a desk lamp's light does (inverse square, obliquely).
LIGHT_FROM = {
    "top-left corner": (1, 1),
    "bottom-left corner": (1, -1),
    "left": (1, 0),
    "top": (0, 1),
    "right": (-1, 0),
    "desk lamp over the top-left corner": None,
}
# The paper's grey level near the lamp and at the far side: the photo (215 -> 107),
# half its gradient, and a stronger one.
GRADIENTS = {"215 to 160": (215, 160), "215 to 107": (215, 107), "230 to 80": (230, 80)}
INKS = {"black": 0.15, "ballpoint": 0.4}  # The ink's share of the light the paper reflects.


@pytest.fixture(scope="module")
def digits_on_paper() -> dict[str, np.ndarray]:
    """Digits as ink in [0, 1], 150 pixels: MNIST test digits (the issue's 4 first) and a printed 2."""
    from mnist_cnn.data.mnist import load_raw

    _, (images, labels), _ = load_raw("bundled")
    digits = {}
    for digit in (4, 5, 7, 3):
        image = images[np.flatnonzero(labels == digit)[0]]
        digits[f"MNIST {digit}"] = np.asarray(Image.fromarray(image).resize((150, 150), Image.Resampling.BILINEAR))
    printed = Image.new("L", (150, 150), 0)
    ImageDraw.Draw(printed).text((75, 75), "2", font=ImageFont.load_default(size=120), fill=255, anchor="mm")
    digits["printed 2"] = np.asarray(printed)
    return {name: digit.astype(np.float32) / 255.0 for name, digit in digits.items()}


def photo_on_paper(
    digit: np.ndarray, light: tuple[int, int], light_from: str | None = None, ink: float = 0.15, seed: int = 0
) -> Image.Image:
    """``digit`` written on a sheet (left of centre, high) and photographed as a JPEG (quality 85).

    Evenly lit (``light_from`` None: the paper at ``light[0]`` everywhere) or by a lamp: the
    paper's brightness goes from ``light[0]`` on the ``light_from`` side to ``light[1]`` on the
    opposite side. Ink reflects ``ink`` of the light the paper does: it darkens with it.
    """
    height, width = SHEET
    ys, xs = np.indices(SHEET, dtype=np.float32)
    written = np.zeros(SHEET, dtype=np.float32)
    written[40 : 40 + digit.shape[0], 90 : 90 + digit.shape[1]] = digit
    if light_from is None:
        falloff = np.zeros(SHEET, dtype=np.float32)
    elif LIGHT_FROM[light_from] is None:  # A bulb 0.6 sheet widths above the top-left corner.
        distance_squared = ((xs + 0.1 * width) ** 2 + (ys + 0.1 * width) ** 2) / (0.6 * width) ** 2
        falloff = 1 - (1 + distance_squared) ** -1.5
    else:
        dx, dy = LIGHT_FROM[light_from]
        falloff = dx * xs / width + dy * ys / height
    if light_from is not None:
        falloff = (falloff - falloff.min()) / (falloff.max() - falloff.min())
    brightness = light[0] + (light[1] - light[0]) * falloff
    noise = np.random.default_rng(seed).normal(0.0, 2.0, SHEET)
    pixels = (1.0 - written * (1.0 - ink)) * brightness + noise
    photo = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return Image.open(io.BytesIO(encoded(photo, "JPEG")))


def crop_box(image: Image.Image) -> np.ndarray:
    """Top, bottom, left and right of what ``prepare_digit`` crops: the digit's box in the photo."""
    strong = strong_ink(ink_map(to_grayscale(image)))
    rows, columns = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    return np.array([rows[0], rows[-1], columns[0], columns[-1]])


def aligned(digit: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``digit`` moved by at most a pixel each way to lie best on ``reference`` (least mean
    absolute difference): centring rounds the centre of mass to a whole pixel, and a hair's
    change in it moves the whole digit by one."""
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    moved = [np.roll(digit, shift, axis=(0, 1)) for shift in shifts]
    return min(moved, key=lambda candidate: float(np.abs(candidate - reference).mean()))


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("light_from", LIGHT_FROM)
def test_a_lamp_gradient_across_the_whole_sheet_is_not_taken_for_ink(
    digits_on_paper: dict[str, np.ndarray], light_from: str, gradient: str
) -> None:
    """The issue: a dark 4 on paper going from 215 to 107 grey corner to corner was cropped to
    the digit plus the dark corner and read as 5. Each digit and ink under each lamp must come
    out as it does from the same sheet evenly lit (at the lamp side's brightness).

    Tolerances, from measurement: the same sheet evenly lit, photographed twice (other sensor
    noise), differs by up to 0.021 (mean, aligned), a similarity of 0.976, crops 1 pixel apart
    (and by up to 0.04 on other sheets and sizes); the lit photos here differ by up to 0.030,
    0.969 and 1 pixel. Before the fix, at 215 -> 107 and 230 -> 80: up to 0.15, similarity
    down to -0.09, crops 167 pixels larger. So: under 0.05, over 0.95, within 2 % of the sheet.
    """
    for (name, digit), (ink_name, ink) in itertools.product(digits_on_paper.items(), INKS.items()):
        case = f"{name} in {ink_name} ink, light from the {light_from}, paper {gradient}"
        light = GRADIENTS[gradient]
        even = photo_on_paper(digit, light, None, ink)
        lit = photo_on_paper(digit, light, light_from, ink, seed=1)
        pixels = np.asarray(lit.convert("L"), dtype=np.float32)
        corners = [pixels[rows, columns].mean() for rows in (slice(0, 3), slice(-3, None)) for columns in (0, -1)]
        assert abs(max(corners) - light[0]) < 5 and abs(min(corners) - light[1]) < 5, case  # The photo is lit so.
        assert np.abs(crop_box(lit) - crop_box(even)).max() <= 0.02 * max(SHEET), case  # The digit, not a corner.
        expected = prepare_digit(even)
        prepared = aligned(prepare_digit(lit), expected)
        assert np.abs(prepared - expected).mean() < 0.05, case
        assert similarity(prepared, expected) > 0.95, case


def test_white_paper_in_dim_light_is_still_dark_on_light() -> None:
    """The polarity is not a fixed grey level: a white sheet photographed in dim light (the
    paper at 100 of 255) is the light side of a dark digit, as it is under a bright light."""
    bright = np.asarray(drawn_seven(ink=0, paper=255), dtype=np.float32)
    dim = Image.fromarray((bright * 100 / 255).round().astype(np.uint8))
    np.testing.assert_allclose(prepare_digit(dim), prepare_digit(drawn_seven(ink=0, paper=255)), atol=0.02)


def test_the_robustness_sets_lamp_photos_prepare_like_their_evenly_lit_twins() -> None:
    """``mnist_cnn.data.robustness``'s "lamp gradient" set (which ``bench/augment_effect.py``
    measures) against its "evenly lit photo" control: every direction and strength, three inks."""
    from mnist_cnn.data.mnist import load_raw
    from mnist_cnn.data.robustness import LAMP_GRADIENTS, PHOTOGRAPHS, SHEET

    _, (images, _), _ = load_raw("bundled")
    for index in range(72):  # Each of 3 strengths x 8 directions x 3 inks once.
        lit = PHOTOGRAPHS["lamp gradient"](images[index], index)
        even = PHOTOGRAPHS["evenly lit photo"](images[index], index)
        pixels = np.asarray(lit.convert("L"), dtype=np.float32)
        corners = [pixels[rows, columns].mean() for rows in (slice(0, 3), slice(-3, None)) for columns in (0, -1)]
        bright, dark = LAMP_GRADIENTS[index % len(LAMP_GRADIENTS)]
        assert abs(max(corners) - bright) < 5 and abs(min(corners) - dark) < 5, index
        assert np.abs(crop_box(lit) - crop_box(even)).max() <= 0.02 * SHEET, index
        expected = prepare_digit(even)
        prepared = aligned(prepare_digit(lit), expected)
        assert np.abs(prepared - expected).mean() < 0.05 and similarity(prepared, expected) > 0.95, index


@pytest.mark.parametrize("length", [24, 25, 87, 124, 125])
def test_the_fast_paper_fit_equals_numpys_lstsq_and_quantile(length: int) -> None:
    """The server fits a surface to every upload's border by the normal equations and a
    partial sort; they must give what lstsq and np.quantile give, on well-posed borders and on
    a tiny image's degenerate one (where lstsq is used)."""
    from mnist_cnn.predict.preprocess import _least_squares, _quantile, _surface_design

    rng = np.random.default_rng(length)
    samples = _surface_design(32, 40)[2][rng.choice(140, size=length, replace=False)]
    values = samples @ rng.normal(size=6) + rng.normal(0, 0.05, size=length)
    expected = np.linalg.lstsq(samples, values, rcond=None)[0]
    np.testing.assert_allclose(_least_squares(samples, values), expected, rtol=1e-9, atol=1e-12)
    residuals = np.abs(values - samples @ expected)
    for fraction in (0.0, 0.5, 0.7, 1.0):
        assert _quantile(residuals, fraction) == pytest.approx(np.quantile(residuals, fraction), rel=1e-12)
    tiny = _surface_design(2, 5)[2]  # v**2 = 1 everywhere on a 2-row image: no unique fit.
    tiny_values = rng.random(len(tiny))
    np.testing.assert_allclose(
        _least_squares(tiny, tiny_values), np.linalg.lstsq(tiny, tiny_values, rcond=None)[0], atol=1e-12
    )


@pytest.mark.parametrize(("height", "width", "window"), [(48, 48, 8), (40, 56, 7), (33, 20, 3), (64, 9, 16)])
def test_the_fast_filters_give_scipys_and_numpys_numbers_exactly(height: int, width: int, window: int) -> None:
    """The server's opening, blur, straight-line extension and median are scipy's and NumPy's
    own passes without their wrappers (a few times faster per upload); the numbers must be
    the same to the bit, so that the page's prepare.js, a port of the same steps, still agrees."""
    from mnist_cnn.predict.preprocess import _median, box_blur, extend_linearly, grey_opening

    image = np.random.default_rng(height * width + window).random((height, width), dtype=np.float32)
    np.testing.assert_array_equal(grey_opening(image, window), ndimage.grey_opening(image, size=(window, window)))
    np.testing.assert_array_equal(box_blur(image), ndimage.uniform_filter(image, size=3))
    for by in (1, 2, 3):
        np.testing.assert_array_equal(extend_linearly(image, by), np.pad(image, by, mode="reflect", reflect_type="odd"))
    for count in (1, 2, 7, 124, 125):
        values = image.ravel()[:count].astype(np.float64)
        assert _median(values) == float(np.median(values))


# --------------------------------------------------------------------------- the compiled preparation


def upload_corpus(digits: dict[str, np.ndarray]) -> Iterator[tuple[str, Image.Image]]:
    """Images as users send them: MNIST digits at many sizes and shapes in both polarities, pen
    on paper under a lamp, ruled paper, the pad's 7 along the edge, noise, blank sheets, colour
    and transparency, a photo larger than WORKING_SIDE."""
    from mnist_cnn.data.mnist import load_raw

    _, (images, _), _ = load_raw("bundled")
    rng = np.random.default_rng(7)
    for index in range(60):
        pixels = images[index] if index % 2 == 0 else 255 - images[index]
        width = int(rng.integers(28, 400))
        height = width if index % 3 else int(rng.integers(28, 400))
        yield f"MNIST {index} {width}x{height}", Image.fromarray(pixels).resize((width, height))
    for light_from, gradient in itertools.product(LIGHT_FROM, GRADIENTS):
        yield f"lamp {light_from} {gradient}", photo_on_paper(digits["MNIST 4"], GRADIENTS[gradient], light_from)
    ruled = drawn_seven(ink=0, paper=255)
    draw = ImageDraw.Draw(ruled)
    for y in range(12, 200, 25):
        draw.line([(0, y), (199, y)], fill=150, width=2)
    yield "ruled", ruled
    yield "7 along the top edge", seven_along_the_top_edge()
    yield "7 along the top edge, on paper", seven_along_the_top_edge(ink=0, paper=255)
    for index in range(10):
        noise = rng.random((int(rng.integers(8, 120)), int(rng.integers(8, 120))))
        yield f"noise {index}", Image.fromarray((noise * 255).astype(np.uint8))
    yield "black", Image.new("L", (100, 100), 0)
    yield "white", Image.new("L", (90, 120), 255)
    yield "a sliver (the reference path)", drawn_seven().resize((200, 12))
    yield "a column a pixel wide", drawn_seven().resize((1, 300))
    yield "colour", drawn_seven().convert("RGB")
    yield "transparent", drawn_seven().convert("RGBA")
    yield "a large photo", drawn_seven(ink=0, paper=255).resize((900, 700))


def prepared_or_blank(image: Image.Image, polarity: str) -> np.ndarray | None:
    try:
        return prepare_digit(image, "upload", polarity)
    except ImageInputError as error:
        assert "blank" in str(error)
        return None


def test_the_compiled_preparation_gives_the_numpy_paths_digits(digits_on_paper: dict[str, np.ndarray]) -> None:
    """The server's numba kernels against the NumPy reference on every kind of upload: the same
    28x28 input to float32 rounding, the same blank sheets refused. (The page's prepare.js is
    held to the same reference, so the browser, the server and the CLI agree.)"""
    from mnist_cnn.predict import preprocess

    cases = [(name, image, polarity) for name, image in upload_corpus(digits_on_paper) for polarity in POLARITIES]
    expected = [prepared_or_blank(image, polarity) for _, image, polarity in cases]
    assert preprocess.use_compiled_preparation()
    try:
        for (name, image, polarity), reference in zip(cases, expected, strict=True):
            compiled = prepared_or_blank(image, polarity)
            assert (compiled is None) == (reference is None), (name, polarity)
            if reference is not None:
                assert compiled.dtype == np.float32 and compiled.shape == (28, 28)
                np.testing.assert_allclose(compiled, reference, atol=1e-6, rtol=0, err_msg=f"{name}, {polarity}")
    finally:
        preprocess._compiled = None
    assert sum(reference is None for reference in expected) >= 6  # The blank sheets (both polarities each).


def test_without_numba_the_numpy_path_prepares(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NumPy newer than numba supports makes numba refuse to import: the server then prepares
    with NumPy, the same digits, instead of failing to start."""
    import sys

    from mnist_cnn.predict import preprocess

    monkeypatch.setitem(sys.modules, "mnist_cnn.predict.kernels", None)  # import -> ImportError.
    monkeypatch.setattr(preprocess, "_compiled", None)
    assert preprocess.use_compiled_preparation() is False
    assert preprocess._compiled is None
    assert prepare_digit(drawn_seven()).max() == pytest.approx(1.0, abs=0.05)


def test_the_models_input_png_is_the_digit_rounded_to_bytes() -> None:
    from mnist_cnn.predict.preprocess import digit_png

    digit = np.random.default_rng(3).random((28, 28), dtype=np.float32)
    digit[0, :3] = (0.0, 1.0, 0.5 / 255)  # The ends, and a half rounded to even.
    image = Image.open(io.BytesIO(digit_png(digit)))
    image.load()  # Decodes every chunk: a bad checksum or length fails here.
    assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(image), np.round(digit * 255).astype(np.uint8))

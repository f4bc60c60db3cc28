"""The MNIST-style preparation of user images, on synthetic digits with known answers."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from mnist_cnn.core.errors import ImageInputError
from mnist_cnn.predict.preprocess import prepare_digit, read_image_bytes


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
    with pytest.raises(ImageInputError, match=message):
        read_image_bytes(content, "upload")


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

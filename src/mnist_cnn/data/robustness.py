"""A held-out check of robustness: digits drawn unlike MNIST's, never used for training.

MNIST test digits redrawn as other people and pens would draw them (a thicker or thinner
pen, a slant, a rotation, blur, faint ink with noise), photographed on a sheet of paper
(evenly lit, and under a lamp whose light falls off across the sheet), and printed digits
in several fonts. Each image is made the way a user's file is (upscaled to 112 px, half of
them dark on light; the photographs dark on light and saved as JPEG) and goes through the
same ``preprocess.prepare_digit`` as ``mnist-cnn predict``. The redrawing uses SciPy and
Pillow, not the training augmentation's code, so a model trained with ``--augment`` is not
tested on its own transformations.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mnist_cnn.data.mnist import load_raw
from mnist_cnn.predict.inference import keras_forward
from mnist_cnn.predict.preprocess import prepare_digit

UPSCALED = 112
SHEET = 192  # A photographed sheet of paper, with the 112-pixel digit somewhere on it.
# The paper's grey level at the lamp's side of the sheet and at the far side: the lit photos
# cycle through these, in eight directions (every 45 degrees); the evenly lit ones use the first.
LAMP_GRADIENTS = ((215, 160), (215, 107), (230, 80))
INK_REFLECTANCES = (0.15, 0.3, 0.45)  # Black, ballpoint and pencil: the ink's share of the paper's light.
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSerif-Bold.ttf",
)


def _upscaled(image: np.ndarray) -> np.ndarray:
    """uint8 (28, 28) -> float (112, 112) in [0, 255], as a photo of a digit is larger."""
    return np.asarray(Image.fromarray(image).resize((UPSCALED, UPSCALED), Image.Resampling.BILINEAR), dtype=np.float32)


def _as_user_file(ink: np.ndarray, dark_on_light: bool) -> Image.Image:
    pixels = np.clip(ink, 0, 255).astype(np.uint8)
    return Image.fromarray(255 - pixels if dark_on_light else pixels)


def _slant(image: np.ndarray, shear: float) -> np.ndarray:
    centre = (np.array(image.shape) - 1) / 2
    matrix = np.array([[1.0, 0.0], [shear, 1.0]])
    return ndimage.affine_transform(image, matrix, offset=centre - matrix @ centre, order=1)


REDRAWINGS = {
    "thick pen": lambda image, index: _upscaled(ndimage.grey_dilation(image, size=(3, 3))),
    "thin pen": lambda image, index: ndimage.grey_erosion(_upscaled(image), size=(7, 7)),
    "slanted": lambda image, index: _upscaled(_slant(image.astype(np.float32), 0.4 if index % 2 else -0.4)),
    "rotated 22 degrees": lambda image, index: _upscaled(
        ndimage.rotate(image.astype(np.float32), 22 if index % 2 else -22, reshape=False, order=1)
    ),
    "blurred": lambda image, index: _upscaled(ndimage.gaussian_filter(image.astype(np.float32), 1.4)),
    "faint and noisy": lambda image, index: (
        _upscaled(image) * 0.45 + np.random.default_rng(index).normal(0, 20, (UPSCALED, UPSCALED))
    ),
}


def photographed(image: np.ndarray, index: int, lamp: bool) -> Image.Image:
    """An MNIST digit (uint8, 28x28) written dark on a sheet of paper and photographed: JPEG
    (quality 85) with a little sensor noise, evenly lit or under a lamp.

    Under the lamp the light falls linearly from one side or corner of the sheet to the
    opposite one; the direction, the strength (LAMP_GRADIENTS), the ink and the digit's place
    on the sheet come from ``index``, and the evenly lit photo of the same index differs only
    by its even light (the lamp side's brightness everywhere): each other's control.
    """
    rng = np.random.default_rng(index)
    ink = np.zeros((SHEET, SHEET), dtype=np.float32)
    top, left = rng.integers(0, SHEET - UPSCALED + 1, size=2)
    ink[top : top + UPSCALED, left : left + UPSCALED] = _upscaled(image) / 255.0
    reflectance = 1.0 - ink * (1.0 - INK_REFLECTANCES[index // 24 % len(INK_REFLECTANCES)])
    bright, dark = LAMP_GRADIENTS[index % len(LAMP_GRADIENTS)]
    light = np.full(ink.shape, float(bright), dtype=np.float32)
    if lamp:
        angle = math.radians(45 * (index // len(LAMP_GRADIENTS) % 8))
        ys, xs = np.indices(ink.shape, dtype=np.float32)
        along = xs * math.cos(angle) + ys * math.sin(angle)
        light += (dark - bright) * (along - along.min()) / (along.max() - along.min())
    pixels = reflectance * light + rng.normal(0.0, 2.0, ink.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    return Image.open(buffer)


PHOTOGRAPHS = {
    "evenly lit photo": lambda image, index: photographed(image, index, lamp=False),
    "lamp gradient": lambda image, index: photographed(image, index, lamp=True),
}


def fonts(size: int = 110) -> list[ImageFont.FreeTypeFont]:
    """Pillow's own font plus the sans and serif fonts on the machine (not handwriting, not MNIST)."""
    found = [ImageFont.load_default(size=size)]
    for name in FONT_FILES:
        found += [ImageFont.truetype(str(path), size) for path in Path("/usr/share/fonts").rglob(name)][:1]
    return found


def printed_digit(digit: int, font: ImageFont.FreeTypeFont, dark_on_light: bool) -> Image.Image:
    image = Image.new("L", (160, 160), 255 if dark_on_light else 0)
    ImageDraw.Draw(image).text((80, 80), str(digit), font=font, fill=0 if dark_on_light else 255, anchor="mm")
    return image


def robustness_sets(count: int = 1000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each set's prepared digits (N, 28, 28) and labels: MNIST test digits redrawn or
    photographed, and fonts."""
    _, (images, labels), _ = load_raw("bundled")
    sets = {}
    for name, redraw in REDRAWINGS.items():
        digits = [
            prepare_digit(_as_user_file(redraw(images[index], index), dark_on_light=index % 2 == 0), name)
            for index in range(count)
        ]
        sets[name] = (np.stack(digits), labels[:count].astype(np.int64))
    for name, photograph in PHOTOGRAPHS.items():
        digits = [prepare_digit(photograph(images[index], index), name) for index in range(count)]
        sets[name] = (np.stack(digits), labels[:count].astype(np.int64))
    printed, printed_labels = [], []
    for font in fonts():
        for digit in range(10):
            for dark_on_light in (True, False):
                printed.append(prepare_digit(printed_digit(digit, font, dark_on_light), "printed"))
                printed_labels.append(digit)
    sets["printed fonts"] = (np.stack(printed), np.asarray(printed_labels))
    return sets


def robustness_accuracy(models: dict, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Accuracy of every model on every set: {set: {model: accuracy}}."""
    forwards = {name: keras_forward(model) for name, model in models.items()}
    return {
        set_name: {
            name: float(np.mean(forward(digits[..., None]).argmax(axis=1) == labels))
            for name, forward in forwards.items()
        }
        for set_name, (digits, labels) in sets.items()
    }

"""Training-time augmentation: each training image redrawn a little differently every time.

Why: models trained on clean, centred MNIST strokes misread digits written with other pens,
slants, sizes and blur (README, "Your own handwriting"). Each image of a batch gets its own
random geometry (rotation, scaling, shift, slant), an elastic distortion (Simard, Steinkraus
and Platt 2003: a random displacement field smoothed by a Gaussian), a thicker or thinner
stroke, blur, lower contrast and noise. Strengths are ``config.Augmentation`` fields, recorded
in config.json.

One pure JAX function of the images and a key, run over each epoch's images (in training
order, in large chunks) before either trainer fits them. The key comes from (seed, epoch,
chunk), so a resumed run sees the very images an uninterrupted one saw.
Validation and test images are never augmented.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn.core.config import Augmentation

SIZE = 28
CENTRE = (SIZE - 1) / 2
CHUNK = 1024  # Images redrawn per compiled call.


def epoch_key(seed: int, epoch: int) -> jax.Array:
    """The key of epoch ``epoch``: batch b of the epoch draws from ``fold_in(epoch_key, b)``."""
    return jax.random.fold_in(jax.random.key(seed), epoch)


def batch_key(seed: int, epoch: int, batch: int) -> jax.Array:
    """The key of batch ``batch`` of epoch ``epoch``: a function of the three numbers only."""
    return jax.random.fold_in(epoch_key(seed, epoch), batch)


def gaussian_matrix(sigma: jax.Array) -> jax.Array:
    """(28, 28) matrix B with B @ x blurring x's columns by a Gaussian of width ``sigma``
    (zero outside the frame). Blurring as two small matrix products is what XLA does fastest."""
    sigma = jnp.maximum(sigma, 0.1)  # A width of 0 means no blur, not a division by zero.
    offsets = jnp.arange(SIZE, dtype=jnp.float32)
    distances = offsets[:, None] - offsets[None, :]
    radius = jnp.arange(-SIZE + 1, SIZE, dtype=jnp.float32)
    weights = jnp.exp(-(distances**2) / (2 * sigma**2))
    return weights / jnp.exp(-(radius**2) / (2 * sigma**2)).sum()


def blur(image: jax.Array, sigma: jax.Array) -> jax.Array:
    matrix = gaussian_matrix(sigma)
    return matrix @ image @ matrix.T


def window3(image: jax.Array, reducer, fill: float) -> jax.Array:
    """3x3 max (dilation: thicker strokes) or min (erosion: thinner) around every pixel, as
    max/min of shifted copies (far faster on a CPU than a generic window reduction)."""
    padded = jnp.pad(image, 1, constant_values=fill)
    rows = reducer(reducer(padded[:-2], padded[1:-1]), padded[2:])
    return reducer(reducer(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def interpolation_matrix(width: float) -> np.ndarray:
    """(28, G): spreads values on a grid of points every ``width`` pixels over all 28 pixels,
    with Gaussian weights of that width (rows sum to 1): a smooth field from G x G numbers."""
    width = max(width, 1.0)
    points = np.linspace(0, SIZE - 1, max(2, round(SIZE / width) + 1))
    weights = np.exp(-((np.arange(SIZE)[:, None] - points[None, :]) ** 2) / (2 * width**2))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def between(fraction: jax.Array, low: float, high: float) -> jax.Array:
    """A uniform draw in [0, 1) mapped to [low, high)."""
    return low + (high - low) * fraction


def redraw(image: jax.Array, draws: jax.Array, field: jax.Array, noise: jax.Array, strength: Augmentation) -> jax.Array:
    """One (28, 28) image in [0, 1], redrawn within ``strength``.

    ``draws`` are 10 uniform numbers in [0, 1), ``field`` (2, G, G) uniform in [-1, 1) on the
    coarse grid, ``noise`` (14, 14) standard normal (2-pixel grain): all the randomness, drawn
    for the whole batch at once (few numbers: JAX's generator is the slow part on a CPU).
    """
    # Geometry: output pixel p reads the input at centre + A^-1 (p - centre - shift), where
    # A = scale * rotation(angle) @ slant, slant = [[1, 0], [-shear, 1]] on (row, column).
    angle = jnp.deg2rad(between(draws[0], -strength.rotation_degrees, strength.rotation_degrees))
    scale = between(draws[1], 1 - strength.scale, 1 + strength.scale)
    shear = between(draws[2], -strength.shear, strength.shear)
    shift = between(draws[3:5], -strength.shift_pixels, strength.shift_pixels)
    rotation_back = jnp.array([[jnp.cos(angle), jnp.sin(angle)], [-jnp.sin(angle), jnp.cos(angle)]])
    slant_back = jnp.array([[1.0, 0.0], [shear, 1.0]])
    inverse = slant_back @ rotation_back / scale
    rows, columns = jnp.meshgrid(
        jnp.arange(SIZE, dtype=jnp.float32), jnp.arange(SIZE, dtype=jnp.float32), indexing="ij"
    )
    points = jnp.stack([rows - CENTRE - shift[0], columns - CENTRE - shift[1]])
    source = jnp.einsum("ij,jhw->ihw", inverse, points) + CENTRE

    # Elastic distortion: random displacements on a coarse grid, spread smoothly over the
    # image (Gaussian weights of width elastic_sigma), up to elastic_alpha pixels.
    spread = interpolation_matrix(strength.elastic_sigma)
    field = spread @ field @ spread.T
    field = field / (jnp.abs(field).max() + 1e-6) * strength.elastic_alpha * draws[5]
    source = source + field
    warped = jax.scipy.ndimage.map_coordinates(image, [source[0], source[1]], order=1, mode="constant", cval=0.0)

    # Stroke thickness: thicker for some images, thinner for others.
    half = strength.thickness_probability / 2
    thick = window3(warped, jnp.maximum, 0.0)
    thin = window3(warped, jnp.minimum, 1.0)
    warped = jnp.where(draws[6] < half, thick, jnp.where(draws[6] < 2 * half, thin, warped))

    # Blur, for some images, of a random width.
    blurred = blur(warped, between(draws[7], 0.5, max(strength.blur_sigma, 0.5)))
    warped = jnp.where(draws[8] < strength.blur_probability, blurred, warped)

    # Fainter ink and sensor noise.
    warped = warped * between(draws[9], 1 - strength.contrast, 1.0)
    warped = warped + strength.noise * draws[9] * jnp.repeat(jnp.repeat(noise, 2, axis=0), 2, axis=1)
    return jnp.clip(warped, 0.0, 1.0)


def augment_batch(images: jax.Array, key: jax.Array, strength: Augmentation) -> jax.Array:
    """A batch (N, 28, 28, 1), each image with its own randomness, all drawn from ``key``."""
    count = images.shape[0]
    draws_key, field_key, noise_key = jax.random.split(key, 3)
    draws = jax.random.uniform(draws_key, (count, 10))
    grid = interpolation_matrix(strength.elastic_sigma).shape[1]
    fields = jax.random.uniform(field_key, (count, 2, grid, grid), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(noise_key, (count, SIZE // 2, SIZE // 2))
    redrawn = jax.vmap(redraw, in_axes=(0, 0, 0, 0, None))(images[..., 0], draws, fields, noise, strength)
    return redrawn[..., None]


@functools.partial(jax.jit, static_argnums=3)
def _augment_chunk(images: jax.Array, key: jax.Array, chunk: int, strength: Augmentation) -> jax.Array:
    return augment_batch(images, jax.random.fold_in(key, chunk), strength)


def augment_epoch(images: np.ndarray, seed: int, epoch: int, strength: Augmentation) -> np.ndarray:
    """Every image of an epoch, in training order, redrawn: chunk c of CHUNK images draws from
    ``batch_key(seed, epoch, c)``. Both trainers call this, so they train on the very same
    images. Large chunks: the same work costs several times less than batch by batch inside
    the training step (measured: README, "Models for real handwriting")."""
    key = epoch_key(seed, epoch)
    redrawn = []
    for chunk, start in enumerate(range(0, len(images), CHUNK)):
        part = images[start : start + CHUNK]
        padded = np.concatenate([part, np.zeros((CHUNK - len(part), *part.shape[1:]), part.dtype)])  # One shape.
        redrawn.append(np.asarray(_augment_chunk(jnp.asarray(padded), key, chunk, strength))[: len(part)])
    return np.concatenate(redrawn) if redrawn else images

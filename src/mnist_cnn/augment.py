"""Training-time augmentation: each training image redrawn a little differently every time.

Why: models trained on clean, centred MNIST strokes misread digits written with other pens,
slants, sizes and blur (README, "Your own handwriting"). Each image of a batch gets its own
random geometry (rotation, scaling, shift, slant), an elastic distortion (Simard, Steinkraus
and Platt 2003: a random displacement field smoothed by a Gaussian), a thicker or thinner
stroke, blur, lower contrast and noise. Strengths are ``config.Augmentation`` fields, recorded
in config.json.

One pure JAX function of the images and a key: the fused trainer calls it inside its compiled
step; the ``model.fit`` trainer runs it over each epoch's images before fitting. The key comes
from (seed, epoch, batch), so a resumed run sees the very images an uninterrupted one saw.
Validation and test images are never augmented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn.config import Augmentation

SIZE = 28
CENTRE = (SIZE - 1) / 2


def epoch_key(seed: int, epoch: int) -> jax.Array:
    """The key of epoch ``epoch``: batch b of the epoch draws from ``fold_in(epoch_key, b)``."""
    return jax.random.fold_in(jax.random.key(seed), epoch)


def batch_key(seed: int, epoch: int, batch: int) -> jax.Array:
    """The key of batch ``batch`` of epoch ``epoch``: a function of the three numbers only."""
    return jax.random.fold_in(epoch_key(seed, epoch), batch)


def gaussian_kernel(sigma: jax.Array, radius: int) -> jax.Array:
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    sigma = jnp.maximum(sigma, 0.1)  # A width of 0 means no blur, not a division by zero.
    weights = jnp.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def separable_blur(image: jax.Array, kernel: jax.Array) -> jax.Array:
    """Blur a 2-D array with the same 1-D kernel along both axes ('same' size, zero border)."""
    rows = jax.vmap(lambda row: jnp.convolve(row, kernel, mode="same"))(image)
    return jax.vmap(lambda column: jnp.convolve(column, kernel, mode="same"), in_axes=1, out_axes=1)(rows)


def window3(image: jax.Array, reducer, initial: float) -> jax.Array:
    """3x3 max (dilation: thicker strokes) or min (erosion: thinner) around every pixel."""
    return jax.lax.reduce_window(image, initial, reducer, (3, 3), (1, 1), "SAME")


def augment_image(image: jax.Array, key: jax.Array, strength: Augmentation) -> jax.Array:
    """One (28, 28) image in [0, 1], redrawn at random within ``strength``."""
    keys = jax.random.split(key, 10)
    uniform = lambda index, low, high: jax.random.uniform(keys[index], minval=low, maxval=high)  # noqa: E731

    # Geometry: output pixel p reads the input at centre + A^-1 (p - centre - shift).
    angle = jnp.deg2rad(uniform(0, -strength.rotation_degrees, strength.rotation_degrees))
    scale = uniform(1, 1 - strength.scale, 1 + strength.scale)
    shear = uniform(2, -strength.shear, strength.shear)
    shift = jax.random.uniform(keys[3], (2,), minval=-strength.shift_pixels, maxval=strength.shift_pixels)
    rotation = jnp.array([[jnp.cos(angle), -jnp.sin(angle)], [jnp.sin(angle), jnp.cos(angle)]])
    slant = jnp.array([[1.0, 0.0], [-shear, 1.0]])  # (row, column): columns move with the row: a slant.
    inverse = jnp.linalg.inv(scale * rotation @ slant)
    rows, columns = jnp.meshgrid(
        jnp.arange(SIZE, dtype=jnp.float32), jnp.arange(SIZE, dtype=jnp.float32), indexing="ij"
    )
    points = jnp.stack([rows - CENTRE - shift[0], columns - CENTRE - shift[1]])
    source = jnp.einsum("ij,jhw->ihw", inverse, points) + CENTRE

    # Elastic distortion: a smooth random displacement of up to elastic_alpha pixels.
    field = jax.random.uniform(keys[4], (2, SIZE, SIZE), minval=-1.0, maxval=1.0)
    kernel = gaussian_kernel(jnp.float32(strength.elastic_sigma), radius=int(2 * strength.elastic_sigma) + 1)
    field = jax.vmap(separable_blur, in_axes=(0, None))(field, kernel)
    field = field / (jnp.abs(field).max() + 1e-6) * strength.elastic_alpha * uniform(5, 0.0, 1.0)
    source = source + field
    warped = jax.scipy.ndimage.map_coordinates(image, [source[0], source[1]], order=1, mode="constant", cval=0.0)

    # Stroke thickness: thicker for some images, thinner for others.
    choice = uniform(6, 0.0, 1.0)
    thick = window3(warped, jax.lax.max, -jnp.inf)
    thin = window3(warped, jax.lax.min, jnp.inf)
    half = strength.thickness_probability / 2
    warped = jnp.where(choice < half, thick, jnp.where(choice < 2 * half, thin, warped))

    # Blur, for some images, of a random width.
    sigma = uniform(7, 0.5, max(strength.blur_sigma, 0.5))
    blurred = separable_blur(warped, gaussian_kernel(sigma, radius=2))
    warped = jnp.where(uniform(8, 0.0, 1.0) < strength.blur_probability, blurred, warped)

    # Fainter ink and sensor noise.
    contrast_key, noise_key = jax.random.split(keys[9])
    warped = warped * jax.random.uniform(contrast_key, minval=1 - strength.contrast, maxval=1.0)
    noise_level = strength.noise * jax.random.uniform(noise_key)
    warped = warped + noise_level * jax.random.normal(jax.random.fold_in(noise_key, 1), warped.shape)
    return jnp.clip(warped, 0.0, 1.0)


def augment_batch(images: jax.Array, key: jax.Array, strength: Augmentation) -> jax.Array:
    """A batch (N, 28, 28, 1), each image with its own randomness drawn from ``key``."""
    keys = jax.random.split(key, images.shape[0])
    redrawn = jax.vmap(augment_image, in_axes=(0, 0, None))(images[..., 0], keys, strength)
    return redrawn[..., None]


_compiled_augment_batch = jax.jit(augment_batch, static_argnums=2)


def augment_epoch(images: np.ndarray, seed: int, epoch: int, strength: Augmentation, batch_size: int) -> np.ndarray:
    """Every image of an epoch, in training order, augmented batch by batch with the keys the
    fused trainer uses: both trainers see the very same augmented images."""
    batches = [
        np.asarray(
            _compiled_augment_batch(
                jnp.asarray(images[start : start + batch_size]), batch_key(seed, epoch, index), strength
            )
        )
        for index, start in enumerate(range(0, len(images), batch_size))
    ]
    return np.concatenate(batches) if batches else images

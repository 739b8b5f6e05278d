"""The contrastive tasks' augmented views, on device (vmapped per sample inside the step).

The label-efficient paper's strong augmentation for SimCLR: translate +-15 %, rotate +-90 deg,
scale 0.8-1.2, horizontal flip, contrast, brightness, Gaussian blur, crop-and-resize. The
geometric part is one inverse map (the affine of ``lesionjax.data.augment`` composed with a
random crop of side ``crop`` x the image, resized back to the image), resampled bilinearly
once; then brightness and contrast, then (with probability ``blur_prob``) a Gaussian blur.

The local contrastive task compares the same regions of two views, so its two views share one
geometric transform (drawn without flips) and differ in their intensity transforms and blur
(``two_views(..., shared_geometry=True)``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lesionjax.data.augment import AugmentConfig, random_affine, warp


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    translate: float = 0.15
    rotate_deg: float = 90.0
    scale: tuple[float, float] = (0.8, 1.2)
    flip_prob: float = 0.5
    crop: tuple[float, float] = (0.6, 1.0)  # crop side, fraction of the image side
    brightness: tuple[float, float] = (0.8, 1.2)  # multiplicative
    contrast: tuple[float, float] = (0.8, 1.2)  # about the view's mean
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels at 256 x 256, scaled with the image


def view_geometry(key: jax.Array, shape: tuple[int, int], cfg: ViewConfig):
    """(matrix, offset) of one view: ``src = matrix @ dst + offset``, affine then crop."""
    k_a, k_c, k_o = jax.random.split(key, 3)
    affine = AugmentConfig(
        translate=cfg.translate, rotate_deg=cfg.rotate_deg, scale=tuple(cfg.scale),
        flip_prob=cfg.flip_prob,
    )  # fmt: skip
    inverse, offset = random_affine(k_a, shape, affine)
    size = jnp.asarray(shape, jnp.float32)
    side = jax.random.uniform(k_c, (), minval=cfg.crop[0], maxval=cfg.crop[1])
    corner = jax.random.uniform(k_o, (2,)) * (1.0 - side) * (size - 1.0)
    # crop-and-resize: the view's pixel d reads the affine's output at side * d + corner.
    return inverse * side, inverse @ corner + offset


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of (H, W, C) with a traced ``sigma`` (pixels), edge-padded."""
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-3)) ** 2)
    kernel = kernel / kernel.sum()
    h, w = image.shape[:2]
    padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    image = sum(kernel[i] * padded[i : i + h] for i in range(2 * radius + 1))
    padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(kernel[i] * padded[:, i : i + w] for i in range(2 * radius + 1))


def intensity(key: jax.Array, image: jax.Array, cfg: ViewConfig) -> jax.Array:
    """Brightness, contrast about the mean, then the blur (with its probability); [0, 1]."""
    k_b, k_c, k_p, k_s = jax.random.split(key, 4)
    image = image * jax.random.uniform(k_b, (), minval=cfg.brightness[0], maxval=cfg.brightness[1])
    mean = image.mean()
    factor = jax.random.uniform(k_c, (), minval=cfg.contrast[0], maxval=cfg.contrast[1])
    image = jnp.clip((image - mean) * factor + mean, 0.0, 1.0)
    if cfg.blur_prob <= 0:
        return image
    scale = image.shape[0] / 256.0
    radius = max(1, int(round(3 * cfg.blur_sigma[1] * scale)))
    sigma = jax.random.uniform(k_s, (), minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1]) * scale
    blurred = gaussian_blur(image, sigma, radius)
    return jnp.where(jax.random.bernoulli(k_p, cfg.blur_prob), blurred, image)


def view(key: jax.Array, image: jax.Array, cfg: ViewConfig, geometry_key=None) -> jax.Array:
    """One augmented view of ``image`` (H, W, C) in [0, 1]; ``geometry_key`` (default: drawn
    from ``key``) fixes the geometric transform."""
    k_g, k_i = jax.random.split(key)
    matrix, offset = view_geometry(k_g if geometry_key is None else geometry_key,
                                   image.shape[:2], cfg)  # fmt: skip
    return intensity(k_i, warp(image, matrix, offset, order=1), cfg)


def two_views(key: jax.Array, images: jax.Array, cfg: ViewConfig, *, shared_geometry: bool):
    """(B, H, W, C) -> two (B, H, W, C) batches of views, sample i of each from image i."""
    keys = jax.random.split(key, (images.shape[0], 3))

    def pair(k, image):
        geometry = k[2] if shared_geometry else None
        return view(k[0], image, cfg, geometry), view(k[1], image, cfg, geometry)

    return jax.vmap(pair)(keys, images)

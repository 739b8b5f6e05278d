"""On-device augmentation: pure functions, jitted inside the train step, vmapped over the batch.

One random affine per sample (translate, rotate, scale, horizontal flip) is applied to image and
mask through the same inverse coordinate map, so they stay aligned: the image is resampled
bilinearly, the mask nearest-neighbour. Slices are (H, W) = (X, Y) in RAS voxel order, so the
horizontal (left-right) flip reverses axis 0.

Optional intensity augmentation (off by default: CT windows are absolute HU; useful for MRI, whose
intensities vary between scanners and patients), per sample and before the affine, on the [0, 1]
image: brightness (multiply), contrast (scale about the sample's mean), then gamma, each factor
uniform in its range, with clipping to [0, 1] (nnU-Net uses the same three).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from lesionjax.core.windows import uint8_to_unit


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random affine (defaults: the label-efficient ICH paper)."""

    translate: float = 0.10  # fraction of the image size, uniform in [-t, t] per axis
    rotate_deg: float = 15.0  # uniform in [-r, r]
    scale: tuple[float, float] = (0.9, 1.1)  # isotropic, uniform
    flip_prob: float = 0.5  # left-right flip
    enabled: bool = True
    brightness: tuple[float, float] = (1.0, 1.0)  # multiplicative factor range
    contrast: tuple[float, float] = (1.0, 1.0)  # factor about the mean
    gamma: tuple[float, float] = (1.0, 1.0)  # x ** gamma

    @property
    def intensity(self) -> bool:
        return any(tuple(r) != (1.0, 1.0) for r in (self.brightness, self.contrast, self.gamma))


def random_intensity(key: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """image (H, W, C) in [0, 1] -> brightness, contrast and gamma jitter, clipped to [0, 1]."""
    k_b, k_c, k_g = jax.random.split(key, 3)

    def factor(k, bounds):
        return jax.random.uniform(k, (), minval=bounds[0], maxval=bounds[1])

    image = image * factor(k_b, cfg.brightness)
    mean = image.mean()
    image = jnp.clip((image - mean) * factor(k_c, cfg.contrast) + mean, 0.0, 1.0)
    return image ** factor(k_g, cfg.gamma)


def random_affine(key: jax.Array, shape: tuple[int, int], cfg: AugmentConfig):
    """Samples one transform. Returns (matrix (2, 2), offset (2,)) mapping output pixel
    coordinates to input coordinates: ``src = matrix @ dst + offset`` (the inverse transform)."""
    k_t, k_r, k_s, k_f = jax.random.split(key, 4)
    size = jnp.asarray(shape, jnp.float32)
    shift = jax.random.uniform(k_t, (2,), minval=-cfg.translate, maxval=cfg.translate) * size
    angle = jax.random.uniform(k_r, (), minval=-1.0, maxval=1.0) * math.radians(cfg.rotate_deg)
    scale = jax.random.uniform(k_s, (), minval=cfg.scale[0], maxval=cfg.scale[1])
    flip = jax.random.bernoulli(k_f, float(cfg.flip_prob))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotation = jnp.array([[cos, -sin], [sin, cos]])
    flip_m = jnp.diag(jnp.array([jnp.where(flip, -1.0, 1.0), 1.0]))
    forward = rotation @ flip_m * scale  # about the image centre
    inverse = jnp.linalg.inv(forward)
    centre = (size - 1.0) / 2.0
    # dst = forward @ (src - centre) + centre + shift
    # => src = inverse @ (dst - centre - shift) + centre
    offset = centre - inverse @ (centre + shift)
    return inverse, offset


def warp(image: jax.Array, matrix: jax.Array, offset: jax.Array, *, order: int) -> jax.Array:
    """image: (H, W, C) -> (H, W, C) resampled at ``matrix @ dst + offset``; zeros outside."""
    h, w = image.shape[:2]
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")).astype(jnp.float32)
    src = jnp.einsum("ij,jhw->ihw", matrix, grid) + offset[:, None, None]
    resample = jax.vmap(
        lambda ch: ndimage.map_coordinates(ch, [src[0], src[1]], order=order, mode="constant"),
        in_axes=-1,
        out_axes=-1,
    )
    return resample(image)


def augment_example(key: jax.Array, image: jax.Array, mask: jax.Array, cfg: AugmentConfig):
    """image (H, W, C) float, mask (H, W, 1) float -> the same transform applied to both."""
    if cfg.intensity:
        key, k_i = jax.random.split(key)
        image = random_intensity(k_i, image, cfg)
    matrix, offset = random_affine(key, image.shape[:2], cfg)
    return warp(image, matrix, offset, order=1), warp(mask, matrix, offset, order=0)


def make_augment_fn(cfg: AugmentConfig | None):
    """Returns ``fn(key, batch) -> batch`` for the train step: uint8 -> float in [0, 1], then
    (if enabled) one random affine per sample.

    batch: {"image": (B, H, W, C) uint8, "mask": (B, H, W, 1) uint8, "weight": (B,) f32}.
    """
    cfg = cfg or AugmentConfig(enabled=False)

    def augment(key: jax.Array, batch: dict) -> dict:
        batch = dict(batch)
        image = uint8_to_unit(batch["image"])
        mask = batch["mask"].astype(jnp.float32)
        if cfg.enabled:
            keys = jax.random.split(key, image.shape[0])
            image, mask = jax.vmap(lambda k, x, m: augment_example(k, x, m, cfg))(keys, image, mask)
        batch["image"], batch["mask"] = image, mask
        return batch

    return augment

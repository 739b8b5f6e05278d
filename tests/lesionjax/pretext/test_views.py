"""The contrastive views: crop-and-resize composed into the affine, shared geometry for the
local task, the Gaussian blur."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from lesionjax.data.augment import warp
from lesionjax.pretext import views

STILL = dict(translate=0.0, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=0.0)
NO_INTENSITY = dict(brightness=(1.0, 1.0), contrast=(1.0, 1.0), blur_prob=0.0)


def test_crop_and_resize_reads_the_crop_region():
    cfg = views.ViewConfig(crop=(0.5, 0.5), **STILL, **NO_INTENSITY)
    h, w = 40, 30
    matrix, offset = views.view_geometry(jax.random.key(0), (h, w), cfg)
    ramp = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).astype(np.float32)
    out = np.asarray(warp(jnp.asarray(ramp), matrix, offset, order=1))
    # pixel d of the view shows the source pixel 0.5 * d + corner, corner inside the image
    corner = out[0, 0]
    assert 0 <= corner[0] <= 0.5 * (h - 1) and 0 <= corner[1] <= 0.5 * (w - 1)
    np.testing.assert_allclose(out[10, 7], corner + 0.5 * np.array([10, 7]), atol=1e-4)
    np.testing.assert_allclose(out[h - 1, w - 1], corner + 0.5 * np.array([h - 1, w - 1]),
                               atol=1e-4)  # fmt: skip


def test_local_views_share_their_geometry_and_global_views_do_not():
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    cfg = views.ViewConfig(**NO_INTENSITY)
    a, b = views.two_views(jax.random.key(2), images, cfg, shared_geometry=True)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    a, b = views.two_views(jax.random.key(2), images, cfg, shared_geometry=False)
    assert np.abs(np.asarray(a) - np.asarray(b)).mean() > 0.05
    # the two images of the batch get different transforms
    a, _ = views.two_views(jax.random.key(3), jnp.stack([images[0], images[0]]), cfg,
                           shared_geometry=True)  # fmt: skip
    assert np.abs(np.asarray(a[0]) - np.asarray(a[1])).mean() > 0.05


def test_gaussian_blur_matches_scipy_inside_the_image():
    image = np.asarray(jax.random.uniform(jax.random.key(4), (24, 20, 2)))
    out = np.asarray(views.gaussian_blur(jnp.asarray(image), jnp.float32(1.5), radius=5))
    ref = ndimage.gaussian_filter(image, sigma=(1.5, 1.5, 0), mode="nearest", truncate=5 / 1.5)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_views_stay_in_the_unit_range():
    images = jax.random.uniform(jax.random.key(5), (3, 32, 32, 3))
    a, b = views.two_views(jax.random.key(6), images, views.ViewConfig(), shared_geometry=False)
    for v in (a, b):
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0 + 1e-6
    assert np.isfinite(np.asarray(a)).all()

"""On-device augmentation: identity at zero strength, image and mask stay aligned."""

import jax
import jax.numpy as jnp
import numpy as np

from lesionjax.data.augment import (
    AugmentConfig,
    augment_example,
    make_augment_fn,
    random_affine,
    warp,
)

NONE = AugmentConfig(translate=0.0, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=0.0)


def _square(h=48, w=48):
    img = np.zeros((h, w, 1), np.float32)
    img[10:22, 14:30] = 1.0
    return img


def test_zero_strength_is_identity():
    m, o = random_affine(jax.random.key(0), (48, 48), NONE)
    np.testing.assert_allclose(np.asarray(warp(jnp.asarray(_square()), m, o, order=1)), _square())


def test_flip_reverses_the_left_right_axis():
    cfg = AugmentConfig(translate=0.0, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=1.0)
    m, o = random_affine(jax.random.key(0), (48, 48), cfg)
    out = np.asarray(warp(jnp.asarray(_square()), m, o, order=0))
    np.testing.assert_array_equal(out, _square()[::-1])


def test_pure_translation_moves_by_the_sampled_shift():
    cfg = AugmentConfig(translate=0.1, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=0.0)
    m, o = random_affine(jax.random.key(3), (48, 48), cfg)
    assert np.allclose(np.asarray(m), np.eye(2))
    shift = -np.asarray(o)  # src = dst - shift
    assert np.all(np.abs(shift) <= 0.1 * 48 + 1e-5)


def test_image_and_mask_stay_aligned_under_random_affines():
    # The image is the mask itself (as float): after the same warp, thresholding the bilinear
    # image must reproduce the nearest-neighbour mask except on boundary pixels.
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64, 1), np.float32)
    mask[20:40, 15:45] = 1.0
    mask[rng.integers(0, 64, 30), rng.integers(0, 64, 30)] = 0.0
    for seed in range(8):
        img, msk = augment_example(
            jax.random.key(seed), jnp.asarray(mask), jnp.asarray(mask), AugmentConfig()
        )
        img, msk = np.asarray(img), np.asarray(msk)
        assert set(np.unique(msk).tolist()) <= {0.0, 1.0}  # nearest: still binary
        disagree = np.count_nonzero((img >= 0.5) != (msk >= 0.5))
        assert disagree <= 0.1 * max(1, msk.sum()), (seed, disagree)
        # Scale 0.9-1.1 changes the area by 0.81-1.21; the shape stays inside the field of view.
        assert 0.75 * mask.sum() < msk.sum() < 1.25 * mask.sum(), seed


def test_augment_fn_scales_uint8_and_varies_per_sample():
    fn = jax.jit(make_augment_fn(AugmentConfig()))
    image = np.zeros((4, 32, 32, 2), np.uint8)
    image[:, 8:24, 4:12] = 255
    batch = {
        "image": image,
        "mask": (image[..., :1] > 0).astype(np.uint8),
        "weight": np.ones(4, np.float32),
    }
    out = fn(jax.random.key(0), batch)
    assert out["image"].dtype == jnp.float32 and float(out["image"].max()) <= 1.0
    assert not np.allclose(out["image"][0], out["image"][1])  # one transform per sample
    again = fn(jax.random.key(0), batch)
    np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(again["image"]))


def test_disabled_augmentation_only_converts():
    fn = make_augment_fn(None)
    image = np.full((2, 8, 8, 1), 51, np.uint8)
    out = fn(
        jax.random.key(0),
        {"image": image, "mask": np.ones((2, 8, 8, 1), np.uint8), "weight": np.ones(2)},
    )
    np.testing.assert_allclose(np.asarray(out["image"]), 0.2)


def test_intensity_jitter_ranges_and_mask_untouched():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lesionjax.data import augment

    cfg = augment.AugmentConfig(brightness=(0.8, 1.2), contrast=(0.8, 1.2), gamma=(0.7, 1.5))
    assert cfg.intensity and not augment.AugmentConfig().intensity
    image = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (16, 16, 2)), jnp.float32)
    outs = [augment.random_intensity(jax.random.key(i), image, cfg) for i in range(20)]
    for out in outs:
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        # Monotone per sample: brightness, contrast and gamma preserve the order of intensities.
        a, b = np.asarray(image).ravel(), np.asarray(out).ravel()
        order = np.argsort(a)
        assert np.all(np.diff(b[order]) >= -1e-6)
    means = [float(o.mean()) for o in outs]
    assert max(means) - min(means) > 0.05  # the factors really vary between samples
    # Off: the augmentation leaves intensities alone (identity affine too).
    off = augment.AugmentConfig(translate=0.0, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=0.0)
    mask = jnp.zeros((16, 16, 1)).at[4:8, 4:8].set(1.0)
    img2, mask2 = augment.augment_example(jax.random.key(1), image, mask, off)
    np.testing.assert_allclose(np.asarray(img2), np.asarray(image), atol=1e-5)
    on = augment.AugmentConfig(
        translate=0.0, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=0.0, brightness=(0.5, 0.5)
    )
    img3, mask3 = augment.augment_example(jax.random.key(1), image, mask, on)
    np.testing.assert_allclose(np.asarray(img3), 0.5 * np.asarray(image), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask3), np.asarray(mask))

"""3D augmentation: image and mask stay aligned under rotation, scaling and mirroring; the
identity transform is the centre crop; axial-only rotation never mixes slices; the read margin."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from lesionjax.data.augment3d import (
    Augment3DConfig,
    augment_example3d,
    make_augment3d_fn,
    patch_read_size,
    random_spatial,
)

FINAL = (24, 24, 16)
SIZE = (32, 32, 20)
QUIET = dict(p_noise=0.0, p_brightness=0.0, p_contrast=0.0, p_gamma=0.0)


def _smooth_volume(seed=0, shape=SIZE):
    field = np.random.default_rng(seed).random(shape)
    field = ndimage.gaussian_filter(field, 2.5)
    field = (field - field.min()) / (field.max() - field.min())
    return field.astype(np.float32)


def _scipy_reference(key, image, cfg, order):
    """The transform of ``key`` applied by scipy (independent resampling), then mirrored."""
    matrix, flags = random_spatial(jax.random.split(key)[0], cfg)
    matrix, flags = np.asarray(matrix, np.float64), np.asarray(flags)
    c_in = (np.asarray(image.shape) - 1) / 2
    c_out = (np.asarray(FINAL) - 1) / 2
    offset = c_in - matrix @ c_out
    out = ndimage.affine_transform(image, matrix, offset, output_shape=FINAL, order=order)
    for axis in range(3):
        if flags[axis]:
            out = np.flip(out, axis)
    # Voxels whose source lies inside the volume (the border conventions differ outside).
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in FINAL), indexing="ij"), -1)
    src = grid @ matrix.T + offset
    inside = np.all((src >= 0) & (src <= np.asarray(image.shape) - 1), axis=-1)
    for axis in range(3):
        if flags[axis]:
            inside = np.flip(inside, axis)
    return out, inside


def test_image_and_mask_take_the_same_transform():
    # Against scipy's affine_transform of the same matrix: the image (trilinear) and the mask
    # (nearest) each match it, and the thresholded image still matches the mask.
    image = _smooth_volume()
    mask = (image > 0.55).astype(np.float32)
    cfg = Augment3DConfig(p_rotate=1.0, p_scale=1.0, **QUIET)
    run = jax.jit(lambda k: augment_example3d(k, image[..., None], mask[..., None], FINAL, cfg))
    for seed in range(6):
        key = jax.random.key(seed)
        img, msk = (np.asarray(a)[..., 0] for a in run(key))
        want_img, inside = _scipy_reference(key, image, cfg, order=1)
        want_msk, _ = _scipy_reference(key, mask, cfg, order=0)
        assert inside.mean() > 0.5
        np.testing.assert_allclose(img[inside], want_img[inside], atol=1e-4)
        assert np.mean(msk[inside] == want_msk[inside]) > 0.999
        agree = np.mean((img > 0.55)[inside] == (msk > 0.5)[inside])
        assert agree > 0.95, (seed, agree)  # a mask one voxel off scores ~0.91 here
        assert set(np.unique(msk)) <= {0.0, 1.0}  # nearest neighbour: still binary


def test_a_misaligned_mask_would_be_caught():
    # The same check fails when the mask takes a different transform than the image.
    image = _smooth_volume()
    mask = (image > 0.55).astype(np.float32)
    cfg = Augment3DConfig(p_rotate=1.0, p_scale=1.0, **QUIET)
    img, _ = augment_example3d(jax.random.key(0), image[..., None], mask[..., None], FINAL, cfg)
    _, msk = augment_example3d(jax.random.key(1), image[..., None], mask[..., None], FINAL, cfg)
    img, msk = np.asarray(img)[..., 0], np.asarray(msk)[..., 0]
    inside = img > 0
    assert np.mean((img > 0.55)[inside] == (msk > 0.5)[inside]) < 0.9


def test_the_identity_transform_is_the_centre_crop():
    image = np.random.default_rng(1).integers(0, 256, (2, *SIZE, 3), dtype=np.uint8)
    mask = (image[..., :1] > 128).astype(np.uint8)
    crop = tuple(slice((s - f) // 2, (s - f) // 2 + f) for s, f in zip(SIZE, FINAL, strict=True))
    want = image[(slice(None), *crop)].astype(np.float32) / 255.0
    identity = Augment3DConfig(p_rotate=0.0, p_scale=0.0, mirror_axes=(), **QUIET)
    for cfg in (identity, None):
        out = make_augment3d_fn(FINAL, cfg)(jax.random.key(0), {"image": image, "mask": mask})
        np.testing.assert_allclose(np.asarray(out["image"]), want, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(out["mask"]), mask[(slice(None), *crop)])


def test_mirroring_flips_the_allowed_axes_only():
    cfg = Augment3DConfig(p_rotate=0.0, p_scale=0.0, mirror_axes=(0,), **QUIET)
    image = np.zeros((*FINAL, 1), np.float32)
    image[2, 3, 4] = 1.0  # one bright voxel
    seen = set()
    for seed in range(12):
        img, _ = augment_example3d(jax.random.key(seed), image, image, FINAL, cfg)
        seen.add(tuple(int(i) for i in np.argwhere(np.asarray(img)[..., 0] > 0.5)[0]))
    assert seen == {(2, 3, 4), (FINAL[0] - 3, 3, 4)}


def test_axial_only_rotation_never_mixes_slices():
    # A volume that varies along z only is unchanged slice by slice (inside the data).
    profile = np.linspace(0.1, 0.9, SIZE[2], dtype=np.float32)
    image = np.broadcast_to(profile, SIZE)[..., None].copy()
    cfg = Augment3DConfig(p_rotate=1.0, axial_only=True, p_scale=0.0, mirror_axes=(), **QUIET)
    off = (SIZE[2] - FINAL[2]) // 2
    for seed in range(4):
        matrix, _ = random_spatial(jax.random.key(seed), cfg)
        np.testing.assert_allclose(np.asarray(matrix)[2], [0, 0, 1], atol=1e-6)
        img, _ = augment_example3d(jax.random.key(seed), image, image, FINAL, cfg)
        img = np.asarray(img)[..., 0]
        centre = img[8:16, 8:16]  # in-plane centre: always inside the rotated data
        np.testing.assert_allclose(
            centre, np.broadcast_to(profile[off : off + 16], centre.shape), rtol=1e-5
        )
    # Full 3D rotation does mix them.
    cfg3 = dataclasses.replace(cfg, axial_only=False)
    matrix, _ = random_spatial(jax.random.key(0), cfg3)
    assert np.abs(np.asarray(matrix)[2, :2]).max() > 1e-3


def test_read_size_covers_the_rotations_and_zooms():
    cfg = Augment3DConfig()
    size = patch_read_size((64, 64, 64), cfg)
    # 30 deg about each axis in turn, then / 0.7, capped by the diagonal (110.9).
    assert all(64 < n <= int(np.ceil(np.sqrt(3) * 64)) for n in size)
    flat = patch_read_size((128, 128, 16), dataclasses.replace(cfg, axial_only=True, p_scale=0.0))
    assert flat[2] == 16 and flat[0] == flat[1] == int(np.ceil(128 * np.sqrt(2)))
    assert patch_read_size((64, 64, 64), Augment3DConfig(enabled=False)) == (64, 64, 64)


def test_intensity_augmentation_stays_in_the_unit_range():
    cfg = Augment3DConfig(p_rotate=0, p_scale=0, p_noise=1, p_brightness=1, p_contrast=1, p_gamma=1)
    image = _smooth_volume()[..., None]
    img, _ = augment_example3d(
        jax.random.key(3), jnp.asarray(image), jnp.asarray(image), FINAL, cfg
    )
    img = np.asarray(img)
    assert img.min() >= 0.0 and img.max() <= 1.0 and np.isfinite(img).all()


def test_intensity_channels_leave_the_others_alone():
    cfg = Augment3DConfig(
        p_rotate=0, p_scale=0, mirror_axes=(), p_noise=1, p_brightness=1, p_gamma=1,
        intensity_channels=1,
    )  # fmt: skip
    image = np.stack([_smooth_volume(0), _smooth_volume(1)], axis=-1)
    img, _ = augment_example3d(jax.random.key(0), image, image[..., :1], FINAL, cfg)
    crop = tuple(slice((s - f) // 2, (s - f) // 2 + f) for s, f in zip(SIZE, FINAL, strict=True))
    np.testing.assert_allclose(np.asarray(img)[..., 1], image[crop][..., 1], rtol=1e-6)
    assert np.abs(np.asarray(img)[..., 0] - image[crop][..., 0]).max() > 0.01

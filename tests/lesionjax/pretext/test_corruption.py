"""Context restoration's swap corruption against a numpy replay of the same swaps."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lesionjax.pretext import corruption


def _unique_image(h, w, c, seed=0):
    """Every value distinct, so each moved pixel is visible and traceable."""
    return np.random.default_rng(seed).permutation(h * w * c).reshape(h, w, c).astype(np.float32)


def _disjoint(a, b, size):
    return abs(int(a[0]) - int(b[0])) >= size or abs(int(a[1]) - int(b[1])) >= size


def test_patch_size_scales_the_papers_20_at_256():
    assert corruption.patch_size(256) == 20
    assert corruption.patch_size(128) == 10
    assert corruption.patch_size(512) == 40


def test_twenty_swaps_of_disjoint_patches_and_nothing_else_changes():
    h, w, c, size, n = 64, 48, 3, 6, 20
    image = _unique_image(h, w, c)
    positions = np.asarray(corruption.swap_positions(jax.random.key(3), (h, w), n, size))
    assert positions.shape == (n, 2, 2)
    assert (positions >= 0).all()
    assert (positions[..., 0] <= h - size).all() and (positions[..., 1] <= w - size).all()
    for a, b in positions:
        assert _disjoint(a, b, size), (a, b)
    out = np.asarray(corruption.swap_patches(image, positions, size))
    # numpy replay of the swaps, in order
    expected = image.copy()
    touched = np.zeros((h, w), bool)
    for a, b in positions:
        pa = expected[a[0] : a[0] + size, a[1] : a[1] + size].copy()
        pb = expected[b[0] : b[0] + size, b[1] : b[1] + size].copy()
        expected[a[0] : a[0] + size, a[1] : a[1] + size] = pb
        expected[b[0] : b[0] + size, b[1] : b[1] + size] = pa
        touched[a[0] : a[0] + size, a[1] : a[1] + size] = True
        touched[b[0] : b[0] + size, b[1] : b[1] + size] = True
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[~touched], image[~touched])  # otherwise unchanged
    assert sorted(out.ravel()) == sorted(image.ravel())  # pixels moved, none invented


def test_one_swap_moves_exactly_two_patches():
    h, w, c, size = 40, 40, 1, 7
    image = _unique_image(h, w, c, seed=1)
    out = np.asarray(corruption.corrupt(jax.random.key(0), image, 1, size))
    changed = (out != image).any(-1)
    assert changed.sum() == 2 * size * size
    rows, cols = np.nonzero(changed)
    # the changed pixels are two size x size squares whose contents traded places
    positions = np.asarray(corruption.swap_positions(jax.random.key(0), (h, w), 1, size))[0]
    (ra, ca), (rb, cb) = positions
    np.testing.assert_array_equal(out[ra : ra + size, ca : ca + size],
                                  image[rb : rb + size, cb : cb + size])  # fmt: skip
    np.testing.assert_array_equal(out[rb : rb + size, cb : cb + size],
                                  image[ra : ra + size, ca : ca + size])  # fmt: skip
    assert set(zip(rows, cols, strict=True)) == {
        (r, q) for r0, q0 in positions for r in range(r0, r0 + size) for q in range(q0, q0 + size)
    }


def test_an_image_too_small_for_two_patches_is_refused():
    with pytest.raises(ValueError, match="no two disjoint"):
        corruption.swap_positions(jax.random.key(0), (10, 10), 1, 6)

"""Context restoration's corruption (Chen et al. 2019): pairs of small patches of an image swap
places, ``n_swaps`` times; the model restores the original.

Each swap exchanges two square patches that do not overlap each other, drawn uniformly among
all such pairs; later swaps may move pixels an earlier swap moved (as in the paper's
procedure). The paper's setting is 20 swaps of 20 x 20 patches on 256 x 256 images; other sizes
scale the patch with the image (``patch_size``). Pure jax: vmapped over the batch in the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patch_size(image_size: int, patch: int = 20, reference: int = 256) -> int:
    """The patch side for an image of side ``image_size``: ``patch`` at ``reference``, scaled."""
    return max(1, int(round(patch * image_size / reference)))


def swap_positions(key: jax.Array, shape: tuple[int, int], n_swaps: int, size: int) -> jax.Array:
    """Top-left corners of the swapped pairs: (n_swaps, 2, 2) int32, ``[t, j] = (row, col)``
    of patch j of swap t. The second patch of each pair is drawn uniformly among the corners
    whose patch does not overlap the first one."""
    h, w = int(shape[0]), int(shape[1])
    if h < size or w < size or (h < 2 * size and w < 2 * size):
        raise ValueError(f"image {h} x {w}: no two disjoint {size} x {size} patches fit")
    rows, cols = jnp.meshgrid(jnp.arange(h - size + 1), jnp.arange(w - size + 1), indexing="ij")

    def one(k):
        k1, k2, k3 = jax.random.split(k, 3)
        first = jnp.stack(
            [
                jax.random.randint(k1, (), 0, h - size + 1),
                jax.random.randint(k2, (), 0, w - size + 1),
            ]
        )
        disjoint = (jnp.abs(rows - first[0]) >= size) | (jnp.abs(cols - first[1]) >= size)
        logits = jnp.where(disjoint, 0.0, -jnp.inf).ravel()
        flat = jax.random.categorical(k3, logits)
        second = jnp.stack([flat // (w - size + 1), flat % (w - size + 1)])
        return jnp.stack([first, second]).astype(jnp.int32)

    return jax.vmap(one)(jax.random.split(key, n_swaps))


def swap_patches(image: jax.Array, positions: jax.Array, size: int) -> jax.Array:
    """``image`` (H, W, C) with the patches of ``positions`` (n, 2, 2) swapped, in order."""
    channels = image.shape[-1]
    positions = jnp.asarray(positions, jnp.int32)

    def body(t, img):
        a, b = positions[t, 0], positions[t, 1]
        pa = jax.lax.dynamic_slice(img, (a[0], a[1], 0), (size, size, channels))
        pb = jax.lax.dynamic_slice(img, (b[0], b[1], 0), (size, size, channels))
        img = jax.lax.dynamic_update_slice(img, pb, (a[0], a[1], 0))
        return jax.lax.dynamic_update_slice(img, pa, (b[0], b[1], 0))

    return jax.lax.fori_loop(0, positions.shape[0], body, image)


def corrupt(key: jax.Array, image: jax.Array, n_swaps: int, size: int) -> jax.Array:
    """One image (H, W, C) with ``n_swaps`` random swaps of ``size`` x ``size`` patches."""
    return swap_patches(image, swap_positions(key, image.shape[:2], n_swaps, size), size)

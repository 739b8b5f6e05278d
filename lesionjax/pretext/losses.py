"""The pretext tasks' losses (pure jax, float32).

- ``info_nce``: SimCLR's NT-Xent over the 2N views of a batch (each view's positive is the
  other view of its image, its negatives the other 2N - 2 views); under ``jax.jit`` on a
  sharded batch the similarity matrix is the global batch's, so the negatives come from every
  device and host.
- ``local_info_nce``: Chaitanya et al.'s local loss: per image, the embeddings of ``n``
  regions in two views; a region's positive is the same region in the other view, its
  negatives the image's other regions (both views).
- ``softmax_cross_entropy``, ``weighted_bce``, ``multilabel_dice``: the classifiers'.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def info_nce(z1: jax.Array, z2: jax.Array, temperature: float = 0.1) -> jax.Array:
    """NT-Xent of paired embeddings z1, z2: (N, D) (row i of each: views of sample i).

    Embeddings are L2-normalised; logits are cosine similarities / temperature, a view's own
    similarity excluded. The mean over the 2N views of -log softmax(positive). Perfectly
    aligned pairs with mutually orthogonal samples give the minimum for that geometry,
    ``log(1 + (2N - 2) exp(-1 / temperature))``.
    """
    z = jnp.concatenate([z1, z2]).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, positive[:, None], axis=-1))


def sample_regions(key: jax.Array, shape: tuple[int, int], n: int, size: int = 3) -> jax.Array:
    """``n`` distinct cells of the grid of non-overlapping ``size`` x ``size`` regions that
    tile a (H, W) feature map from its corner: (n,) flat cell indices into the
    (H // size) x (W // size) grid (so every region is inside the map and none overlaps
    another)."""
    cells = (int(shape[0]) // size) * (int(shape[1]) // size)
    if cells < n:
        raise ValueError(
            f"feature map {tuple(shape)}: {cells} regions of {size} x {size}, fewer than {n}"
        )
    return jax.random.permutation(key, cells)[:n]


def region_corners(cells: jax.Array, shape: tuple[int, int], size: int = 3) -> jax.Array:
    """Top-left corners (n, 2) of ``sample_regions``' cells."""
    per_row = int(shape[1]) // size
    return jnp.stack([cells // per_row, cells % per_row], axis=-1) * size


def region_embeddings(fmap: jax.Array, cells: jax.Array, size: int = 3) -> jax.Array:
    """The mean feature vector of each region: fmap (B, H, W, D) -> (B, n, D)."""
    b, h, w, d = fmap.shape
    gh, gw = h // size, w // size
    grid = fmap[:, : gh * size, : gw * size].astype(jnp.float32)
    grid = grid.reshape(b, gh, size, gw, size, d).mean(axis=(2, 4)).reshape(b, gh * gw, d)
    return grid[:, cells]


def local_info_nce(e1: jax.Array, e2: jax.Array, temperature: float = 0.1) -> jax.Array:
    """Per image, ``info_nce`` over its regions: e1, e2 (B, n, D); the mean over images."""
    return jnp.mean(jax.vmap(lambda a, b: info_nce(a, b, temperature))(e1, e2))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits (B, K) against integer labels (B,)."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1))


def multilabel_targets(slice_labels: jax.Array) -> jax.Array:
    """The 7 multi-label targets of slices' ``SLICE_LABELS`` (B, 6) {0, 1}: (B, 7) float32 =
    [no ICH, ICH, epidural, intraparenchymal, intraventricular, subarachnoid, subdural]."""
    y = slice_labels.astype(jnp.float32)
    return jnp.concatenate([1.0 - y[:, :1], y], axis=-1)


def balanced_pos_weights(targets: np.ndarray, max_weight: float = 100.0) -> np.ndarray:
    """Per-class positive weights of weighted BCE from a pool's targets (N, K) {0, 1}:
    negatives / positives of each class (a class as frequent as its absence weighs 1), at
    most ``max_weight``; 1 for a class with no positive example."""
    targets = np.asarray(targets, np.float64)
    pos = targets.sum(0)
    neg = targets.shape[0] - pos
    weights = np.where(pos > 0, neg / np.maximum(pos, 1.0), 1.0)
    return np.clip(weights, 1.0 / max_weight, max_weight).astype(np.float32)


def weighted_bce(logits: jax.Array, targets: jax.Array, pos_weight: jax.Array) -> jax.Array:
    """Mean over samples and classes of -(w_k y log p + (1 - y) log(1 - p)), p = sigmoid."""
    logits = logits.astype(jnp.float32)
    per = -(pos_weight * targets * jax.nn.log_sigmoid(logits)
            + (1.0 - targets) * jax.nn.log_sigmoid(-logits))  # fmt: skip
    return jnp.mean(per)


def multilabel_dice(logits: jax.Array, targets: jax.Array, eps: float = 1.0) -> jax.Array:
    """1 - the mean over classes of the soft Dice of sigmoid(logits) (B, K) over the batch."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    inter = jnp.sum(p * targets, axis=0)
    dice = (2.0 * inter + eps) / (jnp.sum(p, axis=0) + jnp.sum(targets, axis=0) + eps)
    return 1.0 - jnp.mean(dice)

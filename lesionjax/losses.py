"""Segmentation losses on logits: soft Dice, binary cross-entropy and their sum.

All losses take the model's raw ``logits`` and apply the sigmoid themselves (numerically stabler
than taking probabilities), and reduce per sample first, then as a weighted mean over the batch::

    loss = sum_i w_i * loss_i / sum_i w_i

so that per-sample weights implement the "Mixed" baseline of the label-efficient ICH method
(normal slices weighted alpha=0.2) and a weight of 0 removes a sample (e.g. batch padding). When
all weights are 0 the loss is 0 (not NaN), so a fully padded batch contributes no gradient.

Shapes: ``logits`` and ``target`` are (B, H, W, C) (C = 1 for the binary masks of the papers;
any trailing axes work), ``target`` in {0, 1}, ``weights`` (B,) or None (all ones).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def _weighted_mean(per_sample: jax.Array, weights: jax.Array | None) -> jax.Array:
    """sum(w_i x_i) / sum(w_i), 0 when sum(w) == 0. per_sample, weights: (B,)."""
    if weights is None:
        return jnp.mean(per_sample)
    weights = jnp.asarray(weights, per_sample.dtype)
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights shape {weights.shape} != batch shape {per_sample.shape}")
    total = jnp.sum(weights)
    # The where() on the denominator keeps the gradient finite when every weight is 0.
    safe_total = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(weights * per_sample) / safe_total, 0.0)


def _spatial_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def soft_dice_per_sample(logits: jax.Array, target: jax.Array, *, smooth: float = 1.0) -> jax.Array:
    """Soft Dice coefficient per sample, (B,) float32.

    dice_i = (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits), sums over
    all non-batch axes. ``smooth`` makes an empty prediction of an empty mask score 1.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits shape {logits.shape} != target shape {target.shape}")
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    t = target.astype(jnp.float32)
    axes = _spatial_axes(p)
    intersection = jnp.sum(p * t, axis=axes)
    denominator = jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes)
    return (2.0 * intersection + smooth) / (denominator + smooth)


def soft_dice_loss(
    logits: jax.Array,
    target: jax.Array,
    weights: jax.Array | None = None,
    *,
    smooth: float = 1.0,
) -> jax.Array:
    """Weighted mean over the batch of 1 - soft Dice (see ``soft_dice_per_sample``); scalar."""
    return _weighted_mean(1.0 - soft_dice_per_sample(logits, target, smooth=smooth), weights)


def bce_loss(logits: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Binary cross-entropy on logits (log-sum-exp stable), mean per sample, weighted batch mean."""
    if logits.shape != target.shape:
        raise ValueError(f"logits shape {logits.shape} != target shape {target.shape}")
    per_pixel = optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), target.astype(jnp.float32)
    )
    return _weighted_mean(jnp.mean(per_pixel, axis=_spatial_axes(per_pixel)), weights)


def dice_bce_loss(
    logits: jax.Array, target: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Soft Dice loss + BCE (the ICH cascade U-Net's loss); scalar."""
    return soft_dice_loss(logits, target, weights) + bce_loss(logits, target, weights)


def batch_dice_loss(
    logits: jax.Array,
    target: jax.Array,
    weights: jax.Array | None = None,
    *,
    smooth: float = 1.0,
) -> jax.Array:
    """1 - soft Dice of the whole batch as one volume (nnU-Net's "batch dice"); scalar.

    Sums run over the batch too, each sample's pixels weighted by its weight:
    1 - (2 sum w p t + smooth) / (sum w p + sum w t + smooth). On slice batches where most
    slices are lesion-free, per-sample Dice scores an all-background output as perfect on those
    slices; here false positives on any slice cost the same as anywhere else.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits shape {logits.shape} != target shape {target.shape}")
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    t = target.astype(jnp.float32)
    w = jnp.ones(p.shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)
    w = w.reshape((-1,) + (1,) * (p.ndim - 1))
    intersection = jnp.sum(w * p * t)
    denominator = jnp.sum(w * p) + jnp.sum(w * t)
    return 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)


def batch_dice_bce_loss(
    logits: jax.Array, target: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Batch soft Dice + BCE (nnU-Net's default pairing); scalar."""
    return batch_dice_loss(logits, target, weights) + bce_loss(logits, target, weights)


def deep_supervision_weights(n_aux: int) -> list[float]:
    """nnU-Net's weights for the full-resolution output and ``n_aux`` coarser ones: 1, 1/2,
    1/4, ... normalized to sum 1 (the deepest decoder level, weight 0 in nnU-Net, has no head
    here)."""
    w = [0.5**i for i in range(n_aux + 1)]
    return [x / sum(w) for x in w]


def downsample_mask(target: jax.Array, factor: int | tuple[int, ...]) -> jax.Array:
    """(B, *S, C) {0, 1} -> (B, *(S_i / f_i), C): 1 where any voxel of the block is 1 (a
    max-pool: a lesion smaller than a block stays in the coarser target). ``factor``: one for
    every spatial axis, or one per axis (3D U-Nets pool some axes and not others)."""
    b, *spatial, c = target.shape
    factors = (factor,) * len(spatial) if isinstance(factor, int) else tuple(factor)
    shape = [b]
    for n, f in zip(spatial, factors, strict=True):
        shape += [n // f, f]
    return jnp.max(target.reshape(*shape, c), axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def deep_supervision_loss(
    loss_fn: LossFn, outputs, target: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """``loss_fn`` on the model's outputs: the logits, or ``(logits, [aux, finest first])``
    from a deep-supervised model, each aux scored against the target max-pooled to its size and
    the terms weighted by ``deep_supervision_weights``."""
    if not isinstance(outputs, tuple):
        return loss_fn(outputs, target, weights)
    logits, aux = outputs
    w = deep_supervision_weights(len(aux))
    total = w[0] * loss_fn(logits, target, weights)
    for wi, a in zip(w[1:], aux, strict=True):
        factors = tuple(t // n for t, n in zip(target.shape[1:-1], a.shape[1:-1], strict=True))
        total = total + wi * loss_fn(a, downsample_mask(target, factors), weights)
    return total


_LOSSES: dict[str, LossFn] = {
    "dice": soft_dice_loss,
    "bce": bce_loss,
    "dice_bce": dice_bce_loss,
    "batch_dice": batch_dice_loss,
    "batch_dice_bce": batch_dice_bce_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss ``fn(logits, target, weights=None) -> scalar`` by name (see ``_LOSSES``)."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(_LOSSES)}") from None

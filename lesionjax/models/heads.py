"""Heads the pretext models put on the U-Net's encoder or decoder: a dense MLP on pooled
bottleneck features (SimCLR's projection, the classifiers) and a 1x1-convolution stack on a
feature map (the local contrastive projection).

Widths are given as the layers' output widths, the last one the head's output: the paper's
"MLP 512-512-128" on a 512-channel bottleneck is ``MLPHead(512, (512, 128))``. ReLU between
layers, none after the last (the losses take raw outputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ValueError(f"head widths {widths}: expected one or more positive widths")
    return widths


class MLPHead(nnx.Module):
    """Dense layers ``in_width -> widths[0] -> ... -> widths[-1]``, ReLU between them.

    x: (B, in_width) -> (B, widths[-1]) float32 (computed in ``dtype``)."""

    def __init__(self, in_width: int, widths: Sequence[int], *, rngs: nnx.Rngs, **dt):
        widths = _check_widths(widths)
        sizes = (int(in_width), *widths)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs, **dt) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else jax.nn.relu(x))
        return x


class ConvHead(nnx.Module):
    """1x1 convolutions ``in_width -> widths[0] -> ... -> widths[-1]``, ReLU between them.

    x: (B, H, W, in_width) -> (B, H, W, widths[-1])."""

    def __init__(self, in_width: int, widths: Sequence[int], *, rngs: nnx.Rngs, **dt):
        widths = _check_widths(widths)
        sizes = (int(in_width), *widths)
        self.layers = nnx.List(
            [
                nnx.Conv(a, b, (1, 1), rngs=rngs, **dt)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else jax.nn.relu(x))
        return x


def global_average_pool(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C), the mean over H and W in float32."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

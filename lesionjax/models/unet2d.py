"""The baseline 2D U-Net (Flax NNX) of methods 1 and 3.

It maps an image batch ``x: (B, H, W, C_in)`` float to ``logits: (B, H, W, C_out)``. The
models stop at logits: ``jax.nn.sigmoid(logits)`` is the model's probability output (the papers'
final "1x1 conv + sigmoid"); the sigmoid lives in the losses and in inference because
``log(sigmoid(z))`` computed from ``z`` is numerically stabler than from the probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lesionjax.models.layers import (
    DOWNSAMPLING,
    LEAKY_SLOPE,
    DoubleConv,
    UNetDecoder,
    check_features,
    check_input,
    max_pool_2x2,
)


class UNet2D(nnx.Module):
    """Baseline 2D U-Net (filters 32-64-128-256-512 by default).

    Encoder: ``len(features)`` levels of 2 x (conv3x3 'SAME' + BN + ReLU), a 2x2 max-pool
    between levels; the last level is the bottleneck. Decoder: per level a 2x2 stride-2
    transposed conv to the level's width, concatenation with the skip, 2 x (conv3x3 + BN + ReLU).
    Head: 1x1 conv to ``out_channels`` logits.

    Options (the papers' architecture is the default): ``norm`` "batch" | "instance",
    ``activation`` "relu" | "leaky_relu" (``layers.ConvNormAct``; ``leaky_slope`` its negative
    slope, nnU-Net's 0.01 by default, MONAI's BasicUNet 0.1), ``downsample`` "maxpool" |
    "strided" (the first conv of each deeper level has stride 2 instead of a max-pool before it,
    as nnU-Net does), ``deep_supervision``: 1x1 heads on the decoder levels at 1/2, 1/4, ...
    resolution (all but the full-resolution one and the deepest, as nnU-Net), whose logits the
    training loss also scores (``losses.deep_supervision_loss``). In training mode the model then
    returns ``(logits, [aux logits, finest first])``; in eval mode always the logits alone.

    x: (B, H, W, in_channels) float, H and W divisible by 2**(len(features)-1)
    -> logits (B, H, W, out_channels); probabilities are ``jax.nn.sigmoid(logits)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        *,
        rngs: nnx.Rngs,
        norm: str = "batch",
        activation: str = "relu",
        downsample: str = "maxpool",
        leaky_slope: float = LEAKY_SLOPE,
        deep_supervision: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        features = check_features(features)
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample {downsample!r}: expected one of {DOWNSAMPLING}")
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        block = dict(norm=norm, act=activation, slope=leaky_slope, **dt)
        self.in_channels = in_channels
        self.features = features
        self.strided = downsample == "strided"
        widths = (in_channels, *features)
        self.encoder = nnx.List(
            [
                DoubleConv(a, b, strides=2 if level and self.strided else 1, rngs=rngs, **block)
                for level, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
            ]
        )
        self.decoder = UNetDecoder(features, rngs=rngs, **block)
        self.head = nnx.Conv(features[0], out_channels, (1, 1), rngs=rngs, **dt)
        # Decoder outputs, deepest first, have widths features[-2], ..., features[0]; heads on
        # all but the deepest and the last (full resolution, self.head), finest first.
        aux_widths = features[1:-2] if deep_supervision else ()
        self.aux_heads = nnx.List(
            [nnx.Conv(w, out_channels, (1, 1), rngs=rngs, **dt) for w in aux_widths]
        )

    def __call__(
        self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        """``rngs`` is accepted and ignored (no dropout) so callers treat both models alike."""
        del rngs
        check_input(x, self.in_channels, len(self.features))
        skips = run_encoder(self.encoder, x, train=train, strided=self.strided)
        levels = self.decoder(skips.pop(), skips[::-1], train=train)
        logits = self.head(levels[-1])
        if not (train and len(self.aux_heads)):
            return logits
        finer_first = levels[-2::-1][: len(self.aux_heads)]  # 1/2, 1/4, ... resolution
        return logits, [head(y) for head, y in zip(self.aux_heads, finer_first, strict=True)]

    def bottleneck_features(self, x: jax.Array) -> jax.Array:
        """Eval-mode output of the deepest encoder level (the bottleneck), for feature plots.

        x: (B, H, W, in_channels) -> (B, H / 2**(L-1), W / 2**(L-1), features[-1]).
        """
        check_input(x, self.in_channels, len(self.features))
        return run_encoder(self.encoder, x, train=False, strided=self.strided)[-1]


def run_encoder(blocks, x: jax.Array, *, train: bool, strided: bool = False) -> list[jax.Array]:
    """The outputs of every encoder level, shallowest first (the last is the bottleneck): each
    level's input is max-pooled 2x2 below level 0 unless the blocks downsample themselves
    (``strided``). Shared by the U-Net and the pretext models built on its encoder."""
    outputs = []
    for level, block in enumerate(blocks):
        x = block(max_pool_2x2(x) if level > 0 and not strided else x, train=train)
        outputs.append(x)
    return outputs

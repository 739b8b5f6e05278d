"""The residual 2D U-Net (Flax NNX) of method 1 (stroke on T1 MRI); logits like ``unet2d``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lesionjax.models.layers import (
    DoubleConv,
    UNetDecoder,
    batch_norm,
    batch_norm_relu,
    check_features,
    check_input,
    max_pool_2x2,
)


class ResidualDownBlock(nnx.Module):
    """Residual encoder block of method 1 (strides=2 halves H and W).

    main: conv3x3 stride s -> conv3x3 stride 1 -> BN -> ReLU
    shortcut: conv1x1 stride s (projection)
    out: Dropout(BN(main + shortcut))

    x: (B, H, W, C_in) -> (B, H/s, W/s, C_out).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int,
        dropout: float,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        # The first conv is not followed by a BN, so it keeps its bias; the second one is.
        self.conv1 = nnx.Conv(
            in_features, out_features, (3, 3), strides=strides, padding="SAME", rngs=rngs, **dt
        )
        self.conv2 = nnx.Conv(
            out_features, out_features, (3, 3), padding="SAME", use_bias=False, rngs=rngs, **dt
        )
        self.bn1 = batch_norm(out_features, rngs=rngs, **dt)
        self.shortcut = nnx.Conv(
            in_features, out_features, (1, 1), strides=strides, padding="SAME", rngs=rngs, **dt
        )
        self.bn_out = batch_norm(out_features, rngs=rngs, **dt)
        # No rngs here: the dropout key comes at call time, so the model state holds only
        # parameters and BatchNorm statistics.
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        main = batch_norm_relu(self.bn1, self.conv2(self.conv1(x)), train=train)
        y = self.bn_out(main + self.shortcut(x), use_running_average=not train)
        return self.dropout(y, deterministic=not train, rngs=rngs)


class ResUNet2D(nnx.Module):
    """Residual 2D U-Net of method 1 (stroke on T1 MRI).

    Our reading of the paper: the encoder blocks of the baseline are replaced by residual blocks
    (conv3x3 stride 2 -> conv3x3 -> BN -> ReLU, plus a strided 1x1 projection shortcut, added,
    then BN and Dropout), where the strided first conv takes over the baseline's max-pool; the
    bottleneck and decoder are those of the baseline. For the output to have the input's
    resolution the number of downsamplings must stay len(features) - 1, as in the baseline, so:

    - level 0 is a residual block with stride 1 (full-resolution skip; as in Zhang et al.'s
      ResUNet, the first block does not downsample);
    - levels 1 .. L-2 are residual blocks with stride 2 (they replace max-pool + block);
    - the bottleneck (level L-1) is the baseline's 2x2 max-pool + 2 x (conv3x3 + BN + ReLU);
    - the decoder and the 1x1 head are the baseline's.

    x: (B, H, W, in_channels), H and W divisible by 2**(len(features)-1) -> logits
    (B, H, W, out_channels). Dropout is active only when ``train=True``, which then needs
    ``rngs`` with a ``dropout`` stream (e.g. ``nnx.Rngs(dropout=key)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        dropout: float = 0.5,
    ):
        features = check_features(features)
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        self.in_channels = in_channels
        self.features = features
        widths = (in_channels, *features)
        self.encoder = nnx.List(
            [
                ResidualDownBlock(
                    widths[i],
                    widths[i + 1],
                    strides=1 if i == 0 else 2,
                    dropout=dropout,
                    rngs=rngs,
                    **dt,
                )
                for i in range(len(features) - 1)
            ]
        )
        self.bottleneck = DoubleConv(features[-2], features[-1], rngs=rngs, **dt)
        self.decoder = UNetDecoder(features, rngs=rngs, **dt)
        self.head = nnx.Conv(features[0], out_channels, (1, 1), rngs=rngs, **dt)

    def __call__(
        self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        check_input(x, self.in_channels, len(self.features))
        skips = []
        for block in self.encoder:
            x = block(x, train=train, rngs=rngs)
            skips.append(x)
        x = self.bottleneck(max_pool_2x2(x), train=train)
        x = self.decoder(x, skips[::-1], train=train)[-1]
        return self.head(x)

    def bottleneck_features(self, x: jax.Array) -> jax.Array:
        """Eval-mode output of the bottleneck (deepest level), for feature plots.

        x: (B, H, W, in_channels) -> (B, H / 2**(L-1), W / 2**(L-1), features[-1]).
        """
        check_input(x, self.in_channels, len(self.features))
        for block in self.encoder:
            x = block(x, train=False, rngs=None)
        return self.bottleneck(max_pool_2x2(x), train=False)

"""The 3D U-Net of the INSTANCE 2022 cascade (method 2), as nnU-Net builds it (Flax NNX).

Volumes are ``(B, X, Y, Z, C)`` in RAS voxel order (Z the axial slice axis, usually the coarse
one). Per encoder level: 2 x (conv3x3x3 'SAME' -> InstanceNorm -> LeakyReLU); between levels a
max-pool whose stride is given per axis (``pools``, from the 3D plan: an axis is pooled only
while its spacing is at most twice the finest, so a 5 mm axis is left alone until the others
catch up). Decoder: per level a transposed conv with kernel = stride = that level's pool (one
matmul + depth-to-space, see ``ConvTransposeStrided``), concatenation with the skip,
2 x (conv -> norm -> activation). Head: 1x1x1 conv to logits (``jax.nn.sigmoid`` gives the
probabilities; the sigmoid lives in the losses and inference, as for the 2D models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lesionjax.models.layers import LEAKY_SLOPE, DoubleConv, check_features

# nnU-Net caps the width of its 3D U-Nets at 320 features (GPU memory of the deepest levels).
MAX_FEATURES_3D = 320


def features_3d(levels: int, base: int = 32, cap: int = MAX_FEATURES_3D) -> tuple[int, ...]:
    """nnU-Net's widths: ``base`` doubling per level, capped: 32, 64, 128, 256, 320, 320, ..."""
    if levels < 2 or base < 1:
        raise ValueError(f"levels {levels}, base {base}: expected >= 2 levels and a positive base")
    return tuple(min(base * 2**i, cap) for i in range(levels))


def max_pool(x: jax.Array, strides: Sequence[int]) -> jax.Array:
    """Max-pool with window = stride per spatial axis. x: (B, *S, C), each S_i divisible by its
    stride -> (B, *(S_i / s_i), C). Reshape + max, as ``layers.max_pool_2x2`` (elementwise backward
    instead of select-and-scatter)."""
    b, *spatial, c = x.shape
    shape = [b]
    for n, s in zip(spatial, strides, strict=True):
        shape += [n // s, s]
    return jnp.max(x.reshape(*shape, c), axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


class ConvTransposeStrided(nnx.Module):
    """Transposed convolution with kernel size = stride per axis (2 or 1), kernel (*s, C_in, C_out).

    Numerically equal to ``nnx.ConvTranspose(c_in, c_out, s, strides=s, padding="VALID")`` with
    the same parameters (the kernel enters spatially flipped there). Since the kernel equals the
    stride, output patches do not overlap: out[s*i + a] = x[i] @ kernel[s - 1 - a] + bias, i.e.
    one matmul to prod(s) * C_out channels and a depth-to-space shuffle. XLA's gradient of a 3D
    transposed conv is a zero-dilated convolution that is very slow on GPUs (jax issue 31662);
    this is a plain GEMM forward and backward.

    x: (B, X, Y, Z, C_in) -> (B, sx X, sy Y, sz Z, C_out) (any number of spatial axes).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        strides: Sequence[int],
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.strides = tuple(int(s) for s in strides)
        kernel_init = nnx.initializers.lecun_normal()  # as nnx.ConvTranspose
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (*self.strides, in_features, out_features), param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.strides)
        flip = (slice(None, None, -1),) * n
        kernel = self.kernel[...].astype(self.dtype)[flip]
        c_out = kernel.shape[-1]
        b, *spatial, c_in = x.shape
        # (B, *S, C_in) @ (C_in, prod(s) * C_out) -> (B, *S, *s, C_out) -> interleave S and s.
        weights = jnp.moveaxis(kernel, -2, 0).reshape(c_in, -1)
        y = (x.astype(self.dtype).reshape(-1, c_in) @ weights).reshape(
            b, *spatial, *self.strides, c_out
        )
        order = [0]
        for i in range(n):
            order += [1 + i, 1 + n + i]
        y = jnp.transpose(y, (*order, 2 * n + 1))
        y = y.reshape(b, *(a * s for a, s in zip(spatial, self.strides, strict=True)), c_out)
        return y + self.bias[...].astype(self.dtype)


def check_pools(pools: Sequence[Sequence[int]] | None, levels: int) -> tuple[tuple[int, ...], ...]:
    """Per-level pooling strides (levels - 1 entries of 3 strides in {1, 2}); None: all 2."""
    if pools is None:
        return ((2, 2, 2),) * (levels - 1)
    pools = tuple(tuple(int(s) for s in p) for p in pools)
    if len(pools) != levels - 1 or any(len(p) != 3 or set(p) - {1, 2} for p in pools):
        raise ValueError(
            f"pools {pools}: expected {levels - 1} (one per level below the first) triples of "
            "strides 1 or 2"
        )
    return pools


class UNet3D(nnx.Module):
    """nnU-Net's plain 3D U-Net (the INSTANCE 2022 cascade's stages 1 and 2).

    features: widths per level (default ``features_3d(6)`` = 32, 64, 128, 256, 320, 320).
    pools: per level below the first, the max-pool stride per axis (default 2, 2, 2 everywhere);
    the decoder's transposed convs use the same strides. norm "instance" (default) | "batch",
    activation "leaky_relu" (default; negative slope ``leaky_slope``) | "relu".
    deep_supervision: 1x1x1 heads on the decoder
    levels below full resolution except the deepest (as nnU-Net), whose logits the training loss
    also scores (``losses.deep_supervision_loss``); in training mode the model then returns
    ``(logits, [aux logits, finest first])``, in eval mode always the logits.

    x: (B, X, Y, Z, in_channels), each axis divisible by the product of its pool strides
    -> logits (B, X, Y, Z, out_channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        features: Sequence[int] = features_3d(6),
        *,
        rngs: nnx.Rngs,
        pools: Sequence[Sequence[int]] | None = None,
        norm: str = "instance",
        activation: str = "leaky_relu",
        leaky_slope: float = LEAKY_SLOPE,
        deep_supervision: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        features = check_features(features)
        self.in_channels = in_channels
        self.features = features
        self.pools = check_pools(pools, len(features))
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        block = dict(norm=norm, act=activation, slope=leaky_slope, ndim=3, **dt)
        widths = (in_channels, *features)
        self.encoder = nnx.List(
            [
                DoubleConv(a, b, rngs=rngs, **block)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        ups, blocks = [], []
        for level in range(len(features) - 1, 0, -1):  # deepest first
            deep, shallow = features[level], features[level - 1]
            ups.append(ConvTransposeStrided(deep, shallow, self.pools[level - 1], rngs=rngs, **dt))
            blocks.append(DoubleConv(2 * shallow, shallow, rngs=rngs, **block))
        self.ups = nnx.List(ups)
        self.blocks = nnx.List(blocks)
        self.head = nnx.Conv(features[0], out_channels, (1, 1, 1), rngs=rngs, **dt)
        aux_widths = features[1:-2] if deep_supervision else ()
        self.aux_heads = nnx.List(
            [nnx.Conv(w, out_channels, (1, 1, 1), rngs=rngs, **dt) for w in aux_widths]
        )

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Each input axis must be a multiple of this (the product of its pool strides)."""
        return tuple(math.prod(p[i] for p in self.pools) for i in range(3))

    def check_input(self, x: jax.Array) -> None:
        if x.ndim != 5 or x.shape[-1] != self.in_channels:
            raise ValueError(f"input shape {x.shape}: expected (B, X, Y, Z, {self.in_channels})")
        if any(n % d for n, d in zip(x.shape[1:4], self.divisor, strict=True)):
            raise ValueError(
                f"input shape {x.shape}: X, Y, Z must be multiples of {self.divisor} (the "
                f"product of the pool strides {self.pools} per axis)"
            )

    def __call__(
        self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        """``rngs`` is accepted and ignored (no dropout), as the 2D U-Net does."""
        del rngs
        self.check_input(x)
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = max_pool(x, self.pools[level - 1])
            x = block(x, train=train)
            skips.append(x)
        x = skips.pop()
        levels = []
        for up, block, skip in zip(self.ups, self.blocks, skips[::-1], strict=True):
            x = block(jnp.concatenate([up(x), skip], axis=-1), train=train)
            levels.append(x)
        logits = self.head(levels[-1])
        if not (train and len(self.aux_heads)):
            return logits
        finer_first = levels[-2::-1][: len(self.aux_heads)]
        return logits, [head(y) for head, y in zip(self.aux_heads, finer_first, strict=True)]

"""2D U-Net and residual U-Net (Flax NNX), the segmentation models of methods 1 and 3.

Both map an image batch ``x: (B, H, W, C_in)`` float to ``logits: (B, H, W, C_out)``. The
models stop at logits: ``jax.nn.sigmoid(logits)`` is the model's probability output (the papers'
final "1x1 conv + sigmoid"); the sigmoid lives in the losses and in inference because
``log(sigmoid(z))`` computed from ``z`` is numerically stabler than from the probability.

BatchNorm (epsilon 1e-3 as Keras, running-average momentum 0.9, see BN_MOMENTUM) uses batch
statistics when ``train=True`` (and updates its running averages) and the running
averages otherwise. Convolutions followed by BatchNorm have no bias: BN's mean subtraction cancels
it exactly (its gradient is 0), and BN's own offset plays its role.

Weights keep the standard layouts (conv kernels HWIO), so checkpoints stay portable.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Running-average momentum of BatchNorm (PyTorch's default, momentum=0.1 there). Keras' 0.99
# averages over ~100 steps; on short runs with a fast-moving model (lr 3e-3, 18 BN layers) those
# averages lag so far behind that eval-mode predictions collapse to empty while train-mode ones
# are right (measured on the demo: held-out lesion Dice 0.0 with 0.99 at step 600).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2. x: (B, H, W, C) with H, W even -> (B, H/2, W/2, C).

    Written as reshape + max rather than ``reduce_window``: the forward is identical, and the
    backward is an elementwise mask instead of XLA's select-and-scatter, which is slow on CPU.
    (At ties the gradient is split among the tied inputs instead of sent to the first one; ties
    only happen here at exact zeros after ReLU, where the ReLU gradient is 0 anyway.)
    """
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _channel_sums(*xs: jax.Array) -> tuple[jax.Array, ...]:
    """Per-channel sums over all other axes, float32. Each x: (..., C) -> (C,)."""
    return tuple(jnp.sum(x, axis=tuple(range(x.ndim - 1)), dtype=jnp.float32) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_relu_train(x, scale, bias, epsilon):
    """relu(BatchNorm(x)) with batch statistics; returns (y, batch mean, batch variance).

    x: (B, H, W, C); scale, bias: (C,). Same math as ``nnx.BatchNorm`` (biased variance as
    E[x^2] - E[x]^2, clipped at 0) followed by ReLU. The hand-written backward reads x and the
    incoming gradient twice (one pass for the two per-channel sums, one for dx) and writes only
    dx; autodiff of the unfused ops wrote ~4 full-size intermediates per layer, and at
    8 x 256 x 256 x 32 took 260 ms against 140 ms for this (fwd + bwd, measured). The ReLU mask
    is recomputed from x instead of stored. The returned statistics carry no gradient.
    """
    outputs, _ = _bn_relu_fwd(x, scale, bias, epsilon)
    return outputs


def _bn_relu_fwd(x, scale, bias, epsilon):
    n = x.size // x.shape[-1]
    total, total_sq = _channel_sums(x, jnp.square(x.astype(jnp.float32)))
    mean = total / n
    var = jnp.maximum(total_sq / n - jnp.square(mean), 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    a = scale.astype(jnp.float32) * rstd
    b = bias.astype(jnp.float32) - mean * a
    y = jax.nn.relu(x * a + b).astype(x.dtype)
    return (y, mean, var), (x, mean, rstd, a, b)


def _bn_relu_bwd(epsilon, residuals, cotangents):
    del epsilon
    x, mean, rstd, a, b = residuals
    g = cotangents[0]  # the statistics' cotangents are zero: they only feed BatchStat
    n = x.size // x.shape[-1]
    g = jnp.where(x * a + b > 0, g, 0).astype(jnp.float32)
    sum_g, sum_gx = _channel_sums(g, g * x)
    sum_g_xhat = (sum_gx - mean * sum_g) * rstd  # sum(g * (x - mean) * rstd)
    dx = a * (g - sum_g / n - (x - mean) * rstd * (sum_g_xhat / n))
    return dx.astype(x.dtype), sum_g_xhat, sum_g


_bn_relu_train.defvjp(lambda x, s, b, e: _bn_relu_fwd(x, s, b, e), _bn_relu_bwd)


def batch_norm_relu(bn: nnx.BatchNorm, x: jax.Array, *, train: bool) -> jax.Array:
    """``relu(bn(x, use_running_average=not train))`` with a fused train-mode backward.

    Uses ``bn``'s parameters and statistics (and updates its running averages in train mode as
    ``nnx.BatchNorm`` does), so the parameter tree and checkpoints are those of nnx.BatchNorm.
    x: (B, H, W, C) -> (B, H, W, C).
    """
    scale, bias = bn.scale[...], bn.bias[...]
    if not train:
        a = scale * jax.lax.rsqrt(bn.var[...] + bn.epsilon)
        return jax.nn.relu(x * a + (bias - bn.mean[...] * a)).astype(x.dtype)
    y, mean, var = _bn_relu_train(x, scale, bias, bn.epsilon)
    m = bn.momentum
    bn.mean[...] = m * bn.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
    bn.var[...] = m * bn.var[...] + (1 - m) * jax.lax.stop_gradient(var)
    return y


class ConvTranspose2x2(nnx.Module):
    """2x2 transposed convolution with stride 2 (upsampling by 2), HWIO kernel (2, 2, C_in, C_out).

    Numerically equal to ``nnx.ConvTranspose(c_in, c_out, (2, 2), strides=(2, 2),
    padding="VALID")`` with the same parameters (``lax.conv_transpose`` without kernel
    transposition correlates the zero-dilated input, so the kernel enters spatially flipped).
    Because the kernel size equals the stride, the output patches do not overlap: output pixel
    (2h + i, 2w + j) = x[h, w] @ kernel[1 - i, 1 - j] + bias.
    So it is one matmul to 4 * C_out channels followed by a depth-to-space shuffle, which XLA runs
    as a plain GEMM instead of a zero-dilated convolution (4x fewer FLOPs forward and backward).

    x: (B, H, W, C_in) -> (B, 2H, 2W, C_out).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        # Same initializers as nnx.ConvTranspose (lecun_normal over the HWIO fan-in, zero bias).
        kernel_init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (2, 2, in_features, out_features), param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        kernel = self.kernel[...].astype(self.dtype)[::-1, ::-1]
        c_out = kernel.shape[-1]
        # (B, H, W, C_in) x (2, 2, C_in, C_out) -> (B, H, 2, W, 2, C_out): no overlap, one GEMM.
        y = jnp.einsum("bhwc,ijcd->bhiwjd", x.astype(self.dtype), kernel)
        y = y.reshape(b, 2 * h, 2 * w, c_out)
        return y + self.bias[...].astype(self.dtype)


class ConvBNReLU(nnx.Module):
    """conv3x3 ('SAME', no bias) -> BN -> ReLU. x: (B, H, W, C_in) -> (B, H/s, W/s, C_out)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int = 1,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.conv = nnx.Conv(
            in_features,
            out_features,
            (3, 3),
            strides=strides,
            padding="SAME",
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.bn = _batch_norm(out_features, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return batch_norm_relu(self.bn, self.conv(x), train=train)


def _batch_norm(features: int, *, rngs: nnx.Rngs, dtype, param_dtype) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class DoubleConv(nnx.Module):
    """The baseline block: 2 x (conv3x3 + BN + ReLU). x: (B, H, W, C_in) -> (B, H, W, C_out)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, **dt):
        self.first = ConvBNReLU(in_features, out_features, rngs=rngs, **dt)
        self.second = ConvBNReLU(out_features, out_features, rngs=rngs, **dt)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.second(self.first(x, train=train), train=train)


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
        self.bn1 = _batch_norm(out_features, rngs=rngs, **dt)
        self.shortcut = nnx.Conv(
            in_features, out_features, (1, 1), strides=strides, padding="SAME", rngs=rngs, **dt
        )
        self.bn_out = _batch_norm(out_features, rngs=rngs, **dt)
        # No rngs here: the dropout key comes at call time, so the model state holds only
        # parameters and BatchNorm statistics.
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        main = batch_norm_relu(self.bn1, self.conv2(self.conv1(x)), train=train)
        y = self.bn_out(main + self.shortcut(x), use_running_average=not train)
        return self.dropout(y, deterministic=not train, rngs=rngs)


def _check_features(features: Sequence[int]) -> tuple[int, ...]:
    features = tuple(int(f) for f in features)
    if len(features) < 2 or any(f < 1 for f in features):
        raise ValueError(f"features {features}: expected >= 2 positive widths, e.g. (32, 64)")
    return features


def _check_input(x: jax.Array, in_channels: int, levels: int) -> None:
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(f"input shape {x.shape}: expected (B, H, W, {in_channels})")
    factor = 2 ** (levels - 1)
    h, w = x.shape[1:3]
    if h % factor or w % factor:
        raise ValueError(
            f"input shape {x.shape}: H and W must be divisible by 2**(len(features)-1) = {factor}"
        )


class _Decoder(nnx.Module):
    """Baseline decoder: per level, up 2x2 -> concat skip -> 2 x (conv3x3 + BN + ReLU)."""

    def __init__(self, features: tuple[int, ...], *, rngs: nnx.Rngs, **dt):
        ups, blocks = [], []
        for deep, shallow in zip(features[:0:-1], features[-2::-1], strict=True):
            ups.append(ConvTranspose2x2(deep, shallow, rngs=rngs, **dt))
            blocks.append(DoubleConv(2 * shallow, shallow, rngs=rngs, **dt))
        self.ups = nnx.List(ups)
        self.blocks = nnx.List(blocks)

    def __call__(self, x: jax.Array, skips: list[jax.Array], *, train: bool) -> jax.Array:
        """x: bottleneck output; skips: encoder outputs from deepest to shallowest."""
        for up, block, skip in zip(self.ups, self.blocks, skips, strict=True):
            x = block(jnp.concatenate([up(x), skip], axis=-1), train=train)
        return x


class UNet2D(nnx.Module):
    """Baseline 2D U-Net (filters 32-64-128-256-512 by default).

    Encoder: ``len(features)`` levels of 2 x (conv3x3 'SAME' + BN + ReLU), a 2x2 max-pool
    between levels; the last level is the bottleneck. Decoder: per level a 2x2 stride-2
    transposed conv to the level's width, concatenation with the skip, 2 x (conv3x3 + BN + ReLU).
    Head: 1x1 conv to ``out_channels`` logits.

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
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        features = _check_features(features)
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        self.in_channels = in_channels
        self.features = features
        widths = (in_channels, *features)
        self.encoder = nnx.List(
            [
                DoubleConv(a, b, rngs=rngs, **dt)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.decoder = _Decoder(features, rngs=rngs, **dt)
        self.head = nnx.Conv(features[0], out_channels, (1, 1), rngs=rngs, **dt)

    def __call__(
        self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """``rngs`` is accepted and ignored (no dropout) so callers treat both models alike."""
        del rngs
        _check_input(x, self.in_channels, len(self.features))
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = max_pool_2x2(x)
            x = block(x, train=train)
            skips.append(x)
        x = self.decoder(skips.pop(), skips[::-1], train=train)
        return self.head(x)

    def bottleneck_features(self, x: jax.Array) -> jax.Array:
        """Eval-mode output of the deepest encoder level (the bottleneck), for feature plots.

        x: (B, H, W, in_channels) -> (B, H / 2**(L-1), W / 2**(L-1), features[-1]).
        """
        _check_input(x, self.in_channels, len(self.features))
        for level, block in enumerate(self.encoder):
            x = block(max_pool_2x2(x) if level > 0 else x, train=False)
        return x


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
        features = _check_features(features)
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
        self.decoder = _Decoder(features, rngs=rngs, **dt)
        self.head = nnx.Conv(features[0], out_channels, (1, 1), rngs=rngs, **dt)

    def __call__(
        self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        _check_input(x, self.in_channels, len(self.features))
        skips = []
        for block in self.encoder:
            x = block(x, train=train, rngs=rngs)
            skips.append(x)
        x = self.bottleneck(max_pool_2x2(x), train=train)
        x = self.decoder(x, skips[::-1], train=train)
        return self.head(x)

    def bottleneck_features(self, x: jax.Array) -> jax.Array:
        """Eval-mode output of the bottleneck (deepest level), for feature plots.

        x: (B, H, W, in_channels) -> (B, H / 2**(L-1), W / 2**(L-1), features[-1]).
        """
        _check_input(x, self.in_channels, len(self.features))
        for block in self.encoder:
            x = block(x, train=False, rngs=None)
        return self.bottleneck(max_pool_2x2(x), train=False)


_MODELS = {"unet2d": UNet2D, "resunet2d": ResUNet2D}


def build_model(
    name: str,
    in_channels: int,
    out_channels: int = 1,
    features: Sequence[int] = (32, 64, 128, 256, 512),
    *,
    rngs: nnx.Rngs,
    **kw,
) -> nnx.Module:
    """The model named "unet2d" or "resunet2d"; ``kw`` goes to its constructor (dtype, dropout)."""
    try:
        cls = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(_MODELS)}") from None
    return cls(in_channels, out_channels, features, rngs=rngs, **kw)

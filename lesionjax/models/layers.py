"""Building blocks of the U-Nets (Flax NNX): conv + norm + activation (BatchNorm or
InstanceNorm, ReLU or LeakyReLU), the fused BN-ReLU, max-pooling, the 2x2 transposed conv as one
matmul, the double-conv block and the decoder.

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


class Conv3x3x3(nnx.Module):
    """3x3x3 convolution, stride 1, 'SAME', kernel XYZIO (3, 3, 3, C_in, C_out) initialized as
    ``nnx.Conv``'s (lecun_normal over the 27 * C_in fan-in). x: (B, X, Y, Z, C_in) -> (B, X, Y,
    Z, C_out).

    On CPU it runs as one 2D convolution: the three x-shifted copies of the input are stacked
    along channels, x is folded into the batch (free: it is next to it), and a 3x3 conv over
    (Y, Z) with the kernel reshaped to (3, 3, 3 * C_in, C_out) sums the 27 taps. XLA:CPU's
    native 3D convolution was 3-8x slower than PyTorch's (measured at 2 x 48 x 48 x 16 x 8:
    forward 30 ms vs 4.5, gradient 220 vs 28; at 2 x 64^3 x 32: 960 vs 186 and 4800 vs 930);
    this form took 5.2 / 16 ms and 275 / 795 ms (benchmarks/RESULTS.md). Other backends (cuDNN)
    run the native 3D convolution. Both compute the same sums (tested against ``lax``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = False,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        kernel_init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (3, 3, 3, in_features, out_features), param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array, *, impl: str | None = None) -> jax.Array:
        """impl: "stacked" (the CPU form), "native" (lax 3D conv), None: by backend."""
        impl = impl or ("stacked" if jax.default_backend() == "cpu" else "native")
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        if impl == "native":
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1, 1), "SAME", dimension_numbers=("NXYZC", "XYZIO", "NXYZC")
            )
        elif impl == "stacked":
            b, nx, ny, nz, c = x.shape
            padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
            stacked = jnp.concatenate([padded[:, k : k + nx] for k in range(3)], axis=-1)
            # (kx, ky, kz, C, O) -> (ky, kz, kx * C, O): channel block k holds tap kx = k.
            k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, -1)
            y = jax.lax.conv_general_dilated(
                stacked.reshape(b * nx, ny, nz, 3 * c),
                k2,
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            ).reshape(b, nx, ny, nz, -1)
        else:
            raise ValueError(f"impl {impl!r}: expected 'stacked' or 'native'")
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


NORMS = ("batch", "instance")
DOWNSAMPLING = ("maxpool", "strided")
ACTIVATIONS = ("relu", "leaky_relu")
LEAKY_SLOPE = 0.01  # nnU-Net's LeakyReLU (the default; MONAI's BasicUNet uses 0.1)
# InstanceNorm epsilon: 1e-3 as BN_EPSILON, not PyTorch's 1e-5. A slice that is all air is a
# constant map, where InstanceNorm multiplies gradients by 1 / sqrt(eps): 316 per layer at 1e-5,
# which through LeakyReLU (slope 0.01) overflowed float32 within the first step on the demo;
# 32 per layer at 1e-3 decays through LeakyReLU instead.
IN_EPSILON = 1e-3


def activation(name: str, x: jax.Array, slope: float = LEAKY_SLOPE) -> jax.Array:
    """slope: the negative-side slope of "leaky_relu"."""
    if name == "relu":
        return jax.nn.relu(x)
    if name == "leaky_relu":
        return jax.nn.leaky_relu(x, slope)
    raise ValueError(f"activation {name!r}: expected one of {ACTIVATIONS}")


class ConvNormAct(nnx.Module):
    """conv3x3 ('SAME', no bias) -> norm -> activation. x: (B, H, W, C_in) -> (B, H/s, W/s, C_out).

    ``ndim=3``: the same with a 3x3x3 conv on (B, X, Y, Z, C) (InstanceNorm then normalizes each
    sample and channel over the three spatial axes; BatchNorm over the batch and all three).

    norm: "batch" (BatchNorm, batch statistics in training, running averages in eval mode; with
    ReLU it runs the fused ``batch_norm_relu``) or "instance" (InstanceNorm: each sample and
    channel normalized over H and W, the same in training and eval, no running statistics).
    The conv has no bias either way: the norm's mean subtraction cancels it.
    act: "relu" or "leaky_relu" (negative slope ``slope``, default ``LEAKY_SLOPE``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int | Sequence[int] = 1,
        norm: str = "batch",
        act: str = "relu",
        slope: float = LEAKY_SLOPE,
        ndim: int = 2,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r}: expected one of {NORMS}")
        if act not in ACTIVATIONS:
            raise ValueError(f"activation {act!r}: expected one of {ACTIVATIONS}")
        if ndim == 3 and strides in (1, (1, 1, 1)):
            self.conv = Conv3x3x3(
                in_features, out_features, rngs=rngs, dtype=dtype, param_dtype=param_dtype
            )
        else:
            self.conv = nnx.Conv(
                in_features,
                out_features,
                (3,) * ndim,
                strides=strides,
                padding="SAME",
                use_bias=False,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
        self.act = act
        self.slope = float(slope)
        if norm == "batch":
            self.bn = batch_norm(out_features, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        else:
            self.instance_norm = nnx.InstanceNorm(
                out_features,
                epsilon=IN_EPSILON,
                use_fast_variance=False,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = self.conv(x)
        if hasattr(self, "bn"):
            if self.act == "relu":
                return batch_norm_relu(self.bn, y, train=train)
            return activation(self.act, self.bn(y, use_running_average=not train), self.slope)
        return activation(self.act, self.instance_norm(y), self.slope)


def batch_norm(features: int, *, rngs: nnx.Rngs, dtype, param_dtype) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class DoubleConv(nnx.Module):
    """The baseline block: 2 x (conv3x3 + norm + activation), the first conv with ``strides``.

    x: (B, H, W, C_in) -> (B, H/s, W/s, C_out). ``norm``/``act``/``slope``/``ndim`` as
    ``ConvNormAct``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int | Sequence[int] = 1,
        norm: str = "batch",
        act: str = "relu",
        slope: float = LEAKY_SLOPE,
        ndim: int = 2,
        rngs: nnx.Rngs,
        **dt,
    ):
        kw = dict(norm=norm, act=act, slope=slope, ndim=ndim, rngs=rngs, **dt)
        self.first = ConvNormAct(in_features, out_features, strides=strides, **kw)
        self.second = ConvNormAct(out_features, out_features, **kw)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.second(self.first(x, train=train), train=train)


def check_features(features: Sequence[int]) -> tuple[int, ...]:
    features = tuple(int(f) for f in features)
    if len(features) < 2 or any(f < 1 for f in features):
        raise ValueError(f"features {features}: expected >= 2 positive widths, e.g. (32, 64)")
    return features


def check_input(x: jax.Array, in_channels: int, levels: int) -> None:
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(f"input shape {x.shape}: expected (B, H, W, {in_channels})")
    factor = 2 ** (levels - 1)
    h, w = x.shape[1:3]
    if h % factor or w % factor:
        raise ValueError(
            f"input shape {x.shape}: H and W must be divisible by 2**(len(features)-1) = {factor}"
        )


class UNetDecoder(nnx.Module):
    """Baseline decoder: per level, up 2x2 -> concat skip -> 2 x (conv3x3 + norm + activation)."""

    def __init__(
        self,
        features: tuple[int, ...],
        *,
        norm: str = "batch",
        act: str = "relu",
        slope: float = LEAKY_SLOPE,
        rngs: nnx.Rngs,
        **dt,
    ):
        ups, blocks = [], []
        for deep, shallow in zip(features[:0:-1], features[-2::-1], strict=True):
            ups.append(ConvTranspose2x2(deep, shallow, rngs=rngs, **dt))
            blocks.append(
                DoubleConv(2 * shallow, shallow, norm=norm, act=act, slope=slope, rngs=rngs, **dt)
            )
        self.ups = nnx.List(ups)
        self.blocks = nnx.List(blocks)

    def __call__(self, x: jax.Array, skips: list[jax.Array], *, train: bool) -> list[jax.Array]:
        """x: bottleneck output; skips: encoder outputs from deepest to shallowest. Returns the
        output of every decoder level, deepest first (the last one is at full resolution)."""
        outputs = []
        for up, block, skip in zip(self.ups, self.blocks, skips, strict=True):
            x = block(jnp.concatenate([up(x), skip], axis=-1), train=train)
            outputs.append(x)
        return outputs

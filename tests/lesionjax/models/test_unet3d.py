"""UNet3D: shapes, pooling per axis, the transposed conv as a matmul, InstanceNorm, deep
supervision, gradients, and the registry."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lesionjax.losses import deep_supervision_loss, dice_bce_loss, downsample_mask
from lesionjax.models import layers
from lesionjax.models.registry import model_from_config
from lesionjax.models.unet3d import (
    ConvTransposeStrided,
    UNet3D,
    check_pools,
    features_3d,
    max_pool,
)

SMALL = (4, 8, 16)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _output(model_kw, x_shape, train=False):
    def run():
        model = UNet3D(x_shape[-1], 1, SMALL, rngs=nnx.Rngs(0), **model_kw)
        return model(jnp.zeros(x_shape), train=train)

    return jax.eval_shape(run)


def test_features_are_nnunets_doubling_capped_at_320():
    assert features_3d(6) == (32, 64, 128, 256, 320, 320)
    assert features_3d(3, base=16) == (16, 32, 64)


def test_output_has_the_input_resolution():
    assert _output({}, (2, 16, 12, 8, 3)).shape == (2, 16, 12, 8, 1)


def test_an_unpooled_axis_keeps_its_size_through_every_level():
    # z is never pooled: an odd number of slices is fine, an odd X is not (X is pooled twice).
    pools = ((2, 2, 1), (2, 2, 1))
    assert _output({"pools": pools}, (1, 8, 8, 3, 1)).shape == (1, 8, 8, 3, 1)
    with pytest.raises(ValueError, match=r"multiples of \(4, 4, 1\)"):
        _output({"pools": pools}, (1, 6, 8, 3, 1))
    with pytest.raises(ValueError, match=r"multiples of \(4, 4, 4\)"):
        _output({}, (1, 8, 8, 3, 1))


def test_pools_are_checked():
    assert check_pools(None, 3) == ((2, 2, 2), (2, 2, 2))
    with pytest.raises(ValueError, match="one per level"):
        check_pools(((2, 2, 2),), 3)
    with pytest.raises(ValueError, match="strides 1 or 2"):
        check_pools(((2, 2, 3), (2, 2, 2)), 3)


def test_max_pool_per_axis_matches_a_loop():
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 3, 2)).astype(np.float32)
    got = np.asarray(max_pool(jnp.asarray(x), (2, 3, 1)))
    want = np.zeros((2, 2, 2, 3, 2), np.float32)
    for i in range(2):
        for j in range(2):
            want[:, i, j] = x[:, 2 * i : 2 * i + 2, 3 * j : 3 * j + 3].max(axis=(1, 2))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("strides", [(2, 2, 2), (2, 2, 1), (1, 2, 1)])
def test_transposed_conv_equals_lax_conv_transpose(strides):
    up = ConvTransposeStrided(3, 5, strides, rngs=nnx.Rngs(0))
    up.bias[...] = _normal(2, (5,))
    x = _normal(1, (2, 3, 4, 2, 3))
    got = up(x)
    want = (
        jax.lax.conv_transpose(
            x,
            up.kernel[...],
            strides,
            "VALID",
            dimension_numbers=("NXYZC", "XYZIO", "NXYZC"),
        )
        + up.bias[...]
    )
    assert got.shape == (2, 3 * strides[0], 4 * strides[1], 2 * strides[2], 5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # And nnx's own layer with the same parameters.
    ref = nnx.ConvTranspose(3, 5, strides, strides=strides, padding="VALID", rngs=nnx.Rngs(0))
    ref.kernel[...] = up.kernel[...]
    ref.bias[...] = up.bias[...]
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


def test_instance_norm_block_matches_a_reference_computation():
    block = layers.ConvNormAct(2, 3, norm="instance", act="leaky_relu", ndim=3, rngs=nnx.Rngs(0))
    x = _normal(3, (2, 5, 4, 3, 2))
    got = np.asarray(block(x, train=True))
    y = jax.lax.conv_general_dilated(
        x, block.conv.kernel[...], (1, 1, 1), "SAME", dimension_numbers=("NXYZC", "XYZIO", "NXYZC")
    )
    y = np.asarray(y, np.float64)
    mean = y.mean(axis=(1, 2, 3), keepdims=True)
    var = y.var(axis=(1, 2, 3), keepdims=True)
    z = (y - mean) / np.sqrt(var + layers.IN_EPSILON)
    want = np.where(z > 0, z, layers.LEAKY_SLOPE * z)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Same in eval mode: no running statistics.
    np.testing.assert_allclose(np.asarray(block(x, train=False)), got, rtol=1e-6)


def test_deep_supervision_heads_follow_the_per_axis_pools():
    pools = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    model_kw = {"pools": pools, "deep_supervision": True}

    def run():
        model = UNet3D(1, 1, (4, 8, 16, 32, 32), rngs=nnx.Rngs(0), **model_kw)
        return model(jnp.zeros((1, 16, 16, 8, 1)), train=True)

    logits, aux = jax.eval_shape(run)
    assert logits.shape == (1, 16, 16, 8, 1)
    # Heads at 1/2 (z unpooled) and 1/4 (z pooled once); none on the deepest decoder level (1/8).
    assert [a.shape for a in aux] == [(1, 8, 8, 8, 1), (1, 4, 4, 4, 1)]
    target = np.zeros((1, 16, 16, 8, 1), np.float32)
    target[0, 5, 6, 3] = 1
    coarse = np.asarray(downsample_mask(jnp.asarray(target), (4, 4, 2)))
    assert coarse.shape == (1, 4, 4, 4, 1) and coarse[0, 1, 1, 1, 0] == 1 and coarse.sum() == 1


def test_gradients_are_finite_and_reach_every_parameter():
    rngs = nnx.Rngs(params=jax.random.key(0, impl="rbg"))  # threefry init compiles per shape
    model = UNet3D(2, 1, SMALL, rngs=rngs, pools=((2, 2, 1), (2, 2, 2)), deep_supervision=True)
    x = _normal(4, (2, 8, 8, 4, 2))
    target = (x[..., :1] > 1.0).astype(jnp.float32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        m = nnx.merge(graphdef, p, rest)
        return deep_supervision_loss(dice_bce_loss, m(x, train=True), target)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    # Every parameter gets a gradient (the aux heads too); norms' biases get one through the loss.
    assert sum(float(jnp.abs(g).sum()) == 0.0 for g in leaves) == 0


def test_registry_builds_the_3d_unet_with_its_pools():
    m = ml_collections.ConfigDict(
        {
            "name": "unet3d",
            "features": [4, 8, 16],
            "out_channels": 1,
            "norm": "instance",
            "activation": "leaky_relu",
            "deep_supervision": False,
            "pools": [[2, 2, 1], [2, 2, 2]],
            "output_prior": 0.01,
        }
    )
    model = model_from_config(m, in_channels=3, rngs=nnx.Rngs(params=jax.random.key(0, impl="rbg")))
    assert isinstance(model, UNet3D) and model.pools == ((2, 2, 1), (2, 2, 2))
    np.testing.assert_allclose(float(model.head.bias[0]), np.log(0.01 / 0.99), rtol=1e-6)
    assert model(jnp.zeros((1, 8, 8, 2, 3))).shape == (1, 8, 8, 2, 1)


@pytest.mark.parametrize("impl", ["stacked", "native"])
def test_conv3x3x3_equals_lax_conv_and_nnx_conv(impl):
    conv = layers.Conv3x3x3(3, 4, use_bias=True, rngs=nnx.Rngs(0))
    conv.bias[...] = _normal(5, (4,))
    x = _normal(6, (2, 5, 6, 7, 3))
    want = (
        jax.lax.conv_general_dilated(
            x, conv.kernel[...], (1, 1, 1), "SAME", dimension_numbers=("NXYZC", "XYZIO", "NXYZC")
        )
        + conv.bias[...]
    )
    np.testing.assert_allclose(np.asarray(conv(x, impl=impl)), np.asarray(want), atol=1e-5)
    ref = nnx.Conv(3, 4, (3, 3, 3), padding="SAME", rngs=nnx.Rngs(0))
    ref.kernel[...], ref.bias[...] = conv.kernel[...], conv.bias[...]
    np.testing.assert_allclose(np.asarray(conv(x, impl=impl)), np.asarray(ref(x)), atol=1e-5)
    # Gradients agree too (the stacked form's backward is XLA's 2D conv backward).
    graphdef, params = nnx.split(conv)

    def loss(p, xx, which):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, p)(xx, impl=which)))

    for wrt in (0, 1):
        g_s = jax.grad(loss, argnums=wrt)(params, x, "stacked")
        g_n = jax.grad(loss, argnums=wrt)(params, x, "native")
        for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_n), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

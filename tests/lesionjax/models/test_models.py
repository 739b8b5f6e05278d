"""UNet2D / ResUNet2D: shapes, size checks, BatchNorm modes, dropout, and rewritten layers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lesionjax.models import layers
from lesionjax.models.registry import build_model
from lesionjax.models.resunet2d import ResUNet2D
from lesionjax.models.unet2d import UNet2D

SMALL = (4, 8, 16)


def _normal(seed: int, shape: tuple[int, ...]) -> jnp.ndarray:
    # NumPy draws: jax.random would compile a threefry kernel per shape (seconds on XLA:CPU).
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _rbg(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _output_shape(cls, x_shape, features=SMALL, out_channels=1, **kw):
    """Output shape of a freshly built model, traced abstractly (no compilation)."""

    def run():
        model = cls(x_shape[-1], out_channels, features, rngs=nnx.Rngs(0), **kw)
        return model(jnp.zeros(x_shape), train=True, rngs=nnx.Rngs(dropout=_rbg(1)))

    return jax.eval_shape(run).shape


def _build(cls, in_channels=1, out_channels=1, features=SMALL, **kw):
    """A concrete model whose initialization ran in one jit (fast to compile with RBG keys)."""

    def make(key):
        return cls(in_channels, out_channels, features, rngs=nnx.Rngs(params=key), **kw)

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(_rbg(0))))
    state = jax.jit(lambda k: nnx.state(make(k)))(_rbg(0))
    return nnx.merge(graphdef, state)


@nnx.jit(static_argnames="train")
def _forward(model, x, train, rngs=None):
    return model(x, train=train, rngs=rngs)


@pytest.mark.parametrize("cls", [UNet2D, ResUNet2D])
@pytest.mark.parametrize("features", [(4, 8), (4, 8, 16), (2, 4, 8, 16, 32)])
def test_output_shape_equals_input_resolution(cls, features):
    assert _output_shape(cls, (2, 32, 32, 3), features, out_channels=2) == (2, 32, 32, 2)


@pytest.mark.parametrize("cls", [UNet2D, ResUNet2D])
def test_non_square_input(cls):
    assert _output_shape(cls, (1, 16, 48, 1)) == (1, 16, 48, 1)


@pytest.mark.parametrize("cls", [UNet2D, ResUNet2D])
def test_size_not_divisible_by_downsampling_raises(cls):
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(len\\(features\\)-1\\) = 4"):
        _output_shape(cls, (1, 30, 32, 1))


def test_wrong_channel_count_raises():
    def run():
        return UNet2D(1, 1, SMALL, rngs=nnx.Rngs(0))(jnp.zeros((1, 32, 32, 3)))

    with pytest.raises(ValueError, match="expected \\(B, H, W, 1\\)"):
        jax.eval_shape(run)


def test_default_unet_is_the_paper_baseline():
    model = nnx.eval_shape(lambda: UNet2D(1, rngs=nnx.Rngs(0)))
    assert model.features == (32, 64, 128, 256, 512)
    assert model.encoder[0].first.conv.kernel.shape == (3, 3, 1, 32)  # HWIO
    assert model.encoder[4].second.conv.kernel.shape == (3, 3, 512, 512)
    assert model.decoder.ups[0].kernel.shape == (2, 2, 512, 256)
    assert model.decoder.blocks[-1].first.conv.kernel.shape == (3, 3, 64, 32)
    assert model.head.kernel.shape == (1, 1, 32, 1)


@pytest.fixture(scope="module")
def unet():
    return _build(UNet2D)


def test_eval_mode_is_deterministic_and_leaves_batch_stats(unet):
    model = unet
    x = _normal(1, (2, 32, 32, 1))
    before = nnx.state(model, nnx.BatchStat)
    y1 = _forward(model, x, False)
    y2 = _forward(model, x, False)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    after = nnx.state(model, nnx.BatchStat)
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_train_mode_updates_batch_stats(unet):
    model = nnx.clone(unet)
    x = _normal(1, (2, 32, 32, 1))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    _forward(model, x, True)
    after = nnx.state(model, nnx.BatchStat)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
    assert all(jax.tree.leaves(changed))


def test_resunet_dropout_only_in_train_mode():
    model = _build(ResUNet2D, features=(4, 8))
    x = _normal(1, (2, 32, 32, 1))
    a = _forward(model, x, True, nnx.Rngs(dropout=_rbg(0)))
    b = _forward(model, x, True, nnx.Rngs(dropout=_rbg(1)))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    e1 = _forward(model, x, False, nnx.Rngs(dropout=_rbg(0)))
    e2 = _forward(model, x, False, None)
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))


def test_build_model_names():
    for name, cls in (("unet2d", UNet2D), ("resunet2d", ResUNet2D)):
        model = nnx.eval_shape(lambda n=name: build_model(n, 1, 1, SMALL, rngs=nnx.Rngs(0)))
        assert type(model) is cls
    with pytest.raises(ValueError, match="model.name='vnet': expected one of"):
        build_model("vnet", 1, 1, SMALL, rngs=nnx.Rngs(0))


def _model_config(**kw):
    import ml_collections

    from lesionjax.config_defaults import segmentation_config

    m = segmentation_config().model
    m.features = SMALL
    for k, v in kw.items():
        m[k] = v
    return ml_collections.ConfigDict(m.to_dict())


def test_model_from_config_passes_only_the_options_the_model_takes():
    from lesionjax.models.registry import model_from_config

    # unet2d takes no dropout: the config's dropout value is not passed to it.
    unet = nnx.eval_shape(lambda: model_from_config(_model_config(), 2, rngs=nnx.Rngs(0)))
    assert type(unet) is UNet2D and unet.in_channels == 2
    res = nnx.eval_shape(
        lambda: model_from_config(
            _model_config(name="resunet2d", dropout=0.25), 2, rngs=nnx.Rngs(0)
        )
    )
    assert type(res) is ResUNet2D
    assert {b.dropout.rate for b in res.encoder} == {0.25}


def test_the_leaky_slope_of_a_config_reaches_every_conv_block():
    from lesionjax.models.registry import model_from_config

    m = _model_config(norm="instance", activation="leaky_relu", leaky_slope=0.1)
    unet = nnx.eval_shape(lambda: model_from_config(m, 1, rngs=nnx.Rngs(0)))
    blocks = [b for _, b in nnx.iter_graph(unet) if isinstance(b, layers.ConvNormAct)]
    assert len(blocks) == 4 * len(SMALL) - 2  # 2 per encoder level, 2 per decoder level
    assert {b.slope for b in blocks} == {0.1}
    default = nnx.eval_shape(lambda: model_from_config(_model_config(), 1, rngs=nnx.Rngs(0)))
    assert {b.slope for _, b in nnx.iter_graph(default) if isinstance(b, layers.ConvNormAct)} == {
        0.01
    }


def test_output_prior_sets_the_head_bias():
    from lesionjax.models.registry import model_from_config

    model = model_from_config(_model_config(output_prior=0.01), 1, rngs=nnx.Rngs(params=_rbg(0)))
    np.testing.assert_allclose(np.asarray(model.head.bias[...]), np.log(0.01 / 0.99), rtol=1e-6)


def test_more_than_one_output_channel_is_refused_at_config_time():
    from lesionjax.models.registry import check_model_config

    with pytest.raises(ValueError, match="model.out_channels=2: the segmentation losses"):
        check_model_config(_model_config(out_channels=2))


def test_transposed_conv_equals_nnx_conv_transpose():
    reference = nnx.ConvTranspose(
        3, 5, (2, 2), strides=(2, 2), padding="VALID", rngs=nnx.Rngs(params=_rbg(1))
    )
    reference.bias[...] = _normal(2, (5,))
    layer = layers.ConvTranspose2x2(3, 5, rngs=nnx.Rngs(params=_rbg(3)))
    layer.kernel[...] = reference.kernel[...]
    layer.bias[...] = reference.bias[...]
    x = _normal(0, (2, 4, 6, 3))
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(reference(x)), atol=1e-5)


def test_max_pool_equals_reduce_window_forward_and_gradient():
    # Continuous random values: no ties, where both gradients are defined the same.
    x = _normal(0, (2, 8, 6, 3))
    pooled = layers.max_pool_2x2(x)
    reference = nnx.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(reference))
    g = _normal(1, pooled.shape)
    grad = jax.grad(lambda v: jnp.sum(layers.max_pool_2x2(v) * g))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(nnx.max_pool(v, (2, 2), strides=(2, 2)) * g))(x)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_ref))


@pytest.mark.parametrize("train", [True, False])
def test_fused_batch_norm_relu_equals_nnx_batch_norm_then_relu(train):
    x = 2.0 * _normal(0, (2, 6, 5, 3)) + 0.5
    g = _normal(1, x.shape)

    def make():
        bn = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-3, rngs=nnx.Rngs(0))
        bn.scale[...] = jnp.array([0.5, 1.0, 2.0])
        bn.bias[...] = jnp.array([0.1, -0.2, 0.0])
        bn.mean[...] = jnp.array([0.3, 0.0, -0.1])
        bn.var[...] = jnp.array([1.5, 0.7, 1.0])
        return bn

    def loss(fn, bn, x):
        return jnp.sum(fn(bn, x) * g)

    def fused(bn, x):
        return layers.batch_norm_relu(bn, x, train=train)

    def reference(bn, x):
        return jax.nn.relu(bn(x, use_running_average=not train))

    bn_a, bn_b = make(), make()
    grads_a = nnx.grad(lambda bn, x: loss(fused, bn, x), argnums=(0, 1))(bn_a, x)
    grads_b = nnx.grad(lambda bn, x: loss(reference, bn, x), argnums=(0, 1))(bn_b, x)
    np.testing.assert_allclose(fused(make(), x), reference(make(), x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads_a[1], grads_b[1], rtol=1e-4, atol=1e-6)  # d/dx
    for name in ("scale", "bias"):
        np.testing.assert_allclose(
            grads_a[0][name][...], grads_b[0][name][...], rtol=1e-4, atol=1e-6, err_msg=name
        )
    for name in ("mean", "var"):  # running averages updated alike (train) or untouched (eval)
        np.testing.assert_allclose(getattr(bn_a, name)[...], getattr(bn_b, name)[...], rtol=1e-6)


# ------------------------------------------------------------------------------ model options


def test_instance_norm_matches_a_numpy_reference():
    """InstanceNorm in a ConvNormAct: each sample and channel normalized over H and W (biased
    variance, eps ``IN_EPSILON``), then scale and bias, the same in training and eval mode."""
    block = layers.ConvNormAct(3, 4, norm="instance", act="relu", rngs=nnx.Rngs(params=_rbg(5)))
    block.instance_norm.scale[...] = jnp.array([1.0, 2.0, 0.5, 1.5])
    block.instance_norm.bias[...] = jnp.array([0.0, 0.1, -0.2, 0.3])
    x = jax.random.normal(jax.random.key(6), (2, 8, 8, 3))
    y = np.asarray(block.conv(x), np.float64)
    mean = y.mean(axis=(1, 2), keepdims=True)
    var = y.var(axis=(1, 2), keepdims=True)
    scale = np.array([1.0, 2.0, 0.5, 1.5])
    bias = np.array([0.0, 0.1, -0.2, 0.3])
    expected = np.maximum((y - mean) / np.sqrt(var + layers.IN_EPSILON) * scale + bias, 0.0)
    for train in (True, False):
        np.testing.assert_allclose(np.asarray(block(x, train=train)), expected, atol=1e-5)


@pytest.mark.parametrize("slope", [None, 0.1], ids=["default", "0.1"])
def test_leaky_relu_keeps_a_slope_below_zero(slope):
    kw = {} if slope is None else {"slope": slope}
    block = layers.ConvNormAct(
        2, 3, norm="instance", act="leaky_relu", rngs=nnx.Rngs(params=_rbg(7)), **kw
    )
    x = jax.random.normal(jax.random.key(8), (1, 6, 6, 2))
    y = np.asarray(block.conv(x), np.float64)
    var = y.var(axis=(1, 2), keepdims=True)
    z = (y - y.mean(axis=(1, 2), keepdims=True)) / np.sqrt(var + layers.IN_EPSILON)
    expected = np.where(z > 0, z, (0.01 if slope is None else slope) * z)
    np.testing.assert_allclose(np.asarray(block(x, train=True)), expected, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"norm": "instance"},
        {"activation": "leaky_relu"},
        {"activation": "leaky_relu", "leaky_slope": 0.1},
        {"downsample": "strided"},
        {"norm": "instance", "activation": "leaky_relu", "downsample": "strided"},
        {"deep_supervision": True},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_unet_options_keep_the_shapes_and_give_finite_gradients(options):
    features = (4, 8, 16, 32)  # four levels: deep supervision has a head at 1/2 resolution
    model = UNet2D(2, 1, features, rngs=nnx.Rngs(params=_rbg(9)), **options)
    x = jax.random.uniform(jax.random.key(10), (2, 16, 16, 2))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        out = m(x, train=True)
        logits, aux = out if isinstance(out, tuple) else (out, [])
        return jnp.mean(jax.nn.sigmoid(logits)) + sum(jnp.mean(jax.nn.sigmoid(a)) for a in aux)

    # Jitted: eager op-by-op dispatch compiled every primitive separately (~20 s here).
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest, copy=True)(x, train=False))
    assert forward(params, x).shape == (2, 16, 16, 1)
    bottleneck = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest).bottleneck_features(x))
    assert bottleneck(params, x).shape == (2, 2, 2, features[-1])
    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_strided_downsampling_replaces_the_max_pool():
    pooled = UNet2D(1, 1, SMALL, rngs=nnx.Rngs(params=_rbg(11)))
    strided = UNet2D(1, 1, SMALL, rngs=nnx.Rngs(params=_rbg(11)), downsample="strided")
    assert [b.first.conv.strides for b in strided.encoder] == [1, 2, 2]
    assert [b.first.conv.strides for b in pooled.encoder] == [1, 1, 1]
    # No running statistics with instance norm: eval and train modes agree.
    inorm = UNet2D(1, 1, SMALL, rngs=nnx.Rngs(params=_rbg(12)), norm="instance")
    x = jax.random.uniform(jax.random.key(13), (2, 16, 16, 1))
    np.testing.assert_allclose(np.asarray(inorm(x, train=True)), np.asarray(inorm(x)), atol=1e-6)


def test_model_options_are_checked_against_the_model():
    from lesionjax.models.registry import check_model_config

    with pytest.raises(
        ValueError, match=r"model.norm='group': expected one of \('batch', 'instance'\)"
    ):
        check_model_config(_model_config(norm="group"))
    with pytest.raises(ValueError, match="model.norm='instance': resunet2d has no norm option"):
        check_model_config(_model_config(name="resunet2d", norm="instance"))
    with pytest.raises(ValueError, match="model.leaky_slope=0.1: resunet2d has no leaky_slope"):
        check_model_config(_model_config(name="resunet2d", leaky_slope=0.1))


def test_deep_supervision_adds_heads_at_half_and_quarter_resolution():
    features = (4, 8, 16, 32, 64)
    model = UNet2D(1, 1, features, rngs=nnx.Rngs(params=_rbg(14)), deep_supervision=True)
    x = jax.random.uniform(jax.random.key(15), (2, 32, 32, 1))
    logits, aux = model(x, train=True)
    assert logits.shape == (2, 32, 32, 1)
    assert [a.shape for a in aux] == [(2, 16, 16, 1), (2, 8, 8, 1)]
    assert model(x, train=False).shape == (2, 32, 32, 1)  # inference: the logits alone
    # Without it the same model returns logits in training too.
    plain = UNet2D(1, 1, features, rngs=nnx.Rngs(params=_rbg(14)))
    assert plain(x, train=True).shape == (2, 32, 32, 1)


def test_instance_norm_and_leaky_relu_keep_gradients_finite_on_an_all_air_slice():
    """A slice that is all air is a constant map at every layer, where InstanceNorm scales
    gradients by 1 / sqrt(eps) per layer. With PyTorch's eps 1e-5 the gradient of the demo-sized
    U-Net (features 8..128, LeakyReLU) overflowed float32 on such a slice, as it did in the
    first step of the demo; at ``IN_EPSILON`` it stays finite."""
    from lesionjax.losses import batch_dice_loss

    model = UNet2D(
        3,
        1,
        (8, 16, 32, 64, 128),
        rngs=nnx.Rngs(params=_rbg(0)),
        norm="instance",
        activation="leaky_relu",
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    image = jnp.zeros((1, 64, 64, 3))
    target = jnp.zeros((1, 64, 64, 1))

    def loss(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        return batch_dice_loss(m(image, train=True), target)

    # The global norm, as the trainer checks it and as Adam squares it: at eps 1e-5 elements near
    # 1e20 make it inf; at 1e-3 it measured ~1e8 (large, but Adam's step is scale-free).
    grads = jax.jit(jax.grad(loss))(params)
    assert bool(jnp.isfinite(optax.tree.norm(grads)))

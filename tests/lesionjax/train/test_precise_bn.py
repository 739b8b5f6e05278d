"""Precise BatchNorm statistics: eval mode with a batch's statistics equals train mode on it."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lesionjax.models.registry import build_model
from lesionjax.train import step as step_lib


def _setup():
    tx, _ = step_lib.make_optimizer(1e-3, 10)
    graphdef, init = step_lib.make_init_fn(
        lambda rngs: build_model("unet2d", 2, 1, (4, 8, 16), rngs=rngs), tx
    )
    return graphdef, jax.jit(init)(jax.random.key(0))


def test_batch_stats_make_eval_mode_equal_train_mode_on_that_batch():
    graphdef, state = _setup()
    x = jax.random.uniform(jax.random.key(1), (6, 16, 16, 2))
    stats = jax.jit(step_lib.make_batch_stats_fn(graphdef))(state, x)
    eval_out = step_lib.make_predict_fn(graphdef)((state.params, stats), x)
    model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
    train_out = jax.nn.sigmoid(model(x, train=True))
    np.testing.assert_allclose(np.asarray(eval_out), np.asarray(train_out), atol=2e-5)


def test_batch_stats_ignore_the_incoming_running_averages():
    graphdef, state = _setup()
    x = jax.random.uniform(jax.random.key(2), (4, 16, 16, 2))
    fn = jax.jit(step_lib.make_batch_stats_fn(graphdef))
    garbage = state.replace(model_state=jax.tree.map(lambda v: v + 7.0, state.model_state))
    a, b = fn(state, x), fn(garbage, x)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6)
    # And they differ from the initial running averages (mean 0, var 1).
    assert any(float(jnp.abs(u).max()) > 1e-3 for u in jax.tree.leaves(a))


def test_precise_bn_averages_the_statistics_of_the_batches():
    """The first BatchNorm's precise statistics are the mean over batches of each batch's
    per-channel mean and variance of the first conv's output, computed here with NumPy."""
    from lesionjax.train.trainer import precise_bn_statistics

    graphdef, state = _setup()
    batches = [jax.random.uniform(jax.random.key(k), (3, 16, 16, 2)) for k in (3, 4, 5)]
    batch_stats = jax.jit(step_lib.make_batch_stats_fn(graphdef))
    precise = precise_bn_statistics(batch_stats, state, iter(batches))
    model = nnx.merge(graphdef, state.params, precise.model_state)
    conv = model.encoder[0].first.conv
    means, variances = [], []
    for x in batches:
        y = np.asarray(conv(x), np.float64).reshape(-1, 4)  # (B * H * W, channels)
        means.append(y.mean(axis=0))
        variances.append(y.var(axis=0))
    bn = model.encoder[0].first.bn
    np.testing.assert_allclose(np.asarray(bn.mean[...]), np.mean(means, axis=0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), np.mean(variances, axis=0), rtol=1e-4)
    # Not the last batch's alone (the averaging is what makes them precise).
    assert not np.allclose(np.asarray(bn.mean[...]), means[-1], atol=1e-5)


def test_precise_bn_without_batches_keeps_the_state():
    from lesionjax.train.trainer import precise_bn_statistics

    graphdef, state = _setup()
    same = precise_bn_statistics(step_lib.make_batch_stats_fn(graphdef), state, iter(()))
    assert same is state

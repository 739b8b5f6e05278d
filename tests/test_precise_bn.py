"""Precise BatchNorm statistics: eval mode with a batch's statistics equals train mode on it."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lesionjax.models.unet2d import build_model
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

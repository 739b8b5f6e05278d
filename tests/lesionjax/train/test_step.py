"""TrainState init, train / eval / predict steps and the optimizer, on a tiny U-Net."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lesionjax.losses import get_loss
from lesionjax.models.resunet2d import ResUNet2D
from lesionjax.models.unet2d import UNet2D
from lesionjax.train import step as step_lib

SMALL = (4, 8, 16)
TINY = (4, 8)  # for the tests that compile their own step
STEPS_PER_EPOCH = 5


def _rbg(seed: int) -> jax.Array:
    # RBG keys compile in a fraction of the time of threefry on XLA:CPU.
    return jax.random.key(seed, impl="rbg")


def _batch(batch: int = 4, size: int = 32) -> dict[str, jnp.ndarray]:
    """A fixed batch: a bright disc (the lesion) on a noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    image = 0.2 * rng.random((batch, size, size, 1))
    mask = np.zeros((batch, size, size, 1), np.float32)
    for i in range(batch):
        cy, cx = rng.integers(8, size - 8, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        mask[i, disc, 0] = 1.0
        image[i, disc, 0] += 0.6
    return {
        "image": jnp.asarray(image, jnp.float32),
        "mask": jnp.asarray(mask),
        "weight": jnp.ones((batch,), jnp.float32),
    }


@pytest.fixture(scope="module")
def setup():
    tx, schedule = step_lib.make_optimizer(1e-2, STEPS_PER_EPOCH)
    graphdef, init = step_lib.make_init_fn(lambda rngs: UNet2D(1, 1, SMALL, rngs=rngs), tx)
    train_step = jax.jit(step_lib.make_train_step(graphdef, tx, get_loss("dice")), donate_argnums=0)
    return graphdef, jax.jit(init), train_step, tx


def test_init_splits_params_from_batch_stats(setup):
    _, init, _, _ = setup
    state = init(_rbg(0))
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert all(isinstance(v, nnx.Param) for v in jax.tree.leaves(state.params, is_leaf=_is_var))
    model_vars = jax.tree.leaves(state.model_state, is_leaf=_is_var)
    assert model_vars and all(isinstance(v, nnx.BatchStat) for v in model_vars)


def _is_var(x):
    return isinstance(x, nnx.Variable)


def test_init_is_deterministic_in_the_key(setup):
    _, init, _, _ = setup
    a, b, c = init(_rbg(0)), init(_rbg(0)), init(_rbg(1))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    kernel = lambda s: np.asarray(s.params["head"]["kernel"][...])  # noqa: E731
    assert not np.allclose(kernel(a), kernel(c))


def test_init_key_derives_rbg_keys_deterministically():
    from_threefry = step_lib._init_key(jax.random.key(0))
    assert jax.random.key_impl(from_threefry) == jax.random.key_impl(_rbg(0))
    again = step_lib._init_key(jax.random.key(0))
    np.testing.assert_array_equal(jax.random.key_data(from_threefry), jax.random.key_data(again))
    rbg = _rbg(3)
    assert step_lib._init_key(rbg) is rbg


def test_train_step_lowers_loss_and_counts_steps(setup):
    _, init, train_step, _ = setup
    state = init(_rbg(0))
    head_before = np.asarray(state.params["head"]["kernel"][...])
    batch = _batch()
    losses = []
    for i in range(20):
        state, metrics = train_step(state, batch, jax.random.fold_in(_rbg(1), i))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 20
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.05, losses
    assert not np.allclose(np.asarray(state.params["head"]["kernel"][...]), head_before)


def test_train_step_metrics_are_scalars_and_batch_stats_change(setup):
    _, init, train_step, _ = setup
    state = init(_rbg(0))
    stats_before = jax.tree.map(np.asarray, state.model_state)
    new_state, metrics = train_step(state, _batch(), _rbg(1))
    assert set(metrics) == {"loss", "grad_norm"}
    assert all(m.shape == () for m in metrics.values())
    assert float(metrics["grad_norm"]) > 0
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), stats_before, new_state.model_state)
    assert all(jax.tree.leaves(changed))


def test_train_step_donates_the_old_state(setup):
    _, init, train_step, _ = setup
    state = init(_rbg(0))
    old_leaf = jax.tree.leaves(state.params)[0]
    new_state, _ = train_step(state, _batch(), _rbg(1))
    assert old_leaf.is_deleted()
    assert not jax.tree.leaves(new_state.params)[0].is_deleted()


def test_augment_fn_is_applied_with_its_key():
    tx, _ = step_lib.make_optimizer(1e-3, STEPS_PER_EPOCH)
    graphdef, init = step_lib.make_init_fn(lambda rngs: UNet2D(1, 1, TINY, rngs=rngs), tx)
    seen = []

    def zero_weights(key, batch):
        seen.append(key)
        return {**batch, "weight": jnp.zeros_like(batch["weight"])}

    train_step = jax.jit(
        step_lib.make_train_step(graphdef, tx, get_loss("dice"), augment_fn=zero_weights)
    )
    _, metrics = train_step(jax.jit(init)(_rbg(0)), _batch(), _rbg(1))
    assert float(metrics["loss"]) == 0.0
    assert len(seen) == 1 and seen[0].shape == ()


def test_resunet_train_step_runs_with_dropout():
    tx, _ = step_lib.make_optimizer(1e-3, STEPS_PER_EPOCH)
    graphdef, init = step_lib.make_init_fn(lambda rngs: ResUNet2D(1, 1, TINY, rngs=rngs), tx)
    train_step = jax.jit(step_lib.make_train_step(graphdef, tx, get_loss("dice_bce")))
    state = jax.jit(init)(_rbg(0))
    _, m1 = train_step(state, _batch(), _rbg(1))
    _, m2 = train_step(state, _batch(), _rbg(2))
    assert np.isfinite(float(m1["loss"]))
    assert float(m1["loss"]) != float(m2["loss"])  # different dropout masks


def test_predict_gives_probabilities_from_state_or_variables(setup):
    graphdef, init, _, _ = setup
    state = init(_rbg(0))
    predict = jax.jit(step_lib.make_predict_fn(graphdef))
    image = _batch()["image"]
    probs = predict(state, image)
    assert probs.shape == (4, 32, 32, 1) and probs.dtype == jnp.float32
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
    again = predict((state.params, state.model_state), image)
    np.testing.assert_array_equal(np.asarray(probs), np.asarray(again))


def test_lr_schedule_decays_per_epoch_in_steps():
    _, schedule = step_lib.make_optimizer(1e-3, steps_per_epoch=100)
    for epoch in range(4):
        np.testing.assert_allclose(float(schedule(100 * epoch)), 1e-3 * 0.96**epoch, rtol=1e-6)
        # staircase: constant within an epoch
        np.testing.assert_allclose(float(schedule(100 * epoch + 99)), 1e-3 * 0.96**epoch, rtol=1e-6)


def test_l2_is_coupled_into_adam():
    # With zero loss gradient, coupled L2 feeds g = wd * w through Adam, whose first step is
    # -lr * g / (|g| + eps); decoupled (AdamW-style) decay would give -lr * wd * w, ~1e6 x smaller.
    tx, _ = step_lib.make_optimizer(0.1, 10, weight_decay=1e-6)
    params = {"w": jnp.array([1.0, -2.0])}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    g = 1e-6 * np.array([1.0, -2.0])
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-4)


def test_optimizer_rejects_bad_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch 0"):
        step_lib.make_optimizer(1e-3, 0)


def test_optimizer_is_an_optax_transformation():
    tx, _ = step_lib.make_optimizer(1e-3, 10)
    assert isinstance(tx, optax.GradientTransformation)


def test_precision_auto_is_bf16_on_accelerators_and_float32_on_the_cpu():
    from lesionjax.core.errors import ConfigError
    from lesionjax.train.state import compute_dtype

    assert compute_dtype("auto", "cpu") == jnp.float32
    assert compute_dtype("auto", "gpu") == jnp.bfloat16
    assert compute_dtype("auto", "tpu") == jnp.bfloat16
    assert compute_dtype("float32", "tpu") == jnp.float32
    assert compute_dtype("bf16", "cpu") == jnp.bfloat16
    with pytest.raises(ConfigError, match="train.precision='fp16'"):
        compute_dtype("fp16")


def test_bf16_models_compute_in_bfloat16_with_float32_parameters():
    """The compute dtype reaches every layer (the logits come out bfloat16, and differ from
    the float32 model's by bfloat16 rounding, not more), while every parameter and BatchNorm
    statistic is float32. (That training in bf16 lowers the loss and saves float32 state:
    ``test_train.py``.)"""
    import ml_collections

    from lesionjax.models.registry import model_from_config

    image = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 2)), jnp.float32)
    logits = {}
    forward = nnx.jit(lambda model, x: model(x, train=False))
    for name in ("unet2d",):
        m = ml_collections.ConfigDict({"name": name, "out_channels": 1, "features": (8, 16, 32)})
        for dtype in (jnp.float32, jnp.bfloat16):
            model = model_from_config(m, 2, rngs=nnx.Rngs(0), dtype=dtype)
            leaves = jax.tree.leaves(nnx.state(model))
            assert {x.dtype for x in leaves} == {jnp.dtype(jnp.float32)}, name
            logits[dtype] = forward(model, image)
            assert logits[dtype].dtype == dtype, name
        difference = jnp.abs(logits[jnp.bfloat16].astype(jnp.float32) - logits[jnp.float32])
        assert 0 < float(difference.max()) < 0.1 * float(jnp.abs(logits[jnp.float32]).max()) + 0.05

"""The pretext objectives inside the trainer's step: SimCLR's negatives from the global batch,
the local model's frozen encoder, the heads' shapes, and what transfers into the U-Net."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lesionjax.config_defaults import pretext_config
from lesionjax.core.errors import ConfigError
from lesionjax.models import pretext as nets
from lesionjax.models.unet2d import UNet2D
from lesionjax.pretext import losses
from lesionjax.pretext.objectives import build_objective
from lesionjax.train import state as state_lib
from lesionjax.train import step as step_lib
from lesionjax.train import transfer

C, H = 3, 32


def _config(task, **pretext):
    c = pretext_config(task, "tiny")
    for k, v in pretext.items():
        c.pretext[k] = v
    return c


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 6), np.uint8)
    labels[: n // 2, 0] = 1
    labels[: n // 2, 1 + np.arange(n // 2) % 5] = 1
    return {
        "image": rng.integers(0, 256, (n, H, H, C), dtype=np.uint8),
        "weight": np.ones(n, np.float32),
        "labels": labels,
    }


def _step(config, objective, mesh, batch, seed=0):
    """One jitted train step on ``mesh`` (the trainer's shardings); (loss, new state)."""
    run = state_lib.build_run_state(config, C, mesh=mesh, objective=objective)
    state = run.init_state(jax.random.key(seed))
    step = jax.jit(
        step_lib.make_train_step(
            run.graphdef, run.tx, None, augment_fn=objective.prepare,
            objective_loss=objective.loss,
        ),
        in_shardings=(run.state_sharding, run.batch_sharding, run.replicated),
        out_shardings=(run.state_sharding, run.replicated),
    )  # fmt: skip
    device = {k: jax.device_put(batch[k], run.batch_sharding) for k in objective.batch_keys}
    new, metrics = step(state, device, jax.random.key(7))
    return float(metrics["loss"]), state, new, run


def test_simclr_negatives_come_from_the_global_batch_across_devices():
    assert jax.device_count() >= 4  # conftest: 4 fake CPU devices
    config = _config("global_contrastive")
    objective = build_objective(config)
    batch = _batch(8)
    one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                        axis_types=(jax.sharding.AxisType.Auto,))  # fmt: skip
    four = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Auto,))  # fmt: skip
    loss1, _, new1, _ = _step(config, objective, one, batch)
    loss4, _, new4, _ = _step(config, objective, four, batch)
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    for a, b in zip(jax.tree.leaves(new1.params), jax.tree.leaves(new4.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # the check can fail: per-device negatives (each quarter's views alone) give another loss
    run = state_lib.build_run_state(config, C, mesh=one, objective=objective)
    state = run.init_state(jax.random.key(0))
    prepared = objective.prepare(jax.random.fold_in(jax.random.key(7), 0),
                                 {k: jnp.asarray(v) for k, v in batch.items()})  # fmt: skip
    model = nnx.merge(run.graphdef, state.params, state.model_state)
    z = model(prepared["views"], train=True)
    z1, z2 = jnp.split(z, 2)
    per_device = np.mean([float(losses.info_nce(z1[i : i + 2], z2[i : i + 2], 0.1))
                          for i in range(0, 8, 2)])  # fmt: skip
    assert float(losses.info_nce(z1, z2, 0.1)) == pytest.approx(loss1, rel=1e-5)
    assert abs(per_device - loss1) > 0.1


def test_the_local_models_encoder_stays_frozen_and_its_decoder_learns():
    config = _config("local_contrastive")
    config.train.init_from = "runs/global"  # required; the weights themselves are not needed
    objective = build_objective(config)
    assert objective.frozen == ("encoder",)
    mesh = state_lib.make_mesh()
    _, before, after, _ = _step(config, objective, mesh, _batch(8))
    flat_before, flat_after = transfer.flat_variables(before), transfer.flat_variables(after)
    encoder = [k for k in flat_before if k.split("/")[1] == "encoder"]
    decoder = [k for k in flat_before if k.startswith("params/decoder")]
    assert encoder and decoder
    for k in encoder:  # weights (with L2 decay on) and BatchNorm statistics alike
        np.testing.assert_array_equal(np.asarray(flat_before[k]), np.asarray(flat_after[k]), k)
    assert any(not np.array_equal(flat_before[k], flat_after[k]) for k in decoder)


def test_local_contrastive_without_a_global_run_is_a_config_error():
    with pytest.raises(ConfigError, match="init_from"):
        build_objective(_config("local_contrastive"))


@pytest.mark.parametrize(
    "task, loss, shape", [("binary", "bce", (8, 2)), ("multilabel", "bce", (8, 7)),
                          ("multilabel", "dice", (8, 7))],
)  # fmt: skip
def test_classifier_heads_shapes_and_losses(task, loss, shape):
    config = _config(task, loss=loss)
    batch = _batch(8)
    targets = np.asarray(losses.multilabel_targets(batch["labels"]))
    objective = build_objective(config, label_targets=targets)
    run = state_lib.build_run_state(config, C, mesh=state_lib.make_mesh(), objective=objective)
    state = run.init_state(jax.random.key(0))
    model = nnx.merge(run.graphdef, state.params, state.model_state)
    prepared = objective.prepare(jax.random.key(1), {k: jnp.asarray(v) for k, v in batch.items()})
    logits = model(prepared["image"], train=True)
    assert logits.shape == shape
    got = float(objective.loss(model, prepared, nnx.Rngs(0)))
    # the objective's loss is the named loss of these logits against the slice labels
    if task == "binary":
        expected = losses.softmax_cross_entropy(logits, jnp.asarray(batch["labels"][:, 0]))
    elif loss == "bce":
        weights = jnp.asarray(losses.balanced_pos_weights(targets))
        expected = losses.weighted_bce(logits, jnp.asarray(targets), weights)
    else:
        expected = losses.multilabel_dice(logits, jnp.asarray(targets))
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_a_classifier_head_of_the_wrong_width_is_refused():
    with pytest.raises(ConfigError, match="ends in 7"):
        build_objective(_config("multilabel", head=(16, 2)), label_targets=np.zeros((4, 7)))


def _variables(model):
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return {k: np.asarray(v) for k, v in transfer.flat_variables(
        {"params": params, "model_state": rest}).items()}  # fmt: skip


@pytest.mark.parametrize(
    "make, head",
    [
        (lambda r: nets.RestorationNet(C, (8, 16, 32), rngs=r), "restore_head"),
        (lambda r: nets.ContrastiveNet(C, (8, 16, 32), (16, 8), rngs=r), "projector"),
        (lambda r: nets.ClassifierNet(C, (8, 16, 32), (16, 7), rngs=r), "classifier"),
        (lambda r: nets.LocalContrastiveNet(C, (8, 16, 32), (16, 8), decoder_blocks=1, rngs=r),
         "local_head"),
    ],
)  # fmt: skip
def test_pretext_weights_load_into_the_unet_by_path_and_heads_never_do(make, head):
    source = _variables(make(nnx.Rngs(params=0)))
    tx, _ = step_lib.make_optimizer(1e-3, 10)
    _, init = step_lib.make_init_fn(lambda r: UNet2D(C, 1, (8, 16, 32), rngs=r), tx)
    fresh = jax.jit(init)(jax.random.key(5))
    new, report = transfer.transfer(fresh, source, "all")
    after = {k: np.asarray(v) for k, v in transfer.flat_variables(new).items()}
    heads = [k for k in source if k.split("/")[1] == head]
    assert heads and set(heads) <= set(report["left_out"])
    encoder = [k for k in source if k.split("/")[1] == "encoder"]
    assert set(encoder) <= set(report["loaded"])  # every encoder variable, by path
    for k in encoder:
        np.testing.assert_array_equal(after[k], source[k])
    for k in report["loaded"]:
        assert k.split("/")[1] in ("encoder", "decoder")
    # the U-Net's own head starts fresh
    assert report["initialised"]["params/head/kernel"] == "not in the source run"

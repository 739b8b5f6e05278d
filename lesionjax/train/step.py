"""Pure train / predict / BatchNorm-statistics steps over a plain-pytree TrainState, and the
optimizer.

The trainer jits these with shardings, e.g.
``jax.jit(train_step, in_shardings=..., out_shardings=..., donate_argnums=0)``. They are plain
``jax.jit``-able functions over pytrees: the NNX module is rebuilt from the static ``graphdef``
inside the trace (``nnx.merge``), which costs nothing at run time, whereas ``nnx.jit`` pays a
graph traversal on every call (3-4x the per-call overhead, measured).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lesionjax.losses import LossFn, deep_supervision_loss

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training, as one pytree (Orbax saves it as is).

    step: int32 scalar; params: nnx.State of the nnx.Param variables; model_state: nnx.State of
    the other variables (BatchNorm running statistics); opt_state: the optax state of params.
    """

    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: Any


def _split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    return nnx.split(model, nnx.Param, ...)


def _init_key(key: jax.Array) -> jax.Array:
    """An RBG key seeded from ``key``'s bits, for parameter initialization.

    Each initializer draw with the default (partitionable) threefry PRNG is a separate fusion
    that takes XLA:CPU seconds to compile: a 5-level U-Net's init took ~24 s to compile versus
    ~3 s with RBG (measured). Init runs replicated, so RBG's weaker guarantees across shardings
    do not matter here. The result is deterministic in ``key`` (on a given backend).
    """
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if jax.random.key_impl(key) == jax.random.key_impl(jax.random.key(0, impl="rbg")):
            return key
        key = jax.random.key_data(key)
    words = jnp.ravel(key).astype(jnp.uint32)
    # rbg key data is 4 uint32 words; mix the (usually 2) given words into 4 distinct ones.
    words = jnp.concatenate([words, words ^ jnp.uint32(0x9E3779B9)])
    words = jnp.resize(words, (4,))
    return jax.random.wrap_key_data(words, impl="rbg")


def make_init_fn(
    model_fn: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, Callable[[jax.Array], TrainState]]:
    """The model's static graphdef and a pure ``init(key) -> TrainState``.

    ``model_fn(rngs)`` builds the model (e.g. ``lambda rngs: UNet2D(1, rngs=rngs)``). The graphdef
    comes from ``nnx.eval_shape`` (abstract, no FLOPs). ``init`` is jittable with
    ``out_shardings``, which is how multi-process runs create replicated state on every device.
    ``key``: a typed PRNG key (or raw uint32 key data); params are drawn from an RBG key seeded
    from it (see ``_init_key``).
    """
    graphdef, _, _ = _split(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))

    def init(key: jax.Array) -> TrainState:
        _, params, model_state = _split(model_fn(nnx.Rngs(params=_init_key(key))))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=tx.init(params),
        )

    return graphdef, init


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    augment_fn: Callable[[jax.Array, Batch], Batch] | None = None,
    objective_loss: Callable | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """A pure ``train_step(state, batch, key) -> (new_state, metrics)``.

    ``objective_loss(model, batch, rngs) -> loss`` replaces the segmentation loss (a pretext
    task's, ``lesionjax.train.objective``); ``loss_fn`` is then unused.

    batch: {"image": (B, H, W, C) float32 in [0, 1], "mask": (B, H, W, 1) float32 in {0, 1},
    "weight": (B,) float32}. ``key`` is this step's key (e.g. ``fold_in(seed_key, step)``); the
    augmentation gets ``fold_in(key, 0)`` and dropout ``fold_in(key, 1)``.
    metrics: {"loss", "grad_norm"} float32 scalars (loss before the update).
    """

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
        if augment_fn is not None:
            batch = augment_fn(jax.random.fold_in(key, 0), batch)
        dropout_key = jax.random.fold_in(key, 1)

        # model_state is an argument (not closed over) so that its variables belong to the
        # trace of value_and_grad, where BatchNorm writes its new running averages.
        def loss_of(params: nnx.State, model_state: nnx.State) -> tuple[jax.Array, nnx.State]:
            model = nnx.merge(graphdef, params, model_state, copy=True)
            # Rngs is created here, in the trace where dropout advances its counter.
            rngs = nnx.Rngs(dropout=dropout_key)
            if objective_loss is not None:
                loss = objective_loss(model, batch, rngs).astype(jnp.float32)
            else:
                outputs = model(batch["image"], train=True, rngs=rngs)
                # The loss and its reductions in float32 whatever the compute dtype (bf16).
                outputs = jax.tree.map(lambda o: o.astype(jnp.float32), outputs)
                loss = deep_supervision_loss(loss_fn, outputs, batch["mask"], batch["weight"])
            # BatchNorm wrote its updated running averages into the merged module.
            _, _, new_model_state = _split(model)
            return loss, new_model_state

        (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, state.model_state
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
        )
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


def _variables(state: TrainState | tuple[nnx.State, nnx.State]) -> tuple[nnx.State, nnx.State]:
    if isinstance(state, TrainState):
        return state.params, state.model_state
    params, model_state = state
    return params, model_state


def make_predict_fn(
    graphdef: nnx.GraphDef,
) -> Callable[[TrainState | tuple[nnx.State, nnx.State], jax.Array], jax.Array]:
    """A pure ``predict(state_or_(params, model_state), image) -> probs``.

    Eval mode (BatchNorm running averages, no dropout). image: (B, H, W, C) float32 ->
    probs = sigmoid(logits): (B, H, W, out_channels) float32.
    """

    def predict(state, image: jax.Array) -> jax.Array:
        params, model_state = _variables(state)
        model = nnx.merge(graphdef, params, model_state)
        return jax.nn.sigmoid(model(image, train=False).astype(jnp.float32))

    return predict


def make_batch_stats_fn(
    graphdef: nnx.GraphDef,
) -> Callable[[TrainState, jax.Array], nnx.State]:
    """``batch_stats(state, image) -> model_state`` holding this batch's BatchNorm statistics.

    With momentum 0 a train-mode forward replaces each running average by the batch's own
    mean and variance. Averaging the results over several batches gives "precise BN" statistics
    (Wu & Johnson 2021, as in pycls): the exponential running averages track only the last few
    batches, so eval-mode outputs jump from epoch to epoch on short runs.
    image: (B, H, W, C) float32 in [0, 1].
    """

    def batch_stats(state: TrainState, image: jax.Array) -> nnx.State:
        model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.BatchNorm):
                module.momentum = 0.0
        model(image, train=True, rngs=nnx.Rngs(dropout=jax.random.key(0)))
        _, _, model_state = _split(model)
        return model_state

    return batch_stats


def train_compiler_options() -> dict[str, str]:
    """XLA options for jitting the train step: ``jax.jit(..., compiler_options=...)``.

    On CPU, convolutions go to Eigen instead of YNNPACK (dots stay on YNNPACK). YNNPACK computes
    a conv's weight gradient as a convolution whose window is the whole H x W image, which was
    3-4x slower than the forward conv at 256 x 256; Eigen's is 1.5-2x (benchmarks/RESULTS.md).
    Per-jit options rather than XLA_FLAGS, so nothing global changes. {} on other backends.
    """
    if jax.default_backend() != "cpu":
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def make_optimizer(
    learning_rate: float,
    steps_per_epoch: int,
    *,
    decay_rate: float = 0.96,
    weight_decay: float = 1e-6,
    schedule: str = "exponential",
    total_steps: int | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with lr decayed by ``decay_rate`` per epoch (staircase) and coupled L2; (tx, schedule).

    ``schedule="poly"``: nnU-Net's polynomial decay instead, lr * (1 - step / total_steps)^0.9,
    reaching 0 at ``total_steps`` (the 3D cascade's configs).

    The L2 term is the classic coupled one, ``grad += weight_decay * param`` before Adam's moment
    estimates (``add_decayed_weights`` before ``scale_by_adam``), which is what the papers' Keras
    ``kernel_regularizer=l2`` amounts to, not AdamW's decoupled decay. (Keras' l2(c) adds
    ``c * sum(w**2)`` to the loss, i.e. a gradient ``2c * w``; we follow the DESIGN's "L2 1e-6" as
    the gradient coefficient, a factor 2 that is immaterial at this size.) Unlike Keras it applies
    to every parameter, including BN scales and biases, as torch's Adam(weight_decay=...) does.
    ``schedule(step)`` gives the learning rate for logging.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch {steps_per_epoch}: expected >= 1")
    if schedule == "exponential":
        lr_schedule = optax.exponential_decay(
            init_value=learning_rate,
            transition_steps=steps_per_epoch,
            decay_rate=decay_rate,
            staircase=True,
        )
    elif schedule == "poly":
        if not total_steps or total_steps < 1:
            raise ValueError(f"poly schedule: total_steps {total_steps}: expected >= 1")
        lr_schedule = optax.polynomial_schedule(
            init_value=learning_rate, end_value=0.0, power=0.9, transition_steps=total_steps
        )
    else:
        raise ValueError(f"optim.schedule={schedule!r}: expected 'exponential' or 'poly'")
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(lr_schedule),
    )
    return tx, lr_schedule


def freeze(tx: optax.GradientTransformation, frozen: tuple[str, ...]):
    """``tx`` for every parameter except those under the top-level names ``frozen``
    (``"encoder"``), whose updates are zero: they keep their values (the L2 term included)."""
    if not frozen:
        return tx

    def labels(params):
        def label(path, _):
            top = getattr(path[0], "key", getattr(path[0], "name", None))
            return "frozen" if str(top) in frozen else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

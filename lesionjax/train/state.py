"""A run's state and its checkpoints, built one way for training, evaluation and prediction.

``build_run_state(config, in_channels)`` gives everything derived from a config before any data
flows: the device mesh, the model (through the model registry), the optimizer and its schedule,
the abstract ``TrainState`` with its shardings and the restore target. ``open_checkpoints``
opens a run's Orbax checkpoints for writing (the trainer) or reading (``evaluate``, later
``predict``), and ``restore_state`` reads one step back onto the mesh. Only Orbax's public API
is used.

Checkpoints hold two items: ``state`` (the TrainState) and ``data`` (the grain iterator's
state); the trainer keeps the latest step and the best one by validation Dice (``BEST_METRIC``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lesionjax.core.errors import UserError
from lesionjax.models.registry import check_model_config, model_from_config
from lesionjax.train import step as step_lib

CHECKPOINT_ITEMS = ("state", "data")
BEST_METRIC = "val_dice"


class CheckpointError(UserError):
    """A run's checkpoint is missing or does not match its config."""


def best_metric(metrics: dict) -> float:
    """The saved metric that picks the best checkpoint (Orbax's ``best_fn``)."""
    return metrics[BEST_METRIC]


def checkpoint_metrics(val: dict | None) -> dict | None:
    """What a save records for picking the best step: validation Dice over lesion volumes, or
    over all volumes when the validation set has no lesion volume (None without validation)."""
    if not val:
        return None
    dice = val["dice"] if math.isfinite(val["dice"]) else val["dice_all"]
    return {BEST_METRIC: dice}


PRECISIONS = ("auto", "float32", "bf16")


def compute_dtype(precision: str, backend: str | None = None):
    """The models' compute dtype for ``train.precision``: "auto" is bfloat16 on GPUs and TPUs
    (``backend``, default JAX's) and float32 on the CPU, where bfloat16 convolutions are slow."""
    import jax.numpy as jnp

    from lesionjax.core.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        backend = backend or jax.default_backend()
        precision = "float32" if backend == "cpu" else "bf16"
    return jnp.bfloat16 if precision == "bf16" else jnp.float32


def make_mesh() -> Mesh:
    """All devices on one ``data`` axis (parameters replicated).

    Auto axes: the compiler propagates shardings through the step (the batch is sharded, the
    state replicated), so model code needs no sharding annotations.
    """
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a config determines about a run's state (no arrays are allocated).

    graphdef: the model's static structure; init_fn(key) -> TrainState (pure, jittable);
    abstract: the TrainState's shapes and dtypes; state_sharding: its sharding (replicated);
    batch_sharding: a batch's (rows split over the ``data`` axis).
    """

    mesh: Mesh
    graphdef: nnx.GraphDef
    init_fn: Callable
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract: step_lib.TrainState
    state_sharding: step_lib.TrainState

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    def restore_target(self):
        """What Orbax restores into: shape, dtype and sharding of every leaf."""
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            self.abstract,
            self.state_sharding,
        )

    def init_state(self, key: jax.Array) -> step_lib.TrainState:
        """A fresh replicated state, built on the devices (jit with out_shardings, which is
        how every process of a multi-process run gets the same state)."""
        return jax.jit(self.init_fn, out_shardings=self.state_sharding)(key)

    def predict_fn(self) -> Callable:
        """``predict(state, image (B, H, W, C) float) -> probs`` (eval mode)."""
        return step_lib.make_predict_fn(self.graphdef)


def build_run_state(
    config,
    in_channels: int,
    *,
    steps_per_epoch: int = 1,
    total_steps: int | None = None,
    mesh: Mesh | None = None,
    objective=None,
) -> RunState:
    """The run state of ``config`` for ``in_channels`` input channels.

    ``objective`` (``lesionjax.train.objective.Objective``): its model instead of
    ``config.model``'s, and its frozen parameters left out of the optimizer's updates.

    steps_per_epoch and total_steps set the learning-rate schedule (per-epoch decay, or the
    polynomial decay to 0 at the last step); they do not change the optimizer state's
    structure, so evaluation passes the defaults.
    """
    check_model_config(config.model)
    mesh = mesh if mesh is not None else make_mesh()
    tx, schedule = step_lib.make_optimizer(
        config.optim.lr,
        steps_per_epoch,
        decay_rate=config.optim.decay_rate,
        weight_decay=config.optim.weight_decay,
        schedule=config.optim.get("schedule", "exponential"),
        total_steps=total_steps or steps_per_epoch * config.train.epochs,
    )

    dtype = compute_dtype(config.train.get("precision", "auto"))

    def model_fn(rngs: nnx.Rngs) -> nnx.Module:
        if objective is not None:
            return objective.model_fn(in_channels, rngs, dtype)
        return model_from_config(config.model, in_channels, rngs=rngs, dtype=dtype)

    if objective is not None:
        tx = step_lib.freeze(tx, tuple(objective.frozen))

    graphdef, init_fn = step_lib.make_init_fn(model_fn, tx)
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    replicated = NamedSharding(mesh, P())
    state_sharding = jax.tree.map(lambda _: replicated, abstract)
    return RunState(mesh, graphdef, init_fn, tx, schedule, abstract, state_sharding)


def checkpoint_dir(workdir: Path) -> Path:
    return (Path(workdir) / "checkpoints").absolute()


def open_checkpoints(workdir: Path, *, read_only: bool = False, keep_best: bool = True):
    """The run's Orbax CheckpointManager: keeps the latest step and, with ``keep_best``, the
    best by ``BEST_METRIC`` (without a validation set there is no best). ``read_only`` opens an
    existing run for evaluation without creating or deleting anything."""
    import orbax.checkpoint as ocp
    from absl import logging

    policies = ocp.checkpoint_managers
    if read_only:
        options = ocp.CheckpointManagerOptions(
            best_fn=best_metric,
            best_mode="max",
            read_only=True,
            create=False,
            save_interval_steps=0,
        )
    elif keep_best:
        options = ocp.CheckpointManagerOptions(
            best_fn=best_metric,
            best_mode="max",
            preservation_policy=policies.AnyPreservationPolicy(
                [policies.LatestN(n=1), policies.BestN(get_metric_fn=best_metric, n=1)]
            ),
        )
    else:
        options = ocp.CheckpointManagerOptions(preservation_policy=policies.LatestN(n=1))
    verbosity = logging.get_verbosity()
    if read_only:
        logging.set_verbosity(logging.ERROR)  # Orbax warns that a read-only manager is read-only
    try:
        return ocp.CheckpointManager(
            checkpoint_dir(workdir), options=options, item_names=CHECKPOINT_ITEMS
        )
    finally:
        logging.set_verbosity(verbosity)


def saved_steps(workdir: Path) -> list[int]:
    """The checkpoint steps on disk (without opening Orbax)."""
    folder = checkpoint_dir(workdir)
    return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit() and p.is_dir())


def pick_step(manager, step: int | None = None) -> tuple[int, float | None]:
    """(step, its validation Dice or None): ``step`` if saved, else the best by validation Dice,
    else the latest."""
    if step is None:
        best = manager.best_step()
        metrics = manager.metrics(best) if best is not None else None
        step = best if metrics else manager.latest_step()
    elif step not in manager.all_steps():
        raise CheckpointError(
            f"{manager.directory}: no checkpoint at step {step} (have: "
            f"{', '.join(map(str, manager.all_steps()))})"
        )
    metrics = manager.metrics(step)
    best_val = float(best_metric(metrics)) if metrics and BEST_METRIC in metrics else None
    return int(step), best_val


def restore_state(manager, step: int, run_state: RunState, *, data_iter=None):
    """Restores ``step`` onto the mesh: the TrainState, and the data iterator in place when
    ``data_iter`` is given. A checkpoint of another model raises CheckpointError."""
    import grain
    import orbax.checkpoint as ocp

    items = {"state": ocp.args.StandardRestore(run_state.restore_target())}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))["state"]
    except (ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{Path(manager.directory) / str(step)}: checkpoint does not match the run's "
            f"model ({first})"
        ) from None


def save_state(manager, step: int, state, *, data_iter=None, metrics: dict | None = None):
    """Saves ``state`` (and the iterator's state as of now) at ``step``; ``metrics`` None: a
    save that is not a candidate for the best checkpoint (no validation at this step)."""
    import grain
    import orbax.checkpoint as ocp
    from absl import logging

    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iter))
    verbosity = logging.get_verbosity()
    if metrics is None:  # Orbax warns when a run that keeps its best saves without a metric
        logging.set_verbosity(logging.ERROR)
    try:
        manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
    finally:
        logging.set_verbosity(verbosity)


class _FrozenIteratorState:
    """The iterator's state captured when the save is requested (Orbax may write it later,
    from another thread, while the live iterator has moved on)."""

    def __init__(self, iterator):
        import json

        self._state = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._state

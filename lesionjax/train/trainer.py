"""The training loop: mesh, input pipeline, state, jitted step, checkpoints, logs.

One function, ``train``, in banner-commented sections (as big_vision's train.py). The update step
itself is the pure function of ``lesionjax.train.step``; here it is jitted with shardings and
donation. Only process 0 writes logs and shows the progress bar; checkpoints are written by Orbax
collectively.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lesionjax.data import augment as augment_lib
from lesionjax.data import pipeline
from lesionjax.eval.evaluate_volumes import evaluate_cases
from lesionjax.eval.inference import VolumePredictor
from lesionjax.losses import get_loss
from lesionjax.models.unet2d import build_model
from lesionjax.train import step as step_lib

log = logging.getLogger(__name__)


# Checkpoints: what Orbax saves per step, and the saved metric that picks the best checkpoint
# (read back by `lesionjax.evaluate`).
CHECKPOINT_ITEMS = ("state", "data")
BEST_METRIC = "val_dice"


def best_metric(metrics: dict) -> float:
    return metrics[BEST_METRIC]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


@dataclasses.dataclass
class TrainResult:
    state: step_lib.TrainState
    graphdef: object
    mesh: Mesh
    state_sharding: object
    predictor: VolumePredictor
    last_step: int
    best_step: int | None
    best_val_dice: float | None


def make_mesh() -> Mesh:
    """All devices on one ``data`` axis (parameters replicated).

    Auto axes: the compiler propagates shardings through the step (the batch is sharded, the
    state replicated), so model code needs no sharding annotations.
    """
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def make_model_fn(config, in_channels: int):
    m = config.model

    def model_fn(rngs):
        kwargs = {}
        if m.name == "resunet2d":
            kwargs["dropout"] = m.get("dropout", 0.5)
        model = build_model(
            m.name, in_channels, m.out_channels, tuple(m.features), rngs=rngs, **kwargs
        )
        prior = m.get("output_prior", 0.0)
        if prior:
            set_output_prior(model, prior)
        return model

    return model_fn


def set_output_prior(model, prior: float) -> None:
    """Starts the output layer's bias at the lesion prior's log-odds, log(pi / (1 - pi)).

    Lesion pixels are ~1% of a slice; with a zero bias the model starts at p = 0.5 everywhere and
    Adam (steps of ~lr per weight) spends hundreds of steps only lowering the background
    probability, while per-sample soft Dice gives lesion-free slices almost no gradient
    (d/dp = 1/(sum p + 1)^2). Starting at the prior removes that phase (Lin et al., RetinaNet).
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"output prior {prior} must be in (0, 1)")
    bias = model.head.bias
    bias[...] = jnp.full_like(bias[...], math.log(prior / (1.0 - prior)))


def augment_config(config) -> augment_lib.AugmentConfig:
    a = config.augment
    return augment_lib.AugmentConfig(
        translate=a.translate,
        rotate_deg=a.rotate_deg,
        scale=tuple(a.scale),
        flip_prob=a.flip_prob,
        enabled=a.enabled,
        brightness=tuple(a.brightness),
        contrast=tuple(a.contrast),
        gamma=tuple(a.gamma),
    )


class _FrozenIteratorState:
    """The iterator's state captured when the save is requested (Orbax may write it later,
    from another thread, while the live iterator has moved on)."""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._state


class MetricsLog:
    """Appends one JSON object per line; only process 0 writes."""

    def __init__(self, path: Path):
        self.path = path
        self.enabled = jax.process_index() == 0

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def validate(predictor: VolumePredictor, state, shards, case_ids, threshold: float) -> dict:
    """Validation metrics for the training log: mean volume Dice, precision and recall over the
    validation volumes with lesions ("dice", ...), Dice over all of them ("dice_all", where an
    empty prediction of a lesion-free volume scores 1), and the mean voxel ROC AUC over the
    volumes where it is defined (both classes present)."""
    per_volume, _ = evaluate_cases(
        predictor,
        state,
        shards,
        case_ids,
        threshold=threshold,
        n_overlays=0,
        progress=False,
        auc=True,
        surface=False,
    )

    def mean(key: str, lesion_only: bool) -> float:
        values = [
            v[key]
            for v in per_volume
            if (v["gt_voxels"] > 0 or not lesion_only) and math.isfinite(v.get(key, math.nan))
        ]
        return float(np.mean(values)) if values else float("nan")

    return {
        "dice": mean("dice", True),
        "dice_all": mean("dice", False),
        "precision": mean("precision", True),
        "recall": mean("recall", True),
        "auc": mean("auc", True),
    }


def train(config, workdir: Path, shards: pipeline.ShardSet, split: dict) -> TrainResult:
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    tcfg = config.train

    # ---------------------------------------------------------------- mesh and shardings
    mesh = make_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    if tcfg.batch_size % jax.device_count():
        raise ValueError(
            f"batch size {tcfg.batch_size} must be divisible by the {jax.device_count()} devices"
        )

    # ---------------------------------------------------------------- input pipeline
    dcfg = config.data
    indices, weights = pipeline.select_slices(
        shards,
        split["train"],
        dcfg.policy,
        normal_ratio=dcfg.normal_ratio,
        normal_weight=dcfg.normal_weight,
        seed=config.seed,
    )
    steps_per_epoch = len(indices) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(indices)} training slices (policy {dcfg.policy!r}) is less than one batch of "
            f"{tcfg.batch_size}"
        )
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.get("max_steps", -1) and tcfg.get("max_steps", -1) > 0:
        total_steps = min(total_steps, tcfg.max_steps)
    dataset = pipeline.make_train_dataset(
        shards,
        indices,
        weights,
        global_batch=tcfg.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=dcfg.get("grain_workers", 0),
    )
    data_iter = iter(dataset)

    # ---------------------------------------------------------------- model, optimizer, state
    model_fn = make_model_fn(config, shards.n_channels)
    tx, schedule = step_lib.make_optimizer(
        config.optim.lr,
        steps_per_epoch,
        decay_rate=config.optim.decay_rate,
        weight_decay=config.optim.weight_decay,
    )
    graphdef, init_fn = step_lib.make_init_fn(model_fn, tx)
    root_key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(root_key)
    abstract_state = jax.eval_shape(init_fn, init_key)
    state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
    loss_fn = get_loss(config.loss)
    train_step = jax.jit(
        step_lib.make_train_step(
            graphdef, tx, loss_fn, augment_fn=augment_lib.make_augment_fn(augment_config(config))
        ),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
        compiler_options=step_lib.train_compiler_options(),
    )
    batch_stats = jax.jit(
        step_lib.make_batch_stats_fn(graphdef),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=state_sharding.model_state,
    )
    to_unit = augment_lib.make_augment_fn(None)  # uint8 -> [0, 1], no augmentation

    def device_batch(local: dict) -> dict:
        """This process's host batch -> global arrays (the host-only "index" stays behind)."""
        return pipeline.to_global_batch(
            {k: local[k] for k in ("image", "mask", "weight")}, batch_sharding
        )

    def precise_bn(state, n_batches: int):
        """Replaces the running BatchNorm statistics by their average over n training batches
        (the next batches of the stream, read through a copy of the iterator's state)."""
        if n_batches <= 0:
            return state
        stats_iter = iter(dataset)
        stats_iter.set_state(data_iter.get_state())
        total = None
        for _ in range(n_batches):
            batch = device_batch(next(stats_iter))
            stats = batch_stats(state, to_unit(None, batch)["image"])
            total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        return state.replace(model_state=jax.tree.map(lambda x: x / n_batches, total))

    predictor = VolumePredictor(
        step_lib.make_predict_fn(graphdef),
        mesh,
        state_sharding,
        batch_size=config.eval.batch_size,
    )

    # ---------------------------------------------------------------- checkpoints / resume
    import grain
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.checkpoint_managers import preservation_policy as pp

    ckpt_dir = (workdir / "checkpoints").absolute()
    manager = ocp.CheckpointManager(
        ckpt_dir,
        # Without a validation set there is no best: keep the latest checkpoint only.
        options=ocp.CheckpointManagerOptions(
            best_fn=best_metric,
            best_mode="max",
            preservation_policy=pp.AnyPreservationPolicy(
                [
                    pp.LatestN(n=1),
                    pp.BestN(get_metric_fn=best_metric, n=1),
                ]
            ),
        )
        if split["val"]
        else ocp.CheckpointManagerOptions(preservation_policy=pp.LatestN(n=1)),
        item_names=CHECKPOINT_ITEMS,
    )
    # What Orbax restores into: shapes, dtypes and the replicated sharding of every leaf.
    restore_target = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        abstract_state,
        state_sharding,
    )
    start_step = 0
    latest = manager.latest_step()
    if latest is not None:
        restored = manager.restore(
            latest,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(restore_target),
                data=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        state = restored["state"]
        start_step = int(jax.device_get(state.step))
        if is_main:
            print(f"resumed from {ckpt_dir} at step {start_step}", flush=True)
    else:
        state = jax.jit(init_fn, out_shardings=state_sharding)(init_key)

    def save(step: int, val: dict | None) -> None:
        metrics = {BEST_METRIC: val["dice"]} if val else None
        if metrics and not math.isfinite(metrics[BEST_METRIC]):
            metrics = {BEST_METRIC: val["dice_all"]}
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iter)),
            ),
            metrics=metrics,
        )

    # ---------------------------------------------------------------- training loop
    metrics_log = MetricsLog(workdir / "metrics.jsonl")
    order_log = MetricsLog(workdir / "data_order.jsonl") if tcfg.get("log_data_order") else None
    from tqdm import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not is_main or not config.get("progress", True),
        dynamic_ncols=True,
    )
    pending: tuple[int, dict] | None = None  # metrics of the previous step, read one step late
    window: list[float] = []
    t_last, seen_last = time.perf_counter(), start_step

    def check(step: int, metrics: dict) -> float:
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at step {step}; stopping. The last checkpoint is step "
                f"{manager.latest_step()} in {ckpt_dir} (try a lower learning rate)"
            )
        return loss

    for step in range(start_step, total_steps):
        local = next(data_iter)
        if order_log is not None:
            order_log.write({"step": step, "index": local["index"].tolist()})
        state, metrics = train_step(state, device_batch(local), jax.random.fold_in(train_key, step))
        # Reading the previous step's loss lets the device run ahead by one step.
        if pending is not None:
            window.append(check(*pending))
        pending = (step, metrics)
        bar.update()
        done = step + 1
        end_of_epoch = done % steps_per_epoch == 0 or done == total_steps
        if done % tcfg.log_every == 0 or end_of_epoch:
            window.append(check(*pending))
            pending = None
            now = time.perf_counter()
            record = {
                "step": done,
                "epoch": done / steps_per_epoch,
                "split": "train",
                "loss": float(np.mean(window)),
                "lr": float(schedule(step)),
                "images_per_s": (done - seen_last) * tcfg.batch_size / (now - t_last),
            }
            metrics_log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            window, t_last, seen_last = [], now, done
        if end_of_epoch:
            val = None
            state = precise_bn(state, tcfg.get("precise_bn_batches", 0))
            if split["val"]:
                val = validate(predictor, state, shards, split["val"], config.eval.threshold)
                metrics_log.write(
                    {"step": done, "epoch": done / steps_per_epoch, "split": "val", **val}
                )
                bar.set_postfix(val_dice=f"{val['dice']:.3f}")
            epoch = done // steps_per_epoch
            if epoch % tcfg.checkpoint_every_epochs == 0 or done == total_steps:
                save(done, val)
            t_last = time.perf_counter()  # validation time is not training throughput
    bar.close()
    if manager.latest_step() != total_steps and total_steps > start_step:
        save(total_steps, None)
    manager.wait_until_finished()

    # ---------------------------------------------------------------- best checkpoint
    best_step = manager.best_step() if manager.latest_step() is not None else None
    best_metrics = manager.metrics(best_step) if best_step is not None else None
    best_val = float(best_metric(best_metrics)) if best_metrics else None
    if best_metrics is None:
        best_step = None
    if best_step is not None and best_step != int(jax.device_get(state.step)):
        state = manager.restore(
            best_step, args=ocp.args.Composite(state=ocp.args.StandardRestore(restore_target))
        )["state"]
    manager.close()
    return TrainResult(
        state=state,
        graphdef=graphdef,
        mesh=mesh,
        state_sharding=state_sharding,
        predictor=predictor,
        last_step=total_steps,
        best_step=best_step,
        best_val_dice=best_val,
    )

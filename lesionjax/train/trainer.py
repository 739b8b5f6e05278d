"""The training loop: input pipeline, state, jitted step, validation, checkpoints, logs.

One function, ``train``, in banner-commented sections (as big_vision's train.py). The update step
itself is the pure function of ``lesionjax.train.step``; the run's state (model, optimizer,
shardings, checkpoints) comes from ``lesionjax.train.state``. Only process 0 writes logs and
shows the progress bar; checkpoints are written by Orbax collectively.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lesionjax.core.errors import ConfigError, StopRequested, UserError
from lesionjax.data import pipeline
from lesionjax.data.shards import ShardSet
from lesionjax.eval.evaluate_volumes import evaluate_cases
from lesionjax.eval.inference import VolumePredictor
from lesionjax.losses import get_loss
from lesionjax.train import inputs as inputs_lib
from lesionjax.train import preemption, transfer
from lesionjax.train import state as state_lib
from lesionjax.train import step as step_lib


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss or the gradient norm became NaN or infinite; the message names the step."""


@dataclasses.dataclass
class TrainResult:
    """The state to evaluate (the best checkpoint's, or the last), and where it came from."""

    state: step_lib.TrainState
    predictor: VolumePredictor  # or a SlidingWindowPredictor (3D): both have predict_volume
    checkpoint_step: int
    best_val_dice: float | None


class MetricsLog:
    """Appends one JSON object per line; only process 0 writes.

    ``resume(keep_through=s)`` prepares the file for a resumed run: a line cut short by a kill
    is removed, and so are the records stamped with a step after ``s`` (logged after the last
    checkpoint, they are about to be logged again), so every step appears once.
    """

    def __init__(self, path: Path):
        self.path = path
        self.enabled = jax.process_index() == 0

    def resume(self, *, keep_through: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        from lesionjax.core.atomic import atomic_write_text

        kept = []
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and record.get("step", 0) <= keep_through:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def validate(predictor: VolumePredictor, state, shards, case_ids, threshold: float) -> dict:
    """Validation metrics for the training log: mean volume Dice, precision, recall and IoU
    over the validation volumes with lesions ("dice", ...), Dice over all of them ("dice_all",
    where an empty prediction of a lesion-free volume scores 1), and the mean voxel ROC AUC
    over the volumes where it is defined (both classes present)."""
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
        "iou": mean("iou", True),
        "auc": mean("auc", True),
    }


def precise_bn_statistics(
    batch_stats: Callable, state: step_lib.TrainState, images: Iterable[jax.Array]
):
    """The mean over ``images`` batches of each batch's BatchNorm statistics ("precise BN").

    batch_stats(state, image) -> model_state holding that batch's statistics
    (``step.make_batch_stats_fn``). Returns ``state`` with its running statistics replaced by
    the average (unchanged when ``images`` is empty).
    """
    total, n = None, 0
    for image in images:
        stats = batch_stats(state, image)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    if n == 0:
        return state
    return state.replace(model_state=jax.tree.map(lambda x: x / n, total))


def check_finite(step: int, metrics: dict, last_checkpoint: int | None, where: Path) -> float:
    """The step's loss; NonFiniteLossError when the loss or the gradient norm is not finite."""
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        resume = (
            f"the last checkpoint is step {last_checkpoint} in {where}; resuming starts there"
            if last_checkpoint is not None
            else "no checkpoint was saved"
        )
        raise NonFiniteLossError(
            f"step {step + 1}: loss {loss}, gradient norm {grad_norm}; stopped before saving a "
            f"non-finite state ({resume}; try a lower optim.lr)"
        )
    return loss


def _best_saved_metric(manager) -> float | None:
    """The best validation metric among the saved steps (a resumed run keeps its best)."""
    values = []
    for step in manager.all_steps():
        metrics = manager.metrics(step)
        if metrics and state_lib.BEST_METRIC in metrics:
            values.append(float(state_lib.best_metric(metrics)))
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else None


def checkpoint_due(
    *,
    epoch: int,
    final: bool,
    every_epochs: int,
    min_seconds: float,
    since_last: float | None,
    metric: float | None,
    best: float | None,
) -> bool:
    """Whether to save at the end of ``epoch``.

    Always at the end of training, and whenever the validation metric beats the best saved one
    (so the best checkpoint is never lost); otherwise every ``every_epochs`` epochs, unless the
    last save is less than ``min_seconds`` old. A save costs ~0.4 s on this CPU even for a small
    model (measured: 2.4 s epochs on the Lesjak config spent 0.44 s saving), so short epochs would
    spend a fifth of their time saving.
    """
    if final:
        return True
    if metric is not None and math.isfinite(metric) and (best is None or metric > best):
        return True
    if epoch % every_epochs:
        return False
    return since_last is None or since_last >= min_seconds


def with_stop_flag(train_step: Callable) -> Callable:
    """``train_step`` whose batch carries ``"stop"`` (one float per row: each process fills its
    rows with its own stop-signal flag) and whose metrics return ``"stop"``, the maximum over the
    global batch: the same value on every process, computed inside the step (no extra
    collective), so all processes agree on where to stop."""

    def step(state, batch, key):
        batch = dict(batch)
        stop = jnp.max(batch.pop("stop"))
        state, metrics = train_step(state, batch, key)
        return state, {**metrics, "stop": stop}

    return step


def stop_signal_anywhere(local: bool) -> bool:
    """Whether any process has ``local`` set (one small all-gather; no-op on one process)."""
    from lesionjax.distributed import allgather_objects

    return any(allgather_objects(bool(local)))


def train(config, workdir: Path, shards: ShardSet, split: dict, objective=None) -> TrainResult:
    """Trains ``config``'s model on the ``split["train"]`` volumes of ``shards`` (resuming
    from ``workdir``'s checkpoints), validating on ``split["val"]``.

    ``objective`` (``lesionjax.train.objective``): a pretext task's model, on-device batch
    preparation and loss instead of the segmentation ones; runs without validation then keep
    the latest checkpoint.
    """
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    tcfg = config.train

    # ---------------------------------------------------------------- input pipeline
    if tcfg.batch_size % jax.device_count():
        raise ConfigError(
            f"train.batch_size={tcfg.batch_size}: must be divisible by the {jax.device_count()} "
            "devices (each device takes an equal share of the batch)"
        )
    transfer.check_init_config(tcfg)  # before any work
    inputs = inputs_lib.train_input(config, shards, split)
    steps_per_epoch = inputs.steps_per_epoch
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.get("max_steps", -1) > 0:
        total_steps = min(total_steps, tcfg.max_steps)
    dataset = inputs.dataset
    data_iter = iter(dataset)

    # ---------------------------------------------------------------- state and jitted steps
    run = state_lib.build_run_state(
        config,
        shards.n_channels,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        objective=objective,
    )
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    train_step = jax.jit(
        with_stop_flag(
            step_lib.make_train_step(
                run.graphdef,
                run.tx,
                None if objective is not None else get_loss(config.loss),
                augment_fn=inputs.augment_fn if objective is None else objective.prepare,
                objective_loss=None if objective is None else objective.loss,
            )
        ),
        in_shardings=(run.state_sharding, run.batch_sharding, run.replicated),
        out_shardings=(run.state_sharding, run.replicated),
        donate_argnums=0,
        compiler_options=step_lib.train_compiler_options(),
    )
    batch_stats = jax.jit(
        step_lib.make_batch_stats_fn(run.graphdef),
        in_shardings=(run.state_sharding, run.batch_sharding),
        out_shardings=run.state_sharding.model_state,
    )
    to_unit = inputs.to_unit  # uint8 -> [0, 1], no augmentation
    batch_keys = ("image", "mask", "weight") if objective is None else objective.batch_keys

    def device_batch(local: dict) -> dict:
        """This process's host batch -> global arrays (the host-only "index" stays behind)."""
        return pipeline.to_global_batch({k: local[k] for k in batch_keys}, run.batch_sharding)

    def train_batch(local: dict, stop: bool) -> dict:
        """``device_batch`` plus each process's stop flag, one per row (``with_stop_flag``)."""
        flags = np.full(len(local["weight"]), float(stop), np.float32)
        return {
            **device_batch(local),
            **pipeline.to_global_batch({"stop": flags}, run.batch_sharding),
        }

    def next_images(n: int):
        """The images of the next n training batches, read through a copy of the iterator's
        state (the training stream itself does not move)."""
        stats_iter = iter(dataset)
        stats_iter.set_state(data_iter.get_state())
        for _ in range(n):
            yield to_unit(None, device_batch(next(stats_iter)))["image"]

    precise_bn_batches = tcfg.get("precise_bn_batches", 0)
    if objective is not None and precise_bn_batches > 0:
        raise ConfigError(
            f"train.precise_bn_batches={precise_bn_batches}: precise BN is for segmentation "
            f"runs; the {objective.name} pretext task takes 0"
        )

    def with_precise_bn(state):
        """``state`` with precise BN statistics. Training reads batch statistics only: the
        running ones are read by validation and by what is saved, so this runs just before those
        (measured: 0.35 s of a 1.9 s Lesjak epoch without validation). The training stream is
        not moved by it; without precise BN no iterator copy is made."""
        if precise_bn_batches <= 0:
            return state
        return precise_bn_statistics(batch_stats, state, next_images(precise_bn_batches))

    predictor = inputs.make_predictor(run, config.eval.batch_size)

    # ---------------------------------------------------------------- checkpoints / resume
    ckpt_dir = state_lib.checkpoint_dir(workdir)
    manager = state_lib.open_checkpoints(workdir, keep_best=bool(split["val"]))
    metrics_log = MetricsLog(workdir / "metrics.jsonl")
    order_log = MetricsLog(workdir / "data_order.jsonl") if tcfg.get("log_data_order") else None
    start_step = 0
    latest = manager.latest_step()
    if latest is not None:
        state = state_lib.restore_state(manager, latest, run, data_iter=data_iter)
        start_step = int(jax.device_get(state.step))
        metrics_log.resume(keep_through=start_step)  # records are stamped with steps done
        if order_log is not None:
            order_log.resume(keep_through=start_step - 1)  # stamped with the step's index
        if is_main:
            print(f"resumed from {ckpt_dir} at step {start_step}", flush=True)
    else:  # a fresh start; with train.init_from, from another run's weights
        state = transfer.init_from_run(run.init_state(init_key), tcfg, workdir, announce=is_main)

    # ---------------------------------------------------------------- training loop
    from tqdm import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not is_main or not config.get("progress", True),
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    last_save: float | None = None
    best_saved = _best_saved_metric(manager)
    pending: tuple[int, dict] | None = None  # metrics of the previous step, read one step late
    window: list[float] = []
    t_last, seen_last = time.perf_counter(), start_step

    stopping = False  # a stop signal reached some process: save and stop after this step

    def check(step: int, metrics: dict) -> float:
        """The step's loss (checked finite); sets ``stopping`` when the step's batch carried a
        stop flag. Metrics are read at the same steps on every process (one step late, and at
        each log step), so every process sets it in the same iteration. A non-finite loss
        first lets the checkpoint still being written (asynchronously) finish: the error names
        it as the one to resume from. (Every process sees the same global loss, so all wait.)"""
        nonlocal stopping
        try:
            loss = check_finite(step, metrics, manager.latest_step(), ckpt_dir)
        except NonFiniteLossError:
            manager.wait_until_finished()
            raise
        stopping = stopping or float(metrics["stop"]) > 0
        return loss

    with preemption.StopSignals(announce=is_main) as signals:
        for step in range(start_step, total_steps):
            local = next(data_iter)
            if order_log is not None:
                order_log.write({"step": step, "index": local["index"].tolist()})
            state, metrics = train_step(
                state, train_batch(local, signals.requested), jax.random.fold_in(train_key, step)
            )
            # Reading the previous step's metrics lets the device run ahead by one step.
            if pending is not None:
                window.append(check(*pending))
            pending = (step, metrics)
            bar.update()
            done = step + 1
            end_of_epoch = done % steps_per_epoch == 0 or done == total_steps
            if done % tcfg.log_every == 0 or end_of_epoch:
                # Every step up to here is checked before anything is saved below.
                window.append(check(*pending))
                pending = None
                now = time.perf_counter()
                record = {
                    "step": done,
                    "epoch": done / steps_per_epoch,
                    "split": "train",
                    "loss": float(np.mean(window)),
                    "lr": float(run.schedule(step)),
                    "images_per_s": (done - seen_last) * tcfg.batch_size / (now - t_last),
                    # Wall-clock seconds since this (possibly resumed) run started, with compiling.
                    "seconds": now - t_start,
                }
                metrics_log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                window, t_last, seen_last = [], now, done
            if end_of_epoch:
                val = None
                epoch = done // steps_per_epoch
                val_every = max(1, int(tcfg.get("val_every_epochs", 1)))
                if split["val"] and (epoch % val_every == 0 or done == total_steps):
                    state = with_precise_bn(state)
                    val = validate(predictor, state, shards, split["val"], config.eval.threshold)
                    metrics_log.write(
                        {"step": done, "epoch": done / steps_per_epoch, "split": "val", **val}
                    )
                    bar.set_postfix(val_dice=f"{val['dice']:.3f}")
                metrics = state_lib.checkpoint_metrics(val)
                metric = metrics[state_lib.BEST_METRIC] if metrics else None
                now = time.perf_counter()
                # The last step always ends an epoch, so the final state is always saved here.
                if checkpoint_due(
                    epoch=epoch,
                    final=done == total_steps,
                    every_epochs=tcfg.checkpoint_every_epochs,
                    min_seconds=tcfg.get("checkpoint_min_seconds", 0.0),
                    since_last=None if last_save is None else now - last_save,
                    metric=metric,
                    best=best_saved,
                ):
                    if not split["val"]:
                        state = with_precise_bn(state)
                    state_lib.save_state(manager, done, state, data_iter=data_iter, metrics=metrics)
                    last_save = now
                    if metric is not None and math.isfinite(metric):
                        best_saved = metric if best_saved is None else max(best_saved, metric)
                t_last = time.perf_counter()  # validation time is not training throughput
            if stopping and done < total_steps:
                # Every process read the same flags at the same steps: all stop here.
                if pending is not None:
                    window.append(check(*pending))
                    pending = None
                if manager.latest_step() != done:
                    state_lib.save_state(manager, done, state, data_iter=data_iter)
                manager.wait_until_finished()
                bar.close()
                raise StopRequested(
                    f"{signals.name or 'a stop signal on another process'}: checkpoint saved at "
                    f"step {done} of {total_steps} in {ckpt_dir}; run the same command again to "
                    "resume there"
                )
    bar.close()
    manager.wait_until_finished()
    if stop_signal_anywhere(signals.requested):
        # A signal after the last batch: training is saved, the rest (evaluation) is not run.
        raise StopRequested(
            f"{signals.name or 'a stop signal on another process'}: training finished and saved "
            f"at step {total_steps} in {ckpt_dir}; run the same command again to go on from there"
        )

    # ---------------------------------------------------------------- best checkpoint
    step, best_val = state_lib.pick_step(manager)
    if step != int(jax.device_get(state.step)):
        state = state_lib.restore_state(manager, step, run)
    manager.close()
    return TrainResult(
        state=state, predictor=predictor, checkpoint_step=step, best_val_dice=best_val
    )

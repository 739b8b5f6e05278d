"""Tasks the main job dispatches on (``config.task``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax

from lesionjax.data import pipeline
from lesionjax.data.prepare import prepare_shards, shards_dir


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_segmentation(config, workdir: Path) -> dict:
    """Data -> shards -> train (resuming) -> evaluate the test fold -> report.

    Returns the evaluation summary (also written to ``workdir/eval/summary.json``).
    """
    from lesionjax.eval.evaluate_volumes import evaluate_cases, write_evaluation
    from lesionjax.train.trainer import train

    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    progress = config.get("progress", True)
    t0 = time.perf_counter()
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
        shards = prepare_shards(config, workdir, progress=progress)
    _sync("shards-ready")
    if not is_main:
        shards = pipeline.ShardSet.load(shards_dir(config, workdir))
    t_data = time.perf_counter() - t0

    split = pipeline.split_case_ids(shards, config.data.test_fold, config.data.val_fold)
    result = train(config, workdir, shards, split)
    t_train = time.perf_counter() - t0 - t_data

    eval_split = config.eval.split
    per_volume, overlays = evaluate_cases(
        result.predictor,
        result.state,
        shards,
        split[eval_split],
        threshold=config.eval.threshold,
        n_overlays=config.eval.n_overlays,
        progress=progress,
        auc=True,
    )
    summary = {}
    if is_main:
        summary = write_evaluation(
            workdir,
            per_volume,
            overlays,
            split=eval_split,
            extra={
                "checkpoint_step": result.best_step or result.last_step,
                "best_val_dice": result.best_val_dice,
                "seconds": {
                    "data": round(t_data, 1),
                    "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1),
                },
            },
            title=f"lesionjax evaluation: {config.get('name', 'run')} ({eval_split} fold "
            f"{config.data.test_fold})",
        )
    _sync("eval-written")
    return summary


TASKS = {"segment2d": run_segmentation}


def run_task(config, workdir: Path) -> dict:
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
    return TASKS[config.task](config, workdir)


def format_result(summary: dict) -> str:
    keys = ("mean_dice", "mean_dice_all", "n_volumes", "n_lesion_volumes", "seconds")
    return json.dumps({k: summary.get(k) for k in keys})

"""The 2D segmentation task: data -> shards -> train (resuming) -> evaluate -> report."""

from __future__ import annotations

import time
from pathlib import Path

import jax

from lesionjax.core.errors import ConfigError, UserError
from lesionjax.data import sampling
from lesionjax.data.shards import ShardSet
from lesionjax.eval.runs import write_config, write_preprocessing
from lesionjax.tasks.cavity_mask import native_cavity_filter
from lesionjax.tasks.data import prepare_shards
from lesionjax.tasks.native import native_truth


class NoMasksError(UserError):
    """Segmentation needs lesion masks and the dataset has none (RSNA, plain CQ500)."""


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_has_masks(shards: ShardSet, case_ids, what: str) -> None:
    """Refuses volumes built without a mask: their all-zero masks would train the model to
    predict nothing and score an empty prediction as perfect."""
    missing = shards.unlabelled(case_ids)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        dataset = shards.plan.get("dataset", "?")
        raise NoMasksError(
            f"{shards.root / 'manifest.json'}: {len(missing)} of the {len(case_ids)} volumes "
            f"for {what} have no lesion mask (has_mask: false; {shown}); segmentation needs "
            f"masks, and dataset {dataset!r} has none for them"
        )


def run_segmentation(config, workdir: Path) -> dict:
    """Data -> shards -> train (resuming) -> evaluate the test fold -> report.

    Returns the evaluation summary (also written to ``workdir/eval/summary.json``).
    """
    from lesionjax.eval.evaluate_volumes import evaluate_cases, write_evaluation
    from lesionjax.models.registry import check_model_config
    from lesionjax.train.trainer import train

    check_model_config(config.model)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    progress = config.get("progress", True)
    t0 = time.perf_counter()
    if is_main:
        write_config(workdir, config)
    shards = prepare_shards(config, workdir, progress=progress)
    if is_main:  # what lesionjax.predict feeds the model with, from the run folder alone
        write_preprocessing(workdir, shards.plan, shards.n_channels)
    t_data = time.perf_counter() - t0

    split = sampling.split_case_ids(shards, config.data.test_fold, config.data.val_fold)
    eval_split = config.eval.split
    if eval_split not in split:
        raise ConfigError(f"eval.split={eval_split!r}: expected one of {sorted(split)}")
    check_has_masks(shards, split["train"] + split["val"], "training and validation")
    check_has_masks(shards, split[eval_split], f"evaluation ({eval_split})")
    result = train(config, workdir, shards, split)
    t_train = time.perf_counter() - t0 - t_data

    native = config.eval.get("native", False)
    cavity_filter = native_cavity_filter(config, workdir)  # eval.cavity_mask ("": none)
    per_volume, overlays = evaluate_cases(
        result.predictor,
        result.state,
        shards,
        split[eval_split],
        threshold=config.eval.threshold,
        n_overlays=config.eval.n_overlays,
        progress=progress,
        auc=True,
        nsd_tolerance_mm=config.eval.nsd_tolerance_mm,
        native_truth=native_truth(config, workdir) if native else None,
        native_filter=cavity_filter,
    )
    summary = {}
    if is_main:
        summary = write_evaluation(
            workdir,
            per_volume,
            overlays,
            split=eval_split,
            extra={
                "checkpoint_step": result.checkpoint_step,
                "best_val_dice": result.best_val_dice,
                "threshold": config.eval.threshold,
                "cavity_mask": str(config.eval.get("cavity_mask", "") or ""),
                "nsd_tolerance_mm": config.eval.nsd_tolerance_mm,
                "seconds": {
                    "data": round(t_data, 1),
                    "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1),
                },
            },
            title=f"lesionjax evaluation: {config.get('name', 'run')} ({eval_split} fold "
            f"{config.data.test_fold})",
            draw_figures=bool(config.eval.get("figures", True)),
        )
    _sync("eval-written")
    return summary

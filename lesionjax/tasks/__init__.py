"""The tasks the main job dispatches on (``config.task``): the top floor, which may use both
the offline stage (``data_prep``) and the library."""

from __future__ import annotations

import json
from pathlib import Path

from lesionjax.core.errors import ConfigError
from lesionjax.tasks.cascade3d import run_cascade
from lesionjax.tasks.cavity import run_cavity
from lesionjax.tasks.pool import run_pool
from lesionjax.tasks.pretext import run_pretext
from lesionjax.tasks.segment2d import run_segmentation

TASKS = {
    "segment2d": run_segmentation,
    "cascade3d": run_cascade,
    "cavity": run_cavity,
    "pool": run_pool,
    "pretext": run_pretext,
}


def run_task(config, workdir: Path) -> dict:
    if config.task not in TASKS:
        raise ConfigError(f"task={config.task!r}: expected one of {sorted(TASKS)}")
    return TASKS[config.task](config, workdir)


def format_result(summary: dict) -> str:
    """The one-line result of a task: its headline numbers that the summary has."""
    keys = ("task", "mean_dice", "mean_dice_all", "final_loss", "n_volumes", "n_lesion_volumes",
            "seconds")  # fmt: skip
    return json.dumps({k: summary[k] for k in keys if k in summary})

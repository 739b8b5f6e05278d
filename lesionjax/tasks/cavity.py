"""Intracranial-cavity models (the label-efficient paper's ICM): two 2D U-Nets trained with Dice
loss on the cases' cavity masks, one on the tissue window [0, 600] HU and one on the bone window
[150, 650] HU; the cavity is the union of their masks.

    python -m lesionjax.main --config configs/cavity.py [--workdir runs/cavity]

1. **Train**: each window is an ordinary 2D segmentation run (``data.target = "cavity"``: the
   shards' mask is the case's ``icm`` file) in ``<workdir>/<window>/``, with its own shards
   (``<workdir>/shards_<window>/``) and its own evaluation of the test fold (``eval/``).
2. **The union, scored**: every test case is read again from the dataset, prepared with each
   model's own preprocessing, predicted, mapped back to the native grid, and the two masks
   joined there; the cavity Dice of each model and of the union against the case's own cavity
   mask, per volume and in the mean, in ``<workdir>/cavity.md`` and ``cavity.json``.
3. **Applied** (``CavityModel``): ``lesionjax-predict --cavity-mask RUN`` and the evaluation's
   ``eval.cavity_mask = RUN`` zero a lesion prediction outside the union, on the native grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from lesionjax.core.atomic import atomic_write_json, atomic_write_text
from lesionjax.core.errors import ConfigError
from lesionjax.eval.runs import write_config
from lesionjax.tasks.cavity_mask import RESULT, CavityModel


def member_config(config, window: str, batch_size: int, workdir: Path):
    """The 2D segmentation config of the ``window`` model (its own shards and run folder)."""
    c = config.copy_and_resolve_references()
    c.unlock()
    c.task = "segment2d"
    c.name = f"{config.get('name', 'cavity')}_{window}"
    c.data.windows = (window,)
    c.data.target = "cavity"
    base = c.data.get("shards_dir", "") or str(Path(workdir) / "shards")
    c.data.shards_dir = f"{base}_{window}"
    if c.data.source == "phantom" and not c.data.raw_dir:
        c.data.raw_dir = str(Path(workdir) / "phantom")  # both models read one phantom set
    if batch_size > 0:
        c.train.batch_size = int(batch_size)
    c.lock()
    return c


def _members(config) -> list[tuple[str, int]]:
    windows = tuple(config.cavity.windows)
    sizes = tuple(config.cavity.batch_sizes) or (0,) * len(windows)
    if not windows or len(sizes) != len(windows):
        raise ConfigError(
            f"cavity.windows={windows}, cavity.batch_sizes={sizes}: one batch size per window "
            "(or () for train.batch_size)"
        )
    return list(zip(windows, (int(b) for b in sizes), strict=True))


# ------------------------------------------------------------------------------ the task


def evaluate_union(config, workdir: Path, model: CavityModel, case_ids: Sequence[str]) -> dict:
    """Cavity Dice (and the other volume metrics) of each model and of the union, per case,
    on the native grids; ``{"per_volume": [...], "mean": {name: {metric: mean}}}``."""
    from tqdm import tqdm

    from data_prep.preprocess import native_mask
    from lesionjax.core.geometry import spacing_of
    from lesionjax.eval.metrics import volume_metrics
    from lesionjax.tasks.native import dataset_cases

    case = dataset_cases(config, workdir)
    names = [*(m.workdir.name for m in model.models), "union"]
    tolerance = float(config.eval.nsd_tolerance_mm)
    rows = []
    progress = config.get("progress", True)
    for case_id in tqdm(case_ids, desc="cavity union", unit="vol", disable=not progress):
        files = case(case_id)
        probs, grid = model.probabilities(files)
        truth = native_mask(files, grid, "cavity") > 0
        spacing = spacing_of(grid.native_affine)
        masks = [p >= model.threshold for p in probs]
        masks.append(np.logical_or.reduce(masks))
        row = {"case_id": case_id}
        for name, pred in zip(names, masks, strict=True):
            m = volume_metrics(
                pred, truth, spacing=spacing, surface=True, nsd_tolerance_mm=tolerance
            )
            row[name] = {k: m[k] for k in ("dice", "precision", "recall", "hd95")}
        rows.append(row)
    mean = (
        {
            name: {k: float(np.mean([r[name][k] for r in rows])) for k in rows[0][name]}
            for name in names
        }
        if rows
        else {}
    )
    return {"per_volume": rows, "mean": mean}


def _table(result: dict) -> str:
    names = list(result["mean"])
    lines = [
        "| model | cavity Dice | precision | recall | HD95 (mm) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        m = result["mean"][name]
        hd = "-" if not math.isfinite(m["hd95"]) else f"{m['hd95']:.2f}"
        lines.append(
            f"| {name} | {m['dice']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} | {hd} |"
        )
    lines += ["", "| case | " + " | ".join(f"{n} Dice" for n in names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for r in result["per_volume"]:
        lines.append(
            f"| {r['case_id']} | " + " | ".join(f"{r[n]['dice']:.4f}" for n in names) + " |"
        )
    return "\n".join(lines)


def run_cavity(config, workdir: Path) -> dict:
    """Trains (resuming) the cavity model of every window, then scores their union on the test
    fold (see the module docstring). Returns the ``cavity.json`` dict."""
    from lesionjax.data import sampling
    from lesionjax.data.shards import ShardSet
    from lesionjax.tasks.segment2d import run_segmentation

    workdir = Path(workdir)
    t0 = time.perf_counter()
    is_main = jax.process_index() == 0
    if is_main:
        write_config(workdir, config)
    members = _members(config)
    first_shards = None
    for window, batch_size in members:
        sub = member_config(config, window, batch_size, workdir)
        if is_main:
            print(f"cavity model: window {window!r} -> {workdir / window}", flush=True)
        run_segmentation(sub, workdir / window)
        first_shards = first_shards or sub.data.shards_dir
    shards = ShardSet.load(first_shards)  # the windows' sets share their cases and folds
    split = sampling.split_case_ids(shards, config.data.test_fold, config.data.val_fold)
    case_ids = split[config.eval.split]
    result = {"windows": [w for w, _ in members], "split": config.eval.split}
    if is_main:  # CavityModel.load reads the windows from here
        atomic_write_json(workdir / RESULT, {**result, "complete": False})
    model = CavityModel.load(workdir)
    result.update(evaluate_union(config, workdir, model, case_ids))
    result["mean_dice"] = result["mean"].get("union", {}).get("dice", math.nan)
    result["n_volumes"] = len(case_ids)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["complete"] = True
    if is_main:
        atomic_write_json(workdir / RESULT, result)
        text = (
            f"# Intracranial-cavity models: {config.get('name', 'cavity')}\n\n"
            f"Test fold {config.data.test_fold} ({len(case_ids)} volumes), native grids, "
            f"threshold {model.threshold}; the union is the cavity mask.\n\n"
            + _table(result)
            + "\n"
        )
        atomic_write_text(workdir / "cavity.md", text)
        print(f"cavity Dice of the union: {result['mean_dice']:.4f}")
    result["report"] = str(workdir / "cavity.md")
    result["summary_path"] = str(workdir / RESULT)
    return result

"""The 3D cascade U-Net task (INSTANCE 2022 paper, nnU-Net's cascade), end to end.

    python -m lesionjax.main --config configs/instance2022_cascade.py [--workdir DIR]

1. **Data**: the dataset's fingerprint, the 3D plan and one shard set per stage
   (``build_shards --layout 3d``), in ``<workdir>/shards`` (or ``data.shards_dir``).
2. **Stage 1** (``cascade.stages[0]``, the low-resolution set): one run per cross-validation
   fold (``cascade.cv_folds``: train on the other CV folds, validate on its own), each a normal
   run folder ``<workdir>/stage1_lowres/fold_<k>/`` (checkpoints, metrics.jsonl, resumable).
   Its out-of-fold predictions, each case predicted by the one fold model that did not see it,
   are resampled to the next stage's grid and stored as ``priors/<case>.npy``; the held-out
   test cases get the mean of every fold model.
3. **Stage 2** (``cascade.stages[1]``, full resolution) trains on the image plus the stage-1
   prior as one more channel (``data.priors.ShardSetWithPriors``), the same folds.
4. **Evaluation**, on the native grids with sliding windows and mirroring
   (``eval.mirror_axes``): every fold model of every stage on its out-of-fold cases
   (``eval_oof/``) and on the test fold (``eval/``); the ``cascade.ensemble_size`` best folds of
   the last stage by out-of-fold Dice, their probabilities averaged, on the test fold
   (``<workdir>/ensemble/``); and ``<workdir>/cascade.md`` + ``cascade.json``: the table of the
   paper's Table 1 (DSC, HD, RVD, NSD per fold and stage, stage 1 alone, the ensemble).

Everything resumes: a fold whose training finished is not trained again, a fold whose
evaluation is recorded (``fold.json``) is not evaluated again, a prior already written is kept.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from lesionjax.core.atomic import atomic_write_json, atomic_write_text
from lesionjax.core.errors import ConfigError
from lesionjax.core.geometry import zoom_to_shape
from lesionjax.data.priors import ShardSetWithPriors, write_prior
from lesionjax.eval.ensemble import EnsemblePredictor, Member
from lesionjax.eval.runs import write_config, write_preprocessing
from lesionjax.tasks.data import prepare_3d
from lesionjax.tasks.native import native_truth

TABLE_KEYS = ("dice", "hd", "rvd", "nsd")


def stage_config(config, stage_plan: dict, n_devices: int, index: int = 0):
    """``config`` with what it leaves empty taken from the stage's plan: patch, features,
    pools, batch size (rounded up to the devices), axial-only rotation; and the epochs and
    foreground fraction of stage ``index`` (0-based, in ``cascade.stages``) when
    ``cascade.stage_epochs`` / ``cascade.stage_fg_fraction`` give them."""
    c = config.copy_and_resolve_references()
    epochs = _stage_value(
        c, "stage_epochs", index, lambda v: v >= 1,
        what="one positive number of epochs", default="train.epochs",
    )  # fmt: skip
    if epochs is not None:
        c.train.epochs = int(epochs)
    fg = _stage_value(
        c, "stage_fg_fraction", index, lambda v: 0.0 <= v <= 1.0,
        what="one fraction in [0, 1]", default="data.fg_fraction",
    )  # fmt: skip
    if fg is not None:
        c.data.fg_fraction = float(fg)
    if not tuple(c.data.patch):
        c.data.patch = tuple(stage_plan["patch"])
    if not tuple(c.model.features):
        c.model.features = tuple(stage_plan["features"])
    if not tuple(c.model.pools):
        # A config's own (shallower) widths take the plan's first pools; deeper: no pooling.
        pools = [tuple(p) for p in stage_plan["pools"]][: len(c.model.features) - 1]
        pools += [(1, 1, 1)] * (len(c.model.features) - 1 - len(pools))
        c.model.pools = tuple(pools)
    divisor = [int(np.prod([p[i] for p in c.model.pools])) for i in range(3)]
    if any(n % d for n, d in zip(c.data.patch, divisor, strict=True)):
        raise ConfigError(
            f"data.patch={tuple(c.data.patch)}: each axis must be a multiple of {divisor}, the "
            f"product of the pools {tuple(c.model.pools)} per axis"
        )
    if c.train.batch_size <= 0:
        c.train.batch_size = int(stage_plan["batch_size"])
    if c.train.batch_size % n_devices:
        c.train.batch_size = -(-c.train.batch_size // n_devices) * n_devices
    if c.augment3d.axial_only < 0:
        c.augment3d.axial_only = int(bool(stage_plan["rotate_axial_only"]))
    return c


def _stage_value(c, key: str, index: int, valid, *, what: str, default: str):
    """``cascade.<key>``'s value for stage ``index``, or None when it is () (``default`` then
    applies to every stage); ConfigError unless it holds one valid value per stage."""
    values = tuple(c.cascade.get(key, ()))
    if not values:
        return None
    stages = tuple(c.cascade.stages)
    if len(values) != len(stages) or not all(valid(v) for v in values):
        raise ConfigError(
            f"cascade.{key}={values}: {what} per stage of cascade.stages={stages} (or () for "
            f"{default} in every stage)"
        )
    return values[index]


def fold_split(shards, fold: int, cv_folds, test_fold: int) -> dict[str, list[str]]:
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for v in shards.volumes:
        f = v["fold"]
        if f == test_fold:
            split["test"].append(v["case_id"])
        elif f == fold:
            split["val"].append(v["case_id"])
        elif f in cv_folds:
            split["train"].append(v["case_id"])
    return split


class _Recorder:
    """Forwards ``predict_volume`` and hands each volume's probabilities to ``on_volume``."""

    def __init__(self, predictor, on_volume):
        self.predictor, self.on_volume, self.n = predictor, on_volume, 0

    def predict_volume(self, state, image):
        probs = self.predictor.predict_volume(state, image)
        self.on_volume(self.n, probs)
        self.n += 1
        return probs


def _summary_row(summary: dict, per_volume: list[dict]) -> dict:
    """Means over the lesion volumes of DSC, HD, NSD and the INSTANCE evaluation's RVD,
    |V_pred - V_gt| / V_gt (the per-volume ``rvd`` is signed)."""
    lesion = summary.get("lesion", {})
    row = {}
    for key in ("dice", "hd", "nsd"):
        stats = lesion.get(key, {})
        row[key] = stats.get("mean", math.nan) if isinstance(stats, dict) else math.nan
    rvd = [
        abs(v["rvd"])
        for v in per_volume
        if v.get("gt_voxels", 0) > 0 and math.isfinite(v.get("rvd", math.nan))
    ]
    row["rvd"] = float(np.mean(rvd)) if rvd else math.nan
    row["n"] = lesion.get("n", 0)
    return row


def _evaluate(config, workdir, predictor, state, shards, case_ids, out_dir, split, title, on_vol):
    from lesionjax.eval.evaluate_volumes import evaluate_cases, summarize, write_evaluation

    if not case_ids:
        return None
    pred = _Recorder(predictor, on_vol) if on_vol is not None else predictor
    native = config.eval.get("native", True)
    per_volume, overlays = evaluate_cases(
        pred,
        state,
        shards,
        case_ids,
        threshold=config.eval.threshold,
        n_overlays=config.eval.n_overlays,
        progress=config.get("progress", True),
        auc=False,
        nsd_tolerance_mm=config.eval.nsd_tolerance_mm,
        native_truth=native_truth(config, workdir) if native else None,
    )
    if jax.process_index() == 0:
        write_evaluation(
            out_dir.parent,
            per_volume,
            overlays,
            split=split,
            title=title,
            out_dir=out_dir,
            draw_figures=bool(config.eval.get("figures", True)),
        )
    return _summary_row(summarize(per_volume), per_volume)


def _eval_predictor(stage_cfg, shards):
    """Sliding windows with the final evaluation's mirroring, for a stage's models."""
    from lesionjax.eval.sliding_window import SlidingWindowPredictor
    from lesionjax.train import state as state_lib
    from lesionjax.train.step import train_compiler_options

    run = state_lib.build_run_state(stage_cfg, shards.n_channels)
    return SlidingWindowPredictor(
        run.predict_fn(),
        run.mesh,
        run.state_sharding,
        tuple(stage_cfg.data.patch),
        batch_size=stage_cfg.eval.batch_size,
        step=stage_cfg.eval.window_step,
        mirror_axes=tuple(stage_cfg.eval.mirror_axes),
        compiler_options=train_compiler_options(),
    )


def run_cascade(config, workdir: Path) -> dict:
    """The cascade (see the module docstring). Returns the summary of the last stage's
    ensemble on the test fold (also ``<workdir>/ensemble/summary.json``)."""
    from lesionjax.train.trainer import train

    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    t0 = time.perf_counter()
    if is_main:
        write_config(workdir, config)
    plan, stage_sets = prepare_3d(config, workdir, progress=config.get("progress", True))
    stages = tuple(config.cascade.stages)
    missing = [s for s in stages if s not in plan["stages"]]
    if missing or not stages:
        raise ConfigError(
            f"cascade.stages={stages}: the plan has the stages {sorted(plan['stages'])} "
            "(raise data.min_lowres_factor for a low-resolution stage)"
        )
    from lesionjax.tasks.segment2d import check_has_masks

    for name, stage_set in stage_sets.items():
        check_has_masks(stage_set, [v["case_id"] for v in stage_set.volumes], f"the {name} stage")
    cv_folds = tuple(int(f) for f in config.cascade.cv_folds)
    test_fold = int(config.data.test_fold)
    if test_fold in cv_folds:
        raise ConfigError(f"data.test_fold={test_fold} is one of cascade.cv_folds {cv_folds}")
    run_folds = tuple(int(f) for f in config.cascade.get("run_folds", ())) or cv_folds
    if set(run_folds) - set(cv_folds):
        raise ConfigError(f"cascade.run_folds={run_folds}: not all in cascade.cv_folds {cv_folds}")
    if len(stages) > 1 and set(run_folds) != set(cv_folds):
        raise ConfigError(
            f"cascade.run_folds={run_folds}: stage 2 needs stage 1's out-of-fold predictions "
            f"from every fold of {cv_folds} (run a subset with one stage only)"
        )
    rows: list[dict] = []
    prior_dir: Path | None = None
    ensemble_summary: dict = {}
    for index, stage in enumerate(stages, start=1):
        shards = stage_sets[stage]
        if prior_dir is not None:
            shards = ShardSetWithPriors(shards, prior_dir)
        cfg = stage_config(config, plan["stages"][stage], jax.device_count(), index - 1)
        stage_dir = workdir / f"stage{index}_{stage}"
        next_set = stage_sets[stages[index]] if index < len(stages) else None
        next_priors = stage_dir / "priors" if next_set is not None else None
        members = []
        eval_pred = None
        for fold in run_folds:
            split = fold_split(shards, fold, cv_folds, test_fold)
            if not split["train"] or not split["val"]:
                raise ConfigError(f"fold {fold}: no training or validation volumes ({split})")
            run_dir = stage_dir / f"fold_{fold}"
            if is_main:
                write_config(run_dir, cfg)
                # What lesionjax.predict feeds this fold's model with (+ the prior channel).
                write_preprocessing(run_dir, shards.plan, shards.n_channels)
            result = train(cfg, run_dir, shards, split)
            if eval_pred is None:
                eval_pred = _eval_predictor(cfg, shards)
            done_file = run_dir / "fold.json"
            done = json.loads(done_file.read_text()) if done_file.is_file() else None
            if done is None:
                on_vol = None
                if next_priors is not None:
                    val_ids = split["val"]

                    def on_vol(i, probs, ids=val_ids, folder=next_priors, target=next_set):
                        _store_prior(folder, target, ids[i], probs)

                oof = _evaluate(
                    cfg, workdir, eval_pred, result.state, shards, split["val"],
                    run_dir / "eval_oof", "val", f"stage {index} ({stage}) fold {fold}: "
                    "out-of-fold", on_vol,
                )  # fmt: skip
                test = None
                if config.cascade.evaluate_folds_on_test:
                    test = _evaluate(
                        cfg, workdir, eval_pred, result.state, shards, split["test"],
                        run_dir / "eval", "test", f"stage {index} ({stage}) fold {fold}: test",
                        None,
                    )  # fmt: skip
                done = {
                    "fold": fold,
                    "checkpoint_step": result.checkpoint_step,
                    "oof": oof,
                    "test": test,
                }
                if is_main:
                    atomic_write_json(done_file, done)
            members.append((fold, done, result.state))
            rows.append({"stage": index, "name": stage, **done})
        # The test cases' prior: the mean of every fold model (as nnU-Net's cascade predicts).
        split = fold_split(shards, cv_folds[0], cv_folds, test_fold)
        if next_priors is not None and split["test"]:
            ensemble_all = EnsemblePredictor([Member(eval_pred, s) for _, _, s in members])
            for case_id in split["test"]:
                if not (next_priors / f"{case_id}.npy").is_file():
                    probs = ensemble_all.predict_volume(None, shards.read_volume(case_id)["image"])
                    _store_prior(next_priors, next_set, case_id, probs)
        # The best folds by out-of-fold Dice form this stage's ensemble.
        # Folds without a finite out-of-fold Dice rank last.
        ranked = sorted(members, key=lambda m: -_finite((m[1]["oof"] or {}).get("dice"), -1.0))
        chosen = ranked[: int(config.cascade.ensemble_size)]
        ens = EnsemblePredictor([Member(eval_pred, s) for _, _, s in chosen])
        ens_dir = stage_dir / "ensemble"
        summary = _evaluate(
            cfg, workdir, ens, None, shards, split["test"], ens_dir / "eval", "test",
            f"stage {index} ({stage}) ensemble of folds {[f for f, _, _ in chosen]}: test", None,
        )  # fmt: skip
        rows.append(
            {
                "stage": index,
                "name": stage,
                "fold": "ensemble",
                "members": [f for f, _, _ in chosen],
                "test": summary,
            }
        )
        prior_dir = next_priors
        if index == len(stages) and is_main:
            ensemble_summary = json.loads((ens_dir / "eval" / "summary.json").read_text())
    if is_main:
        table = cascade_table(rows, stages, compare_rows(config.cascade.get("compare_runs", ())))
        atomic_write_text(workdir / "cascade.md", table)
        atomic_write_json(
            workdir / "cascade.json",
            {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "plan": plan},
        )
        last_dir = workdir / f"stage{len(stages)}_{stages[-1]}" / "ensemble" / "eval"
        ensemble_summary["report"] = str(workdir / "cascade.md")
        ensemble_summary["summary_path"] = str(last_dir / "summary.json")
        ensemble_summary["seconds"] = {"total": round(time.perf_counter() - t0, 1)}
    return ensemble_summary


def _finite(value, default: float) -> float:
    return value if isinstance(value, int | float) and math.isfinite(value) else default


def _store_prior(folder: Path, next_set, case_id: str, probs: np.ndarray) -> None:
    """Stage-1 probabilities on the next stage's grid (both grids span the volume's extent,
    so a zoom to the other shape is the exact geometric map), stored as uint8."""
    if jax.process_index() != 0:
        return
    shape = tuple(next_set.volume(case_id)["shard_shape"][:3])
    write_prior(folder, case_id, zoom_to_shape(probs.astype(np.float32), shape, order=1))


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4f}"


def compare_rows(workdirs) -> list[tuple[str, dict]]:
    """The test-fold rows of other finished cascade runs (``cascade.compare_runs``: e.g. the
    ``:one_window`` variant's workdir, for Table 1's "Baseline (1 channel input)") as (model
    name, test numbers), each name prefixed with the run's channels. A run without
    ``cascade.json`` is a ConfigError naming it."""
    out = []
    for workdir in workdirs:
        path = Path(workdir) / "cascade.json"
        if not path.is_file():
            raise ConfigError(f"cascade.compare_runs: {path}: not found (run that cascade first)")
        try:
            rows = json.loads(path.read_text())["rows"]
            config = json.loads((Path(workdir) / "config.json").read_text())
            windows = tuple(config["data"]["windows"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"cascade.compare_runs: {path}: unreadable ({e})") from e
        n = len(windows)
        label = f"{n} channel{'s' if n > 1 else ''} ({', '.join(windows)})"
        last = max(r["stage"] for r in rows)
        out += [
            (f"{label}: {_model_name(r, last)}", r["test"])
            for r in rows
            if r.get("test") is not None
        ]
    return out


def _model_name(row: dict, last: int) -> str:
    """A row's name in the table, e.g. ``cascade, fold 0`` or ``stage 1 only, ensemble of folds
    [2, 0]``; ``last``: the run's number of stages (its last stage, given a prior, is the
    cascade)."""
    kind = "cascade" if row["stage"] == last and last > 1 else f"stage {row['stage']} only"
    if row["fold"] == "ensemble":
        return f"{kind}, ensemble of folds {row['members']}"
    return f"{kind}, fold {row['fold']}"


def cascade_table(rows: list[dict], stages, compare=()) -> str:
    """The paper's Table 1 layout: DSC, HD (mm), RVD, NSD on the test fold per model, and the
    out-of-fold numbers of each fold (mean over the lesion volumes). ``compare``: (model name,
    test numbers) of other runs (`compare_rows`), listed after this run's."""
    lines = [
        "# 3D cascade U-Net: cross-validation and ensemble",
        "",
        "Test fold (held out of every fold), native grids, mean over the lesion volumes.",
        "",
        "| model | DSC | HD (mm) | RVD (abs) | NSD | n |",
        "|---|---|---|---|---|---|",
    ]
    last = len(stages)
    named = [(_model_name(r, last), r["test"]) for r in rows if r.get("test") is not None]
    named += compare
    for name, t in named:
        lines.append(
            f"| {name} | {_fmt(t['dice'])} | {_fmt(t['hd'])} | {_fmt(t['rvd'])} | "
            f"{_fmt(t['nsd'])} | {t['n']} |"
        )
    lines += [
        "",
        "Out-of-fold (each fold model on its own held-out fold): what picks the ensemble.",
        "",
        "| stage | fold | DSC | HD (mm) | RVD (abs) | NSD | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r.get("oof")
        if o is None:
            continue
        lines.append(
            f"| {r['stage']} ({r['name']}) | {r['fold']} | {_fmt(o['dice'])} | {_fmt(o['hd'])} | "
            f"{_fmt(o['rvd'])} | {_fmt(o['nsd'])} | {o['n']} |"
        )
    return "\n".join(lines) + "\n"

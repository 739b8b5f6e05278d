"""Re-evaluate a trained run, or compare several runs.

    python -m lesionjax.evaluate --workdir DIR [--split test] [--step N] [--threshold T]
        [--native | --shard-grid] [--ensemble RUN ...] [--tta]
    python -m lesionjax.evaluate --compare DIR1 DIR2 ... --out OUTDIR [--names a,b] [--metric dice]

``--workdir`` restores a run from its checkpoint (the best one by validation Dice, or ``--step``),
predicts the split's volumes again and rewrites ``DIR/eval/`` (``eval_<split>/`` for a split other
than the config's): summary.json, per_volume.{json,csv}, report.md with training curves,
overlays, Dice box plots by ICH subtype and a t-SNE of bottleneck features. ``--native`` maps
each prediction back to its scan's native grid and scores it there against the original mask
file (the main job's final evaluation does so by default, ``eval.native``); ``--shard-grid``
scores on the training grid. summary.json's ``grid`` and the report's title say which.
``--ensemble B C`` averages the probabilities of runs B and C with DIR's on DIR's held-out
volumes (every run must have held them out, and read the same preprocessing) and ``--tta`` adds
each run's prediction of the left-right mirrored volume; they write ``eval_ensemble/`` or
``eval_tta/`` and summary.json lists the members.

``--compare`` reads each run's ``eval/per_volume.json`` (a run folder or its eval folder) and
writes into OUTDIR the mean ± std tables (markdown + CSV), Welch t-tests (markdown + CSV), box
plots, a p-value heatmap and side-by-side overlays. Metrics come from the saved per-volume
results, so they are exactly the numbers each run reported; the overlays re-predict a few
slices from each run's checkpoint (only the overlays need checkpoints and shards, and a run
without them is left out of that figure with a note). Every run must have been evaluated on the
same volumes.

Bad input (no config, no checkpoint, no results, different volume sets) ends with one line
``error: ...`` on stderr and exit status 1.

One command, two modes that share a run's restoration (``load_run``): the comparison re-predicts
its overlays from each run's checkpoint exactly as ``--workdir`` does. The computing lives in the
library (``lesionjax.eval``); this file is the command's loading, checking and wiring.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lesionjax.cli import add_cavity_mask_option, prepare_command, run_command
from lesionjax.core.errors import UserError
from lesionjax.core.windows import uint8_to_unit
from lesionjax.eval.runs import RunError, check_run, load_config, load_model
from lesionjax.train.state import CheckpointError

# A run folder or a comparison cannot be evaluated; the message names the file and why.
EvaluationError = RunError


@dataclasses.dataclass
class Run:
    """A trained run restored from its workdir, ready to predict."""

    workdir: Path
    config: object  # ml_collections.ConfigDict
    shards: object  # data.shards.ShardSet
    state: object  # step.TrainState (replicated)
    step: int
    best_val_dice: float | None
    run_state: object  # train.state.RunState
    predictor: object  # inference.VolumePredictor


# ------------------------------------------------------------------------------ runs


def load_run(workdir: str | Path, *, step: int | None = None) -> Run:
    """Restores a run: config, shards, model state at ``step`` (default: the best checkpoint by
    validation Dice, or the latest when none has a validation score) and a predictor."""
    from lesionjax.data.shards import ShardSet, shards_dir

    config = check_run(Path(workdir))  # config and checkpoints before the shards
    if config.task == "cascade3d":  # one stage's fold: its shards and priors are the cascade's
        cascade = Path(workdir).resolve().parent.parent
        raise EvaluationError(
            f"{Path(workdir)}: one fold of a 3D cascade stage; re-evaluation takes 2D runs "
            f"only (the main job evaluates every fold and ensemble into {cascade}/cascade.md; "
            f"lesionjax-predict --model {cascade} runs the whole cascade)"
        )
    shards = ShardSet.load(shards_dir(config, Path(workdir)))
    model = load_model(workdir, step=step, channels=shards.n_channels)
    return Run(
        workdir=model.workdir,
        config=model.config,
        shards=shards,
        state=model.state,
        step=model.step,
        best_val_dice=model.best_val_dice,
        run_state=model.run_state,
        predictor=model.predictor,
    )


def eval_dir(
    run: Run, split: str, *, ensemble: bool = False, tta: bool = False, icm: bool = False
) -> Path:
    """``workdir/eval`` for the config's evaluation split, ``workdir/eval_<split>`` otherwise;
    an ensemble's, a TTA or a cavity-masked evaluation gets ``_ensemble`` / ``_tta`` / ``_icm``
    added (the run's own evaluation is kept)."""
    name = "eval" if split == run.config.eval.split else f"eval_{split}"
    if ensemble:
        name += "_ensemble"
    if tta:
        name += "_tta"
    if icm:
        name += "_icm"
    return run.workdir / name


def _plan_without_dataset(run: Run) -> dict:
    return {k: v for k, v in run.shards.plan.items() if k != "dataset"}


def check_ensemble(run: Run, members: Sequence[Run], split: str, case_ids: Sequence[str]):
    """Every member must read the same preprocessing as ``run`` and must have held out the
    volumes it is evaluated on (else its score would count volumes it was trained on)."""
    from lesionjax.data import sampling

    for member in members:
        if _plan_without_dataset(member) != _plan_without_dataset(run):
            raise EvaluationError(
                f"--ensemble {member.workdir}: its shards were prepared differently from "
                f"{run.workdir}'s ({member.shards.root / 'manifest.json'} plan differs); an "
                "ensemble must read the same input"
            )
        c = member.config.data
        held_out = sampling.split_case_ids(member.shards, c.test_fold, c.val_fold)[split]
        missing = sorted(set(case_ids) - set(held_out))
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise EvaluationError(
                f"--ensemble {member.workdir}: {len(missing)} of the {len(case_ids)} {split} "
                f"volumes of {run.workdir} are not in its own {split} split ({shown}); the "
                "runs of an ensemble must share their held-out volumes"
            )


def reevaluate(
    workdir: str | Path,
    *,
    split: str | None = None,
    step: int | None = None,
    threshold: float | None = None,
    tsne_slices: int = 400,
    progress: bool = True,
    native: bool | None = None,
    ensemble: Sequence[str | Path] = (),
    tta: bool = False,
    cavity_mask: str | None = None,
) -> dict:
    """Re-evaluates a trained run from its checkpoint and rewrites its eval folder and report.

    ``native``: score on the scans' native grids against the original mask files (True), or on
    the shard grid (False); None: as the run's config says (``eval.native``; runs older than
    that setting: the shard grid). ``ensemble``: further run folders whose probabilities are
    averaged with this run's (they must share its held-out volumes and preprocessing);
    ``tta``: each member also predicts the left-right mirrored volume. Both write
    ``eval_ensemble`` / ``eval_tta`` folders and list the members in summary.json.
    ``cavity_mask``: "dataset" or a cavity run folder: the native probabilities are zeroed
    outside the cases' intracranial cavity first (the "+ ICM" rows), into ``eval_icm``.

    Returns the summary written to ``<eval folder>/summary.json`` (with "report" added).
    """
    import jax

    from lesionjax.data import sampling
    from lesionjax.eval.evaluate_volumes import (
        evaluate_cases,
        make_features_fn,
        select_feature_slices,
        slice_features,
        write_evaluation,
    )
    from lesionjax.eval.inference import VolumePredictor
    from lesionjax.train.step import train_compiler_options

    t0 = time.perf_counter()
    run = load_run(workdir, step=step)
    config = run.config
    split = split or config.eval.split
    threshold = config.eval.threshold if threshold is None else float(threshold)
    from lesionjax.eval.metrics import NSD_TOLERANCE_MM
    from lesionjax.tasks.segment2d import check_has_masks

    try:
        case_ids = sampling.split_case_ids(run.shards, config.data.test_fold, config.data.val_fold)
    except ValueError as err:
        raise EvaluationError(f"{run.workdir / 'config.json'}: {err}") from None
    if split not in case_ids:
        raise EvaluationError(f"--split {split!r}: expected one of {sorted(case_ids)}")
    case_ids = case_ids[split]
    if not case_ids:
        raise EvaluationError(
            f"{run.shards.root / 'manifest.json'}: no volumes in the {split!r} split"
        )
    check_has_masks(run.shards, case_ids, f"evaluation ({split})")
    # Runs trained before the tolerance was a config value used INSTANCE 2022's.
    nsd_tolerance = config.eval.get("nsd_tolerance_mm", NSD_TOLERANCE_MM)

    from lesionjax.tasks.native import native_truth

    native = config.eval.get("native", False) if native is None else bool(native)
    seen = {Path(workdir).resolve()}
    for m in ensemble:
        if Path(m).resolve() in seen:
            raise EvaluationError(f"--ensemble {m}: given twice (with --workdir or another member)")
        seen.add(Path(m).resolve())
    members = [load_run(m) for m in ensemble]
    if members:
        check_ensemble(run, members, split, case_ids)
    from lesionjax.eval.ensemble import EnsemblePredictor

    predictor = EnsemblePredictor([run, *members], tta=tta) if (members or tta) else run.predictor
    from lesionjax.tasks.cavity_mask import native_cavity_filter

    # The run's own eval.cavity_mask unless the command line names one.
    choice = str(config.eval.get("cavity_mask", "") if cavity_mask is None else cavity_mask)
    cavity = native_cavity_filter(config, run.workdir, choice=choice, native=native)
    per_volume, overlays = evaluate_cases(
        predictor,
        run.state,
        run.shards,
        case_ids,
        threshold=threshold,
        n_overlays=config.eval.n_overlays,
        progress=progress,
        auc=True,
        nsd_tolerance_mm=nsd_tolerance,
        native_truth=native_truth(config, run.workdir) if native else None,
        native_filter=cavity,
    )
    features = None
    if tsne_slices > 0 and predictor is run.predictor:  # a single model's features only
        extractor = VolumePredictor(
            make_features_fn(run.run_state.graphdef),
            run.run_state.mesh,
            run.run_state.state_sharding,
            batch_size=config.eval.batch_size,
            compiler_options=train_compiler_options(),
        )
        slices = select_feature_slices(run.shards, case_ids, max_slices=tsne_slices)
        features = slice_features(extractor, run.state, run.shards, slices)
    summary: dict = {}
    if jax.process_index() == 0:
        fold = {"test": config.data.test_fold, "val": config.data.val_fold}.get(split)
        where = f"{split} fold {fold}" if fold is not None else split
        summary = write_evaluation(
            run.workdir,
            per_volume,
            overlays,
            split=split,
            out_dir=eval_dir(run, split, ensemble=bool(members), tta=tta, icm=bool(cavity_mask)),
            features=features,
            draw_figures=bool(config.eval.get("figures", True)),
            extra={
                "checkpoint_step": run.step,
                "best_val_dice": run.best_val_dice,
                "threshold": threshold,
                "nsd_tolerance_mm": nsd_tolerance,
                "evaluated_by": "lesionjax.evaluate",
                "members": [{"run": str(m.workdir), "step": m.step} for m in [run, *members]],
                "tta": tta,
                "cavity_mask": choice,
                "seconds": {"total": round(time.perf_counter() - t0, 1)},
            },
            title=f"lesionjax evaluation: {config.get('name', 'run')} ({where}, step {run.step})",
        )
    return summary


# ------------------------------------------------------------------------------ comparison


@dataclasses.dataclass
class Results:
    """One run's saved evaluation: where it is and what it holds."""

    path: Path  # as given on the command line
    eval_dir: Path
    workdir: Path | None  # the run folder, when the results sit in one (for checkpoints)
    per_volume: list[dict]
    summary: dict


def load_results(path: str | Path) -> Results:
    """Reads a run's ``eval/per_volume.json`` (and summary.json) from a run or eval folder."""
    path = Path(path)
    if not path.is_dir():
        raise EvaluationError(f"{path}: no such folder")
    if (path / "per_volume.json").is_file():
        folder = path
        workdir = path.parent if (path.parent / "config.json").is_file() else None
    elif (path / "eval" / "per_volume.json").is_file():
        folder, workdir = path / "eval", path
    else:
        raise EvaluationError(
            f"{path}: no eval/per_volume.json; evaluate the run first "
            f"(python -m lesionjax.evaluate --workdir {path})"
        )
    file = folder / "per_volume.json"
    try:
        per_volume = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(per_volume, list) or not all(
        isinstance(v, dict) and "case_id" in v for v in per_volume
    ):
        raise EvaluationError(f"{file}: expected a list of per-volume objects with a case_id")
    if not per_volume:
        raise EvaluationError(f"{file}: no volumes")
    summary = {}
    if (folder / "summary.json").is_file():
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EvaluationError(f"{folder / 'summary.json'}: not valid JSON ({err})") from None
    return Results(path, folder, workdir, per_volume, summary)


def _method_names(results: Sequence[Results], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(results):
            raise EvaluationError(
                f"--names gives {len(names)} names for {len(results)} runs: {','.join(names)}"
            )
        if len(set(names)) != len(names) or not all(names):
            raise EvaluationError(f"--names must be distinct and non-empty: {','.join(names)}")
        return list(names)
    base = [(r.workdir or r.eval_dir).name for r in results]
    if len(set(base)) == len(base):
        return base
    return [str(r.path) for r in results]  # same folder names: the paths tell them apart


def _add_missing_subtypes(results: Results) -> None:
    """Results written before per-volume subtypes existed: read them from the run's manifest."""
    if all("subtypes" in v for v in results.per_volume) or results.workdir is None:
        return
    from lesionjax.data.shards import ShardSet, shards_dir
    from lesionjax.eval.evaluate_volumes import case_subtypes

    try:
        shards = ShardSet.load(shards_dir(load_config(results.workdir), results.workdir))
        for v in results.per_volume:
            v.setdefault("subtypes", ";".join(case_subtypes(shards, str(v["case_id"]))))
    except (UserError, ValueError, KeyError):
        pass  # no subtype groups in the box plots; the metrics are unaffected


def _overlay_cases(methods: dict[str, list[dict]], n: int) -> list[str]:
    """The n - 1 largest lesion volumes and the lesion-free volume with the most predicted
    voxels over all methods (when any has false positives); the largest lesions otherwise."""
    first = next(iter(methods.values()))
    lesion = sorted(
        (v for v in first if v.get("gt_voxels", 0) > 0), key=lambda v: -v.get("gt_voxels", 0)
    )
    false_pos: dict[str, float] = {}
    for per_volume in methods.values():
        for v in per_volume:
            if v.get("gt_voxels", 0) == 0 and v.get("pred_voxels", 0) > 0:
                false_pos[str(v["case_id"])] = (
                    false_pos.get(str(v["case_id"]), 0) + v["pred_voxels"]
                )
    worst = sorted(false_pos, key=lambda c: -false_pos[c])[:1]
    chosen = [str(v["case_id"]) for v in lesion[: max(1, n - len(worst))]] + worst
    if len(chosen) < n:
        chosen = [str(v["case_id"]) for v in lesion[:n]] + worst
    return list(dict.fromkeys(chosen))[:n]


def overlay_examples(
    results: Sequence[Results], names: Sequence[str], n_overlays: int
) -> tuple[list[dict] | None, list[str]]:
    """Side-by-side overlay examples re-predicted from each run's evaluated checkpoint.

    Returns (examples or None when no run could be restored, notes for the report). Each run
    predicts from its own shards (its own windows) at its own threshold; the image and ground
    truth shown come from the first restored run.
    """
    methods = {name: r.per_volume for name, r in zip(names, results, strict=True)}
    cases = _overlay_cases(methods, n_overlays)
    notes: list[str] = []
    volumes: dict[str, dict] = {}  # case -> {"image", "gt", "pred": {name: (X, Y, Z)}}
    for name, r in zip(names, results, strict=True):
        if r.workdir is None:
            notes.append(f"Overlays: {name} left out ({r.eval_dir} is not inside a run folder).")
            continue
        step = r.summary.get("checkpoint_step")
        try:
            try:
                run = load_run(r.workdir, step=step)
            except CheckpointError:
                if step is None:
                    raise
                run = load_run(r.workdir)  # the evaluated step was deleted since: the best one
                notes.append(
                    f"Overlays: {name} re-predicted at step {run.step} (step {step}, which "
                    "was evaluated, is no longer saved)."
                )
        except UserError as err:  # no config, checkpoint or shards: left out, with the reason
            notes.append(f"Overlays: {name} left out ({err}).")
            continue
        threshold = float(r.summary.get("threshold", run.config.eval.threshold))
        source = run.shards.source()
        for case in cases:
            try:
                vol = run.shards.read_volume(case, source)
            except KeyError:
                notes.append(f"Overlays: {name} left out ({run.shards.root} has no {case}).")
                break
            if case not in volumes:
                volumes[case] = {"image": vol["image"], "gt": vol["mask"] > 0, "pred": {}}
            ref = volumes[case]
            if vol["mask"].shape != ref["gt"].shape:
                notes.append(
                    f"Overlays: {name} left out (its shards hold {case} at "
                    f"{vol['mask'].shape}, the first run's at {ref['gt'].shape})."
                )
                break
            probs = run.predictor.predict_volume(run.state, vol["image"])
            ref["pred"][name] = probs >= threshold
        else:
            continue
        for ref in volumes.values():  # a run left out half-way: drop its partial predictions
            ref["pred"].pop(name, None)
    if not volumes or not any(ref["pred"] for ref in volumes.values()):
        return None, notes
    examples = []
    for case in cases:
        ref = volumes[case]
        if ref["gt"].any():
            area = ref["gt"].sum(axis=(0, 1))
        else:
            area = sum(p.sum(axis=(0, 1)) for p in ref["pred"].values())
        z = int(np.argmax(area)) if np.any(area) else ref["gt"].shape[2] // 2
        examples.append(
            {
                "image": uint8_to_unit(ref["image"][:, :, z, 0]),
                "gt": ref["gt"][:, :, z],
                "pred": {name: p[:, :, z] for name, p in ref["pred"].items()},
                "title": f"{case} z={z}",
            }
        )
    return examples, notes


def compare(
    dirs: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    metric: str = "dice",
    n_overlays: int = 4,
) -> dict[str, Path]:
    """Compares the saved evaluations of several runs; writes the comparison into ``out``.

    Returns {file name without extension: path} (see `report.write_comparison`).
    """
    from lesionjax.eval import stats
    from lesionjax.eval.report import write_comparison

    if len(dirs) < 2:
        raise EvaluationError(f"--compare: needs at least two runs, got {len(dirs)}")
    results = [load_results(d) for d in dirs]
    names = _method_names(results, names)
    methods = {name: r.per_volume for name, r in zip(names, results, strict=True)}
    sources = {name: str(r.eval_dir) for name, r in zip(names, results, strict=True)}
    try:
        stats.check_same_volumes(methods, sources)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    splits = {r.summary.get("split") for r in results} - {None}
    if len(splits) > 1:
        raise EvaluationError(f"the runs were evaluated on different splits: {sorted(splits)}")
    for r in results:
        _add_missing_subtypes(r)
    examples, notes = (None, ["Overlays: not drawn (--n-overlays 0)."])
    if n_overlays > 0:
        examples, notes = overlay_examples(results, names, n_overlays)
    split = next(iter(splits), "evaluation")
    try:
        return write_comparison(
            out,
            methods,
            metric=metric,
            overlay_examples=examples,
            sources=sources,
            notes=notes,
            title=f"lesionjax comparison ({split} volumes)",
        )
    except ValueError as err:
        raise EvaluationError(str(err)) from None


# ------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lesionjax.evaluate",
        description="Re-evaluate a trained run from its checkpoint, or compare several runs.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--workdir", help="run folder to re-evaluate (written by lesionjax.main)")
    mode.add_argument(
        "--compare", nargs="+", metavar="DIR", help="run (or eval) folders to compare"
    )
    p.add_argument("--split", choices=("train", "val", "test"), help="default: the config's")
    p.add_argument("--step", type=int, help="checkpoint step (default: best by val Dice)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: config)")
    p.add_argument(
        "--tsne-slices", type=int, default=400, help="slices in the t-SNE plot (0: none)"
    )
    p.add_argument("--out", help="--compare: output folder")
    p.add_argument("--names", help="--compare: comma-separated method names, one per run")
    p.add_argument("--metric", default="dice", help="--compare: metric of box plots and heatmap")
    p.add_argument(
        "--n-overlays", type=int, default=4, help="--compare: overlay rows (0: no overlays)"
    )
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="RUN",
        help="--workdir: average with these runs' probabilities (same held-out volumes)",
    )
    p.add_argument("--tta", action="store_true", help="--workdir: add left-right mirrored input")
    add_cavity_mask_option(
        p,
        "--workdir: zero predictions outside the intracranial cavity first (the cases' own "
        "icm/ masks, or the cavity models of RUN), into eval_icm",
    )
    grid = p.add_mutually_exclusive_group()
    grid.add_argument(
        "--native",
        dest="native",
        action="store_true",
        default=None,
        help="score on the scans' native grids against the original masks (default: config)",
    )
    grid.add_argument(
        "--shard-grid", dest="native", action="store_false", help="score on the shard grid"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lesionjax.evaluate`` and the ``lesionjax-evaluate`` entry point."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.compare and not args.out:
        parser.error("--compare needs --out OUTDIR")
    prepare_command()

    def body() -> int:
        from lesionjax.distributed import initialize_from_env

        initialize_from_env()  # before any JAX computation
        import jax

        if args.workdir:
            summary = reevaluate(
                args.workdir,
                split=args.split,
                step=args.step,
                threshold=args.threshold,
                tsne_slices=args.tsne_slices,
                progress=not args.no_progress,
                native=args.native,
                ensemble=args.ensemble or (),
                tta=args.tta,
                cavity_mask=args.cavity_mask,
            )
            if jax.process_index() == 0:
                keys = (
                    "split",
                    "grid",
                    "checkpoint_step",
                    "mean_dice",
                    "mean_dice_all",
                    "n_volumes",
                )
                print(json.dumps({k: summary.get(k) for k in keys}))
                print(f"report: {summary['report']}")
        else:
            names = args.names.split(",") if args.names else None
            written = compare(
                args.compare, args.out, names=names, metric=args.metric, n_overlays=args.n_overlays
            )
            print(f"report: {written['report']}")
        return 0

    return run_command(body)


def cli() -> None:
    """The console-script entry point (see pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

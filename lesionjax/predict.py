"""Apply trained runs to new scans: masks on the scans' own grids, lesion volumes, overlays.

    python -m lesionjax.predict --model RUN|FILE.ljx [...] --input PATH --output DIR
        [--tta] [--threshold T] [--save-probabilities] [--cavity-mask [RUN]] [--dataset NAME]

PATH is a NIfTI file, a DICOM series folder, or a folder holding several of them (searched
recursively: every ``.nii`` / ``.nii.gz`` file and every DICOM series is a scan), or, with
``--dataset NAME``, a dataset in any layout ``data_prep.layouts`` reads (found by
``lesionjax.predict_inputs``). For each scan:

1. the run's own preprocessing (``data_prep.preprocess.preprocess_case`` with the plan recorded
   in the run folder's ``preprocessing.json``): the same function the shard writer used;
2. prediction of every slice on every device, in batches; with several runs (the folds of a
   cross-validation) their probabilities are averaged, and ``--tta`` adds each run's prediction
   of the left-right mirrored scan (``lesionjax.eval.ensemble``);
3. the probabilities mapped back to the scan's native grid (``GridChain.to_native``: in-plane
   resize, slice selection, resampling and reorientation inverted; dropped slices are 0), then
   thresholded (default: the first run's ``eval.threshold``);
4. ``--cavity-mask``: voxels outside the scan's own intracranial cavity mask set to 0 (datasets
   that ship one, read with ``--dataset``); ``--cavity-mask RUN``: outside the cavity that the
   cavity models of RUN (``configs/cavity.py``, ``lesionjax.tasks.cavity``) predict for it;
5. written into DIR: ``<case>_mask.nii.gz`` (uint8 0/1) on the input's grid, with its affine,
   shape and header (a DICOM series: the de-tilted RAS+ volume's grid that
   ``data_prep.dicom`` reads it into); ``--save-probabilities``: ``<case>_prob.nii.gz``, uint8
   0..255 with the NIfTI scale slope 1/255, so ``nibabel``'s ``get_fdata()`` gives the
   probability (to 1/510); ``<case>_overlay.png``: a few slices of the model's input with the
   predicted outline, the largest lesion's slice first;
6. one row of ``predictions.csv`` / ``predictions.json``: the case, its input, the total lesion
   volume (mL), the number of connected lesions (26-connected) and the volume of each (largest
   first), the voxel volume, the threshold, the runs and whether TTA was used.

A scan that cannot be read is reported on one line (``error: <file>: <problem>``) and skipped;
the exit status is 1 when any scan failed. Only the run folders are needed (no config file, no
shards, no training code).

One module, one concern: the command, from the models to writing the tables. Which scans a
path holds is ``lesionjax.predict_inputs``; what it computes lives in the library
(``eval.ensemble``, ``eval.lesions``, ``eval.figures``, ``core.geometry``) and in
``data_prep.preprocess``; what stays here is the per-scan loop and the output files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lesionjax.cli import add_cavity_mask_option, prepare_command, print_error, run_command
from lesionjax.core.errors import UserError
from lesionjax.predict_inputs import (
    PredictError,
    Scan,
    dataset_scans,
    find_scans,
    is_nifti,
)

CSV_COLUMNS = (
    "case",
    "input",
    "lesion_ml",
    "n_lesions",
    "lesion_volumes_ml",
    "voxel_ml",
    "threshold",
    "tta",
    "cavity_mask",
    "models",
    "mask",
)


# ------------------------------------------------------------------------------ models


def load_models(run_dirs: Sequence[str], *, step: int | None = None) -> list:
    """Restores every run; they must share their input channels (one preprocessing each is
    allowed: a scan is prepared once per distinct plan)."""
    from lesionjax.eval.runs import is_cascade, load_cascade, load_model
    from lesionjax.export import SUFFIX, load_predictor_file

    models = []
    for d in run_dirs:
        if str(d).endswith(SUFFIX):  # an exported predictor file: its members
            if not Path(d).is_file():
                raise PredictError(f"{d}: no such predictor file")
            models += load_predictor_file(d)
        elif is_cascade(d):  # a 3D cascade: its stages, each its fold models
            models.append(load_cascade(d))
        else:
            models.append(load_model(d, step=step))
    modalities = {m.plan.get("modality") for m in models}
    if len(modalities) > 1:
        raise PredictError(
            f"--model: the runs were trained on different modalities ({sorted(modalities)}); "
            "an ensemble needs one"
        )
    return models


def model_groups(
    run_dirs: Sequence[str], *, dataset: str | None = None, step: int | None = None
) -> tuple[list, list[tuple[object, list]]]:
    """(models, [(plan, members)]): the runs (or predictor files) restored and grouped by their
    preprocessing, so that a scan is prepared once per distinct plan."""
    from data_prep.plan import PreprocessingPlan

    models = load_models(run_dirs, step=step)
    by_plan: dict[str, tuple[object, list]] = {}
    for m in models:
        if hasattr(m, "predict_prepared"):  # a cascade: one plan per stage, a group of its own
            plans = tuple(PreprocessingPlan.from_dict(p) for p in m.plans)
            by_plan[f"cascade:{m.workdir}"] = (plans, [m])
            continue
        try:
            plan = PreprocessingPlan.from_dict(m.plan)
        except (UserError, TypeError, KeyError) as err:
            where = getattr(m, "source", None) or m.workdir / "preprocessing.json"
            raise PredictError(f"{where}: its preprocessing plan: {err}") from None
        n_images = m.channels // max(1, len(plan.windows))
        if n_images > 1 and dataset is None:
            raise PredictError(
                f"{m.workdir}: the model reads {n_images} co-registered images per scan; give "
                "the scans as a dataset (--dataset NAME) so each case's images are found"
            )
        by_plan.setdefault(_plan_key(m.plan), (plan, []))[1].append(m)
    return models, list(by_plan.values())


def _plan_key(plan: dict) -> str:
    return json.dumps({k: v for k, v in plan.items() if k != "dataset"}, sort_keys=True)


# ------------------------------------------------------------------------------ one scan


def _native_header(scan: Scan, grid):
    """The header to write a mask with: the input NIfTI's own (its grid), or a fresh one."""
    import nibabel as nib

    if is_nifti(Path(scan.files.image)):
        img = nib.load(str(scan.files.image))
        if tuple(img.shape[:3]) == tuple(grid.native_shape):
            header = img.header.copy()
            return img.affine, header
    return np.asarray(grid.native_affine, float), None


def _save_nifti(path: Path, data: np.ndarray, affine, header, *, slope: float = 1.0) -> None:
    """Writes ``data`` on the input's grid. The input's header keeps its orientation codes and
    units; what describes the input's intensities (display range, intent, description) is
    reset, so a viewer shows the mask as 0..1, not in the scan's HU window."""
    import nibabel as nib

    from lesionjax.core.atomic import atomic_path

    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    h = img.header
    h.set_slope_inter(slope, 0.0)
    h["cal_min"], h["cal_max"] = 0.0, 1.0
    h.set_intent("none")
    h["descrip"] = b"lesionjax-predict"
    h["aux_file"] = b""
    if header is None:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        h.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def predict_scan(
    scan: Scan,
    groups: list[tuple[object, list]],
    out_dir: Path,
    *,
    threshold: float,
    tta: bool,
    save_probabilities: bool,
    cavity_mask,
    overlay: bool = True,
    prepared: Sequence | None = None,
) -> dict:
    """Predicts one scan with every model group (plan, members) and writes its outputs.

    ``prepared``: the scan already prepared for each group's plan (`prepare_scan`), e.g. by a
    thread reading ahead; None prepares it here. The row's ``seconds`` times each stage.
    """
    import time

    from data_prep.preprocess import native_mask
    from lesionjax.core.geometry import spacing_of
    from lesionjax.core.windows import uint8_to_unit
    from lesionjax.eval.ensemble import ensemble_probabilities
    from lesionjax.eval.figures import plot_prediction_overlay
    from lesionjax.eval.lesions import lesion_volumes

    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare_scan(scan, [plan for plan, _ in groups])
    seconds = {"read_preprocess": time.perf_counter() - t0, "predict": 0.0, "map_back": 0.0}
    total, weight, first = None, 0, None
    for (_, members), volume in zip(groups, prepared, strict=True):
        t = time.perf_counter()
        if isinstance(volume, list):  # a cascade: the scan on each stage's grid, the last one's out
            probs = members[0].predict_prepared([v.channels for v in volume], tta=tta)
            volume = volume[-1]
        else:
            probs = ensemble_probabilities(members, volume.channels, tta=tta)
        seconds["predict"] += time.perf_counter() - t
        t = time.perf_counter()
        native = volume.grid.to_native(probs, order=1, fill=0.0).astype(np.float32)
        total = native * len(members) if total is None else total + native * len(members)
        weight += len(members)
        seconds["map_back"] += time.perf_counter() - t
        if first is None:
            first = (volume, probs)
    t = time.perf_counter()
    prob = np.clip(total / weight, 0.0, 1.0)
    prepared, shard_probs = first
    grid = prepared.grid
    cavity = None
    by_models = hasattr(cavity_mask, "native_mask")  # lesionjax.tasks.cavity_mask.CavityModel
    if by_models:
        cavity = cavity_mask.native_mask(scan.files)
        if cavity.shape != prob.shape:
            raise PredictError(f"{scan.source}: cavity mask {cavity.shape} != {prob.shape}")
    elif cavity_mask and scan.files.icm is not None:  # the scan's own, read as its shards do
        cavity = native_mask(scan.files, grid, "cavity") > 0
    used_cavity = cavity is not None
    if used_cavity:
        prob = np.where(cavity, prob, 0.0)
    mask = (prob >= threshold).astype(np.uint8)

    affine, header = _native_header(scan, grid)
    spacing = spacing_of(affine)
    mask_path = out_dir / f"{scan.case_id}_mask.nii.gz"
    _save_nifti(mask_path, mask, affine, header)
    if save_probabilities:
        scaled = np.rint(prob * 255.0).astype(np.uint8)
        _save_nifti(out_dir / f"{scan.case_id}_prob.nii.gz", scaled, affine, header, slope=1 / 255)
    if overlay:
        shard_mask = shard_probs >= threshold
        if used_cavity and not by_models and prepared.icm is not None:
            shard_mask &= prepared.icm > 0
        plot_prediction_overlay(
            uint8_to_unit(prepared.channels[..., 0]),
            shard_mask,
            out_dir / f"{scan.case_id}_overlay.png",
            title=f"{scan.case_id} (model input grid)",
        )
    volumes = lesion_volumes(mask.astype(bool), spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    seconds["write"] = time.perf_counter() - t  # threshold, cavity, NIfTI, overlay, lesions
    return {
        "case": scan.case_id,
        "input": str(scan.source),
        "lesion_ml": float(mask.sum()) * voxel_ml,
        "n_lesions": len(volumes),
        "lesion_volumes_ml": volumes,
        "voxel_ml": voxel_ml,
        "threshold": threshold,
        "tta": tta,
        "cavity_mask": used_cavity,
        "mask": mask_path.name,
        "shape": [int(n) for n in mask.shape],
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }


def _timed_prepare(scan: Scan, plans: Sequence) -> tuple[list, float]:
    t = time.perf_counter()
    return prepare_scan(scan, plans), time.perf_counter() - t


def prepare_scan(scan: Scan, plans: Sequence) -> list:
    """The scan read and preprocessed for each plan (``data_prep.preprocess.preprocess_case``);
    a tuple of plans (a cascade's stages) gives a list of prepared volumes, one per stage."""
    from data_prep.preprocess import preprocess_case

    return [
        [preprocess_case(scan.files, p.for_inference()) for p in plan]
        if isinstance(plan, tuple)
        else preprocess_case(scan.files, plan.for_inference())
        for plan in plans
    ]


# ------------------------------------------------------------------------------ the command


def predict_scans(
    scans: Sequence[Scan],
    groups: list[tuple[object, list]],
    out_dir: Path,
    *,
    threshold: float,
    tta: bool = False,
    save_probabilities: bool = False,
    cavity_mask=False,
    overlay: bool = True,
    progress: bool = True,
    read_ahead: bool = True,
) -> tuple[list[dict], list[str]]:
    """Predicts ``scans`` one after the other (`predict_scan`); with ``read_ahead`` one thread
    reads and preprocesses the next scan while the current one is predicted and written.
    Returns (rows, failures); a scan that fails is reported on one line and skipped."""
    from tqdm import tqdm

    from data_prep.volumes import CaseError

    rows: list[dict] = []
    failures: list[str] = []
    if not scans:
        return rows, failures
    plans = [plan for plan, _ in groups]
    reader = ThreadPoolExecutor(max_workers=1)
    try:
        ahead = reader.submit(_timed_prepare, scans[0], plans)
        for i, scan in enumerate(tqdm(scans, desc="predict", unit="scan", disable=not progress)):
            current = ahead
            if i + 1 < len(scans) and read_ahead:
                ahead = reader.submit(_timed_prepare, scans[i + 1], plans)
            try:
                t = time.perf_counter()
                prepared, read_seconds = current.result()
                waited = time.perf_counter() - t
                row = predict_scan(
                    scan,
                    groups,
                    out_dir,
                    threshold=threshold,
                    tta=tta,
                    save_probabilities=save_probabilities,
                    cavity_mask=cavity_mask,
                    overlay=overlay,
                    prepared=prepared,
                )
                # The stage's own time, and how much of it the prediction waited for.
                row["seconds"]["read_preprocess"] = round(read_seconds, 4)
                row["seconds"]["read_wait"] = round(waited, 4)
            except (CaseError, UserError, ValueError, OSError) as err:
                message = str(err)
                if str(scan.source) not in message:
                    message = f"{scan.source}: {message}"
                print_error(message)
                failures.append(message)
                continue
            finally:
                if i + 1 < len(scans) and not read_ahead:
                    ahead = reader.submit(_timed_prepare, scans[i + 1], plans)
            rows.append(row)
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
    return rows, failures


def predict(
    run_dirs: Sequence[str],
    input_path: str | Path,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    tta: bool = False,
    threshold: float | None = None,
    save_probabilities: bool = False,
    cavity_mask: bool | str = False,
    step: int | None = None,
    progress: bool = True,
    overlay: bool = True,
) -> tuple[list[dict], list[str]]:
    """Predicts every scan of ``input_path``; returns (rows, failures) and writes
    ``predictions.csv`` / ``predictions.json`` into ``out_dir``."""

    from lesionjax.core.atomic import atomic_write_csv, atomic_write_json

    out_dir = Path(out_dir)
    models, groups = model_groups(run_dirs, dataset=dataset, step=step)
    if isinstance(cavity_mask, str | Path) and str(cavity_mask) != "dataset":
        from lesionjax.tasks.cavity_mask import CavityModel

        cavity_mask = CavityModel.load(Path(cavity_mask).expanduser())
    elif isinstance(cavity_mask, str):
        cavity_mask = True
    modality = models[0].plan.get("modality", "CT")
    if threshold is None:
        threshold = float(models[0].config.eval.threshold)
    if dataset:
        scans, problems = dataset_scans(dataset, Path(input_path))
    else:
        scans, problems = find_scans(Path(input_path), modality, exclude=out_dir)
    failures = list(problems)
    for line in problems:
        print_error(line)
    if not scans:
        raise PredictError(f"{input_path}: no scans found (NIfTI files or DICOM series)")
    out_dir.mkdir(parents=True, exist_ok=True)
    members = [getattr(m, "source", str(m.workdir)) for m in models]
    rows, failed = predict_scans(
        scans,
        groups,
        out_dir,
        threshold=threshold,
        tta=tta,
        save_probabilities=save_probabilities,
        cavity_mask=cavity_mask,
        overlay=overlay,
        progress=progress,
    )
    failures += failed
    for row in rows:
        row["models"] = members
    if cavity_mask is True and rows and not any(r["cavity_mask"] for r in rows):
        print(
            "warning: --cavity-mask: no scan came with a cavity mask (read a dataset that has "
            "them with --dataset NAME); the masks were written without it",
            file=sys.stderr,
        )

    def cell(row: dict, key: str):
        if key == "lesion_volumes_ml":
            return ";".join(f"{v:.4f}" for v in row[key])
        if key == "models":
            return ";".join(row[key])
        return f"{row[key]:.4f}" if key in ("lesion_ml", "voxel_ml") else row[key]

    atomic_write_csv(
        out_dir / "predictions.csv", CSV_COLUMNS, [[cell(r, k) for k in CSV_COLUMNS] for r in rows]
    )
    atomic_write_json(
        out_dir / "predictions.json",
        {
            "models": [
                {
                    "run": getattr(m, "source", str(m.workdir)),
                    "step": m.step,
                    "best_val_dice": m.best_val_dice,
                }
                for m in models
            ],
            "tta": tta,
            "threshold": threshold,
            "cases": rows,
            "failed": failures,
        },
    )
    return rows, failures


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lesionjax-predict", description=__doc__.split("\n")[0].rstrip(".")
    )
    p.add_argument("--model", nargs="+", required=True, metavar="RUN", help="trained run folders")
    p.add_argument("--input", required=True, help="NIfTI file, DICOM series folder, or a folder")
    p.add_argument("--output", required=True, help="folder for masks, overlays and the tables")
    p.add_argument("--dataset", default=None, help="read --input as a dataset in this layout")
    p.add_argument("--tta", action="store_true", help="average with left-right mirrored input")
    p.add_argument("--threshold", type=float, default=None, help="default: the run's")
    p.add_argument("--save-probabilities", action="store_true", help="also <case>_prob.nii.gz")
    add_cavity_mask_option(
        p,
        "zero outside the intracranial cavity: the scans' own cavity masks (--dataset), or "
        "the one the cavity models of RUN (configs/cavity.py) predict",
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: best)")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _format_table(rows: Sequence[dict]) -> str:
    lines = ["| case | lesion mL | lesions | largest mL |", "|---|---:|---:|---:|"]
    for r in rows:
        largest = r["lesion_volumes_ml"][0] if r["lesion_volumes_ml"] else math.nan
        shown = "–" if math.isnan(largest) else f"{largest:.2f}"
        lines.append(f"| {r['case']} | {r['lesion_ml']:.2f} | {r['n_lesions']} | {shown} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lesionjax.predict`` and the ``lesionjax-predict`` entry point."""
    args = _parser().parse_args(argv)
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        _parser().error("--threshold must be in (0, 1)")
    prepare_command()

    def body() -> int:
        rows, failures = predict(
            args.model,
            args.input,
            args.output,
            dataset=args.dataset,
            tta=args.tta,
            threshold=args.threshold,
            save_probabilities=args.save_probabilities,
            cavity_mask=args.cavity_mask or False,
            step=args.step,
            progress=not args.no_progress,
            overlay=not args.no_overlays,
        )
        print(_format_table(rows))
        print(f"predictions: {Path(args.output) / 'predictions.csv'}")
        if failures:
            print(f"{len(failures)} scan(s) failed (see the error lines above)", file=sys.stderr)
            return 1
        return 0

    return run_command(body)


def cli() -> None:
    """The console-script entry point (see pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

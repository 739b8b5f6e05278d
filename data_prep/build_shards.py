"""Offline stage: dataset folder -> windowed axial slices in ArrayRecord shards + manifest.json.

    python -m data_prep.build_shards --dataset pairs --src DIR --out DIR \
        [--config configs/EXP.py[:variant]] [--windows ich | brain,subdural,wide | -50:150] \
        [--size 256] [--spacing 2,2,2] [--slices 70:90] [--min-content 0.05] \
        [--normalize 0.5:99.5] [--normalize-method zscore] [--folds 5] [--seed 0] \
        [--workers 2] [--allow-skips]

(also ``lesionjax-prep``). ``--layout 3d`` builds the 3D plan and one shard set per cascade
stage instead (``build_3d``, see its section). The preprocessing plan (``data_prep.plan``) is
resolved once from the options given here, then a ``--config``'s ``data`` section, then the
dataset's defaults, and every case is prepared with it (``data_prep.preprocess.preprocess_case``).
A training run builds its shards through ``build_dataset`` too, so the same options give the
same shards either way.

Each volume becomes one shard ``shards/<case>.array_record`` (one record per axial slice, see
``lesionjax.core.records``) and a sidecar ``shards/<case>.json`` describing it; both are written
atomically, so an interrupted build leaves only whole volumes behind and a re-run reuses every
volume whose sources and plan are unchanged. ``manifest.json`` (with the plan) is assembled last
from the sidecars. A case that fails is reported in ``skipped.json`` and does not stop the
others; the exit status is non-zero when any case was skipped, unless ``--allow-skips``.

One file for the writer and its command line: the incremental-build bookkeeping (source
fingerprints, reuse, duplicates, skips, folds, manifest) is what both share; the preprocessing
itself is ``data_prep.preprocess``. ``build_3d`` lives here as well: it is the same writer run once
per cascade stage (with the stages' shared folds) and the command dispatches to it, so a
module of its own would both import this one and be imported by it (a cycle).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data_prep import plan3d
from data_prep.fingerprint import dataset_fingerprint
from data_prep.layouts import LAYOUTS, CaseFiles, get_layout, read_layout
from data_prep.plan import PreprocessingPlan, dataset_modality, plan_options, resolve_plan
from data_prep.preprocess import is_dicom_series, preprocess_case
from data_prep.volumes import CaseError
from lesionjax.core import records
from lesionjax.core.atomic import atomic_path, atomic_write_json
from lesionjax.core.errors import UserError
from lesionjax.core.geometry import spacing_of, voxel_volume_ml
from lesionjax.core.labels import SLICE_LABELS

MANIFEST = "manifest.json"
SKIPPED = "skipped.json"
CAVITY_DIR = "cavity_masks"  # lesionjax-prep --cavity-model: the cavity masks it computed


class BuildError(UserError):
    """No shard set could be built (no readable case, volumes that do not fit together)."""


def _file_stamp(path: Path) -> dict:
    st = Path(path).stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def source_fingerprint(files: CaseFiles) -> dict:
    """Size and mtime of every source file (and the labels given by a CSV): a changed file
    invalidates the volume's shard."""
    out: dict = {}
    for field in ("mask", "subtypes", "icm", "brain_mask"):
        path = getattr(files, field)
        if path is not None:
            out[field] = _file_stamp(path)
    if files.channels:
        out["channels"] = [_file_stamp(p) for p in files.channels]
    if is_dicom_series(files):
        series = files.image_files or sorted(p for p in Path(files.image).iterdir() if p.is_file())
        stamps = [_file_stamp(p) for p in series]
        out["image"] = {
            "path": str(files.image),
            "files": len(stamps),
            "digest": hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16],
        }
    else:
        out["image"] = _file_stamp(files.image)
    if files.slice_labels is not None:
        out["slice_labels"] = hashlib.sha256(str(files.slice_labels).encode()).hexdigest()[:16]
    out["modality"] = files.modality
    out["labelled"] = files.labelled
    out["mask_nonzero"] = files.mask_nonzero
    out["mask_labels"] = None if files.mask_labels is None else list(files.mask_labels)
    return out


def process_case(files: CaseFiles, out_dir: Path, plan: PreprocessingPlan) -> dict:
    """Prepares one case, writes its shard and sidecar atomically, returns the sidecar entry."""
    from array_record.python.array_record_module import ArrayRecordWriter

    prepared = preprocess_case(files, plan)
    shard = out_dir / "shards" / f"{files.case_id}.array_record"
    n_slices = prepared.channels.shape[2]
    with atomic_path(shard) as tmp:
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        for k in range(n_slices):
            arrays = {
                "image": prepared.channels[:, :, k],
                "mask": prepared.mask[:, :, k],
                "labels": prepared.slice_labels[k],
            }
            if prepared.icm is not None:
                arrays["icm"] = prepared.icm[:, :, k]
            writer.write(records.encode_record(files.case_id, k, arrays))
        writer.close()

    grid = prepared.grid
    lesion_voxels = int(prepared.mask.sum())
    entry = {
        "case_id": files.case_id,
        "shard": f"shards/{shard.name}",
        "shard_bytes": shard.stat().st_size,
        "n_slices": int(n_slices),
        "sources": source_fingerprint(files),
        "settings": plan.fingerprint(),
        "modality": prepared.modality,
        "has_mask": prepared.labelled,
        "affine": np.asarray(grid.resampled_affine).tolist(),
        "shape": list(grid.resampled_shape),
        "spacing": spacing_of(grid.resampled_affine).tolist(),
        "source_axcodes": list(prepared.source_axcodes),
        "kept_slices": None if grid.kept_slices is None else list(grid.kept_slices),
        "shard_shape": list(grid.shard_shape),
        "channels": int(prepared.channels.shape[-1]),
        "shard_spacing": grid.shard_spacing.tolist(),
        # Counted on the shard grid, as training sees the lesions (6b in issue 8).
        "lesion_voxels": lesion_voxels,
        "lesion_ml": lesion_voxels * voxel_volume_ml(grid.shard_spacing),
        "lesion_slices": np.flatnonzero(prepared.slice_labels[:, 0]).tolist(),
        "slice_labels": prepared.slice_labels.tolist(),
        "has_icm": prepared.icm is not None,
        "grid": grid.to_dict(),
    }
    atomic_write_json(out_dir / "shards" / f"{files.case_id}.json", entry)
    return entry


def _reusable(files: CaseFiles, out_dir: Path, plan: PreprocessingPlan) -> dict | None:
    sidecar = out_dir / "shards" / f"{files.case_id}.json"
    try:
        entry = json.loads(sidecar.read_text())
        shard = out_dir / entry["shard"]
        if (
            entry["settings"] == plan.fingerprint()
            and entry["sources"] == source_fingerprint(files)
            and shard.stat().st_size == entry["shard_bytes"]
        ):
            return entry
    except (OSError, ValueError, KeyError):
        pass
    return None


def assign_folds(entries: Sequence[dict], n_folds: int, seed: int) -> dict[str, int]:
    """Volume-level folds stratified by lesion presence (in the shards): each fold gets its
    share of both."""
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    for has_lesion in (True, False):
        ids = sorted(e["case_id"] for e in entries if (e["lesion_voxels"] > 0) == has_lesion)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        # Continue the round-robin where the previous stratum stopped so fold sizes stay even.
        start = len(folds)
        for i, case_id in enumerate(ids):
            folds[case_id] = (start + i) % n_folds
    return folds


def build_manifest(
    entries: Sequence[dict],
    plan: PreprocessingPlan,
    n_folds: int,
    seed: int,
    out_dir: Path,
    folds: Mapping[str, int] | None = None,
) -> dict:
    entries = sorted(entries, key=lambda e: e["case_id"])
    counts = {e["channels"] for e in entries}
    if len(counts) > 1:
        by_count = {c: [e["case_id"] for e in entries if e["channels"] == c] for c in counts}
        raise BuildError(
            f"{out_dir}: the volumes have different numbers of input channels {by_count}; a "
            "dataset must give every case the same input images"
        )
    assigned = assign_folds(entries, n_folds, seed)
    if folds is not None:  # another shard set's folds (the cascade's stages share theirs)
        assigned.update({k: v for k, v in folds.items() if k in assigned})
    folds = assigned
    offset = 0
    volumes = []
    for e in entries:
        v = {k: e[k] for k in e if k not in ("settings", "shard_bytes")}
        v["fold"] = folds[e["case_id"]]
        v["record_offset"] = offset
        offset += e["n_slices"]
        volumes.append(v)
    plan_dict = plan.to_dict()
    return {
        "schema_version": records.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "plan": plan_dict,
        "windows": plan_dict["windows"],
        "channels": counts.pop(),
        "slice_labels": list(SLICE_LABELS),
        "n_folds": n_folds,
        "fold_seed": seed,
        "counts": {
            "volumes": len(volumes),
            "lesion_volumes": sum(v["lesion_voxels"] > 0 for v in volumes),
            "slices": offset,
            "lesion_slices": sum(len(v["lesion_slices"]) for v in volumes),
        },
        "volumes": volumes,
    }


def build_shards(
    cases: Sequence[CaseFiles],
    out_dir: Path,
    *,
    plan: PreprocessingPlan | None,
    n_folds: int = 5,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    reader_problems: Sequence[dict] = (),
    folds: Mapping[str, int] | None = None,
) -> tuple[dict, list[dict]]:
    """Builds (or completes) the shard folder with ``plan``. Returns (manifest, skipped cases).

    reader_problems: problems the layout reader found ({case_id, file, error}), reported with
    the build's own skips. folds: case id -> fold to use instead of assigning them (the 3D
    cascade's stages share the folds of the full-resolution set). ``plan`` may be None only
    when there is no case (the reader found problems alone): they are reported and the build
    fails.
    """
    if plan is None and cases:
        raise ValueError("build_shards: a plan is needed to build cases")
    out_dir = Path(out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    skipped: list[dict] = [dict(p) for p in reader_problems]
    by_id: dict[str, list[CaseFiles]] = {}
    for files in cases:
        by_id.setdefault(files.case_id, []).append(files)
    todo: list[CaseFiles] = []
    entries: list[dict] = []
    for case_id, group in by_id.items():
        if len(group) > 1:  # which one is right cannot be known: skip them all
            others = ", ".join(str(f.image) for f in group)
            for files in group:
                skipped.append(
                    {
                        "case_id": case_id,
                        "file": str(files.image),
                        "error": f"duplicate case id {case_id!r} ({len(group)} cases: {others})",
                    }
                )
            continue
        files = group[0]
        entry = _reusable(files, out_dir, plan)
        if entry is not None:
            entries.append(entry)
        else:
            todo.append(files)

    from tqdm import tqdm

    bar = tqdm(
        total=len(todo),
        desc=f"shards ({len(entries)} reused)",
        unit="vol",
        disable=not progress or not todo,
    )

    for problem in skipped:  # reader problems and duplicate IDs, found before any work
        text = problem["error"]
        if problem["file"] not in text:
            text = f"{problem['file']}: {text}"
        bar.write(f"skipped {problem['case_id']}: {text}", file=sys.stderr)

    def record_failure(files: CaseFiles, err: BaseException) -> None:
        message = str(err) if isinstance(err, CaseError) else f"{type(err).__name__}: {err}"
        skipped.append({"case_id": files.case_id, "file": str(files.image), "error": message})
        bar.write(f"skipped {files.case_id}: {message}", file=sys.stderr)

    if workers <= 1:
        for files in todo:
            try:
                entries.append(process_case(files, out_dir, plan))
            except Exception as err:  # one bad case must not stop the others
                record_failure(files, err)
            bar.update()
    else:
        # spawn: the caller may already run JAX threads, which fork would copy in a broken state.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(process_case, f, out_dir, plan): f for f in todo}
            for future in concurrent.futures.as_completed(futures):
                try:
                    entries.append(future.result())
                except Exception as err:
                    record_failure(futures[future], err)
                bar.update()
    bar.close()

    skipped_ids = {s["case_id"] for s in skipped}
    entries = [e for e in entries if e["case_id"] not in skipped_ids]
    if not entries:
        atomic_write_json(out_dir / SKIPPED, skipped)
        raise BuildError(
            f"{out_dir}: no case could be built ({len(skipped)} skipped, listed in "
            f"{out_dir / SKIPPED})"
        )
    manifest = build_manifest(entries, plan, n_folds, seed, out_dir, folds)
    manifest = write_unless_same(out_dir / MANIFEST, manifest)
    skipped_path = out_dir / SKIPPED
    if skipped:
        atomic_write_json(skipped_path, skipped)
    elif skipped_path.exists():
        skipped_path.unlink()
    return manifest, skipped


def write_unless_same(path: Path, data: dict) -> dict:
    """Writes ``data`` as JSON to ``path`` (atomically) unless the file already holds the same
    apart from its "created" date; returns what the file holds. A rebuild that reuses every
    volume so leaves the shard folder untouched: one shared by several jobs may be a read-only
    mount (a gcsfuse bucket, a shared disk)."""

    def comparable(d: dict) -> dict:  # through JSON: tuples and lists compare alike
        return json.loads(json.dumps({k: v for k, v in d.items() if k != "created"}))

    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = None
    if isinstance(current, dict) and comparable(current) == comparable(data):
        return current
    atomic_write_json(path, data)
    return data


def plan_for_cases(dataset: str, cases: Sequence[CaseFiles], options: Mapping) -> PreprocessingPlan:
    """The plan for a dataset's cases: ``options`` over the dataset's and modality's defaults."""
    modality = dataset_modality(dataset, [c.modality for c in cases])
    return resolve_plan(dataset, modality, options, get_layout(dataset).plan_defaults)


def build_cases(
    dataset: str,
    cases: Sequence[CaseFiles],
    out: Path,
    options: Mapping,
    *,
    n_folds: int = 5,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    reader_problems: Sequence[dict] = (),
    folds: Mapping[str, int] | None = None,
) -> tuple[dict, list[dict]]:
    """Builds ``cases`` of ``dataset`` into ``out`` with the plan ``options`` resolve to (see
    ``data_prep.plan.plan_options``). Returns (manifest, skipped)."""
    return build_shards(
        cases,
        out,
        # No readable case: nothing to plan for; the build reports the reader's problems.
        plan=plan_for_cases(dataset, cases, options) if cases else None,
        n_folds=n_folds,
        seed=seed,
        workers=workers,
        progress=progress,
        reader_problems=reader_problems,
        folds=folds,
    )


def build_dataset(dataset: str, src: Path, out: Path, options: Mapping, *, cases_hook=None, **kw):
    """Reads ``src`` in the ``dataset`` layout and builds it (``build_cases``): what the command
    line and a training run both call. ``cases_hook(cases) -> cases`` may complete the cases
    first (``lesionjax-prep --cavity-model``). Returns (manifest, skipped)."""
    cases, problems = read_layout(dataset, src)
    if cases_hook is not None:
        cases = cases_hook(cases)
    return build_cases(dataset, cases, out, options, reader_problems=problems, **kw)


# ------------------------------------------------------------------------------ 3D shard sets

# 3D shard sets for the cascade U-Net: fingerprint -> 3D plan -> one shard set per stage.
#
#     python -m data_prep.build_shards --layout 3d --dataset NAME --src DIR --out DIR \
#         [--windows brain,subdural,wide] [--memory-gb 8] [--min-lowres-factor 2] [--folds 5]
#
# writes, as nnU-Net writes its plans next to its preprocessed data::
#
#     OUT/fingerprint.json     spacings, shapes, lesion voxels per case; intensities in the masks
#     OUT/plans3d.json         the 3D plan (``data_prep.plan3d``): per stage spacing, patch, batch,
#                              pools, features, and the windows and fingerprint it came from
#     OUT/3d_fullres/          a shard set at the full-resolution target spacing
#     OUT/3d_lowres/           the same cases at stage 1's coarser spacing (when planned)
#
# Each stage's set is an ordinary shard set (``manifest.json`` + one ArrayRecord file per volume,
# one record per axial slice of the whole resampled volume, every slice kept, no in-plane resize):
# a 3D patch of depth D reads D records and crops them in-plane, never the whole volume (a record
# decodes with ``np.frombuffer``, no copy). Both stages share the full-resolution set's folds, so
# a case held out of a stage-1 fold is held out of the same stage-2 fold. Volumes are reused
# across re-runs exactly as in 2D (sources and plan unchanged).

FINGERPRINT = "fingerprint.json"
PLANS = "plans3d.json"
STAGES = ("fullres", "lowres")
# What a 3D stage keeps of a scan: all of it, at the stage's spacing.
WHOLE_VOLUME = ("size", "slice_range", "min_content", "spacing", "axial_slices")


def stage_dir(out: Path, stage: str) -> Path:
    return Path(out) / f"3d_{stage}"


def build_3d(
    dataset: str,
    src: Path,
    out: Path,
    options: Mapping,
    *,
    memory_gb: float = plan3d.DEFAULT_MEMORY_GB,
    min_lowres_factor: float = 1.0,
    n_folds: int = 5,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> tuple[dict, dict[str, dict], list[dict]]:
    """Builds the 3D shard sets of ``dataset`` (see the comment above).

    options: the plan options (``data_prep.plan.plan_options``); their windows and MRI
    normalization apply, the 2D-only ones (size, slice range, content, spacing) are replaced
    by the 3D plan's. Returns (plan, {stage: manifest}, skipped cases).
    """
    out = Path(out)
    cases, problems = read_layout(dataset, src)
    if not cases:
        raise BuildError(f"{src}: no case found for the {dataset!r} layout")
    base = {k: v for k, v in options.items() if k not in WHOLE_VOLUME}
    slice_plan = plan_for_cases(dataset, cases, base)
    extra = {len(c.channels) for c in cases}
    in_channels = len(slice_plan.windows) * (1 + max(extra))
    fingerprint, fp_problems = dataset_fingerprint(dataset, cases, workers=workers)
    if not fingerprint["cases"]:
        raise BuildError(f"{src}: no case could be read ({len(fp_problems)} problems)")
    write_unless_same(out / FINGERPRINT, fingerprint)
    plan = plan3d.make_plan(
        fingerprint,
        memory_gb=memory_gb,
        in_channels=in_channels,
        min_lowres_factor=min_lowres_factor,
        spacing=options.get("spacing") or None,
    )
    plan.update(
        {
            "dataset": dataset,
            "windows": [list(w) for w in slice_plan.windows],
            "modality": slice_plan.modality,
            "fingerprint": FINGERPRINT,
            "foreground_intensity": fingerprint["foreground_intensity"],
        }
    )
    write_unless_same(out / PLANS, plan)
    manifests: dict[str, dict] = {}
    skipped: list[dict] = []
    folds = None
    for stage in STAGES:
        if stage not in plan["stages"]:
            continue
        stage_options = {**base, "spacing": tuple(plan["stages"][stage]["spacing"])}
        manifest, stage_skipped = build_cases(
            dataset,
            cases,
            stage_dir(out, stage),
            stage_options,
            n_folds=n_folds,
            seed=seed,
            workers=workers,
            progress=progress,
            reader_problems=problems,
            folds=folds,
        )
        folds = {v["case_id"]: v["fold"] for v in manifest["volumes"]}
        manifests[stage] = manifest
        known = {(s["case_id"], s["error"]) for s in skipped}
        skipped += [s for s in stage_skipped if (s["case_id"], s["error"]) not in known]
    return plan, manifests, skipped


# ------------------------------------------------------------------------------ command line


def parse_window_arg(text: str) -> list:
    """ "ich" | "brain,subdural,wide" | "-50:150,0:80" -> list of names or (lo, hi) pairs."""
    out: list = []
    for part in text.split(","):
        part = part.strip()
        if ":" in part:
            lo, hi = part.split(":")
            out.append((float(lo), float(hi)))
        else:
            out.append(part)
    return out


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(":", ",").split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(":", ",").split(",") if v.strip()]


def load_config_data(spec: str):
    """``path/to/config.py[:variant]`` -> its ``config.data`` (the options of a training config).

    The file is executed like any config file (its ``get_config(variant)``); only its ``data``
    section is used.
    """
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_lesionjax_config", path)
    if module_spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None).data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.build_shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default=None, choices=sorted(LAYOUTS), help="layout reader")
    parser.add_argument("--src", type=Path, help="dataset folder as downloaded")
    parser.add_argument("--out", type=Path, help="output folder for shards")
    parser.add_argument(
        "--config",
        help="a training config (configs/NAME.py[:variant]) whose data options are the defaults",
    )
    parser.add_argument(
        "--windows",
        default=None,
        type=parse_window_arg,
        help="window names or lo:hi pairs, comma separated (default: the dataset's; CT: ich, "
        "MRI: unit)",
    )
    parser.add_argument(
        "--size", type=int, default=None, help="resample slices in-plane to SIZE x SIZE"
    )
    parser.add_argument(
        "--spacing", type=_floats, default=None, help="resample volumes to X,Y,Z mm first"
    )
    parser.add_argument(
        "--axial-slices", type=int, default=None, metavar="N",
        help="resample each volume along z to N axial slices (before --slices)",
    )  # fmt: skip
    parser.add_argument(
        "--slices", type=_ints, default=None, help="keep axial slices LO:HI (e.g. 70:90)"
    )
    parser.add_argument(
        "--min-content", type=float, default=None, help="keep slices with this tissue fraction"
    )
    parser.add_argument(
        "--normalize", type=_floats, default=None, help="MRI percentiles LO:HI (default 0.5:99.5)"
    )
    parser.add_argument(
        "--normalize-method", choices=("percentile", "zscore"), default=None, help="MRI scheme"
    )
    parser.add_argument(
        "--cavity-model",
        default=None,
        metavar="RUN",
        help="compute the cavity mask of every case without one with the cavity models of RUN "
        f"(configs/cavity.py), stored in OUT/{CAVITY_DIR}/ (lesionjax-prep only)",
    )
    parser.add_argument(
        "--target",
        choices=("lesion", "cavity", "slice_labels"),
        default=None,
        help="what the shards' masks hold: lesions (default), the cases' cavity masks (icm/), "
        "or nothing (slice_labels: the labels the masks give, for a pretext pool)",
    )
    parser.add_argument(
        "--layout",
        choices=("2d", "3d"),
        default=None,
        help="2d: slices for the 2D models (default); 3d: the 3D plan and one shard set per "
        "cascade stage (data_prep.build3d)",
    )
    parser.add_argument(
        "--memory-gb", type=float, default=None, help="3d: accelerator memory budget (default 8)"
    )
    parser.add_argument(
        "--min-lowres-factor",
        type=float,
        default=None,
        help="3d: stage 1 at least this much coarser than full resolution (default 1: "
        "nnU-Net's rule alone)",
    )
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--allow-skips", action="store_true", help="exit 0 even when some cases were skipped"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None, *, cavity_masks=None) -> int:
    """The command. ``cavity_masks(run, cases, folder, progress=) -> cases``: what
    ``--cavity-model RUN`` computes the missing cavity masks with; the trained models live in
    ``lesionjax``, so only its ``lesionjax-prep`` (``lesionjax.prep``) passes one."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cavity_model and cavity_masks is None:
        print(
            f"error: --cavity-model {args.cavity_model}: the cavity models run in lesionjax; "
            "use lesionjax-prep (python -m lesionjax.prep) with the same arguments",
            file=sys.stderr,
        )
        return 2
    try:
        d = load_config_data(args.config) if args.config else None
    except Exception as err:
        print(
            f"error: {args.config}: cannot load config ({type(err).__name__}: {err})",
            file=sys.stderr,
        )
        return 2

    def pick(cli_value, key: str, default):
        if cli_value is not None:
            return cli_value
        if d is not None and key in d and d[key] not in ("", (), None):
            return d[key]
        return default

    dataset = pick(args.dataset, "dataset", "pairs")
    three_d = pick(args.layout, "layout", "2d") == "3d"
    if args.cavity_model and three_d:  # also a config's data.layout, not only --layout
        parser.error("--cavity-model builds 2D shards (drop --layout 3d / data.layout='3d')")
    src = pick(args.src, "raw_dir", None)
    out = pick(args.out, "shards_dir", None)
    if src is None or out is None:
        parser.error("--src and --out are required (or a --config with data.raw_dir/shards_dir)")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    options = plan_options(d) if d is not None else {}
    given = {
        "windows": args.windows,
        "size": args.size,
        "spacing": args.spacing,
        "slice_range": args.slices,
        "axial_slices": args.axial_slices,
        "min_content": args.min_content,
        "normalize": args.normalize,
        "normalize_method": args.normalize_method,
        "target": args.target,
    }
    options.update(plan_options({k: v for k, v in given.items() if v is not None}))
    if args.size == 0:  # an explicit 0 keeps the scan's size over a config's size
        options.pop("size", None)
    common = {
        "n_folds": pick(args.folds, "n_folds", 5),
        "seed": pick(args.seed, "fold_seed", 0),
        "workers": pick(args.workers, "prep_workers", min(4, os.cpu_count() or 1)),
        "progress": not args.no_progress,
    }
    try:
        if three_d:
            plan, manifests, skipped = build_3d(
                dataset,
                src,
                out,
                options,
                memory_gb=pick(args.memory_gb, "memory_gb", 8.0),
                min_lowres_factor=pick(args.min_lowres_factor, "min_lowres_factor", 1.0),
                **common,
            )
            lines = [f"{out / PLANS}: 3D plan"]
            for stage, manifest in manifests.items():
                st, c = plan["stages"][stage], manifest["counts"]
                lines.append(
                    f"{stage_dir(out, stage) / MANIFEST}: {c['volumes']} volumes at "
                    f"{'x'.join(f'{v:.2f}' for v in st['spacing'])} mm, patch "
                    f"{'x'.join(map(str, st['patch']))}, batch {st['batch_size']}"
                )
            listed = f"each stage's {SKIPPED}"
        else:
            hook = None
            if args.cavity_model:

                def hook(cases):
                    return cavity_masks(
                        args.cavity_model, cases, out / CAVITY_DIR, progress=not args.no_progress
                    )

            manifest, skipped = build_dataset(dataset, src, out, options, cases_hook=hook, **common)
            c = manifest["counts"]
            lines = [
                f"{out / MANIFEST}: {c['volumes']} volumes ({c['lesion_volumes']} with "
                f"lesions), {c['slices']} slices ({c['lesion_slices']} with lesions)"
            ]
            listed = str(out / SKIPPED)
    except (FileNotFoundError, NotADirectoryError, ValueError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if skipped:
        print(f"{len(skipped)} case(s) skipped, listed in {listed}", file=sys.stderr)
        allow = args.allow_skips or (d is not None and d.get("allow_skips", False))
        return 0 if allow else 1
    return 0


def cli() -> None:
    """The console-script entry point (see pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

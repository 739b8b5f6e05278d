"""The shard writer: cases -> windowed axial slices in ArrayRecord shards + manifest.json.

The preprocessing plan (``data_prep.plan``) is resolved once from the options given, then a
config's ``data`` section, then the dataset's defaults, and every case is prepared with it
(``data_prep.preprocess.preprocess_case``). The command (``data_prep.build_shards``) and a
training run both build through ``build_dataset``, so the same options give the same shards.

Each volume becomes one shard ``shards/<case>.array_record`` (one record per axial slice, see
``lesionjax.core.records``) and a sidecar ``shards/<case>.json`` describing it; both are written
atomically, so an interrupted build leaves only whole volumes behind and a re-run reuses every
volume whose sources and plan are unchanged. ``manifest.json`` (with the plan) is assembled last
from the sidecars. A case that fails is reported in ``skipped.json`` and does not stop the
others. This module is the incremental-build bookkeeping (source fingerprints, reuse,
duplicates, skips, folds, manifest); the 3D cascade's shard sets (``data_prep.build3d``) run it
once per stage.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data_prep.layouts import CaseFiles, get_layout, read_layout
from data_prep.plan import PreprocessingPlan, dataset_modality, resolve_plan
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

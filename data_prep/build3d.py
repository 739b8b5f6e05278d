"""3D shard sets for the cascade U-Net: fingerprint -> 3D plan -> one shard set per stage.

    python -m data_prep.build_shards --layout 3d --dataset NAME --src DIR --out DIR \
        [--windows brain,subdural,wide] [--memory-gb 8] [--min-lowres-factor 2] [--folds 5]

writes, as nnU-Net writes its plans next to its preprocessed data::

    OUT/fingerprint.json     spacings, shapes, lesion voxels per case; intensities in the masks
    OUT/plans3d.json         the 3D plan (``data_prep.plan3d``): per stage spacing, patch, batch,
                             pools, features, and the windows and fingerprint it came from
    OUT/3d_fullres/          a shard set at the full-resolution target spacing
    OUT/3d_lowres/           the same cases at stage 1's coarser spacing (when planned)

Each stage's set is an ordinary shard set (``data_prep.shard_writer``: ``manifest.json`` + one
ArrayRecord file per volume, one record per axial slice of the whole resampled volume, every
slice kept, no in-plane resize): a 3D patch of depth D reads D records and crops them in-plane,
never the whole volume (a record decodes with ``np.frombuffer``, no copy). Both stages share the
full-resolution set's folds, so a case held out of a stage-1 fold is held out of the same
stage-2 fold. Volumes are reused across re-runs exactly as in 2D (sources and plan unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from data_prep import plan3d
from data_prep.fingerprint import dataset_fingerprint
from data_prep.layouts import read_layout
from data_prep.shard_writer import BuildError, build_cases, plan_for_cases, write_unless_same

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

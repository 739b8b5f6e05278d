"""Offline stage: dataset folder -> windowed axial slices in ArrayRecord shards + manifest.json.

    python -m data_prep.build_shards --dataset pairs --src DIR --out DIR \
        [--windows ich | --windows brain,subdural,wide | --windows=-50:150] [--size 256] \
        [--folds 5] [--seed 0] [--workers 2] [--allow-skips]

Each volume becomes one shard ``shards/<case>.array_record`` (one record per axial slice, see
``lesionjax.data.records``) and a sidecar ``shards/<case>.json`` describing it; both are written
atomically, so an interrupted build leaves only whole volumes behind and a re-run reuses every
volume whose sources and settings are unchanged. ``manifest.json`` is assembled last from the
sidecars. A case that fails is reported in ``skipped.json`` and does not stop the others; the exit
status is non-zero when any case was skipped, unless ``--allow-skips``.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.layouts import LAYOUTS, CaseFiles
from data_prep.volumes import CaseError, binarize_mask, load_nifti_ras
from lesionjax.atomic import atomic_write_json
from lesionjax.data import records
from lesionjax.data.labels import SLICE_LABELS
from lesionjax.data.windows import parse_windows, window_to_uint8

MANIFEST = "manifest.json"
SKIPPED = "skipped.json"


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def source_fingerprint(files: CaseFiles) -> dict:
    """Size and mtime of every source file: a changed file invalidates the volume's shard."""
    out = {}
    for field in ("image", "mask", "subtypes", "icm"):
        path = getattr(files, field)
        if path is not None:
            st = Path(path).stat()
            out[field] = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def resize_inplane(volume: np.ndarray, size: tuple[int, int], *, order: int) -> np.ndarray:
    """(X, Y, Z) -> (size[0], size[1], Z); slices are never resampled across z."""
    x, y, _ = volume.shape
    if (x, y) == tuple(size):
        return volume
    zoom = (size[0] / x, size[1] / y, 1.0)
    return ndimage.zoom(volume, zoom, order=order, mode="nearest", grid_mode=True)


def slice_labels_from_maps(mask: np.ndarray, subtypes: np.ndarray | None) -> np.ndarray:
    """(X, Y, Z) maps -> (Z, 6) uint8 labels in SLICE_LABELS order ("any" from the mask)."""
    z = mask.shape[2]
    labels = np.zeros((z, len(SLICE_LABELS)), np.uint8)
    labels[:, 0] = mask.reshape(-1, z).any(axis=0)
    if subtypes is not None:
        flat = subtypes.reshape(-1, z)
        for k in range(1, len(SLICE_LABELS)):
            labels[:, k] = (flat == k).any(axis=0)
    return labels


def process_case(files: CaseFiles, out_dir: Path, settings: dict) -> dict:
    """Reads one case, writes its shard and sidecar atomically, returns the sidecar entry."""
    windows = [tuple(w) for w in settings["windows"]]
    size = tuple(settings["size"]) if settings["size"] else None
    if files.mask is None:
        raise CaseError(f"{files.image}: no mask found for case {files.case_id}")
    image = load_nifti_ras(files.image)
    if float(image.data.max()) == float(image.data.min()):
        raise CaseError(f"{files.image}: constant image (all voxels {image.data.min():g})")
    mask = binarize_mask(load_nifti_ras(files.mask), image)
    subtypes = icm = None
    if files.subtypes is not None:
        sub_vol = load_nifti_ras(files.subtypes)
        if sub_vol.data.shape != image.data.shape:
            raise CaseError(f"{files.subtypes}: shape {sub_vol.data.shape} != image shape")
        subtypes = np.rint(sub_vol.data).astype(np.uint8)
    if files.icm is not None:
        icm = binarize_mask(load_nifti_ras(files.icm), image)

    labels = slice_labels_from_maps(mask, subtypes)
    shape = image.data.shape
    spacing = np.asarray(image.spacing, np.float64)
    if size is not None:
        hu = resize_inplane(image.data, size, order=1)
        # Linear interpolation then 0.5 threshold keeps thin structures better than nearest.
        mask_s = (resize_inplane(mask.astype(np.float32), size, order=1) >= 0.5).astype(np.uint8)
        icm_s = None
        if icm is not None:
            icm_s = (resize_inplane(icm.astype(np.float32), size, order=1) >= 0.5).astype(np.uint8)
        shard_spacing = spacing * np.array([shape[0] / size[0], shape[1] / size[1], 1.0])
    else:
        hu, mask_s, icm_s, shard_spacing = image.data, mask, icm, spacing
    channels = window_to_uint8(hu, windows)  # (X, Y, Z, C)

    from array_record.python.array_record_module import ArrayRecordWriter

    shard = out_dir / "shards" / f"{files.case_id}.array_record"
    tmp = shard.with_name(f".{shard.name}.tmp{os.getpid()}")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for k in range(shape[2]):
        arrays = {"image": channels[:, :, k], "mask": mask_s[:, :, k], "labels": labels[k]}
        if icm_s is not None:
            arrays["icm"] = icm_s[:, :, k]
        writer.write(records.encode_record(files.case_id, k, arrays))
    writer.close()
    os.replace(tmp, shard)

    voxel_ml = float(np.prod(spacing)) / 1000.0
    entry = {
        "case_id": files.case_id,
        "shard": f"shards/{shard.name}",
        "shard_bytes": shard.stat().st_size,
        "n_slices": int(shape[2]),
        "sources": source_fingerprint(files),
        "settings": settings_fingerprint(settings),
        "affine": image.affine.tolist(),
        "shape": list(shape),
        "spacing": spacing.tolist(),
        "source_axcodes": list(image.source_axcodes),
        "shard_shape": [int(channels.shape[0]), int(channels.shape[1]), int(shape[2])],
        "shard_spacing": shard_spacing.tolist(),
        "lesion_voxels": int(mask.sum()),
        "lesion_ml": float(mask.sum()) * voxel_ml,
        "lesion_slices": np.flatnonzero(labels[:, 0]).tolist(),
        "slice_labels": labels.tolist(),
        "has_icm": icm_s is not None,
    }
    atomic_write_json(out_dir / "shards" / f"{files.case_id}.json", entry)
    return entry


def _reusable(files: CaseFiles, out_dir: Path, settings: dict) -> dict | None:
    sidecar = out_dir / "shards" / f"{files.case_id}.json"
    try:
        entry = json.loads(sidecar.read_text())
        shard = out_dir / entry["shard"]
        if (
            entry["settings"] == settings_fingerprint(settings)
            and entry["sources"] == source_fingerprint(files)
            and shard.stat().st_size == entry["shard_bytes"]
        ):
            return entry
    except (OSError, ValueError, KeyError):
        pass
    return None


def assign_folds(entries: Sequence[dict], n_folds: int, seed: int) -> dict[str, int]:
    """Volume-level folds stratified by lesion presence: each fold gets its share of both."""
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


def build_manifest(entries: Sequence[dict], settings: dict, n_folds: int, seed: int) -> dict:
    entries = sorted(entries, key=lambda e: e["case_id"])
    folds = assign_folds(entries, n_folds, seed)
    offset = 0
    volumes = []
    for e in entries:
        v = {k: e[k] for k in e if k not in ("settings", "shard_bytes")}
        v["fold"] = folds[e["case_id"]]
        v["record_offset"] = offset
        offset += e["n_slices"]
        volumes.append(v)
    return {
        "schema_version": records.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "windows": settings["windows"],
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
    windows: Sequence,
    size: tuple[int, int] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    dataset: str = "pairs",
) -> tuple[dict, list[dict]]:
    """Builds (or completes) the shard folder. Returns (manifest, skipped cases)."""
    out_dir = Path(out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": dataset,
        "windows": [list(w) for w in parse_windows(windows)],
        "size": list(size) if size else None,
        "schema_version": records.SCHEMA_VERSION,
    }
    skipped: list[dict] = []
    seen: dict[str, CaseFiles] = {}
    todo: list[CaseFiles] = []
    entries: list[dict] = []
    for files in cases:
        if files.case_id in seen:
            skipped.append(
                {
                    "case_id": files.case_id,
                    "file": str(files.image),
                    "error": f"duplicate case id (also {seen[files.case_id].image})",
                }
            )
            continue
        seen[files.case_id] = files
        entry = _reusable(files, out_dir, settings)
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

    def record_failure(files: CaseFiles, err: BaseException) -> None:
        message = str(err) if isinstance(err, CaseError) else f"{type(err).__name__}: {err}"
        skipped.append({"case_id": files.case_id, "file": str(files.image), "error": message})
        bar.write(f"skipped {files.case_id}: {message}")

    if workers <= 1:
        for files in todo:
            try:
                entries.append(process_case(files, out_dir, settings))
            except Exception as err:  # one bad case must not stop the others
                record_failure(files, err)
            bar.update()
    else:
        # spawn: the caller may already run JAX threads, which fork would copy in a broken state.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(process_case, f, out_dir, settings): f for f in todo}
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
        raise RuntimeError(f"{out_dir}: no case could be built ({len(skipped)} skipped)")
    manifest = build_manifest(entries, settings, n_folds, seed)
    atomic_write_json(out_dir / MANIFEST, manifest)
    skipped_path = out_dir / SKIPPED
    if skipped:
        atomic_write_json(skipped_path, skipped)
    elif skipped_path.exists():
        skipped_path.unlink()
    return manifest, skipped


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.build_shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default="pairs", choices=sorted(LAYOUTS))
    parser.add_argument("--src", required=True, type=Path, help="dataset folder as downloaded")
    parser.add_argument("--out", required=True, type=Path, help="output folder for shards")
    parser.add_argument(
        "--windows",
        default="ich",
        type=parse_window_arg,
        help="window names or lo:hi pairs, comma separated (default: ich)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="resample slices in-plane to SIZE x SIZE (default: keep)",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument(
        "--allow-skips", action="store_true", help="exit 0 even when some cases were skipped"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cases = LAYOUTS[args.dataset](args.src)
        manifest, skipped = build_shards(
            cases,
            args.out,
            windows=args.windows,
            size=(args.size, args.size) if args.size else None,
            n_folds=args.folds,
            seed=args.seed,
            workers=args.workers,
            progress=not args.no_progress,
            dataset=args.dataset,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = manifest["counts"]
    print(
        f"{args.out / MANIFEST}: {c['volumes']} volumes ({c['lesion_volumes']} with lesions), "
        f"{c['slices']} slices ({c['lesion_slices']} with lesions)"
    )
    if skipped:
        print(f"{len(skipped)} case(s) skipped, listed in {args.out / SKIPPED}", file=sys.stderr)
        return 0 if args.allow_skips else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import dataclasses
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

from data_prep import mri
from data_prep.layouts import LAYOUTS, CaseFiles, read_layout
from data_prep.volumes import (
    CaseError,
    Volume,
    binarize_mask,
    check_same_grid,
    load_nifti_ras,
)
from lesionjax.atomic import atomic_write_json
from lesionjax.data import records
from lesionjax.data.labels import SLICE_LABELS
from lesionjax.data.windows import parse_windows, window_to_uint8

MANIFEST = "manifest.json"
SKIPPED = "skipped.json"


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _is_series(files: CaseFiles) -> bool:
    """The image is a DICOM series (listed files or a folder), not a NIfTI file."""
    return files.image_files is not None or Path(files.image).is_dir()


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
    if _is_series(files):
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


def load_image(files: CaseFiles) -> Volume:
    """The case's image as a RAS+ Volume: a NIfTI file, or a DICOM series (folder or file list)."""
    if _is_series(files):
        from data_prep.dicom import read_dicom_series

        volume = read_dicom_series(files.image_files or files.image)
    else:
        volume = load_nifti_ras(files.image)
    if volume.modality != files.modality:
        volume = dataclasses.replace(volume, modality=files.modality)
    return volume


def _load_channel(path: Path, image: Volume) -> np.ndarray:
    """A co-registered extra input image (another MRI sequence) on the main image's grid."""
    extra = load_nifti_ras(path)
    check_same_grid(extra, image, "channel")
    _check_not_constant(extra.data, path)
    return extra.data


def _check_not_constant(data: np.ndarray, path: Path) -> None:
    if float(data.max()) == float(data.min()):
        raise CaseError(f"{path}: constant image (all voxels {data.min():g})")


def _labels_from_csv(files: CaseFiles, image: Volume) -> np.ndarray:
    """Per-slice labels given by the dataset (indexed by source slice) -> (Z, 6) in RAS z order."""
    given = np.asarray(files.slice_labels, dtype=np.uint8)
    if given.ndim != 2 or given.shape[1] != len(SLICE_LABELS):
        raise CaseError(
            f"{files.image}: slice labels must have {len(SLICE_LABELS)} columns, got {given.shape}"
        )
    if image.source_slice is None:
        raise CaseError(
            f"{files.image}: per-slice labels given but the stored slice axis is not axial"
        )
    src = np.asarray(image.source_slice)
    if src.max() >= len(given):
        raise CaseError(
            f"{files.image}: {len(given)} slice labels for an image with {src.max() + 1} slices"
        )
    return given[src].copy()


def process_case(files: CaseFiles, out_dir: Path, settings: dict) -> dict:
    """Reads one case, writes its shard and sidecar atomically, returns the sidecar entry."""
    windows = [tuple(w) for w in settings["windows"]]
    size = tuple(settings["size"]) if settings["size"] else None
    if files.modality == "MR" and any(lo < 0.0 or hi > 1.0 for lo, hi in windows):
        raise CaseError(
            f"{files.image}: MR images are normalized to [0, 1] but the windows {windows} are HU "
            "windows (use --windows unit)"
        )
    if files.labelled and files.mask is None:
        raise CaseError(f"{files.image}: no mask found for case {files.case_id}")
    image = load_image(files)
    _check_not_constant(image.data, files.image)
    if files.labelled:
        mask = binarize_mask(load_nifti_ras(files.mask), image, nonzero=files.mask_nonzero)
    else:
        mask = np.zeros(image.data.shape, np.uint8)
    subtypes = icm = brain = None
    if files.subtypes is not None:
        sub_vol = load_nifti_ras(files.subtypes)
        if sub_vol.data.shape != image.data.shape:
            raise CaseError(f"{files.subtypes}: shape {sub_vol.data.shape} != image shape")
        subtypes = np.rint(sub_vol.data).astype(np.uint8)
    if files.icm is not None:
        icm = binarize_mask(load_nifti_ras(files.icm), image)
    if files.brain_mask is not None:
        brain = binarize_mask(load_nifti_ras(files.brain_mask), image)
    extras = [_load_channel(path, image) for path in files.channels]

    csv_labels = _labels_from_csv(files, image) if files.slice_labels is not None else None

    data = image.data
    spacing = np.asarray(image.spacing, np.float64)
    affine = image.affine
    if image.modality == "MR":
        data, *extras = (
            mri.normalize_intensity(
                x,
                brain,
                percentiles=settings.get("normalize") or mri.DEFAULT_PERCENTILES,
                method=settings.get("normalize_method") or "percentile",
            )
            for x in [data, *extras]
        )
    if settings.get("spacing"):
        src_affine, src_spacing = affine, spacing
        data, (mask, icm), subtypes, affine, spacing, z_source = mri.resample_to_spacing(
            data, [mask, icm], subtypes, affine, spacing, settings["spacing"]
        )
        extras = [
            mri.resample_to_spacing(x, [], None, src_affine, src_spacing, settings["spacing"])[0]
            for x in extras
        ]
        if csv_labels is not None:
            csv_labels = csv_labels[z_source]
    keep = mri.select_slices(
        data,
        image.modality,
        slice_range=settings.get("slice_range"),
        min_content=settings.get("min_content", 0.0),
    )
    if keep.size == 0:
        raise CaseError(f"{files.image}: no slice left after slice selection")
    kept_all = keep.size == data.shape[2]
    if not kept_all:
        data, mask = data[:, :, keep], mask[:, :, keep]
        extras = [x[:, :, keep] for x in extras]
        icm = icm[:, :, keep] if icm is not None else None
        subtypes = subtypes[:, :, keep] if subtypes is not None else None
        csv_labels = csv_labels[keep] if csv_labels is not None else None
    if csv_labels is not None:
        labels = csv_labels.copy()
        if files.labelled:  # the mask is the reference for "any"; the CSV gives the subtypes
            labels[:, 0] = mask.reshape(-1, mask.shape[2]).any(axis=0)
    else:
        labels = slice_labels_from_maps(mask, subtypes)
    shape = data.shape
    if size is not None:
        hu = resize_inplane(data, size, order=1)
        extras = [resize_inplane(x, size, order=1) for x in extras]
        # Linear interpolation then 0.5 threshold keeps thin structures better than nearest.
        mask_s = (resize_inplane(mask.astype(np.float32), size, order=1) >= 0.5).astype(np.uint8)
        icm_s = None
        if icm is not None:
            icm_s = (resize_inplane(icm.astype(np.float32), size, order=1) >= 0.5).astype(np.uint8)
        shard_spacing = spacing * np.array([shape[0] / size[0], shape[1] / size[1], 1.0])
    else:
        hu, mask_s, icm_s, shard_spacing = data, mask, icm, spacing
    # (X, Y, Z, C): every window of the main image, then of each extra channel image.
    channels = np.concatenate([window_to_uint8(x, windows) for x in [hu, *extras]], axis=-1)

    from array_record.python.array_record_module import ArrayRecordWriter

    shard = out_dir / "shards" / f"{files.case_id}.array_record"
    tmp = shard.with_name(f".{shard.name}.tmp{os.getpid()}")
    try:
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        for k in range(shape[2]):
            arrays = {"image": channels[:, :, k], "mask": mask_s[:, :, k], "labels": labels[k]}
            if icm_s is not None:
                arrays["icm"] = icm_s[:, :, k]
            writer.write(records.encode_record(files.case_id, k, arrays))
        writer.close()
        os.replace(tmp, shard)
    finally:
        tmp.unlink(missing_ok=True)

    voxel_ml = float(np.prod(spacing)) / 1000.0
    entry = {
        "case_id": files.case_id,
        "shard": f"shards/{shard.name}",
        "shard_bytes": shard.stat().st_size,
        "n_slices": int(shape[2]),
        "sources": source_fingerprint(files),
        "settings": settings_fingerprint(settings),
        "modality": image.modality,
        "has_mask": bool(files.labelled),
        "affine": affine.tolist(),
        "shape": list(shape),
        "spacing": spacing.tolist(),
        "source_axcodes": list(image.source_axcodes),
        "kept_slices": None if kept_all else keep.tolist(),
        "shard_shape": [int(channels.shape[0]), int(channels.shape[1]), int(shape[2])],
        "channels": int(channels.shape[-1]),
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
    counts = {e.get("channels", len(settings["windows"])) for e in entries}
    if len(counts) > 1:
        by_count = {c: [e["case_id"] for e in entries if e.get("channels") == c] for c in counts}
        raise RuntimeError(f"volumes have different numbers of input channels: {by_count}")
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
    windows: Sequence,
    size: tuple[int, int] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    dataset: str = "pairs",
    normalize: Sequence[float] | None = None,
    spacing: Sequence[float] | None = None,
    slice_range: Sequence[int] | None = None,
    min_content: float = 0.0,
    normalize_method: str = "percentile",
    reader_problems: Sequence[dict] = (),
) -> tuple[dict, list[dict]]:
    """Builds (or completes) the shard folder. Returns (manifest, skipped cases).

    normalize: MRI percentile clipping (lo, hi) before scaling to [0, 1] (default 0.5, 99.5).
    normalize_method: "percentile" or "zscore" (see ``data_prep.mri``).
    spacing: resample every volume to this voxel spacing (mm) first (None: keep the scan's).
    slice_range: keep axial slices lo..hi-1 (after resampling; negative counts from the top).
    min_content: keep slices with at least this fraction of tissue voxels (0: keep all).
    reader_problems: problems the layout reader found ({case_id, file, error}), reported with
        the build's own skips.
    """
    out_dir = Path(out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": dataset,
        "windows": [list(w) for w in parse_windows(windows)],
        "size": list(size) if size else None,
        "schema_version": records.SCHEMA_VERSION,
        "normalize": [float(v) for v in normalize] if normalize else None,
        "spacing": [float(v) for v in spacing] if spacing else None,
        "slice_range": [int(v) for v in slice_range] if slice_range else None,
        "min_content": float(min_content),
        "normalize_method": normalize_method,
    }
    mri.check_settings(settings)
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


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(":", ",").split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(":", ",").split(",") if v.strip()]


# Per-dataset defaults (the CLI and configs override them). CT: the label-efficient paper's
# [-50, 150] HU window, INSTANCE 2022 its three windows; MRI: normalized, the unit window.
DATASET_DEFAULTS: dict[str, dict] = {
    "instance2022": {"windows": ["brain", "subdural", "wide"]},
}
MODALITY_WINDOWS = {"CT": ["ich"], "MR": ["unit"]}


def default_windows(dataset: str, cases: Sequence[CaseFiles]) -> list:
    if "windows" in DATASET_DEFAULTS.get(dataset, {}):
        return list(DATASET_DEFAULTS[dataset]["windows"])
    modality = cases[0].modality if cases else "CT"
    return list(MODALITY_WINDOWS.get(modality, ["ich"]))


def load_config_data(spec: str):
    """``path/to/config.py[:variant]`` -> its ``config.data`` (the options of a training config)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_lesionjax_config", path)
    if module_spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None).data


def main(argv: Sequence[str] | None = None) -> int:
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
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--allow-skips", action="store_true", help="exit 0 even when some cases were skipped"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

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
            value = d[key]
            return list(value) if isinstance(value, tuple) else value
        return default

    dataset = pick(args.dataset, "dataset", "pairs")
    src = pick(args.src, "raw_dir", None)
    out = pick(args.out, "shards_dir", None)
    if src is None or out is None:
        parser.error("--src and --out are required (or a --config with data.raw_dir/shards_dir)")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    size = pick(args.size, "size", 0)
    try:
        cases, problems = read_layout(dataset, src)
        manifest, skipped = build_shards(
            cases,
            out,
            windows=pick(args.windows, "windows", None) or default_windows(dataset, cases),
            size=(size, size) if size else None,
            n_folds=pick(args.folds, "n_folds", 5),
            seed=pick(args.seed, "fold_seed", 0),
            workers=pick(args.workers, "prep_workers", min(4, os.cpu_count() or 1)),
            progress=not args.no_progress,
            dataset=dataset,
            normalize=pick(args.normalize, "normalize", None),
            spacing=pick(args.spacing, "spacing", None),
            slice_range=pick(args.slices, "slice_range", None),
            min_content=pick(args.min_content, "min_content", 0.0),
            normalize_method=pick(args.normalize_method, "normalize_method", "percentile"),
            reader_problems=problems,
        )
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = manifest["counts"]
    print(
        f"{out / MANIFEST}: {c['volumes']} volumes ({c['lesion_volumes']} with lesions), "
        f"{c['slices']} slices ({c['lesion_slices']} with lesions)"
    )
    if skipped:
        print(f"{len(skipped)} case(s) skipped, listed in {out / SKIPPED}", file=sys.stderr)
        allow = args.allow_skips or (d is not None and d.get("allow_skips", False))
        return 0 if allow else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

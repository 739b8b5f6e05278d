"""Evaluate a trained model on held-out volumes: predict every slice, reassemble each volume,
compute per-volume metrics, and write ``eval/summary.json``, per-volume tables and the report.

Per-volume dicts carry ``"subtypes"``: the ICH subtypes present in the volume (from the shard
manifest's per-slice labels, a volume belongs to every subtype of any of its slices), joined with
";" so that the JSON and CSV files hold the same text ("" when none or unlabelled).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from lesionjax.core.atomic import atomic_write_text
from lesionjax.core.geometry import GridChain, spacing_of
from lesionjax.core.labels import SLICE_LABELS, SUBTYPES
from lesionjax.core.windows import uint8_to_unit
from lesionjax.data.shards import ShardSet, ShardSetError
from lesionjax.eval.inference import VolumePredictor
from lesionjax.eval.metrics import NSD_TOLERANCE_MM, overlap_metrics, summarize, volume_metrics
from lesionjax.eval.report import read_metrics_log, write_report


def slice_subtype_labels(shards: ShardSet, case_id: str) -> np.ndarray:
    """(Z, len(SUBTYPES)) bool per-slice subtype flags of a volume, from the manifest.

    The manifest's ``slice_labels`` names its columns (SLICE_LABELS order: "any", then the
    subtypes); a manifest without per-slice labels gives all False.
    """
    entry = shards.volume(case_id)
    columns = list(shards.manifest.get("slice_labels", SLICE_LABELS))
    labels = np.asarray(entry.get("slice_labels", []), np.uint8)
    out = np.zeros((entry["n_slices"], len(SUBTYPES)), bool)
    if labels.size:
        if labels.shape != (entry["n_slices"], len(columns)):
            raise ShardSetError(
                f"{shards.root / 'manifest.json'}: {case_id}: slice_labels shape {labels.shape} "
                f"!= ({entry['n_slices']}, {len(columns)})"
            )
        for k, name in enumerate(SUBTYPES):
            if name in columns:
                out[:, k] = labels[:, columns.index(name)] > 0
    return out


def case_subtypes(shards: ShardSet, case_id: str) -> list[str]:
    """The subtypes present in any slice of the volume, in SUBTYPES order."""
    present = slice_subtype_labels(shards, case_id).any(axis=0)
    return [name for name, p in zip(SUBTYPES, present, strict=True) if p]


def _overlay_example(case_id: str, image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> dict:
    """The slice with the most ground-truth lesion (or predicted lesion) of a volume.

    image: (X, Y, Z, C) uint8; gt, pred: (X, Y, Z) bool. Shows the first window channel.
    """
    area = gt.sum(axis=(0, 1)) if gt.any() else pred.sum(axis=(0, 1))
    k = int(np.argmax(area)) if area.any() else image.shape[2] // 2
    return {
        "image": uint8_to_unit(image[:, :, k, 0]),
        "gt": gt[:, :, k],
        "pred": pred[:, :, k],
        "title": f"{case_id} z={k}",
    }


def evaluate_cases(
    predictor: VolumePredictor,
    state,
    shards: ShardSet,
    case_ids: Sequence[str],
    *,
    threshold: float = 0.5,
    n_overlays: int = 4,
    progress: bool = True,
    auc: bool = False,
    surface: bool = True,
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
    native_truth: Callable[[str, GridChain], np.ndarray] | None = None,
    native_filter: Callable[[str, GridChain], np.ndarray] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Per-volume metrics and overlay examples: the lesion volumes with the largest lesions and
    the lesion-free volume with the most false-positive voxels (if any). ``auc``: also the voxel
    ROC AUC of the probabilities; ``surface=False`` skips the surface distances (validation
    during training); ``nsd_tolerance_mm``: the normalized surface Dice's tolerance
    (``eval.nsd_tolerance_mm``).

    Grid: without ``native_truth`` the metrics are computed on the shard grid (spacing from the
    manifest), against the shard's mask. With ``native_truth(case_id, grid) -> mask`` (the
    original mask on the scan's native grid) the probabilities are mapped back to that grid
    (``GridChain.to_native``, linear) and thresholded there, and every metric is in the native
    grid's physical units; ``dice_shard`` keeps the shard-grid Dice for reference. Each volume's
    dict names its ``grid``. ``native_filter(case_id, grid) -> bool mask`` (with
    ``native_truth``): the native probabilities are set to 0 outside it first (the intracranial
    cavity, ``eval.cavity_mask``).

    Several processes: the volumes are split between them (balanced by slices), each predicts
    its share on its own devices (``predictor.on_local_devices``), and every process gets all
    the results, in ``case_ids`` order, each volume's dict naming the ``process`` that predicted
    it. A predictor without ``on_local_devices`` (or one returning None) is run in lock-step on
    the global mesh instead, every process on every volume."""
    share, moved = list(case_ids), None
    if jax.process_count() > 1:
        move = getattr(predictor, "on_local_devices", None)
        moved = move(state) if move is not None else None
    if moved is not None:
        predictor, state = moved
        share = process_share(shards, case_ids, jax.process_index(), jax.process_count())
    per_volume, candidates, false_positives = _evaluate_share(
        predictor,
        state,
        shards,
        share,
        threshold=threshold,
        n_overlays=n_overlays,
        progress=progress and jax.process_index() == 0,
        auc=auc,
        surface=surface,
        nsd_tolerance_mm=nsd_tolerance_mm,
        native_truth=native_truth,
        native_filter=native_filter,
    )
    if moved is not None:
        from lesionjax.distributed import allgather_objects

        # Only what may be chosen travels: each process's best overlay candidates.
        keep = max(1, n_overlays)
        parts = allgather_objects((per_volume, candidates[:keep], false_positives[:1]))
        by_case = {v["case_id"]: v for part, _, _ in parts for v in part}
        per_volume = [by_case[c] for c in case_ids]
        candidates = sorted((c for _, cs, _ in parts for c in cs), key=lambda c: -c[0])
        false_positives = sorted((f for _, _, fs in parts for f in fs), key=lambda c: -c[0])
    # The largest lesions show what the model gets right; the worst lesion-free volume shows
    # where it hallucinates.
    chosen = candidates[: max(1, n_overlays - 1)] + false_positives[:1]
    if len(chosen) < n_overlays:
        chosen = candidates[:n_overlays]
    return per_volume, [example for _, example in chosen[:n_overlays]]


def process_share(
    shards: ShardSet, case_ids: Sequence[str], process: int, n_processes: int
) -> list[str]:
    """The volumes of ``case_ids`` that ``process`` predicts: the largest first, each to the
    process with the fewest slices so far (ties: the lowest process), the same on every
    process; returned in ``case_ids`` order."""
    load = [0] * n_processes
    owner = {}
    order = sorted(case_ids, key=lambda c: -int(shards.volume(c)["n_slices"]))
    for case_id in order:
        p = min(range(n_processes), key=lambda i: (load[i], i))
        owner[case_id] = p
        load[p] += int(shards.volume(case_id)["n_slices"])
    return [c for c in case_ids if owner[c] == process]


def _evaluate_share(
    predictor,
    state,
    shards: ShardSet,
    case_ids: Sequence[str],
    *,
    threshold: float,
    n_overlays: int,
    progress: bool,
    auc: bool,
    surface: bool,
    nsd_tolerance_mm: float,
    native_truth,
    native_filter=None,
) -> tuple[list[dict], list, list]:
    """evaluate_cases on ``case_ids`` with ``predictor`` as given: (per-volume dicts, overlay
    candidates of lesion volumes, of lesion-free ones with false positives), each candidate
    (voxels, example), largest first."""
    from tqdm import tqdm

    source = shards.source()
    per_volume, candidates, false_positives = [], [], []
    for case_id in tqdm(case_ids, desc="evaluate", unit="vol", disable=not progress):
        vol = shards.read_volume(case_id, source)
        probs = predictor.predict_volume(state, vol["image"])
        pred = probs >= threshold
        gt = vol["mask"] > 0
        entry = shards.volume(case_id)
        if native_truth is None:
            grid_name = "shard"
            metrics = volume_metrics(
                pred,
                gt,
                spacing=entry["shard_spacing"],
                prob=probs if auc else None,
                surface=surface,
                nsd_tolerance_mm=nsd_tolerance_mm,
            )
        else:
            grid_name = "native"
            grid = GridChain.from_dict(entry["grid"])
            gt_native = native_truth(case_id, grid) > 0
            probs_native = grid.to_native(probs, order=1, fill=0.0)
            if native_filter is not None:
                probs_native = np.where(native_filter(case_id, grid), probs_native, 0.0)
            metrics = volume_metrics(
                probs_native >= threshold,
                gt_native,
                spacing=spacing_of(grid.native_affine),
                prob=probs_native if auc else None,
                surface=surface,
                nsd_tolerance_mm=nsd_tolerance_mm,
            )
            metrics["dice_shard"] = overlap_metrics(pred, gt)["dice"]
        subtypes = ";".join(case_subtypes(shards, case_id))
        per_volume.append(
            {
                "case_id": case_id,
                "fold": entry["fold"],
                "subtypes": subtypes,
                "grid": grid_name,
                "process": jax.process_index(),
                **metrics,
            }
        )
        if n_overlays <= 0:
            continue
        if gt.any():
            candidates.append((int(gt.sum()), _overlay_example(case_id, vol["image"], gt, pred)))
        elif pred.any():
            false_positives.append(
                (int(pred.sum()), _overlay_example(case_id, vol["image"], gt, pred))
            )
    candidates.sort(key=lambda c: -c[0])
    false_positives.sort(key=lambda c: -c[0])
    return per_volume, candidates, false_positives


def select_feature_slices(
    shards: ShardSet, case_ids: Sequence[str], *, max_slices: int = 400, seed: int = 0
) -> list[tuple[str, int]]:
    """(case id, z) of the slices whose features a t-SNE plot shows.

    Up to ``max_slices // 2`` lesion slices and as many lesion-free slices of the volumes
    (seeded draws when there are more), sorted by case and z: a bounded t-SNE cost, and neither
    class swamps the embedding.
    """
    lesion, normal = [], []
    for case_id in case_ids:
        entry = shards.volume(case_id)
        is_lesion = np.zeros(entry["n_slices"], bool)
        is_lesion[entry["lesion_slices"]] = True
        lesion += [(case_id, int(z)) for z in np.flatnonzero(is_lesion)]
        normal += [(case_id, int(z)) for z in np.flatnonzero(~is_lesion)]
    rng = np.random.default_rng(seed)
    n_lesion = min(len(lesion), max_slices // 2)
    n_normal = min(len(normal), max_slices // 2)
    picked = [lesion[i] for i in rng.choice(len(lesion), n_lesion, replace=False)]
    picked += [normal[i] for i in rng.choice(len(normal), n_normal, replace=False)]
    order = {c: i for i, c in enumerate(case_ids)}
    return sorted(picked, key=lambda s: (order[s[0]], s[1]))


def make_features_fn(graphdef):
    """``features(state, image (B, H, W, C) float) -> (B, C_bottleneck, 1)``: global-average
    pooled bottleneck activations (eval mode), shaped for `VolumePredictor` (which drops the
    last axis)."""
    import jax.numpy as jnp
    from flax import nnx

    def features(state, image):
        model = nnx.merge(graphdef, state.params, state.model_state)
        pooled = jnp.mean(model.bottleneck_features(image).astype(jnp.float32), axis=(1, 2))
        return pooled[..., None]

    return features


def slice_features(
    extractor: VolumePredictor, state, shards: ShardSet, slices: Sequence[tuple[str, int]]
) -> dict[str, np.ndarray]:
    """Bottleneck features and labels of the given (case id, z) slices.

    ``extractor``: a `VolumePredictor` built on `make_features_fn`. Returns {"features": (N, C)
    float32, "lesion": (N,) bool, "subtypes": (N, len(SUBTYPES)) bool}.
    """
    from lesionjax.core import records

    source = shards.source()
    images, lesion, subtypes = [], [], []
    for case_id, z in slices:
        entry = shards.volume(case_id)
        record = records.decode_record(source[entry["record_offset"] + z])
        images.append(record["image"])
        lesion.append(bool(record["mask"].any()))
        subtypes.append(slice_subtype_labels(shards, case_id)[z])
    if not images:
        return {
            "features": np.zeros((0, 0), np.float32),
            "lesion": np.zeros(0, bool),
            "subtypes": np.zeros((0, len(SUBTYPES)), bool),
        }
    features = extractor.predict_slices(state, np.stack(images))
    return {
        "features": np.asarray(features, np.float32),
        "lesion": np.asarray(lesion),
        "subtypes": np.stack(subtypes),
    }


def _per_volume_csv(per_volume: Sequence[dict]) -> str:
    keys = list(per_volume[0]) if per_volume else ["case_id"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(per_volume)
    return buf.getvalue()


def write_evaluation(
    workdir: Path,
    per_volume: list[dict],
    overlay_examples: list[dict],
    *,
    split: str,
    extra: dict | None = None,
    title: str = "lesionjax evaluation",
    out_dir: str | Path | None = None,
    features: dict[str, np.ndarray] | None = None,
    draw_figures: bool = True,
) -> dict:
    """Writes eval/summary.json, eval/per_volume.{json,csv} and eval/report.md (+ PNGs).

    ``summary.json`` holds ``mean_dice`` = mean volume Dice over the split's lesion volumes,
    ``n_volumes``, ``n_lesion_volumes`` and the full mean ± std tables. The report has the
    training curves (from ``workdir/metrics.jsonl`` when present), overlays, per-volume Dice box
    plots by ICH subtype and, with ``features`` (a `slice_features` result), a t-SNE plot.
    ``out_dir`` defaults to ``workdir/eval``. ``draw_figures=False`` (``eval.figures``): the
    numbers and the report without any figure.
    """
    from lesionjax.eval import figures

    out = Path(out_dir) if out_dir is not None else Path(workdir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(per_volume)
    grids = sorted({str(v.get("grid", "shard")) for v in per_volume})
    result = {
        "split": split,
        # Where every number below was computed: "native" (the scans' own grids, against the
        # original mask files) or "shard" (the resized, slice-selected training grid).
        "grid": grids[0] if len(grids) == 1 else "mixed",
        "mean_dice": summary["lesion"]["dice"]["mean"],
        "mean_dice_all": summary["all"]["dice"]["mean"],
        "n_volumes": summary["all"]["n"],
        "n_lesion_volumes": summary["lesion"]["n"],
        **(extra or {}),
        "summary": summary,
    }
    atomic_write_text(out / "summary.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "per_volume.json", json.dumps(per_volume, indent=1) + "\n")
    atomic_write_text(out / "per_volume.csv", _per_volume_csv(per_volume))
    log = Path(workdir) / "metrics.jsonl"
    history = read_metrics_log(log) if log.exists() else []
    extra_figures = []
    if per_volume and draw_figures:
        boxplot = figures.plot_metric_boxplots(
            {"prediction": per_volume}, out / "dice_boxplot.png", metric="dice"
        )
        extra_figures.append(
            (
                "Dice by ICH subtype",
                boxplot,
                "Per-volume Dice; a volume counts in every subtype "
                "it contains; n = volumes per box.",
            )
        )
    if features is not None and draw_figures:
        tsne = figures.plot_tsne(
            features["features"],
            features["lesion"],
            out / "tsne.png",
            subtype_labels=features["subtypes"],
        )
        extra_figures.append(
            (
                "t-SNE of bottleneck features",
                tsne,
                "Global-average-pooled deepest encoder features of a balanced sample of the "
                "evaluated volumes' lesion and lesion-free slices (counts in the legends).",
            )
        )
    grid_note = {
        "native": "native grid (each scan's own voxels, against the original mask files)",
        "shard": "shard grid (the training grid: resized, slice-selected)",
    }.get(result["grid"], "mixed grids")
    report = write_report(
        out,
        summary=summary,
        per_volume=per_volume,
        history=history,
        overlay_examples=overlay_examples,
        title=f"{title}; metrics on the {grid_note}",
        figures=extra_figures,
        draw_figures=draw_figures,
    )
    result["report"] = str(report)
    return result

"""Evaluate a trained model on held-out volumes: predict every slice, reassemble each volume,
compute per-volume metrics, and write ``eval/summary.json``, per-volume tables and the report."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from lesionjax.atomic import atomic_write_text
from lesionjax.data.pipeline import ShardSet
from lesionjax.eval.inference import VolumePredictor
from lesionjax.eval.metrics import summarize, volume_metrics
from lesionjax.eval.report import read_metrics_log, write_report


def _overlay_example(case_id: str, image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> dict:
    """The slice with the most ground-truth lesion (or predicted lesion) of a volume.

    image: (X, Y, Z, C) uint8; gt, pred: (X, Y, Z) bool. Shows the first window channel.
    """
    area = gt.sum(axis=(0, 1)) if gt.any() else pred.sum(axis=(0, 1))
    k = int(np.argmax(area)) if area.any() else image.shape[2] // 2
    return {
        "image": image[:, :, k, 0].astype(np.float32) / 255.0,
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
) -> tuple[list[dict], list[dict]]:
    """Per-volume metrics (at shard resolution, spacing in mm from the manifest) and overlay
    examples: the lesion volumes with the largest lesions and the lesion-free volume with the
    most false-positive voxels (if any)."""
    from tqdm import tqdm

    source = shards.source()
    per_volume, candidates, false_positives = [], [], []
    show = progress and jax.process_index() == 0
    for case_id in tqdm(case_ids, desc="evaluate", unit="vol", disable=not show):
        vol = shards.read_volume(case_id, source)
        probs = predictor.predict_volume(state, vol["image"])
        pred = probs >= threshold
        gt = vol["mask"] > 0
        entry = shards.volume(case_id)
        metrics = volume_metrics(pred, gt, spacing=entry["shard_spacing"])
        per_volume.append({"case_id": case_id, "fold": entry["fold"], **metrics})
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
    # The largest lesions show what the model gets right; the worst lesion-free volume shows
    # where it hallucinates.
    chosen = candidates[: max(1, n_overlays - 1)] + false_positives[:1]
    if len(chosen) < n_overlays:
        chosen = candidates[:n_overlays]
    return per_volume, [example for _, example in chosen[:n_overlays]]


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
) -> dict:
    """Writes eval/summary.json, eval/per_volume.{json,csv} and eval/report.md (+ PNGs).

    ``summary.json`` holds ``mean_dice`` = mean volume Dice over the split's lesion volumes,
    ``n_volumes``, ``n_lesion_volumes`` and the full mean ± std tables.
    """
    out = Path(workdir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(per_volume)
    result = {
        "split": split,
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
    history = read_metrics_log(Path(workdir) / "metrics.jsonl")
    report = write_report(
        out,
        summary=summary,
        per_volume=per_volume,
        history=history,
        overlay_examples=overlay_examples,
        title=title,
    )
    result["report"] = str(report)
    return result

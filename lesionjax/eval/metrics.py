"""Per-volume segmentation metrics in NumPy: overlap (Dice, IoU, precision, recall) and volumes.

All metrics come from three integer counts of one binary prediction against one binary ground
truth: TP (both), FP (prediction only) and FN (ground truth only), see `count_overlap`. Counting
with `np.count_nonzero` on bool arrays keeps a 512x512x40 volume at a few milliseconds. Distance
metrics (Hausdorff, HD95, ASSD, surface Dice) belong in their own functions next to these and
are merged into `volume_metrics` the same way the volumes in mL are.

Formulas, with a smoothing constant ``eps >= 0``::

    dice      = (2 TP + eps) / (2 TP + FP + FN + eps)
    iou       = (TP + eps)   / (TP + FP + FN + eps)
    precision = (TP + eps)   / (TP + FP + eps)
    recall    = (TP + eps)   / (TP + FN + eps)

``eps = 1`` gives the smoothed per-volume metrics of the label-efficient ICH segmentation paper
(reported here under ``*_eps1`` names); ``eps = 0`` gives the plain ones.

Empty-mask convention (eps = 0): a ratio 0/0 is 1.0, every other ratio is computed as written.
"Nothing to find and nothing found" is a perfect score, and the convention equals the limit of the
smoothed formula as eps -> 0+ (eps/eps = 1), so the plain and the eps-1 metrics never disagree
about an empty case. Spelled out:

=========================  ====  ====  =========  ======
case                       dice  iou   precision  recall
=========================  ====  ====  =========  ======
both empty                 1     1     1          1
gt empty, pred non-empty   0     0     0          1
gt non-empty, pred empty   0     0     1          0
=========================  ====  ====  =========  ======

Other tools differ on "both empty", so compare numbers only under the same convention: MONAI's
`DiceMetric` gives 1.0 with ``ignore_empty=False`` (this convention) and NaN with its default
``ignore_empty=True`` (NaN whenever the ground truth is empty); nnU-Net v2's evaluation and
DeepMind's surface-distance `compute_dice_coefficient` give NaN (nnU-Net then averages with
`nanmean`, i.e. leaves such cases out). To reproduce those averages, summarize over lesion volumes
only (`summarize(...)["lesion"]`), where no ground truth is empty.

Volumes: with ``spacing`` (mm per array axis) a voxel is ``prod(spacing) / 1000`` mL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

OVERLAP_KEYS = ("dice", "iou", "precision", "recall")
SUMMARY_KEYS = OVERLAP_KEYS + tuple(f"{k}_eps1" for k in OVERLAP_KEYS)


class OverlapCounts(NamedTuple):
    """Voxel counts of a binary prediction against a binary ground truth (Python ints)."""

    tp: int
    fp: int
    fn: int

    @property
    def pred_voxels(self) -> int:
        return self.tp + self.fp

    @property
    def gt_voxels(self) -> int:
        return self.tp + self.fn


def as_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Returns ``mask`` as a bool array; accepts bool, or any dtype holding only 0 and 1.

    Float masks are accepted because NIfTI readers (nibabel's ``get_fdata``) return float64, but
    probabilities or multi-label maps are rejected instead of being silently thresholded at 0.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    binary = mask != 0
    foreground = mask[binary]
    if foreground.size and np.any(foreground != 1):
        bad = np.unique(foreground[foreground != 1])[:5]
        raise ValueError(
            f"{name}: expected a binary mask (0/1 or bool), found values {bad.tolist()} "
            f"(dtype {mask.dtype}); threshold probabilities or select a label first"
        )
    return binary


def count_overlap(pred: np.ndarray, gt: np.ndarray) -> OverlapCounts:
    """Counts TP, FP and FN of two binary masks of the same shape (any number of axes).

    Args:
      pred: (...) binary prediction (bool, or 0/1 of any dtype).
      gt: (...) binary ground truth, same shape as ``pred``.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    pred = as_binary_mask(pred, "prediction")
    gt = as_binary_mask(gt, "ground truth")
    tp = int(np.count_nonzero(pred & gt))
    # Two counts and one AND instead of three ANDs: each extra temporary is a full-volume pass.
    return OverlapCounts(
        tp=tp, fp=int(np.count_nonzero(pred)) - tp, fn=int(np.count_nonzero(gt)) - tp
    )


def _ratio(numerator: float, denominator: float) -> float:
    # 0/0 only happens with eps = 0 and empty masks; 1.0 is the documented convention.
    if denominator == 0:
        return 1.0
    return numerator / denominator


def overlap_from_counts(counts: OverlapCounts, eps: float = 0.0) -> dict[str, float]:
    """Dice, IoU, precision and recall from counts; see the module docstring for the formulas."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    tp, fp, fn = counts
    return {
        "dice": _ratio(2 * tp + eps, 2 * tp + fp + fn + eps),
        "iou": _ratio(tp + eps, tp + fp + fn + eps),
        "precision": _ratio(tp + eps, tp + fp + eps),
        "recall": _ratio(tp + eps, tp + fn + eps),
    }


def overlap_metrics(pred: np.ndarray, gt: np.ndarray, *, eps: float = 0.0) -> dict[str, float]:
    """Dice, IoU, precision and recall of a binary prediction against a binary ground truth.

    Args:
      pred: (...) binary mask (bool, or 0/1 of any dtype), e.g. (X, Y, Z) or (H, W).
      gt: (...) binary mask of the same shape.
      eps: smoothing added to numerator and denominator (0: plain metrics, with the empty-mask
        convention of the module docstring; 1: the label-efficient ICH paper's variant).

    Returns:
      {"dice", "iou", "precision", "recall"} as Python floats in [0, 1].

    Raises:
      ValueError: the shapes differ, or a mask is not binary.
    """
    return overlap_from_counts(count_overlap(pred, gt), eps)


def _voxel_ml(spacing: Sequence[float], ndim: int) -> float:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} entries for a {ndim}-d mask")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must be positive and finite (mm per axis)")
    return math.prod(spacing) / 1000.0  # mm^3 -> mL


def volume_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float | int]:
    """All per-volume metrics of one case.

    Args:
      pred: (X, Y, Z) (or any shape) binary prediction.
      gt: binary ground truth of the same shape.
      spacing: voxel size in mm per axis of ``pred`` (len == pred.ndim), or None.

    Returns:
      ``dice, iou, precision, recall`` (eps = 0), ``dice_eps1, iou_eps1, precision_eps1,
      recall_eps1`` (eps = 1), ``gt_voxels, pred_voxels`` (ints) and, with ``spacing``,
      ``gt_ml, pred_ml`` (millilitres) and ``rvd`` = (pred_ml - gt_ml) / gt_ml, signed
      (> 0: over-segmentation), NaN when the ground truth is empty. The INSTANCE 2022 challenge
      reports |rvd|.
    """
    counts = count_overlap(pred, gt)
    result: dict[str, float | int] = dict(overlap_from_counts(counts, 0.0))
    result.update({f"{k}_eps1": v for k, v in overlap_from_counts(counts, 1.0).items()})
    result["gt_voxels"] = counts.gt_voxels
    result["pred_voxels"] = counts.pred_voxels
    if spacing is not None:
        voxel_ml = _voxel_ml(spacing, np.ndim(pred))
        gt_ml = counts.gt_voxels * voxel_ml
        pred_ml = counts.pred_voxels * voxel_ml
        result["gt_ml"] = gt_ml
        result["pred_ml"] = pred_ml
        result["rvd"] = (pred_ml - gt_ml) / gt_ml if counts.gt_voxels else math.nan
    return result


def _mean_std(values: list) -> dict[str, float | int]:
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=0)), "n": int(finite.size)}


def summarize(
    per_volume: Sequence[Mapping],
    keys: Sequence[str] = SUMMARY_KEYS,
    lesion_key: str = "gt_voxels",
) -> dict:
    """Mean and population std (ddof=0) of per-volume metrics over all and over lesion volumes.

    Args:
      per_volume: one dict per volume, e.g. from `volume_metrics` (plus any other keys).
      keys: metrics to summarize; a key missing from a volume counts as NaN for it.
      lesion_key: a volume is a lesion volume when ``volume[lesion_key] > 0``.

    Returns:
      ``{"all": {"n": N, key: {"mean", "std", "n"}, ...}, "lesion": {...}}``. NaN values are left
      out, and each metric's own ``n`` says how many volumes it averaged (NaN mean and std when
      none). Population std because the volumes are the whole evaluated set, not a sample.

    Raises:
      ValueError: a volume has no ``lesion_key``.
    """
    is_lesion = []
    for i, volume in enumerate(per_volume):
        if lesion_key not in volume:
            raise ValueError(f"per_volume[{i}] has no {lesion_key!r} (keys: {sorted(volume)})")
        is_lesion.append(volume[lesion_key] > 0)

    def group(volumes: list[Mapping]) -> dict:
        out: dict = {"n": len(volumes)}
        for key in keys:
            out[key] = _mean_std([v.get(key) for v in volumes])
        return out

    return {
        "all": group(list(per_volume)),
        "lesion": group([v for v, les in zip(per_volume, is_lesion, strict=True) if les]),
    }


def _format_cell(stats: Mapping, group_n: int) -> str:
    if stats["n"] == 0:
        return "–"
    cell = f"{stats['mean']:.3f} ± {stats['std']:.3f}"
    # Say so when NaNs were left out, so the reader knows the mean is over fewer volumes.
    return cell if stats["n"] == group_n else f"{cell} (n={stats['n']})"


def format_summary_table(summary: Mapping) -> str:
    """A markdown table of a `summarize` result: one row per metric, "mean ± std" cells."""
    all_group, lesion_group = summary["all"], summary["lesion"]
    keys = [k for k in all_group if k != "n"]
    lines = [
        f"| metric | all volumes (n={all_group['n']}) | lesion volumes (n={lesion_group['n']}) |",
        "|---|---|---|",
    ]
    for key in keys:
        lines.append(
            f"| {key} | {_format_cell(all_group[key], all_group['n'])} "
            f"| {_format_cell(lesion_group[key], lesion_group['n'])} |"
        )
    return "\n".join(lines) + "\n"

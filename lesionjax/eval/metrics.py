"""Per-volume segmentation metrics in NumPy: overlap (Dice, IoU, precision, recall) and volumes.

All metrics come from three integer counts of one binary prediction against one binary ground
truth: TP (both), FP (prediction only) and FN (ground truth only), see `count_overlap`. Counting
with `np.count_nonzero` on bool arrays keeps a 512x512x40 volume at a few milliseconds. The
surface metrics (Hausdorff, HD95, ASSD, normalized surface Dice) live in `lesionjax.eval.surface`
(surface-distance's conventions, validated against it) and `volume_metrics` merges them in, with
the volumes in mL and, from probabilities, the voxel-level ROC AUC (`roc_auc`).

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

Lesion-level metrics (lesion-wise F1, detection rate, lesion counts and their difference, the
absolute volume difference in mL) count connected components under the ISLES'22 / ATLAS R2.0
matching rule: `lesionjax.eval.lesions`.

Surface metrics with empty masks (`surface.surface_metrics`): both empty -> hd = hd95 = assd = 0
and nsd = 1 (perfect, as Dice); one empty -> hd, hd95, assd = NaN (no distance exists;
surface-distance gives inf, MONAI inf or NaN) and nsd = 0. `summarize` leaves NaNs out of the
means and reports how many volumes each mean covers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from lesionjax.eval.lesions import LESION_KEYS, lesion_metrics
from lesionjax.eval.surface import SURFACE_KEYS, bounding_box, surface_metrics

OVERLAP_KEYS = ("dice", "iou", "precision", "recall")
SUMMARY_KEYS = (
    OVERLAP_KEYS
    + tuple(f"{k}_eps1" for k in OVERLAP_KEYS)
    + SURFACE_KEYS
    + ("rvd", "auc")
    + LESION_KEYS
)

# Normalized surface Dice tolerance of the INSTANCE 2022 evaluation script
# (compute_surface_dice_at_tolerance(..., 0.42)): about one in-plane voxel of its head CTs.
NSD_TOLERANCE_MM = 0.42


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


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")


def _box_count(mask: np.ndarray, box: tuple[slice, ...] | None) -> int:
    return 0 if box is None else int(np.count_nonzero(mask[box]))


def roc_auc(prob: np.ndarray, gt: np.ndarray) -> float:
    """Voxel-level ROC AUC of scores ``prob`` against a binary ground truth.

    The Mann-Whitney statistic: the fraction of (lesion voxel, background voxel) pairs in which
    the lesion voxel scores higher, a tie counting 1/2. That is exactly the area under the ROC
    curve through all distinct thresholds with straight segments across tied scores, which is
    what ``sklearn.metrics.roc_auc_score`` computes (tested). Exact integer counting: the scores
    are sorted (``np.sort``, vectorized; no argsort) and the smaller class is binary-searched in
    them: for each of its voxels, how many voxels score below it (``< v`` and ``<= v``).

    Args:
      prob: (...) scores, any real values (probabilities or logits), finite.
      gt: binary ground truth of the same shape.

    Returns:
      AUC in [0, 1]; NaN when ``gt`` is all lesion or all background (undefined; sklearn raises).

    Raises:
      ValueError: the shapes differ, ``gt`` is not binary, or ``prob`` has NaN or inf.
    """
    prob = np.asarray(prob)
    gt = as_binary_mask(np.asarray(gt), "ground truth")
    if prob.shape != gt.shape:
        raise ValueError(f"probability shape {prob.shape} != ground truth shape {gt.shape}")
    if prob.dtype == bool or not np.issubdtype(prob.dtype, np.number):
        raise ValueError(f"probabilities must be real numbers, got dtype {prob.dtype}")
    if np.issubdtype(prob.dtype, np.complexfloating):
        raise ValueError(f"probabilities must be real numbers, got dtype {prob.dtype}")
    scores, labels = prob.ravel(), gt.ravel()
    if np.issubdtype(scores.dtype, np.floating) and not np.isfinite(scores).all():
        raise ValueError("probabilities contain NaN or inf")
    n_pos = int(np.count_nonzero(labels))
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    small_is_pos = n_pos <= n_neg
    small = np.sort(scores[labels] if small_is_pos else scores[~labels])
    # Only scores within the small class' range can fall between two of its values; sort just
    # those when they are few (a confident model), else everything (cheaper than selecting).
    lo, hi = small[0], small[-1]
    window = (scores >= lo) & (scores <= hi)
    n_window = int(np.count_nonzero(window))
    if 2 * n_window > scores.size:
        ranked, below = np.sort(scores), 0
    else:
        ranked = np.sort(scores[window])
        below = scores.size - n_window - int(np.count_nonzero(scores > hi))
    # For each small-class voxel v: (#all < v) + (#all <= v). Summed over the class, its own
    # members contribute n_small^2 (each pair once, ties twice); the rest counts the other
    # class below (twice) and tied (once).
    n_small = small.size
    total = (
        2 * below * n_small
        + int(np.searchsorted(ranked, small, side="left").sum(dtype=np.int64))
        + int(np.searchsorted(ranked, small, side="right").sum(dtype=np.int64))
        - n_small * n_small
    )
    twice_u = total if small_is_pos else 2 * n_pos * n_neg - total
    return twice_u / (2 * n_pos * n_neg)


def volume_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
    prob: np.ndarray | None = None,
    surface: bool = True,
    hd_percent: float = 95.0,
    lesions: bool = True,
) -> dict[str, float | int]:
    """All per-volume metrics of one case.

    Args:
      pred: (X, Y, Z) or (H, W) binary prediction (any shape without surface metrics).
      gt: binary ground truth of the same shape.
      spacing: voxel size in mm per axis of ``pred`` (len == pred.ndim), or None.
      nsd_tolerance_mm: tolerance of the normalized surface Dice (default: INSTANCE 2022's).
      prob: optional scores of the same shape (e.g. the probabilities ``pred`` was thresholded
        from); adds ``auc`` (`roc_auc`).
      surface: with ``spacing``, compute the surface metrics (2D or 3D masks only).
      hd_percent: the percentile reported as ``hd95``.
      lesions: compute the lesion-level metrics (`lesions.lesion_metrics`).

    Returns:
      ``dice, iou, precision, recall`` (eps = 0), ``dice_eps1, iou_eps1, precision_eps1,
      recall_eps1`` (eps = 1), ``gt_voxels, pred_voxels`` (ints); with ``spacing``,
      ``gt_ml, pred_ml`` (millilitres), ``rvd`` = (pred_ml - gt_ml) / gt_ml, signed
      (> 0: over-segmentation), NaN when the ground truth is empty (INSTANCE 2022 reports
      |rvd|), and the surface metrics ``hd, hd95, assd`` (mm) and ``nsd`` (see
      `surface.surface_metrics` for their definitions and the empty-mask convention); with
      ``prob``, ``auc``; with ``lesions``, ``lesion_f1, lesion_detection, gt_lesions,
      pred_lesions, lesion_count_diff`` and, with ``spacing``, ``avd_ml`` (the ISLES'22 /
      ATLAS R2.0 matching rule, see `lesionjax.eval.lesions`).

    Raises:
      ValueError: shapes differ, a mask is not binary, bad spacing, or surface metrics asked
        for a mask that is not 2D or 3D.
    """
    pred = as_binary_mask(np.asarray(pred), "prediction")
    gt = as_binary_mask(np.asarray(gt), "ground truth")
    _check_same_shape(pred, gt)
    # Count inside the bounding boxes (two cheap projections per mask, which the surface
    # metrics need anyway) instead of three full-volume passes.
    box_pred, box_gt = bounding_box(pred), bounding_box(gt)
    if box_pred is None or box_gt is None:
        tp = 0
    else:  # TP voxels lie in the intersection of the boxes (possibly empty)
        starts = [max(a.start, b.start) for a, b in zip(box_pred, box_gt, strict=True)]
        stops = [min(a.stop, b.stop) for a, b in zip(box_pred, box_gt, strict=True)]
        both = tuple(slice(lo, max(lo, hi)) for lo, hi in zip(starts, stops, strict=True))
        tp = int(np.count_nonzero(pred[both] & gt[both]))
    n_pred, n_gt = _box_count(pred, box_pred), _box_count(gt, box_gt)
    counts = OverlapCounts(tp=tp, fp=n_pred - tp, fn=n_gt - tp)
    result: dict[str, float | int] = dict(overlap_from_counts(counts, 0.0))
    result.update({f"{k}_eps1": v for k, v in overlap_from_counts(counts, 1.0).items()})
    result["gt_voxels"] = counts.gt_voxels
    result["pred_voxels"] = counts.pred_voxels
    if spacing is not None:
        voxel_ml = _voxel_ml(spacing, pred.ndim)
        gt_ml = counts.gt_voxels * voxel_ml
        pred_ml = counts.pred_voxels * voxel_ml
        result["gt_ml"] = gt_ml
        result["pred_ml"] = pred_ml
        result["rvd"] = (pred_ml - gt_ml) / gt_ml if counts.gt_voxels else math.nan
        if surface:
            result.update(
                surface_metrics(
                    pred,
                    gt,
                    spacing,
                    nsd_tolerance_mm=nsd_tolerance_mm,
                    hd_percent=hd_percent,
                    boxes=(box_pred, box_gt),
                )
            )
    if lesions:
        result.update(lesion_metrics(pred, gt, spacing))
    if prob is not None:
        result["auc"] = roc_auc(prob, gt)
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

"""Lesion-level metrics by connected components: lesion-wise F1, detection rate, lesion counts,
absolute volume difference, and the volume of each lesion.

The matching rule is the one of the ISLES'22 evaluation (de la Rosa et al., "ISLES 2022: A
multi-center magnetic resonance imaging stroke lesion segmentation dataset", Sci. Data 2022;
``compute_lesion_f1_score`` in github.com/ezequieldlrosa/isles22, ``utils/eval_utils.py``), which
the ATLAS R2.0 challenge scores with too (github.com/npnl/atlas2_grand_challenge,
``isles/scoring.py``). Lesions are the connected components of a mask under full connectivity
(26-neighbourhood in 3D, 8 in 2D; the challenges' ``cc3d`` with ``connectivity=26``):

* a ground-truth lesion that shares at least one voxel with the prediction is a true positive
  (TP), one that shares none a false negative (FN);
* a predicted lesion that shares no voxel with the ground truth is a false positive (FP);
* ``lesion_f1 = TP / (TP + (FP + FN) / 2)``, 1.0 when both masks are empty.

So a ground-truth lesion found in two pieces counts once (both pieces touch it: no FP), and one
predicted blob covering two ground-truth lesions finds both. ``lesion_detection`` is
``TP / (TP + FN)`` (the lesion-wise recall, NaN without ground-truth lesions), ``gt_lesions`` and
``pred_lesions`` the two counts, ``lesion_count_diff`` their absolute difference (the challenges'
"absolute lesion count difference"), and, with a voxel spacing, ``avd_ml`` the absolute volume
difference in mL (the challenges' "absolute volume difference").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lesionjax.eval.surface import bounding_box

LESION_KEYS = ("lesion_f1", "lesion_detection", "lesion_count_diff", "avd_ml")


@functools.cache
def _full_connectivity(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim)


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a bool mask under full connectivity (26 in 3D, 8 in 2D).

    Returns ``(labels, n)``: an int32 array of ``mask``'s shape, 0 outside the mask and
    1..n on the lesions, and the number of lesions.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim == 0:
        raise ValueError("lesions need a mask with at least one axis")
    labels, n = ndimage.label(mask, structure=_full_connectivity(mask.ndim))
    return labels.astype(np.int32, copy=False), int(n)


def lesion_volumes(mask: np.ndarray, spacing: Sequence[float] | None = None) -> list[float]:
    """The size of each connected lesion of ``mask``, largest first: in mL with ``spacing``
    (mm per axis), else in voxels."""
    labels, n = label_lesions(mask)
    if n == 0:
        return []
    voxels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    scale = 1.0 if spacing is None else float(np.prod(spacing)) / 1000.0
    return [float(v) * scale for v in sorted(voxels.tolist(), reverse=True)]


def lesion_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float | int]:
    """Lesion-level metrics of one binary prediction against one binary ground truth.

    Args:
      pred, gt: bool masks of the same shape (any number of axes).
      spacing: voxel size in mm per axis; adds ``avd_ml``.

    Returns:
      ``lesion_f1``, ``lesion_detection``, ``gt_lesions``, ``pred_lesions``,
      ``lesion_count_diff`` and, with ``spacing``, ``avd_ml`` (see the module docstring).
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    n_pred_voxels, n_gt_voxels = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    # Every lesion lies inside the bounding box of the union: label that crop only.
    box = bounding_box(pred | gt)
    if box is not None:
        pred, gt = pred[box], gt[box]
    gt_labels, n_gt = label_lesions(gt)
    pred_labels, n_pred = label_lesions(pred)
    both = pred & gt
    # Lesions are whole components, so one overlapping voxel marks the whole lesion as matched.
    found = np.unique(gt_labels[both]).size
    touching = np.unique(pred_labels[both]).size
    tp, fn, fp = found, n_gt - found, n_pred - touching
    result: dict[str, float | int] = {
        "lesion_f1": 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2),
        "lesion_detection": tp / n_gt if n_gt else math.nan,
        "gt_lesions": n_gt,
        "pred_lesions": n_pred,
        "lesion_count_diff": abs(n_pred - n_gt),
    }
    if spacing is not None:
        if len(spacing) != pred.ndim:
            raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}-D mask")
        voxel_ml = float(np.prod(spacing)) / 1000.0
        result["avd_ml"] = abs(n_pred_voxels - n_gt_voxels) * voxel_ml
    return result

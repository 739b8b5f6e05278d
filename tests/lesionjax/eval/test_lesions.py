"""Lesion-level metrics (ISLES'22 / ATLAS R2.0 matching rule) on hand-made cases, and against a
pure-Python flood fill on random masks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lesionjax.eval.lesions import label_lesions, lesion_metrics, lesion_volumes
from lesionjax.eval.metrics import summarize, volume_metrics


def _blob(shape, corner, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = True
    return m


SHAPE = (20, 20, 8)


def test_two_lesions_one_found():
    a = _blob(SHAPE, (1, 1, 1), (3, 3, 2))
    b = _blob(SHAPE, (12, 12, 4), (4, 4, 3))
    gt = a | b
    pred = _blob(SHAPE, (12, 12, 4), (2, 2, 2))  # a small part of b only
    m = lesion_metrics(pred, gt, spacing=(1.0, 1.0, 2.0))
    # TP 1 (b), FN 1 (a), FP 0: F1 = 1 / (1 + 1/2) = 2/3; detection 1/2.
    assert m["lesion_f1"] == pytest.approx(2 / 3)
    assert m["lesion_detection"] == 0.5
    assert (m["gt_lesions"], m["pred_lesions"], m["lesion_count_diff"]) == (2, 1, 1)
    # gt 18 + 48 = 66 voxels, pred 8 voxels, 2 uL each -> |8 - 66| * 0.002 mL
    assert m["avd_ml"] == pytest.approx(58 * 0.002)


def test_a_split_lesion_is_one_true_positive_and_no_false_positive():
    gt = _blob(SHAPE, (2, 2, 2), (10, 3, 3))
    pred = _blob(SHAPE, (2, 2, 2), (3, 3, 3)) | _blob(SHAPE, (8, 2, 2), (4, 3, 3))
    m = lesion_metrics(pred, gt)
    assert (m["gt_lesions"], m["pred_lesions"]) == (1, 2)
    assert m["lesion_f1"] == 1.0 and m["lesion_detection"] == 1.0
    assert m["lesion_count_diff"] == 1
    assert "avd_ml" not in m  # no spacing, no volumes


def test_a_merged_lesion_finds_both_ground_truth_lesions():
    gt = _blob(SHAPE, (2, 2, 2), (3, 3, 3)) | _blob(SHAPE, (8, 2, 2), (3, 3, 3))
    pred = _blob(SHAPE, (2, 2, 2), (9, 3, 3))
    m = lesion_metrics(pred, gt)
    assert (m["gt_lesions"], m["pred_lesions"]) == (2, 1)
    assert m["lesion_f1"] == 1.0 and m["lesion_detection"] == 1.0
    assert m["lesion_count_diff"] == 1


def test_a_false_positive_lesion_and_the_empty_cases():
    gt = _blob(SHAPE, (2, 2, 2), (3, 3, 3))
    pred = gt | _blob(SHAPE, (14, 14, 5), (2, 2, 2))
    m = lesion_metrics(pred, gt)
    assert m["lesion_f1"] == pytest.approx(1 / (1 + 0.5))  # TP 1, FP 1
    empty = np.zeros(SHAPE, bool)
    both_empty = lesion_metrics(empty, empty, spacing=(1, 1, 1))
    assert both_empty["lesion_f1"] == 1.0 and math.isnan(both_empty["lesion_detection"])
    assert both_empty["avd_ml"] == 0.0 and both_empty["lesion_count_diff"] == 0
    only_pred = lesion_metrics(gt, empty)
    assert only_pred["lesion_f1"] == 0.0 and math.isnan(only_pred["lesion_detection"])
    missed = lesion_metrics(empty, gt)
    assert missed["lesion_f1"] == 0.0 and missed["lesion_detection"] == 0.0


def test_lesions_touching_at_a_corner_are_one_lesion_26_connectivity():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # corner neighbours: one 26-connected lesion
    m[3, 3, 3] = True  # two steps away: another
    assert label_lesions(m)[1] == 2
    m2 = np.zeros((4, 4), bool)
    m2[0, 0] = m2[1, 1] = True  # 2D: 8-connected
    assert label_lesions(m2)[1] == 1


def test_lesion_volumes_largest_first_in_ml():
    mask = _blob(SHAPE, (1, 1, 1), (2, 2, 1)) | _blob(SHAPE, (10, 10, 3), (3, 3, 3))
    assert lesion_volumes(mask) == [27.0, 4.0]
    assert lesion_volumes(mask, (0.5, 0.5, 4.0)) == pytest.approx([27e-3, 4e-3])
    assert lesion_volumes(np.zeros(SHAPE, bool)) == []


def _flood_components(mask: np.ndarray) -> list[set]:
    """Independent reference: connected components by breadth-first search over the full
    (3^n - 1)-neighbourhood, in pure Python."""
    offsets = [d for d in itertools.product((-1, 0, 1), repeat=mask.ndim) if any(d)]
    seen: set = set()
    components = []
    for start in zip(*np.nonzero(mask), strict=True):
        start = tuple(int(i) for i in start)
        if start in seen:
            continue
        seen.add(start)
        queue, component = [start], {start}
        while queue:
            p = queue.pop()
            for d in offsets:
                q = tuple(a + b for a, b in zip(p, d, strict=True))
                inside = all(0 <= c < n for c, n in zip(q, mask.shape, strict=True))
                if inside and q not in seen and mask[q]:
                    seen.add(q)
                    component.add(q)
                    queue.append(q)
        components.append(component)
    return components


def _reference(pred, gt):
    gt_c, pred_c = _flood_components(gt), _flood_components(pred)
    pred_set = {tuple(int(i) for i in p) for p in zip(*np.nonzero(pred), strict=True)}
    gt_set = {tuple(int(i) for i in p) for p in zip(*np.nonzero(gt), strict=True)}
    tp = sum(1 for c in gt_c if c & pred_set)
    fn = len(gt_c) - tp
    fp = sum(1 for c in pred_c if not c & gt_set)
    f1 = 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2)
    return f1, len(gt_c), len(pred_c)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_agree_with_a_flood_fill_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 10, 7) if seed % 2 else (15, 13)
    gt = rng.random(shape) < 0.12
    pred = rng.random(shape) < 0.12
    m = lesion_metrics(pred, gt)
    f1, n_gt, n_pred = _reference(pred, gt)
    assert (m["gt_lesions"], m["pred_lesions"]) == (n_gt, n_pred)
    assert n_gt > 2 and n_pred > 2  # the masks do hold several lesions
    assert m["lesion_f1"] == pytest.approx(f1)


def test_volume_metrics_carries_the_lesion_metrics_into_summaries():
    gt = _blob(SHAPE, (1, 1, 1), (3, 3, 2)) | _blob(SHAPE, (12, 12, 4), (4, 4, 3))
    pred = _blob(SHAPE, (12, 12, 4), (2, 2, 2))
    v = volume_metrics(pred, gt, spacing=(1.0, 1.0, 2.0))
    assert v["lesion_f1"] == pytest.approx(2 / 3) and v["avd_ml"] == pytest.approx(0.116)
    s = summarize([v, volume_metrics(gt, gt, spacing=(1.0, 1.0, 2.0))])
    assert s["lesion"]["lesion_f1"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert "lesion_f1" not in volume_metrics(pred, gt, lesions=False)

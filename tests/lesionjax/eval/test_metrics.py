"""Per-volume metrics: hand-computed counts, empty-mask convention, volumes, summaries."""

import math

import numpy as np
import pytest

from lesionjax.eval.metrics import (
    count_overlap,
    format_summary_table,
    overlap_metrics,
    summarize,
    volume_metrics,
)


def _masks_4x4():
    """TP = 3, FP = 1, FN = 2 on a 4x4 grid (counted by hand)."""
    pred = np.array(
        [
            [1, 1, 0, 0],
            [1, 0, 0, 1],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ],
        np.uint8,
    )
    gt = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 0, 0],
        ],
        bool,
    )
    return pred, gt


def test_overlap_metrics_2x2_hand_computed():
    pred = np.array([[1, 1], [0, 0]], bool)  # TP = 1, FP = 1, FN = 1
    gt = np.array([[1, 0], [1, 0]], bool)
    assert overlap_metrics(pred, gt) == pytest.approx(
        {"dice": 2 / 4, "iou": 1 / 3, "precision": 1 / 2, "recall": 1 / 2}
    )


def test_count_overlap_4x4():
    pred, gt = _masks_4x4()
    assert tuple(count_overlap(pred, gt)) == (3, 1, 2)


def test_overlap_metrics_4x4_hand_computed():
    pred, gt = _masks_4x4()
    assert overlap_metrics(pred, gt) == pytest.approx(
        {"dice": 6 / 9, "iou": 3 / 6, "precision": 3 / 4, "recall": 3 / 5}
    )


def test_overlap_metrics_4x4_eps1():
    pred, gt = _masks_4x4()
    assert overlap_metrics(pred, gt, eps=1.0) == pytest.approx(
        {"dice": 7 / 10, "iou": 4 / 7, "precision": 4 / 5, "recall": 4 / 6}
    )


EMPTY = np.zeros((3, 3, 2), bool)
SOME = np.zeros((3, 3, 2), bool)
SOME[0, :, 0] = True  # 3 voxels


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        (EMPTY, EMPTY, {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}),
        (SOME, EMPTY, {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 1.0}),
        (EMPTY, SOME, {"dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0}),
    ],
    ids=["both-empty", "gt-empty", "pred-empty"],
)
def test_empty_mask_convention(pred, gt, expected):
    assert overlap_metrics(pred, gt) == expected


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        (EMPTY, EMPTY, {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}),
        (SOME, EMPTY, {"dice": 1 / 4, "iou": 1 / 4, "precision": 1 / 4, "recall": 1.0}),
        (EMPTY, SOME, {"dice": 1 / 4, "iou": 1 / 4, "precision": 1.0, "recall": 1 / 4}),
    ],
    ids=["both-empty", "gt-empty", "pred-empty"],
)
def test_empty_masks_eps1(pred, gt, expected):
    assert overlap_metrics(pred, gt, eps=1.0) == pytest.approx(expected)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        overlap_metrics(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_non_binary_mask_is_rejected():
    with pytest.raises(ValueError, match="binary"):
        overlap_metrics(np.full((2, 2), 0.7), np.ones((2, 2), bool))


def test_float_zero_one_mask_is_accepted():
    pred, gt = _masks_4x4()
    assert overlap_metrics(pred.astype(np.float64), gt) == overlap_metrics(pred, gt)


def test_iou_dice_identity_on_random_masks():
    rng = np.random.default_rng(0)
    for density in (0.05, 0.3, 0.7):
        pred = rng.random((16, 16, 4)) < density
        gt = rng.random((16, 16, 4)) < density
        m = overlap_metrics(pred, gt)
        assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]))
        # And against the textbook set formula with float sums.
        expected = 2 * np.sum(pred & gt) / (np.sum(pred) + np.sum(gt))
        assert m["dice"] == pytest.approx(expected)


def test_volume_metrics_keys_and_eps1_variants():
    pred, gt = _masks_4x4()
    m = volume_metrics(pred, gt)
    assert m["dice"] == pytest.approx(6 / 9)
    assert m["dice_eps1"] == pytest.approx(7 / 10)
    assert m["iou_eps1"] == pytest.approx(4 / 7)
    assert m["precision_eps1"] == pytest.approx(4 / 5)
    assert m["recall_eps1"] == pytest.approx(4 / 6)
    assert (m["gt_voxels"], m["pred_voxels"]) == (5, 4)
    assert not {"gt_ml", "pred_ml", "rvd"} & set(m), "no spacing: no volumes"


def test_volume_metrics_ml_with_anisotropic_spacing():
    gt = np.zeros((40, 40, 4), bool)
    gt[:20, :20, :2] = True  # 800 voxels of 0.5 x 0.5 x 5 mm = 1.25 mm^3 -> 1.0 mL
    pred = np.zeros_like(gt)
    pred[:20, :20, :3] = True  # 1200 voxels -> 1.5 mL
    m = volume_metrics(pred, gt, spacing=(0.5, 0.5, 5.0))
    assert m["gt_ml"] == pytest.approx(1.0)
    assert m["pred_ml"] == pytest.approx(1.5)


def test_rvd_is_signed():
    gt = np.zeros((10, 10), bool)
    gt[:4, :5] = True  # 20 voxels
    over = np.zeros_like(gt)
    over[:5, :6] = True  # 30 voxels
    under = np.zeros_like(gt)
    under[:2, :5] = True  # 10 voxels
    assert volume_metrics(over, gt, spacing=(1.0, 1.0))["rvd"] == pytest.approx(0.5)
    assert volume_metrics(under, gt, spacing=(1.0, 1.0))["rvd"] == pytest.approx(-0.5)


def test_rvd_is_nan_for_empty_ground_truth():
    assert math.isnan(volume_metrics(SOME, EMPTY, spacing=(1.0, 1.0, 1.0))["rvd"])


def test_spacing_length_must_match_ndim():
    with pytest.raises(ValueError, match="spacing"):
        volume_metrics(SOME, SOME, spacing=(1.0, 1.0))


def _per_volume():
    return [
        {"case_id": "a", "gt_voxels": 10, "dice": 0.2, "iou": 0.1},
        {"case_id": "b", "gt_voxels": 5, "dice": 0.4, "iou": math.nan},
        {"case_id": "c", "gt_voxels": 0, "dice": 1.0, "iou": 1.0},
        {"case_id": "d", "gt_voxels": 0, "dice": math.nan, "iou": 1.0},
    ]


def test_summarize_all_volumes_ignores_nan_and_uses_population_std():
    s = summarize(_per_volume(), keys=("dice", "iou"))
    assert s["all"]["n"] == 4
    dice = np.array([0.2, 0.4, 1.0])
    assert s["all"]["dice"] == pytest.approx({"mean": dice.mean(), "std": dice.std(), "n": 3})
    iou = np.array([0.1, 1.0, 1.0])
    assert s["all"]["iou"] == pytest.approx({"mean": iou.mean(), "std": iou.std(), "n": 3})


def test_summarize_lesion_volumes_only():
    s = summarize(_per_volume(), keys=("dice", "iou"))
    assert s["lesion"]["n"] == 2
    assert s["lesion"]["dice"] == pytest.approx({"mean": 0.3, "std": 0.1, "n": 2})
    assert s["lesion"]["iou"] == pytest.approx({"mean": 0.1, "std": 0.0, "n": 1})


def test_summarize_with_no_lesion_volumes_reports_nan():
    s = summarize([{"gt_voxels": 0, "dice": 1.0}], keys=("dice",))
    assert s["lesion"]["n"] == 0
    assert s["lesion"]["dice"]["n"] == 0
    assert math.isnan(s["lesion"]["dice"]["mean"])


def test_summarize_requires_lesion_key():
    with pytest.raises(ValueError, match="gt_voxels"):
        summarize([{"dice": 1.0}])


def test_summarize_default_keys_from_volume_metrics():
    pred, gt = _masks_4x4()
    s = summarize([volume_metrics(pred, gt), volume_metrics(EMPTY, EMPTY)])
    assert s["all"]["dice_eps1"]["mean"] == pytest.approx((0.7 + 1.0) / 2)
    assert s["lesion"]["recall"]["mean"] == pytest.approx(3 / 5)


def test_format_summary_table():
    table = format_summary_table(summarize(_per_volume(), keys=("dice", "iou")))
    lines = table.strip().splitlines()
    assert lines[0] == "| metric | all volumes (n=4) | lesion volumes (n=2) |"
    assert lines[1] == "|---|---|---|"
    assert lines[2].startswith("| dice | 0.533 ± 0.340 (n=3) | 0.300 ± 0.100 |")
    assert lines[3].startswith("| iou | 0.700 ± 0.424 (n=3) | 0.100 ± 0.000 (n=1) |")

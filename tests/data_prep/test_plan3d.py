"""The 3D plan's rules on hand-made fingerprints (nnU-Net's target spacing, pooling per axis,
patch and batch from a memory budget, the low-resolution stage)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_prep import plan3d


def _fingerprint(spacings, shapes):
    return {"cases": [{"spacing": s, "shape": n} for s, n in zip(spacings, shapes, strict=True)]}


def test_isotropic_data_takes_the_median_spacing():
    spacings = [(1.0, 1.0, 1.0), (0.9, 0.9, 1.2), (1.1, 1.0, 0.8)]
    shapes = [(180, 210, 180)] * 3
    assert plan3d.target_spacing(spacings, shapes) == (1.0, 1.0, 1.0)


def test_thick_slices_take_the_10th_percentile_of_their_spacing():
    # 10 CTs at 0.45 mm in-plane: 8 with 5 mm slices, 2 with 3 mm (the 10th percentile: 3 mm).
    spacings = [(0.45, 0.45, 5.0)] * 8 + [(0.45, 0.45, 3.0)] * 2
    shapes = [(512, 512, 32)] * 10
    target = plan3d.target_spacing(spacings, shapes)
    assert target[:2] == (0.45, 0.45)
    np.testing.assert_allclose(target[2], 3.0)


def test_anisotropic_spacing_with_many_slices_keeps_the_median():
    # 5 mm slices but as many voxels along z as in-plane: not "anisotropic voxels", median kept.
    spacings = [(0.45, 0.45, 5.0)] * 8 + [(0.45, 0.45, 3.0)] * 2
    shapes = [(256, 256, 200)] * 10
    assert plan3d.target_spacing(spacings, shapes)[2] == 5.0


def test_pools_follow_the_factor_two_rule_per_axis():
    # z at 4x the in-plane spacing: x, y pooled twice alone, then all three until 4 voxels.
    pools, patch = plan3d.pools_for((0.5, 0.5, 2.0), (128, 128, 32))
    assert pools == [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert patch == [128, 128, 32]
    assert plan3d.divisor_of(pools) == [32, 32, 8]


def test_the_patch_is_rounded_up_to_the_pooling():
    pools, patch = plan3d.pools_for((1.0, 1.0, 1.0), (100, 60, 20))
    # x: 100 -> 50 -> 25 -> 13 -> 7 (4 pools); y: 60 -> 30 -> 15 -> 8 -> 4; z: 20 -> 10 -> 5 (2).
    assert plan3d.divisor_of(pools) == [16, 16, 4]
    assert patch == [112, 64, 20]


def test_a_single_poolable_axis_stops_below_three_times_the_minimum():
    pools, _ = plan3d.pools_for((1.0, 4.0, 4.0), (20, 8, 8))
    # Level 1 pools x only (20 >= 12) -> x 10 at 2 mm; level 2: x alone again but 10 < 12: stop.
    assert pools == [[2, 1, 1]]


def test_memory_budget_sets_patch_and_batch():
    fp = _fingerprint([(0.45, 0.45, 5.0)] * 10, [(512, 512, 32)] * 10)
    big = plan3d.make_plan(fp, memory_gb=8.0, in_channels=3)["stages"]["fullres"]
    small = plan3d.make_plan(fp, memory_gb=1.0, in_channels=3)["stages"]["fullres"]
    for stage, gb in ((big, 8.0), (small, 1.0)):
        assert stage["memory_bytes"] <= gb * 1024**3
        assert stage["batch_size"] >= 2
        divisor = plan3d.divisor_of(stage["pools"])
        assert all(p % d == 0 for p, d in zip(stage["patch"], divisor, strict=True))
        limits = zip(stage["patch"], stage["median_shape"], divisor, strict=True)
        assert all(p <= m + d for p, m, d in limits)
        assert stage["features"][0] == 32 and max(stage["features"]) <= 320
    assert math.prod(small["patch"]) < math.prod(big["patch"])
    # 5 mm slices: the patch is flat, z pooled less than x and y, rotation about z only.
    assert big["rotate_axial_only"] and plan3d.divisor_of(big["pools"])[2] < big["patch"][0]


def test_batch_is_capped_at_five_percent_of_the_dataset():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 2, [(32, 32, 32)] * 2)
    stage = plan3d.make_plan(fp, memory_gb=64.0)["stages"]["fullres"]
    assert stage["patch"] == [32, 32, 32]
    assert stage["batch_size"] == 2  # 5 % of 2 x 32^3 voxels is less than one patch: minimum 2


def test_lowres_stage_covers_a_quarter_of_the_median_volume():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 4, [(320, 320, 320)] * 4)
    plan = plan3d.make_plan(fp, memory_gb=2.0)
    full, low = plan["stages"]["fullres"], plan["stages"]["lowres"]
    assert math.prod(full["patch"]) < 0.25 * 320**3
    spacing = np.asarray(low["spacing"])
    assert np.all(spacing > 1.0)
    median = 320 / spacing
    # The first 3 % step past 1/4 coverage of the full-resolution patch.
    assert math.prod(full["patch"]) / np.prod(median) >= 0.25
    assert math.prod(full["patch"]) / np.prod(median * 1.03) < 0.25


def test_no_lowres_stage_when_the_patch_covers_the_volume_unless_forced():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 4, [(48, 48, 48)] * 4)
    assert "lowres" not in plan3d.make_plan(fp)["stages"]
    forced = plan3d.make_plan(fp, min_lowres_factor=2.0)["stages"]["lowres"]
    assert forced["spacing"] == [2.0, 2.0, 2.0]


def test_an_empty_fingerprint_is_refused():
    with pytest.raises(ValueError, match="without cases"):
        plan3d.make_plan({"cases": []})

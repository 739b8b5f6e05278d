"""Surface metrics (HD, HD95, ASSD, NSD) and voxel AUC against independent implementations.

References: DeepMind's ``surface_distance`` (the convention we follow; its results must agree to
~1e-9 relative), MONAI's ``monai.metrics`` (subvoxel NSD agrees; its HD/HD95 use boundary voxels
and an unweighted percentile, a documented difference) and ``sklearn.metrics.roc_auc_score``.
Masks are random blobs of several sizes, some crossing the array border, 2D and 3D, with
anisotropic spacings.
"""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from lesionjax.eval import surface
from lesionjax.eval.metrics import (
    NSD_TOLERANCE_MM,
    SUMMARY_KEYS,
    roc_auc,
    summarize,
    volume_metrics,
)

SPACINGS_3D = [(0.45, 0.45, 5.0), (1.0, 2.0, 3.0), (0.8, 0.6, 1.3)]
SPACINGS_2D = [(0.45, 0.45), (1.0, 2.0), (0.7, 0.3)]


@pytest.fixture(scope="module")
def sdlib():
    return pytest.importorskip("surface_distance")


@pytest.fixture
def sdlib_np2(sdlib, monkeypatch):
    """surface_distance 0.1 uses ``np.Inf`` for empty masks, which NumPy 2 removed."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    return sdlib


def _blobs(rng, shape, n, *, max_radius_frac=0.35) -> np.ndarray:
    """Union of ``n`` ellipsoids of random sizes; centres may lie beyond the array border, so
    some blobs are cut by it (the surface then runs along the border)."""
    mask = np.zeros(shape, bool)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(n):
        centre = [rng.uniform(-0.15 * s, 1.15 * s) for s in shape]
        radii = [rng.uniform(0.6, max(1.0, max_radius_frac * s)) for s in shape]
        mask |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
    return mask


def _case(seed: int, ndim: int):
    """(pred, gt): gt = blobs; pred = gt shifted, grown or shrunk, noisy, plus extra blobs."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(12, 36, ndim))
    gt = np.zeros(shape, bool)
    while not gt.any():
        gt = _blobs(rng, shape, int(rng.integers(1, 5)))
    pred = np.roll(gt, tuple(int(s) for s in rng.integers(-2, 3, ndim)), axis=tuple(range(ndim)))
    op = seed % 3
    if op == 1:
        pred = ndimage.binary_dilation(pred)
    elif op == 2:
        pred = ndimage.binary_erosion(pred) | ndimage.binary_erosion(gt)
    pred ^= rng.random(shape) < 0.02
    pred |= _blobs(rng, shape, int(rng.integers(0, 3)), max_radius_frac=0.15)
    if not pred.any():
        pred[tuple(s // 2 for s in shape)] = True
    return pred, gt


def _sorted_pairs(distances, sizes):
    order = np.lexsort((sizes, distances))
    return distances[order], sizes[order]


# ------------------------------------------------------------------------------------------
# Surfel sizes


@pytest.mark.parametrize("spacing", SPACINGS_3D + [(1.0, 1.0, 1.0), (3.7, 0.2, 1.9)])
def test_surfel_area_table_matches_surface_distance(sdlib, spacing):
    from surface_distance import lookup_tables

    expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(surface.surfel_size_table(spacing), expected, rtol=1e-12)


@pytest.mark.parametrize("spacing", SPACINGS_2D + [(1.0, 1.0), (5.0, 0.3)])
def test_contour_length_table_matches_surface_distance(sdlib, spacing):
    from surface_distance import lookup_tables

    expected = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
    np.testing.assert_allclose(surface.surfel_size_table(spacing), expected, rtol=1e-12)


def test_surfel_sizes_by_hand():
    # One voxel: 8 corner cells with one bit each, a triangle through three edge midpoints.
    table = surface.surfel_size_table((1.0, 1.0, 1.0))
    assert table[1] == pytest.approx(math.sqrt(3) / 8)
    assert table[0] == table[255] == 0
    # Code 15 = the four corners with i = 1 (bits 8, 4, 2, 1): a flat face across the cell,
    # perpendicular to axis 0, of area spacing[1] * spacing[2].
    assert surface.surfel_size_table((2.0, 3.0, 5.0))[15] == pytest.approx(15.0)
    # 2D code 0b0011 (lower two corners inside): a contour along axis 1, length spacing[1].
    assert surface.surfel_size_table((2.0, 3.0))[0b0011] == pytest.approx(3.0)
    # Total area of a 2x2x2-voxel cube = sum over its corner cells = the surface of its
    # marching-cubes polyhedron: 6 faces of 1 x 1 plus 12 bevelled edges and 8 corners.
    cube = np.zeros((4, 4, 4), bool)
    cube[1:3, 1:3, 1:3] = True
    sd = surface.compute_surface_distances(cube, cube, (1.0, 1.0, 1.0))
    faces, edges, corners = 6 * 1.0, 12 * math.sqrt(0.5), 8 * math.sqrt(3) / 8
    assert sd.sizes_gt.sum() == pytest.approx(faces + edges + corners)


# ------------------------------------------------------------------------------------------
# Distances and metrics vs surface-distance on random masks


@pytest.mark.parametrize("method", ["kdtree", "edt"])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ndim", [2, 3])
def test_matches_surface_distance_on_random_masks(sdlib, ndim, seed, method):
    pred, gt = _case(seed, ndim)
    spacing = (SPACINGS_3D if ndim == 3 else SPACINGS_2D)[seed % 3]
    ref = sdlib.compute_surface_distances(gt, pred, spacing)
    ours = surface.compute_surface_distances(pred, gt, spacing, method=method)

    for d, a, name in [
        (ours.distances_gt_to_pred, ours.sizes_gt, "gt"),
        (ours.distances_pred_to_gt, ours.sizes_pred, "pred"),
    ]:
        d, a = _sorted_pairs(d, a)
        ref_d = ref["distances_gt_to_pred" if name == "gt" else "distances_pred_to_gt"]
        ref_a = ref[f"surfel_areas_{name}"]
        assert d.shape == ref_d.shape
        np.testing.assert_allclose(d, ref_d, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a, ref_a, rtol=1e-9)

    for percent in (100, 95, 50):
        assert surface.robust_hausdorff(ours, percent) == pytest.approx(
            sdlib.compute_robust_hausdorff(ref, percent), rel=1e-9
        )
    # Tolerances equal to a voxel step (0.45, 1, 2, 3) put distances exactly on the boundary.
    for tol in (0.0, spacing[0], 1.0, 2.0, 3.0, 7.5):
        assert surface.surface_dice(ours, tol) == pytest.approx(
            sdlib.compute_surface_dice_at_tolerance(ref, tol), rel=1e-9
        )
    m_gp, m_pg = sdlib.compute_average_surface_distance(ref)
    a_g, a_p = ref["surfel_areas_gt"].sum(), ref["surfel_areas_pred"].sum()
    assert surface.assd(ours) == pytest.approx((m_gp * a_g + m_pg * a_p) / (a_g + a_p), rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_volume_metrics_surface_keys_match_surface_distance(sdlib, seed):
    pred, gt = _case(100 + seed, 3)
    spacing = SPACINGS_3D[seed % 3]
    tol = 1.5
    m = volume_metrics(pred.astype(np.uint8), gt.astype(np.float64), spacing, nsd_tolerance_mm=tol)
    ref = sdlib.compute_surface_distances(gt, pred, spacing)
    assert m["hd"] == pytest.approx(sdlib.compute_robust_hausdorff(ref, 100), rel=1e-9)
    assert m["hd95"] == pytest.approx(sdlib.compute_robust_hausdorff(ref, 95), rel=1e-9)
    assert m["nsd"] == pytest.approx(sdlib.compute_surface_dice_at_tolerance(ref, tol), rel=1e-9)
    m_gp, m_pg = sdlib.compute_average_surface_distance(ref)
    a_g, a_p = ref["surfel_areas_gt"].sum(), ref["surfel_areas_pred"].sum()
    assert m["assd"] == pytest.approx((m_gp * a_g + m_pg * a_p) / (a_g + a_p), rel=1e-9)
    # The overlap counts come from the bounding boxes; check them against full-array counts.
    assert m["gt_voxels"] == int(gt.sum()) and m["pred_voxels"] == int(pred.sum())
    assert m["dice"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))


def test_assd_is_area_weighted_not_mean_of_directions():
    # gt: a large square; pred: a small square in its corner. pred's short contour is close to
    # gt (small directed mean), most of gt's long contour is far from pred (large one). ASSD
    # weighs each surfel by its length, so it sits near gt's directed mean, far above the mean
    # of the two directed means.
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = np.zeros_like(gt)
    pred[5:9, 5:9] = True
    sd = surface.compute_surface_distances(pred, gt, (1.0, 1.0))
    a_g, a_p = sd.sizes_gt.sum(), sd.sizes_pred.sum()
    m_gp = (sd.distances_gt_to_pred * sd.sizes_gt).sum() / a_g
    m_pg = (sd.distances_pred_to_gt * sd.sizes_pred).sum() / a_p
    assert a_g > 5 * a_p and m_gp > 5 * m_pg
    assd = surface.assd(sd)
    assert assd == pytest.approx((m_gp * a_g + m_pg * a_p) / (a_g + a_p))
    assert assd > 1.5 * (m_gp + m_pg) / 2


def test_single_voxel_shift_by_hand():
    # One pixel vs the same pixel one row further, spacing (2, 1). Each contour has four
    # surfels (the pixel's corners), equal sizes; two of gt's corners are pred's corners
    # (distance 0), the other two are one row (2 mm) from pred's nearest corner. Same the
    # other way round.
    gt = np.zeros((5, 5), bool)
    gt[2, 2] = True
    pred = np.roll(gt, 1, axis=0)
    m = surface.surface_metrics(pred, gt, (2.0, 1.0), nsd_tolerance_mm=1.0)
    assert m == pytest.approx({"hd": 2.0, "hd95": 2.0, "assd": 1.0, "nsd": 0.5})
    # At a tolerance of exactly one row every surfel is close.
    assert surface.surface_metrics(pred, gt, (2.0, 1.0), nsd_tolerance_mm=2.0)["nsd"] == 1.0


def test_hd95_uses_per_direction_area_weighted_percentile():
    # A 3D slab vs the same slab with a one-voxel bump: the bump's surfels are a small share of
    # pred's area, so HD95 (area-weighted, per direction) is 0 while HD is the bump height.
    gt = np.zeros((20, 20, 6), bool)
    gt[2:18, 2:18, 1:3] = True
    pred = gt.copy()
    pred[9:11, 9:11, 3] = True
    m = surface.surface_metrics(pred, gt, (1.0, 1.0, 2.5), nsd_tolerance_mm=1.0)
    assert m["hd"] == pytest.approx(2.5)
    assert m["hd95"] == 0.0
    assert surface.robust_hausdorff(
        surface.compute_surface_distances(pred, gt, (1.0, 1.0, 2.5)), 99.9
    ) == pytest.approx(2.5)


# ------------------------------------------------------------------------------------------
# MONAI


@pytest.mark.parametrize("seed", range(3))
def test_nsd_matches_monai_subvoxel_surface_dice(seed):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, gt = _case(200 + seed, 3)
    spacing = SPACINGS_3D[seed]
    tol = 1.2
    nsd = monai_metrics.compute_surface_dice(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(gt)[None, None],
        [tol],
        include_background=True,
        spacing=list(spacing),
        use_subvoxels=True,
    )
    ours = surface.surface_metrics(pred, gt, spacing, nsd_tolerance_mm=tol)["nsd"]
    assert ours == pytest.approx(float(nsd[0, 0]), rel=1e-6)  # MONAI works in float32


def test_hausdorff_agrees_with_monai_where_conventions_coincide():
    # MONAI's HD measures between boundary voxel centres, ours between surfel corners; for a
    # box shifted along one axis both are that shift in mm. Its HD95 is an unweighted
    # percentile over boundary voxels, so it differs from ours in general (documented).
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    gt = np.zeros((24, 24, 10), bool)
    gt[6:16, 5:17, 2:6] = True
    pred = np.roll(gt, 2, axis=2)
    spacing = (0.45, 0.45, 5.0)
    monai_hd = monai_metrics.compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(gt)[None, None],
        include_background=True,
        spacing=list(spacing),
    )
    ours = surface.surface_metrics(pred, gt, spacing, nsd_tolerance_mm=1.0)["hd"]
    assert ours == pytest.approx(10.0)
    assert float(monai_hd[0, 0]) == pytest.approx(ours, rel=1e-6)


# ------------------------------------------------------------------------------------------
# Empty masks


def test_empty_mask_convention_and_surface_distance_difference(sdlib_np2):
    empty = np.zeros((8, 8, 4), bool)
    some = empty.copy()
    some[2:5, 2:6, 1:3] = True
    spacing = (0.45, 0.45, 5.0)

    both = surface.surface_metrics(empty, empty, spacing, nsd_tolerance_mm=1.0)
    assert both == {"hd": 0.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    ref = sdlib_np2.compute_surface_distances(empty, empty, spacing)
    assert sdlib_np2.compute_robust_hausdorff(ref, 100) == math.inf  # theirs: unusable in means
    with np.errstate(invalid="ignore"):
        assert math.isnan(sdlib_np2.compute_surface_dice_at_tolerance(ref, 1.0))

    for pred, gt in [(some, empty), (empty, some)]:
        one = surface.surface_metrics(pred, gt, spacing, nsd_tolerance_mm=1.0)
        assert math.isnan(one["hd"]) and math.isnan(one["hd95"]) and math.isnan(one["assd"])
        assert one["nsd"] == 0.0
        ref = sdlib_np2.compute_surface_distances(gt, pred, spacing)
        assert sdlib_np2.compute_robust_hausdorff(ref, 100) == math.inf
        assert sdlib_np2.compute_surface_dice_at_tolerance(ref, 1.0) == 0.0  # same as ours


def test_empty_mask_convention_differs_from_monai():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    empty = np.zeros((8, 8, 4), bool)
    some = empty.copy()
    some[2:5, 2:6, 1:3] = True
    spacing = [0.45, 0.45, 5.0]

    def monai(pred, gt):
        args = (torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])
        kw = {"include_background": True, "spacing": spacing}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = float(monai_metrics.compute_hausdorff_distance(*args, **kw)[0, 0])
            nsd = monai_metrics.compute_surface_dice(*args, [1.0], use_subvoxels=True, **kw)
        return hd, float(nsd[0, 0])

    hd, nsd = monai(empty, empty)
    assert math.isnan(hd) and math.isnan(nsd)  # ours: 0 and 1
    for pred, gt in [(some, empty), (empty, some)]:
        hd, nsd = monai(pred, gt)
        assert hd == math.inf and nsd == 0.0  # ours: NaN and 0
        ours = surface.surface_metrics(pred, gt, spacing, nsd_tolerance_mm=1.0)
        assert math.isnan(ours["hd"]) and ours["nsd"] == nsd


def test_summarize_averages_surface_metrics_over_defined_cases():
    gt = np.zeros((12, 12, 4), bool)
    gt[3:8, 3:8, 1:3] = True
    spacing = (1.0, 1.0, 2.0)
    cases = [
        volume_metrics(np.roll(gt, 1, axis=0), gt, spacing),  # hd = 1
        volume_metrics(np.roll(gt, 1, axis=2), gt, spacing),  # hd = 2
        volume_metrics(np.zeros_like(gt), gt, spacing),  # missed: hd NaN, nsd 0
        volume_metrics(np.zeros_like(gt), np.zeros_like(gt), spacing),  # both empty
    ]
    assert [c["hd"] for c in cases[:2]] == pytest.approx([1.0, 2.0])
    assert math.isnan(cases[2]["hd"]) and cases[2]["nsd"] == 0.0
    assert cases[3]["hd"] == 0.0 and cases[3]["nsd"] == 1.0
    assert set(surface.SURFACE_KEYS) <= set(SUMMARY_KEYS)
    s = summarize(cases)
    assert s["lesion"]["n"] == 3
    assert s["lesion"]["hd"] == pytest.approx({"mean": 1.5, "std": 0.5, "n": 2})
    assert s["all"]["hd"]["n"] == 3  # the both-empty 0 counts, the missed lesion does not
    assert s["all"]["hd"]["mean"] == pytest.approx(1.0)
    nsd = [c["nsd"] for c in cases]
    assert s["all"]["nsd"] == pytest.approx({"mean": np.mean(nsd), "std": np.std(nsd), "n": 4})


# ------------------------------------------------------------------------------------------
# Helpers, API and errors


@pytest.mark.parametrize("seed", range(6))
def test_bounding_box_matches_argwhere(seed):
    rng = np.random.default_rng(seed)
    ndim = 2 + seed % 2
    shape = tuple(int(s) for s in rng.integers(3, 20, ndim))
    mask = rng.random(shape) < (0.0 if seed == 5 else 0.01)
    box = surface.bounding_box(mask)
    idx = np.argwhere(mask)
    if idx.size == 0:
        assert box is None
    else:
        assert box == tuple(
            slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True)
        )


def test_neighbourhood_codes_match_correlation():
    rng = np.random.default_rng(0)
    crop = rng.random((6, 7, 5)) < 0.5
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    padded = np.pad(crop, ((0, 1), (0, 1), (0, 1))).astype(np.int64)
    expected = ndimage.correlate(padded, kernel, mode="constant", cval=0)
    np.testing.assert_array_equal(surface.neighbourhood_codes(crop), expected)


def test_volume_metrics_surface_keys_presence():
    gt = np.zeros((10, 10, 3), bool)
    gt[2:6, 2:6, 1] = True
    with_spacing = volume_metrics(gt, gt, (1.0, 1.0, 3.0))
    assert {"hd", "hd95", "assd", "nsd"} <= set(with_spacing)
    assert with_spacing["nsd"] == 1.0 and with_spacing["hd"] == 0.0
    assert not {"hd", "nsd", "auc"} & set(volume_metrics(gt, gt))
    assert "hd" not in volume_metrics(gt, gt, (1.0, 1.0, 3.0), surface=False)
    assert NSD_TOLERANCE_MM == pytest.approx(0.42)


def test_surface_metrics_errors():
    mask = np.ones((3, 3, 3, 2), bool)
    with pytest.raises(ValueError, match="2D or 3D"):
        volume_metrics(mask, mask, (1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="bool"):
        surface.compute_surface_distances(np.ones((3, 3)), np.ones((3, 3)), (1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        surface.compute_surface_distances(np.ones((3, 3), bool), np.ones((3, 4), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        surface.compute_surface_distances(np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 0))
    with pytest.raises(ValueError, match="method"):
        surface.compute_surface_distances(
            np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0), method="fast"
        )
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        volume_metrics(
            np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0), nsd_tolerance_mm=-1
        )


def test_kdtree_and_edt_agree_on_spread_lesions():
    # Two small lesions in opposite corners of a 256x256x24 volume: the bounding box is nearly
    # the whole volume (the case the k-d tree is for; its speed is measured in
    # benchmarks/metrics.py, not here). Both methods give the same values.
    gt = np.zeros((256, 256, 24), bool)
    gt[20:30, 20:32, 4:8] = True
    gt[220:236, 225:231, 15:19] = True
    pred = np.roll(gt, 1, axis=1)
    spacing = (0.45, 0.45, 5.0)
    kd = surface.surface_metrics(pred, gt, spacing, nsd_tolerance_mm=0.5, method="kdtree")
    edt = surface.surface_metrics(pred, gt, spacing, nsd_tolerance_mm=0.5, method="edt")
    assert kd == pytest.approx(edt, rel=1e-12)


# ------------------------------------------------------------------------------------------
# AUC


@pytest.mark.parametrize("seed", range(10))
def test_roc_auc_matches_sklearn_with_ties(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    gt = rng.random(n) < rng.uniform(0.05, 0.95)  # both regimes: fewer and more positives
    gt[0], gt[1] = True, False
    kind = seed % 4
    if kind == 0:
        prob = rng.integers(0, 4, n).astype(np.float64)  # heavy ties
    elif kind == 1:
        prob = np.round(rng.random(n).astype(np.float32), 2)
    elif kind == 2:
        prob = rng.normal(size=n) + gt  # logits, no ties
    else:
        prob = rng.integers(-3, 3, n)  # integer scores
    assert roc_auc(prob, gt) == pytest.approx(metrics.roc_auc_score(gt, prob), abs=1e-12)


def test_roc_auc_3d_and_through_volume_metrics():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    gt = _blobs(rng, (20, 24, 6), 3)
    prob = np.clip(
        ndimage.gaussian_filter(gt.astype(np.float32), 1.0) + rng.normal(0, 0.1, gt.shape), 0, 1
    )
    prob = prob.astype(np.float32)
    m = volume_metrics(prob >= 0.5, gt, (0.5, 0.5, 3.0), prob=prob)
    assert m["auc"] == pytest.approx(metrics.roc_auc_score(gt.ravel(), prob.ravel()), abs=1e-12)
    # A confident model: background far below every lesion score (only the window is sorted).
    sharp = np.where(gt, 0.9, 1e-6).astype(np.float32)
    sharp[0, 0, 0] = 0.95 if not gt[0, 0, 0] else 0.0  # one error each way keeps it < 1
    assert roc_auc(sharp, gt) == pytest.approx(
        metrics.roc_auc_score(gt.ravel(), sharp.ravel()), abs=1e-12
    )


def test_roc_auc_edge_cases():
    gt = np.zeros((4, 4), bool)
    assert math.isnan(roc_auc(np.random.default_rng(0).random((4, 4)), gt))
    assert math.isnan(roc_auc(np.ones((4, 4)), ~gt))
    gt[0, :2] = True
    assert roc_auc(gt.astype(np.float32), gt) == 1.0
    assert roc_auc(1.0 - gt, gt) == 0.0
    assert roc_auc(np.full((4, 4), 0.3), gt) == 0.5  # all tied: chance
    prob = np.zeros((4, 4))
    prob[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(prob, gt)
    with pytest.raises(ValueError, match="shape"):
        roc_auc(np.zeros((4, 5)), gt)

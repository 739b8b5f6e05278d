"""MRI normalization, resampling to a spacing, slice selection, the plan's checks, and their use
in shard building."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_prep import intensity, resample
from data_prep.layouts import CaseFiles
from data_prep.plan import PreprocessingPlan
from data_prep.preprocess import select_axial_slices
from data_prep.shard_writer import plan_for_cases
from data_prep.volumes import CaseError


def _brain(shape=(40, 48, 30), seed=0):
    """A bright ellipsoid 'brain' in a zero background, with a few very bright 'lesions'."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (x**2 + y**2 + z**2) < 0.8
    data = np.where(brain, 100.0 + 10.0 * rng.standard_normal(shape), 0.0).astype(np.float32)
    lesion = brain & ((x - 0.2) ** 2 + y**2 + z**2 < 0.04)
    data[lesion] = 300.0
    return data, brain, lesion


def test_percentile_normalization_clips_and_scales_over_the_foreground():
    data, brain, _ = _brain()
    out = intensity.normalize_intensity(data, percentiles=(1.0, 99.0))
    lo, hi = np.percentile(data[data != 0], [1.0, 99.0])
    expected = np.clip((data - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    # Scaling the scan by any positive factor and offset gives the same result.
    np.testing.assert_allclose(
        intensity.normalize_intensity(
            np.where(data != 0, 3.0 * data + 7.0, 0.0), percentiles=(1, 99)
        ),
        out,
        atol=1e-5,
    )


def test_zscore_normalization_and_brain_mask():
    data, brain, _ = _brain()
    out = intensity.normalize_intensity(data, brain, method="zscore")
    values = data[brain]
    z = (data - values.mean()) / values.std()
    expected = np.clip((z + intensity.ZSCORE_RANGE) / (2 * intensity.ZSCORE_RANGE), 0, 1)
    expected[~brain] = 0.0  # skull stripping with the brain mask
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_a_constant_background_of_any_value_is_background():
    """A volume normalized upstream (mean/std over the brain, BraTS-style) has its background at
    a negative constant, here -0.8. It is background for the normalization and for the slice
    content rule alike: the result is the one of the same scan with a zero background."""
    data, brain, _ = _brain((40, 48, 30))
    mu, sd = data[brain].mean(), data[brain].std()
    upstream = np.where(brain, (data - mu) / sd, -0.8).astype(np.float32)
    assert intensity.background_value(upstream) == pytest.approx(-0.8)
    np.testing.assert_array_equal(intensity.foreground_mask(upstream), brain)
    for method in ("zscore", "percentile"):
        ours = intensity.normalize_intensity(upstream, method=method)
        reference = intensity.normalize_intensity(data, method=method)
        np.testing.assert_allclose(ours, reference, atol=1e-5)
        assert (ours[~brain] == 0).all()
        kept = select_axial_slices(ours, "MR", min_content=0.1)
        assert 0 < len(kept) < 30  # the slices at both ends hold no brain and are dropped
        np.testing.assert_array_equal(kept, select_axial_slices(reference, "MR", min_content=0.1))


def test_no_constant_background_means_every_voxel_is_foreground():
    rng = np.random.default_rng(1)
    noisy = rng.normal(10.0, 1.0, (12, 12, 6)).astype(np.float32)  # noise everywhere, no constant
    assert intensity.background_value(noisy) is None
    assert intensity.foreground_mask(noisy).all()


def test_constant_foreground_is_an_error():
    data = np.zeros((8, 8, 8), np.float32)
    data[2:6, 2:6, 2:6] = 5.0
    with pytest.raises(CaseError, match="constant"):
        intensity.normalize_intensity(data)
    with pytest.raises(CaseError, match="empty"):
        intensity.normalize_intensity(data, np.zeros(data.shape, bool))


def test_resample_preserves_world_coordinates_and_maps_slices():
    data, brain, _ = _brain((40, 48, 30))
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = (-20.0, -24.0, -22.0)
    out, (mask,), _, new_affine, spacing, z_src = resample.resample_to_spacing(
        data, [brain.astype(np.uint8)], None, affine, (1.0, 1.0, 1.5), (2.0, 2.0, 3.0)
    )
    assert out.shape == (20, 24, 15) and mask.shape == out.shape
    np.testing.assert_allclose(spacing, (2.0, 2.0, 3.0))
    np.testing.assert_allclose(np.abs(np.diag(new_affine)[:3]), spacing)

    # The volume's extent (outer voxel edges) is unchanged in world coordinates.
    def extent(aff, shape, sp):
        lo = aff @ np.array([0, 0, 0, 1.0])
        hi = aff @ np.array([*(np.array(shape) - 1), 1.0])
        return lo[:3] - np.asarray(sp) / 2, hi[:3] + np.asarray(sp) / 2

    for a, b in zip(
        extent(affine, data.shape, (1, 1, 1.5)), extent(new_affine, out.shape, spacing), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-9)
    # Output slice k covers input slices 2k and 2k+1: the nearest source is one of them.
    assert np.all((z_src == 2 * np.arange(15)) | (z_src == 2 * np.arange(15) + 1))
    # The mask keeps its volume within a few percent.
    vol_in = brain.sum() * 1.5
    vol_out = mask.sum() * 12.0
    assert abs(vol_out - vol_in) / vol_in < 0.05


def test_select_axial_slices_by_range_and_content():
    data, _, _ = _brain((20, 20, 30))
    assert list(select_axial_slices(data, "MR", slice_range=(10, 15))) == [10, 11, 12, 13, 14]
    assert list(select_axial_slices(data, "MR", slice_range=(-3, 30))) == [27, 28, 29]
    normalized = intensity.normalize_intensity(data)
    content = intensity.slice_content(normalized, "MR")
    keep = select_axial_slices(normalized, "MR", min_content=0.2)
    assert len(keep) and np.all(content[keep] >= 0.2)
    assert np.all(content[np.setdiff1d(np.arange(30), keep)] < 0.2)
    # Both: the content rule inside the range.
    both = select_axial_slices(normalized, "MR", slice_range=(0, 15), min_content=0.2)
    assert set(both) == {k for k in keep if k < 15}
    ct = np.full((10, 10, 4), -1000.0, np.float32)
    ct[:, :, 1:3] = 40.0
    assert list(select_axial_slices(ct, "CT", min_content=0.5)) == [1, 2]


def test_plan_rejects_impossible_values():
    def plan(**kw):
        return PreprocessingPlan("pairs", "MR", windows=("unit",), **kw)

    with pytest.raises(ValueError, match="data.normalize percentiles"):
        plan(normalize=(99, 1))
    with pytest.raises(ValueError, match="data.spacing"):
        plan(spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="data.normalize_method 'minmax'"):
        plan(normalize_method="minmax")
    with pytest.raises(ValueError, match="data.min_content"):
        plan(min_content=1.5)
    with pytest.raises(ValueError, match="HU windows"):
        PreprocessingPlan("pairs", "MR", windows=("brain",))


def _write_mr_case(root, name, data, lesion, affine):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(root / "images" / f"{name}.nii.gz"))
    nib.save(
        nib.Nifti1Image(lesion.astype(np.uint8), affine), str(root / "masks" / f"{name}.nii.gz")
    )
    return CaseFiles(
        case_id=name,
        image=root / "images" / f"{name}.nii.gz",
        mask=root / "masks" / f"{name}.nii.gz",
        modality="MR",
    )


def test_build_mr_shards_with_resampling_and_slice_selection(build, tmp_path):
    data, brain, lesion = _brain((40, 48, 30))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    case = _write_mr_case(tmp_path / "raw", "mr0", data, lesion, affine)
    out = tmp_path / "shards"
    manifest, skipped = build(
        [case],
        out,
        n_folds=1,
        windows=["unit"],
        spacing=(2.0, 2.0, 2.0),
        slice_range=(2, 13),
        min_content=0.1,
        normalize_method="zscore",
    )
    assert not skipped
    v = manifest["volumes"][0]
    assert v["modality"] == "MR" and v["has_mask"]
    assert v["spacing"] == [2.0, 2.0, 2.0]
    kept = v["kept_slices"]
    assert kept == sorted(kept) and all(2 <= k < 13 for k in kept) and len(kept) == v["n_slices"]
    # Lesion slices are where the resampled lesion is, within the kept slices.
    lesion_z = np.flatnonzero(lesion.any(axis=(0, 1)))
    for k in v["lesion_slices"]:
        assert lesion_z.min() <= 2 * kept[k] + 1 and 2 * kept[k] <= lesion_z.max()
    sidecar = json.loads((out / "shards" / "mr0.json").read_text())
    assert sidecar["settings"] and sidecar["kept_slices"] == kept


def test_hu_windows_on_mr_are_rejected(build, tmp_path):
    data, _, lesion = _brain((16, 16, 8))
    case = _write_mr_case(tmp_path / "raw", "mr0", data, lesion, np.eye(4))
    _, skipped = build(
        [case, case.__class__(**{**case.__dict__, "case_id": "mr1"})],
        tmp_path / "ok",
        n_folds=1,
        windows=["unit"],
    )
    assert not skipped
    # The plan itself is refused, before any case is read.
    with pytest.raises(ValueError, match=r"MR images are normalized to \[0, 1\] but the windows"):
        plan_for_cases("pairs", [case], {"windows": ["brain"]})


def test_csv_slice_labels_follow_resampling_and_selection(build, tmp_path):
    """Per-slice labels given by a CSV (indexed by stored slice) end up on the right slices after
    reorientation (stored inferior-first flip), resampling and slice selection."""
    shape = (16, 16, 12)
    data = np.full(shape, 40.0, np.float32)
    data[0, 0, 0] = -1000.0
    mask = np.zeros(shape, np.uint8)
    # Stored with a flipped z axis: stored slice s is RAS slice 11 - s.
    affine = np.diag([1.0, 1.0, -2.0, 1.0])
    affine[2, 3] = 22.0
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, affine), str(root / "images" / "c.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(root / "masks" / "c.nii.gz"))
    labels = np.zeros((12, 6), np.uint8)
    labels[3, [0, 5]] = 1  # stored slice 3: subdural
    case = CaseFiles(
        case_id="c",
        image=root / "images" / "c.nii.gz",
        mask=None,
        labelled=False,
        slice_labels=tuple(tuple(int(v) for v in row) for row in labels),
    )
    manifest, skipped = build([case], tmp_path / "out", n_folds=1, windows=["brain"])
    assert not skipped
    v = manifest["volumes"][0]
    assert v["has_mask"] is False
    assert v["lesion_slices"] == [8]  # RAS slice 11 - 3
    assert v["slice_labels"][8] == [1, 0, 0, 0, 0, 1]
    # 4 mm slices: RAS slice 8 lands in output slice 4; then keep slices 3..5 -> index 1.
    manifest, _ = build(
        [case],
        tmp_path / "out2",
        n_folds=1,
        windows=["brain"],
        spacing=(1.0, 1.0, 4.0),
        slice_range=(3, 6),
    )
    v = manifest["volumes"][0]
    assert v["n_slices"] == 3 and v["lesion_slices"] == [1]


def test_zero_background_stays_zero_with_zscore():
    """Skull-stripped scans: the zero background is "no tissue" (0) after z-scoring too, so the
    content rule drops empty slices whatever the normalization."""
    data, brain, _ = _brain((20, 20, 30))
    out = intensity.normalize_intensity(data, method="zscore")
    assert np.all(out[data == 0] == 0.0) and out[data != 0].min() > 0.0
    content = intensity.slice_content(out, "MR")
    assert content[0] == 0.0 and content[15] > 0.3

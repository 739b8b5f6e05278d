"""The grid chain: a label pushed through preprocessing and back lands on the scan's own voxels.

The forward direction is ``data_prep.preprocess.preprocess_case`` on NIfTI files written with
known affines; the way back is ``GridChain.to_native``. Reorientation and slice selection are
exact; resampling and the in-plane resize are interpolations, checked by overlap.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from data_prep.layouts.base import CaseFiles
from data_prep.plan import PreprocessingPlan
from data_prep.preprocess import preprocess_case
from lesionjax.core.geometry import GridChain, zoom_affine


def _flip_affine(affine, shape, axes):
    f = np.eye(4)
    for a in axes:
        f[a, a] = -1.0
        f[a, 3] = shape[a] - 1
    return affine @ f


def _case(tmp_path, shape, spacing, axes, *, seed=0):
    """A CT-like image and a blob mask stored with the voxel axes ``axes`` flipped (LPS: x, y;
    LPI: x, y, z) and, for ``axes == "swap"``, x and y transposed."""
    rng = np.random.default_rng(seed)
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = -np.asarray(shape) * spacing / 2
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = np.asarray(shape) * [0.55, 0.4, 0.6]
    mask = ((x - c[0]) / 5.0) ** 2 + ((y - c[1]) / 4.0) ** 2 + ((z - c[2]) / 2.5) ** 2 < 1
    image = np.where(mask, 70.0, 30.0) + rng.normal(0, 3, shape)
    image[:2] = -1000.0  # air at the left edge
    if axes == "swap":
        data, m = image.transpose(1, 0, 2), mask.transpose(1, 0, 2)
        affine = ras[:, [1, 0, 2, 3]]
    else:
        data, m = np.flip(image, axes).copy(), np.flip(mask, axes).copy()
        affine = _flip_affine(ras, shape, axes)
    img_path, mask_path = tmp_path / "img.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(img_path))
    nib.save(nib.Nifti1Image(m.astype(np.uint8), affine), str(mask_path))
    return CaseFiles("c", img_path, mask_path), m.astype(np.uint8), affine


def _plan(**kw):
    return PreprocessingPlan("pairs", "CT", windows=("brain",), **kw)


@pytest.mark.parametrize("axes", [(), (0, 1), (0,), (0, 1, 2), "swap"], ids=str)
def test_reorientation_and_slice_selection_are_inverted_exactly(tmp_path, axes):
    files, native_mask, affine = _case(tmp_path, (20, 24, 12), np.array([1.0, 1.2, 3.0]), axes)
    prepared = preprocess_case(files, _plan(slice_range=(2, 10)))
    back = prepared.grid.to_native(prepared.mask, order=0)
    assert back.shape == native_mask.shape
    np.testing.assert_allclose(prepared.grid.native_affine, affine)
    # Inside the kept slab the label comes back voxel for voxel; outside it is 0.
    ras_kept = np.zeros((20, 24, 12), bool)
    ras_kept[:, :, 2:10] = True
    if axes == "swap":
        kept_native = ras_kept.transpose(1, 0, 2)
    else:
        kept_native = np.flip(ras_kept, axes)
    np.testing.assert_array_equal(back[kept_native], native_mask[kept_native])
    assert not back[~kept_native].any()


def test_resampling_and_resize_are_inverted_up_to_interpolation(tmp_path):
    files, native_mask, _ = _case(tmp_path, (40, 36, 16), np.array([0.8, 0.9, 2.5]), (0, 1))
    plan = _plan(spacing=(1.6, 1.8, 2.5), size=(32, 32))
    prepared = preprocess_case(files, plan)
    grid = prepared.grid
    assert grid.resampled_shape == (20, 18, 16) and grid.shard_shape == (32, 32, 16)
    back = grid.to_native(prepared.mask.astype(np.float32), order=1) >= 0.5
    dice = 2 * (back & (native_mask > 0)).sum() / (back.sum() + native_mask.sum())
    assert dice > 0.85, dice
    # The shard grid's voxel size follows the resize: 20 voxels of 1.6 mm over 32 voxels.
    np.testing.assert_allclose(grid.shard_spacing, [1.0, 1.8 * 18 / 32, 2.5])


def test_chain_survives_json_and_rejects_the_wrong_shape(tmp_path):
    files, _, _ = _case(tmp_path, (20, 24, 12), np.array([1.0, 1.2, 3.0]), (0, 1))
    grid = preprocess_case(files, _plan(size=(16, 16), slice_range=(1, 11))).grid
    again = GridChain.from_dict(grid.to_dict())
    assert again.to_dict() == grid.to_dict()
    with pytest.raises(ValueError, match="shard shape"):
        grid.to_native(np.zeros((16, 16, 3)))


def test_zoom_affine_keeps_the_extent():
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    new = zoom_affine(affine, (10, 10, 10), (5, 20, 10))
    # The outer edge of voxel 0 stays where it was: centre - half a voxel.
    for axis, n_out in enumerate((5, 20, 10)):
        old_edge = affine[axis, 3] - affine[axis, axis] / 2
        new_edge = new[axis, 3] - new[axis, axis] / 2
        assert new_edge == pytest.approx(old_edge)
        assert new[axis, axis] * n_out == pytest.approx(affine[axis, axis] * 10)

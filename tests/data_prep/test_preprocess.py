"""preprocess_case: slice labels and lesion counts are those of the mask as stored in the shard."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from data_prep.layouts.base import CaseFiles
from data_prep.plan import PreprocessingPlan
from data_prep.preprocess import preprocess_case
from data_prep.shard_writer import build_shards
from lesionjax.data.shards import ShardSet


def _write(tmp_path, name, mask, subtypes=None):
    shape = mask.shape
    image = np.full(shape, 30.0, np.float32)
    image[mask > 0] = 70.0
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    paths = {}
    for folder, data in (("images", image), ("masks", mask), ("subtypes", subtypes)):
        if data is None:
            continue
        (tmp_path / folder).mkdir(exist_ok=True)
        paths[folder] = tmp_path / folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(paths[folder]))
    return CaseFiles(name, paths["images"], paths["masks"], subtypes=paths.get("subtypes"))


def _masks(tiny: bool):
    """64 x 64 x 4: slice 1 holds a 12 x 12 lesion; slice 2 a single voxel when ``tiny``."""
    mask = np.zeros((64, 64, 4), np.uint8)
    mask[20:32, 20:32, 1] = 1
    if tiny:
        mask[40, 40, 2] = 1
    return mask


def test_a_lesion_lost_in_the_resize_is_not_a_lesion_slice(tmp_path):
    mask = _masks(tiny=True)
    subtypes = mask * 2  # intraparenchymal (SUBTYPES[1]) wherever there is lesion
    files = _write(tmp_path, "c", mask, subtypes)
    plan = PreprocessingPlan("pairs", "CT", windows=("brain",), size=(16, 16))
    prepared = preprocess_case(files, plan)
    stored_any = prepared.mask.reshape(-1, 4).any(axis=0)
    assert stored_any.tolist() == [False, True, False, False]  # the single voxel is gone
    assert prepared.slice_labels[:, 0].tolist() == [0, 1, 0, 0]
    # The subtype flag only stands where "any" does.
    assert prepared.slice_labels[:, 2].tolist() == [0, 1, 0, 0]


def test_manifest_counts_and_folds_come_from_the_stored_masks(tmp_path):
    """Two volumes with a real lesion and four whose only lesion is one voxel, lost at 16 x 16:
    for the counts and the fold stratification those four are lesion-free, so each of the two
    folds gets one of the lesion volumes (stratifying on the source masks, six "lesion volumes",
    puts both in fold 1 with this fold seed: checked below)."""
    from data_prep.shard_writer import assign_folds

    tiny = np.zeros((64, 64, 4), np.uint8)
    tiny[40, 40, 2] = 1
    names = ["big0", "big1", "tiny0", "tiny1", "tiny2", "tiny3"]
    cases = [
        _write(tmp_path, n, _masks(tiny=False) if n.startswith("big") else tiny) for n in names
    ]
    seed = 1
    by_source = assign_folds([{"case_id": n, "lesion_voxels": 1} for n in names], 2, seed)
    assert by_source["big0"] == by_source["big1"]  # what stratifying on the source would do
    plan = PreprocessingPlan("pairs", "CT", windows=("brain",), size=(16, 16))
    manifest, skipped = build_shards(
        cases, tmp_path / "out", plan=plan, n_folds=2, seed=seed, progress=False
    )
    assert not skipped
    shards = ShardSet.load(tmp_path / "out")
    for v in manifest["volumes"]:
        stored = shards.read_volume(v["case_id"])["mask"]
        assert v["lesion_voxels"] == int(stored.sum())
        assert v["lesion_slices"] == np.flatnonzero(stored.reshape(-1, 4).any(axis=0)).tolist()
    by_id = {v["case_id"]: v for v in manifest["volumes"]}
    assert all(
        by_id[n]["lesion_voxels"] == 0 and by_id[n]["lesion_slices"] == [] for n in names[2:]
    )
    assert manifest["counts"]["lesion_volumes"] == 2
    assert by_id["big0"]["fold"] != by_id["big1"]["fold"]


def test_axial_slices_resample_z_to_the_count_and_map_back(tmp_path):
    """37 slices of 5 mm -> 100 slices (the residual U-Net paper's count), then 70:90 kept:
    the z extent is kept, the lesion slab lands at its proportional place, and a prediction
    equal to the shard mask maps back onto the native mask."""
    mask = np.zeros((32, 32, 37), np.uint8)
    mask[10:20, 12:22, 26:31] = 1  # native slices 26..30 of 37: 70.3 .. 83.8 of 100
    files = _write(tmp_path, "z", mask)
    plan = PreprocessingPlan("pairs", "CT", windows=("brain",), axial_slices=100)
    prepared = preprocess_case(files, plan)
    assert prepared.channels.shape[2] == 100
    assert np.allclose(prepared.spacing[2], 5.0 * 37 / 100)
    assert np.allclose(prepared.spacing[:2], [1.0, 1.0])
    z = np.flatnonzero(prepared.mask.any(axis=(0, 1)))
    assert abs(z[0] - 26 * 100 / 37) <= 1.5 and abs(z[-1] + 1 - 31 * 100 / 37) <= 1.5
    back = prepared.grid.to_native(prepared.mask.astype(np.float32), order=1) >= 0.5
    assert (back == mask.astype(bool)).mean() > 0.995
    kept = preprocess_case(
        files,
        PreprocessingPlan(
            "pairs", "CT", windows=("brain",), axial_slices=100, slice_range=(70, 90)
        ),  # fmt: skip
    )
    assert kept.channels.shape[2] == 20
    np.testing.assert_array_equal(kept.mask, prepared.mask[:, :, 70:90])
    # the default plan (no axial_slices) writes and hashes as before
    assert "axial_slices" not in PreprocessingPlan("pairs", "CT", windows=("brain",)).to_dict()

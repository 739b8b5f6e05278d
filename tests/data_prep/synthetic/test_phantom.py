"""Tests of the synthetic head CT generator (small 128 x 128 x 24 grid at 1.8 x 1.8 x 6 mm)."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data_prep.synthetic.phantom import (
    PhantomCase,
    generate_case,
    generate_dataset,
    write_case_nifti,
)
from lesionjax.core.labels import SLICE_LABELS, SUBTYPES

SMALL = dict(shape=(128, 128, 24), spacing=(1.8, 1.8, 6.0))
SPACING = np.array(SMALL["spacing"])
BLOOD_HU = (45.0, 95.0)  # acute blood 50-90 HU, with a margin for noise and partial volume


def _case(seed, **kwargs) -> PhantomCase:
    return generate_case(seed, **SMALL, **kwargs)


@pytest.fixture(scope="module")
def normal_case() -> PhantomCase:
    return _case(3, lesion=False)


@pytest.fixture(scope="module")
def subtype_cases() -> dict[str, list[PhantomCase]]:
    """Three cases per subtype, each forced to contain only that subtype."""
    return {
        name: [_case(seed, lesion=True, subtype_probs={name: 1.0}) for seed in range(3)]
        for name in SUBTYPES
    }


def _depth_mm(case: PhantomCase) -> np.ndarray:
    """Distance (mm) of each ICM voxel to the nearest voxel outside the intracranial cavity."""
    return ndimage.distance_transform_edt(case.icm.astype(bool), sampling=SPACING)


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


def test_same_seed_gives_bit_identical_case():
    a, b = _case(11), _case(11)
    for field in ("image", "mask", "subtypes", "icm", "slice_labels", "affine"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_outputs_have_documented_shapes_and_dtypes(normal_case):
    c = normal_case
    assert c.image.shape == c.mask.shape == c.subtypes.shape == c.icm.shape == SMALL["shape"]
    assert (c.image.dtype, c.mask.dtype, c.subtypes.dtype, c.icm.dtype) == (
        np.float32, np.uint8, np.uint8, np.uint8,
    )  # fmt: skip
    assert c.slice_labels.shape == (24, len(SLICE_LABELS)) and c.slice_labels.dtype == np.uint8
    assert c.affine.shape == (4, 4) and c.affine.dtype == np.float64
    assert c.spacing == SMALL["spacing"]
    assert nib.aff2axcodes(c.affine) == ("R", "A", "S")


def test_world_origin_is_near_the_head_centre(normal_case):
    centre = _centroid_mm(normal_case.icm.astype(bool), normal_case.affine)
    assert np.all(np.abs(centre) < 30.0), centre


def test_air_outside_the_head_is_below_minus_900(normal_case):
    corners = normal_case.image[[0, 0, -1, -1], [0, -1, 0, -1], :]
    assert np.median(corners) < -900


def test_skull_ring_outside_the_cavity_is_bone(normal_case):
    icm = normal_case.icm.astype(bool)
    # Voxels within two in-plane voxels (3.6 mm) outside the inner table are inside the skull.
    ring = ndimage.binary_dilation(icm, np.ones((3, 3, 1)), iterations=2) & ~icm
    assert np.median(normal_case.image[ring]) > 500


def test_brain_median_is_soft_tissue(normal_case):
    assert 15 < np.median(normal_case.image[normal_case.icm.astype(bool)]) < 50


def test_brain_has_grey_white_and_csf_contrast(normal_case):
    # The brain's own histogram spans CSF (<15 HU), white (~25) and grey matter (~40).
    brain = normal_case.image[normal_case.icm.astype(bool)]
    lo, hi = np.percentile(brain, [5, 95])
    assert lo < 20 and hi > 38, (lo, hi)


def test_lesion_free_case_has_empty_labels(normal_case):
    assert not normal_case.mask.any() and not normal_case.subtypes.any()
    assert not normal_case.slice_labels.any()


def test_lesion_true_always_gives_a_hemorrhage():
    for seed in range(6):
        assert _case(seed, lesion=True).mask.sum() > 0, seed


@pytest.mark.parametrize("name", SUBTYPES)
def test_forced_subtype_is_the_only_label(subtype_cases, name):
    for case in subtype_cases[name]:
        assert set(np.unique(case.subtypes)) == {0, SUBTYPES.index(name) + 1}


@pytest.mark.parametrize("name", SUBTYPES)
def test_lesion_lies_inside_the_icm(subtype_cases, name):
    for case in subtype_cases[name]:
        assert not (case.mask.astype(bool) & ~case.icm.astype(bool)).any()


@pytest.mark.parametrize("name", SUBTYPES)
def test_lesion_median_hu_is_acute_blood(subtype_cases, name):
    for case in subtype_cases[name]:
        # The voxel layer on the inner table is excluded: partial volume with bone brightens it.
        inner = case.mask.astype(bool) & (_depth_mm(case) > 2.0)
        assert BLOOD_HU[0] < np.median(case.image[inner]) < BLOOD_HU[1]


@pytest.mark.parametrize("name", ["epidural", "subdural"])
def test_extra_axial_blood_touches_the_inner_table(subtype_cases, name):
    for case in subtype_cases[name]:
        assert _depth_mm(case)[case.mask.astype(bool)].min() < 2.0


def test_intraparenchymal_blood_is_away_from_the_skull(subtype_cases):
    for case in subtype_cases["intraparenchymal"]:
        assert _depth_mm(case)[case.mask.astype(bool)].min() > 3.0


def test_intraparenchymal_volume_is_clinical(subtype_cases):
    for case in subtype_cases["intraparenchymal"]:
        ml = case.mask.sum() * SPACING.prod() / 1000.0
        assert 2.0 < ml < 80.0, ml


def test_intraventricular_blood_is_deep_and_dependent(subtype_cases):
    for case in subtype_cases["intraventricular"]:
        blood, icm = case.mask.astype(bool), case.icm.astype(bool)
        offset = _centroid_mm(blood, case.affine) - _centroid_mm(icm, case.affine)
        assert np.hypot(offset[0], offset[1]) < 50.0, offset  # central, in the ventricles
        assert offset[1] < 0.0, offset  # layers posteriorly in a supine patient
        assert _depth_mm(case)[blood].min() > 15.0


def test_subarachnoid_blood_is_thin(subtype_cases):
    for case in subtype_cases["subarachnoid"]:
        blood = case.mask.astype(bool)
        # A sheet in sulci and cisterns: an in-plane 3x3 erosion removes most of it.
        assert ndimage.binary_erosion(blood, np.ones((3, 3, 1))).sum() < 0.3 * blood.sum()


def test_subdural_spans_several_slices_and_is_millimetres_thick(subtype_cases):
    for case in subtype_cases["subdural"]:
        assert case.slice_labels[:, 1 + SUBTYPES.index("subdural")].sum() >= 4
        assert _depth_mm(case)[case.mask.astype(bool)].max() >= 5.0


def test_slice_labels_agree_with_subtype_map():
    for seed in range(4):
        case = _case(seed, lesion=True, subtype_probs={n: 1.0 for n in SUBTYPES})
        for i in range(len(SUBTYPES)):
            expected = (case.subtypes == i + 1).any(axis=(0, 1))
            assert np.array_equal(case.slice_labels[:, i + 1], expected), (seed, SUBTYPES[i])
        assert np.array_equal(case.slice_labels[:, 0], case.mask.any(axis=(0, 1)))


def test_pose_and_shape_vary_between_seeds():
    cases = [_case(seed, lesion=False) for seed in range(5)]
    centres = np.array([_centroid_mm(c.icm.astype(bool), c.affine) for c in cases])
    volumes = np.array([c.icm.sum() for c in cases])
    assert np.ptp(centres[:, 0]) > 3.0 or np.ptp(centres[:, 1]) > 3.0, centres
    assert np.ptp(volumes) / volumes.mean() > 0.03, volumes


def test_in_plane_rotation_varies_between_seeds():
    angles = []
    for seed in range(5):
        xy = np.argwhere(_case(seed, lesion=False).icm)[:, :2] * SPACING[:2]
        cov = np.cov(xy.T)
        # Angle (degrees) between the head's long axis in the axial plane and the y axis.
        angles.append(np.degrees(0.5 * np.arctan2(-2 * cov[0, 1], cov[1, 1] - cov[0, 0])))
    assert np.all(np.abs(angles) < 20.0) and np.ptp(angles) > 4.0, angles


def test_unknown_subtype_name_is_rejected():
    with pytest.raises(ValueError, match="unknown subtypes"):
        _case(0, lesion=True, subtype_probs={"chronic": 1.0})


def test_nifti_has_case_geometry_and_dtypes(tmp_path, normal_case):
    paths = write_case_nifti(normal_case, tmp_path)
    assert set(paths) == {"images", "masks", "subtypes", "icm"}
    image = nib.load(paths["images"])
    assert image.shape == SMALL["shape"] and image.get_data_dtype() == np.int16
    assert np.allclose(image.affine, normal_case.affine)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.array_equal(np.asarray(image.dataobj), np.round(normal_case.image))
    for key in ("masks", "subtypes", "icm"):
        assert nib.load(paths[key]).get_data_dtype() == np.uint8, key
    assert not list(tmp_path.rglob(".*")), "temporary files left behind"


def test_dataset_writes_cases_csv_and_manifest(tmp_path):
    ids = generate_dataset(tmp_path, 2, seed=5, **SMALL, progress=False)
    assert ids == ["phantom_000", "phantom_001"]
    for folder in ("images", "masks", "subtypes", "icm"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [f"{i}.nii.gz" for i in ids]
    with open(tmp_path / "slice_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case_id", "slice", *SLICE_LABELS] and len(rows) == 2 * 24
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["generator"] == "data_prep.synthetic.phantom"
    assert (meta["seed"], meta["n_cases"], meta["shape"]) == (5, 2, [128, 128, 24])


def test_dataset_rerun_on_complete_folder_writes_nothing(tmp_path):
    generate_dataset(tmp_path, 2, seed=5, **SMALL, progress=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert generate_dataset(tmp_path, 2, seed=5, **SMALL, progress=False) == [
        "phantom_000", "phantom_001",
    ]  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_dataset_does_not_depend_on_worker_count(tmp_path):
    one = generate_dataset(tmp_path / "one", 2, seed=9, **SMALL, progress=False)
    two = generate_dataset(tmp_path / "two", 2, seed=9, **SMALL, workers=2, progress=False)
    assert one == two
    for case_id in one:
        for folder in ("images", "subtypes"):
            a = np.asarray(nib.load(tmp_path / "one" / folder / f"{case_id}.nii.gz").dataobj)
            b = np.asarray(nib.load(tmp_path / "two" / folder / f"{case_id}.nii.gz").dataobj)
            assert np.array_equal(a, b), (case_id, folder)
    assert (tmp_path / "one/slice_labels.csv").read_text() == (
        tmp_path / "two/slice_labels.csv"
    ).read_text()

"""Synthetic lesions placed into real anatomy (`data_prep.synthetic.real_anatomy`).

Real hosts (skipped without ../shared/data), all at reduced resolution to stay fast: Rorden's CT
template (Cormack units -> HU) at 3 mm, the GE head CT DICOM series at 2 mm in-plane, the
MNI152 T1 template at 3 mm. Tests that need no real data use the phantom as a host, whose
intracranial cavity is known exactly.
"""

import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data_prep.layouts.pairs import read_pairs_layout
from data_prep.synthetic import ct_hemorrhage, host_anatomy, mri_stroke, phantom
from data_prep.synthetic import real_anatomy as ra
from data_prep.synthetic.phantom import slice_labels_from_subtypes
from data_prep.volumes import CaseError, Volume, load_nifti_ras
from lesionjax.core.labels import SLICE_LABELS, SUBTYPES

TEMPLATE_SPACING = (3.0, 3.0, 3.0)
DICOM_SPACING = (2.0, 2.0, 4.22)
MNI_SPACING = (3.0, 3.0, 3.0)
BLOOD_HU = (50.0, 90.0)
ALL_SUBTYPES = {name: 1.0 for name in SUBTYPES}


# ----------------------------------------------------------------------------- hosts and cases


@pytest.fixture(scope="module")
def template(shared_data):
    return host_anatomy.load_ct_template(shared_data / "ct_template_scct")


@pytest.fixture(scope="module")
def dicom_ct(shared_data):
    from data_prep.dicom import read_dicom_series

    return read_dicom_series(shared_data / "ct_head_ge_dicom")


@pytest.fixture(scope="module")
def mni(shared_data):
    return host_anatomy.load_mni152(shared_data / "mri_template_mni152")


def _template_cases(template, n, seed, **kw):
    ct, head = template
    kw.setdefault("spacing", TEMPLATE_SPACING)
    return list(ct_hemorrhage.hemorrhage_cases_from_ct(ct, n, seed, brain_mask=head, **kw))


def _dicom_cases(dicom_ct, n, seed, **kw):
    kw.setdefault("spacing", DICOM_SPACING)
    return list(ct_hemorrhage.hemorrhage_cases_from_ct(dicom_ct, n, seed, **kw))


def _mni_cases(mni, n, seed, **kw):
    t1, grey, white = mni
    kw.setdefault("spacing", MNI_SPACING)
    return list(mri_stroke.stroke_cases_from_mri(t1, n, seed, grey=grey, white=white, **kw))


GENERATORS = {"template": _template_cases, "dicom": _dicom_cases, "mni": _mni_cases}


@pytest.fixture(scope="module")
def cases(request):
    """Three lesion cases per real host (seed 7), generated once per module."""
    cache = {}

    def get(source: str):
        if source not in cache:
            fixture = {"template": "template", "dicom": "dicom_ct", "mni": "mni"}[source]
            host = request.getfixturevalue(fixture)
            kw = {"lesion_fraction": 1.0}
            if source != "mni":
                kw["subtype_probs"] = ALL_SUBTYPES
            cache[source] = (host, GENERATORS[source](host, 3, 7, **kw))
        return cache[source]

    return get


SOURCES = ["template", "dicom", "mni"]


@pytest.mark.parametrize("source", SOURCES)
def test_lesions_lie_inside_the_cavity_or_brain(cases, source):
    _, generated = cases(source)
    for case in generated:
        mask, icm = case.mask.astype(bool), case.icm.astype(bool)
        assert mask.sum() >= 8, case.case_id
        assert not (mask & ~icm).any(), case.case_id
        # The brain / cavity is a head's: between 0.9 and 2.5 litres.
        litres = icm.sum() * np.prod(case.spacing) / 1e6
        assert 0.9 < litres < 2.5, (case.case_id, litres)


@pytest.mark.parametrize("source", ["template", "dicom"])
def test_blood_is_acute_hemorrhage_density(cases, source):
    _, generated = cases(source)
    for case in generated:
        mask = case.mask.astype(bool)
        core = ndimage.binary_erosion(mask, np.ones((3, 3, 1)))
        values = case.image[core if core.sum() >= 5 else mask]
        assert BLOOD_HU[0] < np.median(values) < BLOOD_HU[1], (case.case_id, np.median(values))
        # Within the blood range up to noise (few HU) and partial volume at the edges.
        lo, hi = np.percentile(values, [5, 95])
        assert lo > BLOOD_HU[0] - 15.0 and hi < BLOOD_HU[1] + 15.0, (case.case_id, lo, hi)


def test_stroke_lesions_are_csf_like_on_t1(cases):
    _, generated = cases("mni")
    for case in generated:
        mask = case.mask.astype(bool)
        core = ndimage.binary_erosion(mask)
        values = case.image[core if core.sum() >= 5 else mask]
        brain = case.host[case.icm.astype(bool)]
        white = np.percentile(brain, 90)
        # Chronic infarct: far darker than the tissue it replaced, close to CSF (~1/3 of WM).
        assert np.median(values) < 0.55 * white, (case.case_id, np.median(values), white)
        assert np.median(values) < np.median(case.host[mask]) - 0.25 * white


@pytest.mark.parametrize("source", SOURCES)
def test_subtype_maps_agree_with_masks_and_slice_labels(cases, source):
    _, generated = cases(source)
    n_types = len(SUBTYPES) if source != "mni" else len(mri_stroke.STROKE_TERRITORIES)
    for case in generated:
        assert np.array_equal(case.subtypes > 0, case.mask.astype(bool))
        assert case.subtypes.max() <= n_types
        assert case.slice_labels.shape == (case.image.shape[2], n_types + 1)
        assert np.array_equal(case.slice_labels[:, 0], case.mask.any(axis=(0, 1)))
        for k in range(n_types):
            assert np.array_equal(case.slice_labels[:, k + 1], (case.subtypes == k + 1).any((0, 1)))
        names = SUBTYPES if source != "mni" else mri_stroke.STROKE_TERRITORIES
        assert set(case.lesions) == {names[k - 1] for k in np.unique(case.subtypes) if k > 0}
    if source != "mni":
        labels = [slice_labels_from_subtypes(c.subtypes) for c in generated]
        assert all(
            np.array_equal(a, c.slice_labels) for a, c in zip(labels, generated, strict=True)
        )


@pytest.mark.parametrize("source", SOURCES)
def test_same_seed_is_identical_and_seeds_differ(cases, source):
    host, generated = cases(source)
    kw = {} if source == "mni" else {"subtype_probs": ALL_SUBTYPES}
    again = GENERATORS[source](host, 1, 7, lesion_fraction=1.0, **kw)
    for field in ("image", "mask", "subtypes", "icm", "slice_labels", "affine"):
        assert np.array_equal(getattr(again[0], field), getattr(generated[0], field)), field
    # Cases of one seed differ from each other (lesions and host pose), and so do other seeds.
    assert not np.array_equal(generated[0].mask, generated[1].mask)
    assert not np.array_equal(generated[0].host, generated[1].host)
    other = GENERATORS[source](host, 1, 8, lesion_fraction=1.0)
    assert not np.array_equal(other[0].mask, generated[0].mask)


@pytest.mark.parametrize("source", SOURCES)
def test_image_is_the_host_outside_the_lesions_plus_noise(cases, source):
    _, generated = cases(source)
    for case in generated:
        altered = case.altered.astype(bool)
        assert not (case.mask.astype(bool) & ~altered).any()  # every lesion voxel was changed
        assert not (altered & ~case.icm.astype(bool)).any()
        diff = (case.image - case.host)[~altered & (case.host > -900)]
        if case.modality == "CT":  # Gaussian noise topped up on a quiet host
            assert abs(diff.mean()) < 0.1 * max(case.noise_added, 0.1)
            assert diff.std() == pytest.approx(case.noise_added, rel=0.1, abs=1e-4)
        else:  # Rician: small positive bias, spread about the noise sigma
            assert 0.5 * case.noise_added < diff.std() < 1.5 * case.noise_added
        inside = ~altered & case.icm.astype(bool)
        assert np.abs(case.image - case.host)[inside].max() < 8.0 * max(case.noise_added, 1.0)


def test_without_deformation_the_host_is_the_scan_itself(template):
    ct, head = template
    small, _ = host_anatomy.resample(ct, TEMPLATE_SPACING)
    (case,) = _template_cases(template, 1, 3, deform=False, noise_hu=0.0, lesion_fraction=1.0)
    assert np.allclose(case.host, small.data, atol=1e-3)
    outside = ~case.altered.astype(bool)
    assert np.allclose(case.image[outside], small.data[outside], atol=1e-3)
    assert case.noise_added == 0.0 and case.mask.any()


def test_host_is_mirrored_rotated_and_warped_between_cases(template):
    generated = _template_cases(template, 4, 11, lesion_fraction=0.0)
    assert not any(c.mask.any() for c in generated)
    volumes = np.array([c.icm.sum() for c in generated], float)
    # In-plane scale 0.94-1.06 per axis: the cavity volume changes by less than ~15 %.
    assert np.ptp(volumes) / volumes.mean() < 0.15
    overlap = [
        (a.icm & b.icm).sum() / (a.icm | b.icm).sum()
        for a, b in zip(generated[:-1], generated[1:], strict=True)
    ]
    assert max(overlap) < 0.99, overlap  # each case's head sits differently
    assert min(overlap) > 0.7, overlap  # but it is the same head


# ----------------------------------------------------------------------------- CT geometry


@pytest.mark.parametrize("name", SUBTYPES)
def test_each_subtype_sits_where_it_belongs(template, name):
    for case in _template_cases(template, 2, 5, subtype_probs={name: 1.0}, lesion_fraction=1.0):
        blood = case.subtypes == SUBTYPES.index(name) + 1
        assert blood.sum() >= 8
        assert set(np.unique(case.subtypes).tolist()) == {0, SUBTYPES.index(name) + 1}
        depth = ndimage.distance_transform_edt(case.icm.astype(bool), sampling=case.spacing)
        d = depth[blood]
        if name in ("epidural", "subdural"):
            assert d.min() <= 3.0 + 1e-6, d.min()  # against the inner table
        if name == "intraparenchymal":
            assert d.min() > 3.0, d.min()  # inside the brain, clear of the table
        if name == "intraventricular":
            assert np.median(d) > 15.0, np.median(d)  # deep: in the ventricles
        if name == "subarachnoid":
            # Thin: sulci, the surface layer and cisterns; an in-plane erosion removes most.
            eroded = ndimage.binary_erosion(blood, np.ones((3, 3, 1)))
            assert eroded.sum() < 0.5 * blood.sum()


def test_cavity_of_the_phantom_is_found_without_real_data():
    """The phantom's cavity is known exactly: the skull-closing search must recover it."""
    case = phantom.generate_case(4, shape=(128, 128, 24), spacing=(1.8, 1.8, 6.0), lesion=False)
    vol = Volume(case.image, case.affine, case.spacing, ("R", "A", "S"), Path("phantom4"))
    (out,) = ct_hemorrhage.hemorrhage_cases_from_ct(vol, 1, 0, deform=False, lesion_fraction=1.0)
    ref, icm = case.icm.astype(bool), out.icm.astype(bool)
    assert 2 * (ref & icm).sum() / (ref.sum() + icm.sum()) > 0.97
    assert np.allclose(out.host, case.image, atol=1e-3)
    assert out.mask.any() and not (out.mask.astype(bool) & ~icm).any()


def test_cavity_search_bridges_an_open_skull():
    """A skull ring with a 16 mm gap (blurred thin bone) still encloses the cavity."""
    sp = (2.0, 2.0, 5.0)
    x, y = np.meshgrid(np.arange(100) * 2.0 - 99.0, np.arange(100) * 2.0 - 99.0, indexing="ij")
    r = np.hypot(x / 1.0, y / 1.2)
    hu = np.where(r < 70, 30.0, np.where(r < 76, 1000.0, np.where(r < 82, 40.0, -1000.0)))
    hu[(np.abs(y) < 8) & (x > 60) & (r >= 70) & (r < 76)] = 40.0  # the gap
    vol = np.repeat(hu[:, :, None], 6, axis=2).astype(np.float32)
    cavity = ct_hemorrhage._cavity(vol, None, sp)
    interior = (r < 69)[:, :, None] & np.ones(6, bool)
    assert cavity[interior].mean() > 0.99
    assert not cavity[(r > 77)[:, :, None] & np.ones(6, bool)].any()  # no scalp


# ----------------------------------------------------------------------------- units, errors


def test_cormack_conversion_round_trips_and_matches_the_toolbox():
    c = np.linspace(0.0, 5000.0, 5001, dtype=np.float32)
    hu = host_anatomy.cormack_to_hu(c)
    assert np.all(np.diff(hu) > 0)  # monotone
    # Hand-computed from clinical_c2h.m's three pieces.
    c_hand = np.array([500.0, 1024.0, 4000.0])
    assert host_anatomy.cormack_to_hu(c_hand) == pytest.approx([-524.0, -124.0 + 124 / 11, 976.0])
    # clinical_c2h.m: air (c = 0) is -1024 HU; 900 and 3100 bound the x11 stretched band.
    assert host_anatomy.cormack_to_hu(np.array([0.0, 900.0, 3100.0])).tolist() == [
        -1024.0,
        -124.0,
        76.0,
    ]
    assert host_anatomy.cormack_to_hu(np.array([2264.0]))[0] == pytest.approx(0.0)  # water


def test_template_in_hu_has_brain_air_and_bone(template):
    ct, head = template
    assert ct.modality == "CT" and head.shape == ct.data.shape
    brain = ct.data[ndimage.binary_erosion(head, iterations=6)]
    assert 15.0 < np.median(brain) < 45.0, np.median(brain)
    assert np.median(ct.data[~head]) < -900.0
    assert (ct.data > ct_hemorrhage.BONE_HU).sum() > 10_000


def test_bad_inputs_name_the_file(template, mni, tmp_path):
    ct, _ = template
    # The template file as stored, in Cormack units (not converted to HU).
    cormack = dataclasses.replace(load_nifti_ras(ct.path), modality="CT")
    with pytest.raises(CaseError, match="scct.nii.*Cormack"):
        next(ct_hemorrhage.hemorrhage_cases_from_ct(cormack, 1, 0))
    t1, _, _ = mni
    with pytest.raises(CaseError, match="mni_icbm152_t1"):
        next(ct_hemorrhage.hemorrhage_cases_from_ct(dataclasses.replace(t1, modality="CT"), 1, 0))
    with pytest.raises(CaseError, match="scct.nii.*not an MRI"):
        next(mri_stroke.stroke_cases_from_mri(ct, 1, 0))
    with pytest.raises(ValueError, match="unknown lesion types"):
        next(ct_hemorrhage.hemorrhage_cases_from_ct(ct, 1, 0, subtype_probs={"chronic": 1.0}))
    with pytest.raises(CaseError, match="no such file"):
        ra.write_real_anatomy_dataset(tmp_path / "x", "hemorrhage", 1, 0, tmp_path / "missing")


# ----------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("kind", "folder", "spacing", "windows"),
    [
        ("hemorrhage", "ct_template_scct", TEMPLATE_SPACING, ["brain"]),
        ("hemorrhage", "ct_head_ge_dicom", (2.5, 2.5, 4.22), ["brain"]),
        ("stroke", "mri_template_mni152", MNI_SPACING, ["unit"]),
    ],
)
def test_dataset_reads_back_and_builds_shards(
    build, shared_data, tmp_path, kind, folder, spacing, windows
):
    root = tmp_path / "data"
    source = shared_data / folder
    out = ra.write_real_anatomy_dataset(
        root, kind, 2, 9, source, spacing=spacing, lesion_fraction=1.0
    )
    assert out == root
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["kind"] == kind and meta["n_cases"] == 2 and len(meta["cases"]) == 2
    files = read_pairs_layout(root)
    assert [f.case_id for f in files] == [c["case_id"] for c in meta["cases"]]
    with open(root / "slice_labels.csv") as f:
        rows = list(csv.DictReader(f))
    for files_i in files:
        mask = np.asarray(nib.load(files_i.mask).dataobj)
        icm = np.asarray(nib.load(files_i.icm).dataobj)
        assert mask.any() and not (mask.astype(bool) & ~icm.astype(bool)).any()
        any_col = [int(r["any"]) for r in rows if r["case_id"] == files_i.case_id]
        assert any_col == mask.any(axis=(0, 1)).astype(int).tolist()
        if kind == "hemorrhage":
            assert files_i.subtypes is not None
            sub = np.asarray(nib.load(files_i.subtypes).dataobj)
            assert np.array_equal(sub > 0, mask > 0)
            assert list(rows[0])[2:] == list(SLICE_LABELS)
        else:
            assert files_i.subtypes is None  # territories/ is not read as hemorrhage subtypes
            assert (root / "territories" / f"{files_i.case_id}.nii.gz").exists()
    # dataset.json says the modality, and the pairs reader takes it from there.
    assert {f.modality for f in files} == {"CT" if kind == "hemorrhage" else "MR"}
    manifest, skipped = build(files, tmp_path / "shards", n_folds=2, windows=windows)
    assert not skipped, skipped
    assert manifest["counts"]["volumes"] == 2 and manifest["counts"]["lesion_volumes"] == 2
    # The same arguments again: the complete folder is kept as it is.
    stamp = (root / "dataset.json").stat().st_mtime_ns
    ra.write_real_anatomy_dataset(root, kind, 2, 9, source, spacing=spacing, lesion_fraction=1.0)
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different dataset"):
        ra.write_real_anatomy_dataset(root, kind, 3, 9, source, spacing=spacing)


def test_mri_without_tissue_maps_uses_intensity_classes(mni):
    """Without grey / white maps the brain and tissue come from the T1 intensities alone."""
    t1, grey, _ = mni
    (case,) = mri_stroke.stroke_cases_from_mri(
        t1, 1, 2, spacing=MNI_SPACING, lesion_fraction=1.0, deform=False
    )
    mask, brain = case.mask.astype(bool), case.icm.astype(bool)
    assert mask.sum() >= 8 and not (mask & ~brain).any()
    small, (grey_small,) = host_anatomy.resample(t1, MNI_SPACING, grey)
    # The brain found from intensities is the template brain (grey matter inside it).
    assert grey_small[brain].sum() > 0.95 * grey_small.sum()
    assert np.median(case.image[mask]) < 0.6 * np.percentile(case.host[brain], 90)

"""Dataset layout readers, checked end to end on synthetic datasets written in each layout.

For every layout: the phantom writer (`data_prep.synthetic.phantom_layouts`) writes a few tiny cases
(64 x 64 x 8, odd cases stored LPI), the reader must find exactly those cases with the right
files and per-slice labels (indexed by source slice), and the build must turn them into shards
whose manifest agrees with what was generated.
"""

import json
import shutil

import numpy as np
import pytest

from data_prep import build_shards as bs
from data_prep import layouts
from data_prep.layouts import cq500
from data_prep.synthetic import phantom_layouts
from data_prep.synthetic.phantom_layouts import read_truth, write_layout
from data_prep.volumes import CaseError

SHAPE = (64, 64, 8)
SPACING = (3.6, 3.6, 15.0)
N_CASES = 4
NIFTI_LAYOUTS = ("ct_ich", "seg_cq500", "instance2022", "atlas2", "nnunet")
ALL_LAYOUTS = phantom_layouts.LAYOUT_NAMES


def _write(name, root, n_cases=N_CASES, seed=7):
    return write_layout(name, root, n_cases, seed, shape=SHAPE, spacing=SPACING)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """name -> root of that layout written once per module (tests must not modify it)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _write(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def _source_key(case, i):
    """The key of source slice i in the truth's source_slices (stored z, or DICOM file name)."""
    return case.image_files[i].name if case.image_files is not None else i


MR_LAYOUTS = ("atlas2", "lesjak")


def _windows(name):
    return ["unit"] if name in MR_LAYOUTS else ["brain"]


@pytest.mark.parametrize("name", ALL_LAYOUTS)
def test_reader_finds_every_written_case(name, written):
    root = written(name)
    truth = {c["case_id"]: c for c in read_truth(root)["cases"]}
    cases, problems = layouts.read_layout(name, root)
    assert problems == []
    assert sorted(c.case_id for c in cases) == sorted(truth)
    for case in cases:
        t = truth[case.case_id]
        assert case.image.exists()
        assert case.labelled == t["labelled"]
        assert (case.mask is not None) == t["labelled"]
        if case.mask is not None:
            assert case.mask.is_file() and case.mask != case.image
        assert case.modality == ("MR" if name in MR_LAYOUTS else "CT")
        if case.image_files is not None:
            assert all(p.is_file() for p in case.image_files)
            assert len(case.image_files) == SHAPE[2]
        assert (case.slice_labels is not None) == t["given_slice_labels"]
        if case.slice_labels is not None:
            # Source slice i of the reader must carry the labels of the RAS slice it shows.
            expected = [
                t["slice_labels"][t["source_slices"][_source_key(case, i)]]
                for i in range(len(case.slice_labels))
            ]
            assert [list(row) for row in case.slice_labels] == expected


@pytest.mark.parametrize("name", ALL_LAYOUTS)
def test_build_from_layout_matches_the_generator(build, name, written, tmp_path):
    root = written(name)
    truth = {c["case_id"]: c for c in read_truth(root)["cases"]}
    cases, problems = layouts.read_layout(name, root)
    manifest, skipped = build(
        cases, tmp_path, name, n_folds=2, reader_problems=problems, windows=_windows(name)
    )
    assert skipped == []
    counts = manifest["counts"]
    assert counts["volumes"] == len(truth)
    assert counts["slices"] == len(truth) * SHAPE[2]
    assert counts["lesion_volumes"] == sum(t["lesion_voxels"] > 0 for t in truth.values())
    known = [t for t in truth.values() if t["labelled"] or t["given_slice_labels"]]
    assert counts["lesion_slices"] == sum(row[0] for t in known for row in t["slice_labels"])
    for v in manifest["volumes"]:
        t = truth[v["case_id"]]
        assert v["shape"] == list(SHAPE)
        assert v["spacing"] == pytest.approx(SPACING, abs=1e-4)
        assert v["lesion_voxels"] == t["lesion_voxels"]
        # RAS z order, whatever order the source stored; subtypes only when the dataset gives
        # them, "any" also from the mask.
        if t["given_slice_labels"]:
            assert v["slice_labels"] == t["slice_labels"]
        elif t["labelled"]:
            assert [row[0] for row in v["slice_labels"]] == [row[0] for row in t["slice_labels"]]
        assert v["modality"] == ("MR" if name in MR_LAYOUTS else "CT")


@pytest.mark.parametrize("name", sorted(layouts.LAYOUTS))
def test_missing_layout_folder_is_a_clear_error(name, tmp_path):
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileNotFoundError, match="expected the") as err:
        layouts.read_layout(name, tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        layouts.read_layout(name, tmp_path / "absent")


def _mask_of(name, root, case_id):
    case = next(c for c in layouts.read_layout(name, root)[0] if c.case_id == case_id)
    return case.mask


@pytest.mark.parametrize("name", NIFTI_LAYOUTS)
def test_a_case_without_its_mask_is_kept_and_reported_by_the_build(build, name, tmp_path):
    root = _write(name, tmp_path / "src", n_cases=3)
    victim = read_truth(root)["cases"][1]["case_id"]
    _mask_of(name, root, victim).unlink()
    cases, problems = layouts.read_layout(name, root)
    assert len(cases) == 3 and problems == []
    lost = next(c for c in cases if c.case_id == victim)
    assert lost.mask is None and lost.labelled
    assert all(c.mask is not None for c in cases if c.case_id != victim)
    manifest, skipped = build(cases, tmp_path / "out", name, n_folds=2, windows=_windows(name))
    assert [s["case_id"] for s in skipped] == [victim]
    assert "no mask" in skipped[0]["error"]
    assert manifest["counts"]["volumes"] == 2


def test_unknown_layout_name():
    with pytest.raises(ValueError, match="dataset 'nope': unknown dataset layout"):
        layouts.read_layout("nope", ".")


def test_reader_lists_return_their_problems(written):
    root = written("ct_ich")
    cases = layouts.LAYOUTS["ct_ich"].read(root)
    assert isinstance(cases, list) and all(isinstance(c, layouts.CaseFiles) for c in cases)
    assert cases.problems == []


# ------------------------------------------------------------------------------------ CT-ICH


def _ct_ich_top(root):
    return root / phantom_layouts.CT_ICH_TOP


def test_ct_ich_reads_the_versioned_folder_or_the_folder_itself(written):
    root = written("ct_ich")
    nested = layouts.read_layout("ct_ich", root)[0]
    direct = layouts.read_layout("ct_ich", _ct_ich_top(root))[0]
    assert nested == direct


def test_ct_ich_csv_slice_numbers_are_one_based(tmp_path):
    """SliceNumber k is stored slice k - 1 (the release's split_raw_data.py pairs the i-th row of
    a patient with ct_scan[:, :, i]); "any" also comes from No_Hemorrhage == 0."""
    import nibabel as nib

    for folder in ("ct_scans", "masks"):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)),
                 tmp_path / folder / "066.nii")  # fmt: skip
    (tmp_path / "hemorrhage_diagnosis_raw_ct.csv").write_text(
        "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,"
        "Subdural,No_Hemorrhage,Fracture_Yes_No\n"
        "66,1,0,0,0,1,0,0,0\n66,2,0,0,0,0,0,1,1\n66,3,0,0,0,0,0,0,0\n"
    )
    (case,) = layouts.read_layout("ct_ich", tmp_path)[0]
    assert case.case_id == "066"
    assert case.slice_labels == ((1, 1, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0))


def _rewrite_csv(path, keep):
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if keep(ln)]) + "\n")


def test_ct_ich_csv_problems_are_reported(build, tmp_path):
    root = _write("ct_ich", tmp_path, n_cases=3)
    csv_path = _ct_ich_top(root) / "hemorrhage_diagnosis_raw_ct.csv"
    # Patient 050 loses its last slice row; a patient without a scan appears.
    _rewrite_csv(csv_path, lambda ln: not ln.startswith("50,8,"))
    with open(csv_path, "a") as f:
        f.write("130,1,0,0,0,0,0,1,0\n")
    cases, problems = layouts.read_layout("ct_ich", root)
    assert [c.case_id for c in cases] == ["049", "051"]  # 050's rows cannot be matched
    assert all(c.slice_labels is not None for c in cases)
    assert {p["case_id"] for p in problems} == {"050", "130"}
    p050 = next(p for p in problems if p["case_id"] == "050")
    assert "7 rows" in p050["error"] and "8 slices" in p050["error"]
    assert p050["file"].endswith("hemorrhage_diagnosis_raw_ct.csv")
    p130 = next(p for p in problems if p["case_id"] == "130")
    assert p130["file"].endswith("130.nii") and "no CT file" in p130["error"]
    # The build lists reader problems with its own skips and builds the other cases.
    manifest, skipped = build(
        cases, tmp_path / "out", "ct_ich", n_folds=2, reader_problems=problems, windows=["brain"]
    )
    assert manifest["counts"]["volumes"] == 2
    assert {s["case_id"] for s in skipped} == {"050", "130"}


def test_ct_ich_bad_csv_column_names_the_file(tmp_path):
    root = _write("ct_ich", tmp_path, n_cases=1)
    csv_path = _ct_ich_top(root) / "hemorrhage_diagnosis_raw_ct.csv"
    csv_path.write_text(csv_path.read_text().replace("Subdural", "SDH", 1))
    with pytest.raises(CaseError, match=r"hemorrhage_diagnosis_raw_ct.csv: missing columns"):
        layouts.read_layout("ct_ich", root)


def test_ct_ich_without_csv_reads_cases_without_slice_labels(tmp_path):
    root = _write("ct_ich", tmp_path, n_cases=2)
    (_ct_ich_top(root) / "hemorrhage_diagnosis_raw_ct.csv").unlink()
    cases, problems = layouts.read_layout("ct_ich", root)
    assert len(cases) == 2 and problems == []
    assert all(c.slice_labels is None and c.mask is not None for c in cases)


def test_two_datasets_under_src_are_ambiguous(tmp_path, written):
    for copy in ("a", "b"):
        shutil.copytree(_ct_ich_top(written("ct_ich")), tmp_path / copy)
    with pytest.raises(ValueError, match="several CT-ICH datasets"):
        layouts.read_layout("ct_ich", tmp_path)


def test_duplicate_case_ids_are_kept_for_the_build_to_report(build, tmp_path):
    root = _write("ct_ich", tmp_path, n_cases=2)
    scans = _ct_ich_top(root) / "ct_scans"
    shutil.copy(scans / "049.nii", scans / "049.nii.gz")  # same case twice (.nii and .nii.gz)
    cases, _ = layouts.read_layout("ct_ich", root)
    assert [c.case_id for c in cases] == ["049", "049", "050"]
    manifest, skipped = build(cases, tmp_path / "out", "ct_ich", n_folds=2, windows=["brain"])
    assert manifest["counts"]["volumes"] == 1
    assert [s["case_id"] for s in skipped] == ["049", "049"]
    assert all("duplicate" in s["error"] for s in skipped)


# --------------------------------------------------------------------- INSTANCE, ATLAS, nnU-Net


def test_instance2022_split_without_label_folder_is_unlabelled(tmp_path):
    root = _write("instance2022", tmp_path, n_cases=2)
    shutil.rmtree(root / "train_2" / "label")
    cases, _ = layouts.read_layout("instance2022", root)
    assert len(cases) == 2 and all(not c.labelled and c.mask is None for c in cases)


def test_atlas2_reads_training_only_unless_pointed_at_testing(tmp_path):
    root = _write("atlas2", tmp_path, n_cases=2)
    training = root / "ATLAS_2" / "Training"
    testing = root / "ATLAS_2" / "Testing"
    anat = testing / "R002" / "sub-r002s001" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    t1 = next(training.rglob("*_T1w.nii.gz"))
    shutil.copy(t1, anat / "sub-r002s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz")
    cases, _ = layouts.read_layout("atlas2", root)
    assert [c.case_id for c in cases] == ["sub-r001s001_ses-1", "sub-r001s002_ses-1"]
    test_cases, _ = layouts.read_layout("atlas2", testing)
    assert [c.case_id for c in test_cases] == ["sub-r002s001_ses-1"]
    assert not test_cases[0].labelled and test_cases[0].mask is None
    assert test_cases[0].modality == "MR"


def test_atlas2_prefers_the_lesion_mask_in_the_image_space(tmp_path):
    root = _write("atlas2", tmp_path, n_cases=1)
    anat = next(root.rglob("anat"))
    mask = next(anat.glob("*_mask.nii.gz"))
    shutil.copy(mask, anat / "sub-r001s001_ses-1_space-orig_label-L_desc-T1lesion_mask.nii.gz")
    shutil.copy(mask, anat / "sub-r001s001_ses-1_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz")
    (case,) = layouts.read_layout("atlas2", root)[0]
    assert case.mask == mask


def _nnunet_top(root):
    return root / phantom_layouts.NNUNET_DATASET


def test_nnunet_msd_naming_and_modality(tmp_path):
    """MSD / nnU-Net v1 style: images without channel suffix, "modality" in dataset.json."""
    root = _write("nnunet", tmp_path, n_cases=2)
    top = _nnunet_top(root)
    for image in (top / "imagesTr").iterdir():
        image.rename(image.with_name(image.name.replace("_0000", "")))
    (top / "dataset.json").write_text(
        json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "lesion"}})
    )
    cases, problems = layouts.read_layout("nnunet", top)
    assert problems == []
    assert [c.case_id for c in cases] == ["phantom_000", "phantom_001"]
    assert all(c.modality == "MR" and c.mask.name == f"{c.case_id}.nii.gz" for c in cases)
    assert all(c.image.name == f"{c.case_id}.nii.gz" for c in cases)


def test_nnunet_picks_channel_0000_and_reports_cases_without_it(tmp_path):
    root = _write("nnunet", tmp_path, n_cases=2)
    images = _nnunet_top(root) / "imagesTr"
    shutil.copy(images / "phantom_000_0000.nii.gz", images / "phantom_000_0001.nii.gz")
    (images / "phantom_001_0000.nii.gz").rename(images / "phantom_001_0001.nii.gz")
    cases, problems = layouts.read_layout("nnunet", root)
    assert [(c.case_id, c.image.name) for c in cases] == [
        ("phantom_000", "phantom_000_0000.nii.gz")
    ]
    assert problems == [
        {
            "case_id": "phantom_001",
            "file": str(images / "phantom_001_0001.nii.gz"),
            "error": "no channel 0000 image for this case",
        }
    ]


def test_nnunet_rejects_a_non_nifti_file_ending(tmp_path):
    root = _write("nnunet", tmp_path, n_cases=1)
    meta_path = _nnunet_top(root) / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["file_ending"] = ".mha"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CaseError, match=r"dataset.json: file_ending '.mha' is not NIfTI"):
        layouts.read_layout("nnunet", root)


def test_atlas2_intensities_are_mri_like(written):
    """T1-like contrast: white matter brighter than grey matter, CSF and blood dark, not HU."""
    t1 = phantom_layouts.hu_to_t1(np.array([-1000.0, 5.0, 26.0, 41.0, 70.0, 1000.0]))
    air, csf, wm, gm, blood, bone = t1
    assert air == 0 and wm > gm > csf and blood < gm and bone < csf
    import nibabel as nib

    image = next(written("atlas2").rglob("*_T1w.nii.gz"))
    data = np.asarray(nib.load(image).dataobj)
    assert data.min() >= 0.0 and data.max() <= 1000.0


# -------------------------------------------------------------------------------------- RSNA


def test_rsna_csv_rows_naming_missing_files_are_problems(build, tmp_path):
    root = _write("rsna", tmp_path / "src", n_cases=3)
    truth = read_truth(root)["cases"]
    csv_path = root / "stage_2_train.csv"
    with open(csv_path, "a") as f:
        for subtype in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid",
                        "subdural", "any"):  # fmt: skip
            f.write(f"ID_0000dead1_{subtype},0\n")
    # One slice of the first train series loses its rows: that series cannot be labelled.
    first = truth[0]
    orphan = sorted(first["source_slices"])[3].removesuffix(".dcm")
    _rewrite_csv(csv_path, lambda ln: not ln.startswith(orphan + "_"))
    cases, problems = layouts.read_layout("rsna", root)
    assert sorted(c.case_id for c in cases) == sorted(t["case_id"] for t in truth[1:])
    assert {p["case_id"]: p["error"] for p in problems} == {
        "ID_0000dead1": "listed in stage_2_train.csv but the file is missing",
        first["case_id"]: "1 of 8 slices have no (or incomplete) rows in stage_2_train.csv",
    }
    missing = next(p for p in problems if p["case_id"] == "ID_0000dead1")
    assert missing["file"] == str(root / "stage_2_train" / "ID_0000dead1.dcm")
    manifest, skipped = build(
        cases, tmp_path / "out", "rsna", n_folds=2, reader_problems=problems, windows=["brain"]
    )
    assert manifest["counts"]["volumes"] == 2
    assert sorted(s["case_id"] for s in skipped) == sorted(p["case_id"] for p in problems)
    assert json.loads((tmp_path / "out" / "skipped.json").read_text()) == skipped


def test_rsna_cases_are_unlabelled_series_with_csv_labels(written):
    root = written("rsna")
    cases, _ = layouts.read_layout("rsna", root)
    train = [c for c in cases if c.image.name == "stage_2_train"]
    test = [c for c in cases if c.image.name == "stage_2_test"]
    assert len(train) == N_CASES - 1 and len(test) == 1
    assert all(not c.labelled and c.mask is None and c.modality == "CT" for c in cases)
    assert all(c.slice_labels is not None for c in train) and test[0].slice_labels is None
    # The files of a series are listed by path, not in z order: the labels follow the files.
    truth = {c["case_id"]: c for c in read_truth(root)["cases"]}
    orders = [[truth[c.case_id]["source_slices"][p.name] for p in c.image_files] for c in train]
    assert any(order != sorted(order) for order in orders)


def test_rsna_bad_csv_header_names_the_file(tmp_path):
    root = _write("rsna", tmp_path, n_cases=1)
    csv_path = root / "stage_2_train.csv"
    csv_path.write_text(csv_path.read_text().replace("ID,Label", "Image,Label", 1))
    with pytest.raises(CaseError, match=r"stage_2_train.csv: header"):
        layouts.read_layout("rsna", root)


# ------------------------------------------------------------------------------------- CQ500


def test_cq500_picks_the_plain_thin_series_and_pairs_masks(written):
    root = written("cq500")
    truth = {c["case_id"]: c for c in read_truth(root)["cases"]}
    cases, problems = layouts.read_layout("cq500", root)
    assert problems == []
    assert [c.case_id for c in cases] == [f"CQ500-CT-{n}" for n in range(N_CASES)]
    for case in cases:
        assert case.image.name == "CT PLAIN THIN"  # not the bone kernel, not the 5 mm series
        n = case.case_id.removeprefix("CQ500-CT-")
        assert case.image.parent.parent.name == f"CQ500CT{n} CQ500CT{n}"
        assert sorted(p.name for p in case.image_files) == sorted(
            truth[case.case_id]["source_slices"]
        )
        assert case.labelled == (case.mask is not None) == truth[case.case_id]["labelled"]
    assert {c.labelled for c in cases} == {True, False}


def test_cq500_mask_depth_selects_the_series_it_was_drawn_on(tmp_path):
    import nibabel as nib

    root = _write("cq500", tmp_path / "src", n_cases=1)
    mask = root / "masks" / "CQ500-CT-0.nii.gz"
    img = nib.load(mask)
    thick = np.asarray(img.dataobj)[:, :, ::2]
    nib.save(nib.Nifti1Image(thick, img.affine), mask)
    (case,) = layouts.read_layout("cq500", root)[0]
    assert case.image.name == "CT 5mm" and len(case.image_files) == SHAPE[2] // 2


def test_cq500_masks_folder_argument_in_seg_cq500_layout(tmp_path, written):
    root = written("cq500")
    volumes = tmp_path / "Seg-CQ500" / "data" / "volumes"
    (volumes / "CQ500-CT-1").mkdir(parents=True)
    shutil.copy(root / "masks" / "CQ500-CT-0.nii.gz", volumes / "CQ500-CT-1" / "ICH_mask.nii.gz")
    cases = cq500.read_cq500_layout(root, masks=volumes)
    labelled = {c.case_id: c.mask for c in cases if c.labelled}
    assert labelled == {"CQ500-CT-1": volumes / "CQ500-CT-1" / "ICH_mask.nii.gz"}


def test_cq500_patient_without_images_is_a_problem(tmp_path):
    root = _write("cq500", tmp_path, n_cases=1)
    empty = root / "CQ500CT7 CQ500CT7" / "Unknown Study" / "CT PLAIN THIN"
    empty.mkdir(parents=True)
    (empty / "README.txt").write_text("no images here")
    cases = cq500.read_cq500_layout(root)
    assert [c.case_id for c in cases] == ["CQ500-CT-0"]
    assert len(cases.problems) == 1 and cases.problems[0]["case_id"] == "CQ500-CT-7"
    assert "no DICOM image files" in cases.problems[0]["error"]


def test_rsna_a_damaged_file_is_reported_and_the_rest_is_read(tmp_path):
    root = _write("rsna", tmp_path, n_cases=2)
    (root / "stage_2_train" / "ID_0badf11e0.dcm").write_bytes(b"\x00" * 200 + b"garbage")
    with open(root / "stage_2_train.csv", "a") as f:
        f.write("ID_0badf11e0_any,1\n")
    cases, problems = layouts.read_layout("rsna", root)
    assert len(cases) == 2  # the train series and the test series
    assert len(problems) == 1
    assert problems[0]["case_id"] == "ID_0badf11e0"
    assert problems[0]["file"].endswith("ID_0badf11e0.dcm")
    assert "DICOM" in problems[0]["error"]


def test_cq500_a_damaged_file_leaves_the_other_series(tmp_path):
    root = _write("cq500", tmp_path, n_cases=1)
    plain = root / "CQ500CT0 CQ500CT0" / "Unknown Study" / "CT PLAIN THIN"
    (plain / "CT000003.dcm").write_bytes(b"not dicom at all")
    cases = cq500.read_cq500_layout(root)
    assert [p["file"] for p in cases.problems] == [str(plain / "CT000003.dcm")]
    assert len(cases) == 1 and len(cases[0].image_files) == SHAPE[2] - 1


def test_a_dataset_whose_cases_are_all_reader_problems_is_reported(tmp_path, capsys):
    """No readable case at all (every patient's CSV rows are wrong): each problem is printed and
    listed in skipped.json, and the build fails saying nothing could be built."""
    root = _write("ct_ich", tmp_path / "src", n_cases=2)
    csv_path = _ct_ich_top(root) / "hemorrhage_diagnosis_raw_ct.csv"
    _rewrite_csv(csv_path, lambda ln: not ln.split(",")[1] == "8")  # each patient loses a row
    out = tmp_path / "out"
    code = bs.main(["--dataset", "ct_ich", "--src", str(root), "--out", str(out), "--no-progress"])
    assert code == 2
    scans = _ct_ich_top(root) / "ct_scans"
    lines = [
        f"skipped {p}: {csv_path}: hemorrhage_diagnosis_raw_ct.csv lists slices 1..7 (7 rows) for "
        f"patient {int(p)} but {p}.nii has 8 slices"
        for p in ("049", "050")
    ]
    assert capsys.readouterr().err.splitlines() == [
        *lines,
        f"error: {out}: no case could be built (2 skipped, listed in {out / bs.SKIPPED})",
    ]
    assert [s["case_id"] for s in json.loads((out / bs.SKIPPED).read_text())] == ["049", "050"]
    assert scans.is_dir() and not (out / bs.MANIFEST).exists()

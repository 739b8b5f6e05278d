"""Bad input: every broken case is reported in one line naming the case, the file and the problem,
the other cases are built, skipped.json lists it next to the manifest, the exit status is 1 (0 with
--allow-skips), and what was written stays valid."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep import build_shards as bs
from lesionjax.data.shards import ShardSet

GOOD = ("phantom_000", "phantom_001")


@pytest.fixture
def dataset(tiny_phantom, tmp_path) -> Path:
    """Two good cases of the tiny phantom set in a fresh pairs layout."""
    root = tmp_path / "raw"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for case in GOOD:
            shutil.copy(tiny_phantom / sub / f"{case}.nii.gz", root / sub / f"{case}.nii.gz")
    return root


def _good_arrays(root: Path):
    img = nib.load(root / "images" / f"{GOOD[0]}.nii.gz")
    mask = nib.load(root / "masks" / f"{GOOD[0]}.nii.gz")
    return np.asarray(img.dataobj, np.float32), np.asarray(mask.dataobj, np.uint8), img.affine


def _save(array, affine, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _add_case(root: Path, name: str, image=None, mask=None, *, affine=None) -> None:
    hu, m, aff = _good_arrays(root)
    _save(
        hu if image is None else image,
        aff if affine is None else affine,
        root / "images" / f"{name}.nii.gz",
    )
    if mask is not False:
        _save(m if mask is None else mask, aff, root / "masks" / f"{name}.nii.gz")


def _nifti_error(path: Path) -> str:
    """What nibabel itself says when the file is read (the build wraps it in its message)."""
    try:
        np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj, np.float32)
    except Exception as e:
        return f"cannot read as NIfTI ({type(e).__name__}: {e})"
    raise AssertionError(f"{path} reads fine")


# Each bad case returns (the file named, the problem after "<file>: ") for its one skip line.


def _truncated_gzip(root):
    _add_case(root, "bad")
    path = root / "images" / "bad.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "images/bad.nii.gz", _nifti_error(path)


def _not_nifti(root):
    _add_case(root, "bad")
    (root / "images" / "bad.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return "images/bad.nii.gz", _nifti_error(root / "images" / "bad.nii.gz")


def _not_nifti_plain(root):
    _add_case(root, "bad")
    (root / "images" / "bad.nii.gz").unlink()
    (root / "images" / "bad.nii").write_bytes(b"\x00\x01garbage" * 100)
    return "images/bad.nii", _nifti_error(root / "images" / "bad.nii")


def _four_d(root):
    hu, _, _ = _good_arrays(root)
    _add_case(root, "bad", image=np.stack([hu, hu], axis=-1))
    return "images/bad.nii.gz", f"expected a 3D volume, got shape {(*hu.shape, 2)}"


def _shape_mismatch(root):
    _, m, _ = _good_arrays(root)
    _add_case(root, "bad", mask=m[:-2])
    return "masks/bad.nii.gz", f"mask shape {m[:-2].shape} != image shape {m.shape}"


def _affine_mismatch(root):
    _add_case(root, "bad")
    hu, m, aff = _good_arrays(root)
    shifted = aff.copy()
    shifted[:3, 3] += 5.0
    _save(m, shifted, root / "masks" / "bad.nii.gz")
    image = root / "images" / "bad.nii.gz"
    return "masks/bad.nii.gz", f"mask affine differs from image affine {image} (max difference 5)"


def _nan_voxels(root):
    hu, _, _ = _good_arrays(root)
    hu = hu.copy()
    hu[3, 4, 5] = np.nan
    hu[1, 1, 1] = np.inf
    _add_case(root, "bad", image=hu)
    return "images/bad.nii.gz", "2 voxels are NaN or infinite"


def _mask_values(root):
    _, m, _ = _good_arrays(root)
    _add_case(root, "bad", mask=(m * 2).astype(np.uint8))
    return "masks/bad.nii.gz", "mask values {0, 2} are not binary ({0,1} or {0,255})"


def _mask_fractional(root):
    _, m, _ = _good_arrays(root)
    _add_case(root, "bad", mask=m.astype(np.float32) * 0.5)
    return "masks/bad.nii.gz", "mask values {0, 0.5} are not binary ({0,1} or {0,255})"


def _constant_image(root):
    hu, _, _ = _good_arrays(root)
    _add_case(root, "bad", image=np.full_like(hu, -1000.0))
    return "images/bad.nii.gz", "constant image (all voxels -1000)"


def _empty_file(root):
    _add_case(root, "bad")
    (root / "images" / "bad.nii.gz").write_bytes(b"")
    return "images/bad.nii.gz", _nifti_error(root / "images" / "bad.nii.gz")


def _missing_mask(root):
    _add_case(root, "bad", mask=False)
    return "images/bad.nii.gz", "no mask found for case bad"


BAD_CASES = {
    "truncated_gzip": _truncated_gzip,
    "not_nifti_gz": _not_nifti,
    "not_nifti_plain": _not_nifti_plain,
    "4d_image": _four_d,
    "shape_mismatch": _shape_mismatch,
    "affine_mismatch": _affine_mismatch,
    "nan_inf_voxels": _nan_voxels,
    "mask_values_0_2": _mask_values,
    "mask_fractional": _mask_fractional,
    "constant_image": _constant_image,
    "empty_file": _empty_file,
    "image_without_mask": _missing_mask,
}


def _run_dataset(name: str, root: Path, out: Path, *extra: str) -> int:
    """The build CLI on one dataset folder: brain window, 2 folds, 1 worker, no progress bar."""
    return bs.main(
        ["--dataset", name, "--src", str(root), "--out", str(out), "--windows", "brain",
         "--folds", "2", "--workers", "1", "--no-progress", *extra]
    )  # fmt: skip


def _run(root: Path, out: Path, *extra: str) -> int:
    return _run_dataset("pairs", root, out, *extra)


def _check_valid_output(out: Path, expected_ids) -> None:
    shards = ShardSet.load(out)
    assert sorted(v["case_id"] for v in shards.volumes) == sorted(expected_ids)
    for v in shards.volumes:
        volume = shards.read_volume(v["case_id"])
        assert volume["image"].shape[2] == v["n_slices"]
    leftovers = [p.name for p in (out / "shards").iterdir() if ".tmp" in p.name]
    assert not leftovers, leftovers


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_case_is_reported_and_skipped(kind, dataset, tmp_path, capsys):
    rel_file, problem = BAD_CASES[kind](dataset)
    out = tmp_path / "shards"
    assert _run(dataset, out) == 1
    message = f"{dataset / rel_file}: {problem}"
    assert capsys.readouterr().err.splitlines() == [
        f"skipped bad: {message}",
        f"1 case(s) skipped, listed in {out / bs.SKIPPED}",
    ]
    image = next((dataset / "images").glob("bad.nii*"))  # the case's file, whatever failed
    skipped = json.loads((out / bs.SKIPPED).read_text())
    assert skipped == [{"case_id": "bad", "file": str(image), "error": message}]
    _check_valid_output(out, GOOD)
    # --allow-skips: same outcome, exit 0; the good shards are reused, not rebuilt.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.array_record")}
    assert _run(dataset, out, "--allow-skips") == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.array_record")}
    assert before == after
    _check_valid_output(out, GOOD)


def test_mask_0_255_is_accepted(dataset, tmp_path):
    _, m, _ = _good_arrays(dataset)
    _add_case(dataset, "m255", mask=(m * 255).astype(np.uint8))
    out = tmp_path / "shards"
    assert _run(dataset, out) == 0
    manifest = json.loads((out / bs.MANIFEST).read_text())
    by_id = {v["case_id"]: v for v in manifest["volumes"]}
    assert by_id["m255"]["lesion_voxels"] == by_id[GOOD[0]]["lesion_voxels"] == int(m.sum())
    assert not (out / bs.SKIPPED).exists()


def test_duplicate_case_ids_are_all_skipped(dataset, tmp_path, capsys):
    # case_000.nii next to case_000.nii.gz: two images claim the same case ID.
    img = nib.load(dataset / "images" / f"{GOOD[0]}.nii.gz")
    nib.save(img, str(dataset / "images" / f"{GOOD[0]}.nii"))
    out = tmp_path / "shards"
    assert _run(dataset, out) == 1
    files = [dataset / "images" / f"{GOOD[0]}{suffix}" for suffix in (".nii", ".nii.gz")]
    claim = f"duplicate case id '{GOOD[0]}' (2 cases: {files[0]}, {files[1]})"
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {GOOD[0]}: {claim}",
        f"skipped {GOOD[0]}: {claim}",
        f"2 case(s) skipped, listed in {out / bs.SKIPPED}",
    ]
    skipped = json.loads((out / bs.SKIPPED).read_text())
    assert sorted(s["file"] for s in skipped) == [str(f) for f in files]
    _check_valid_output(out, [GOOD[1]])


def test_all_cases_bad_exits_with_error(dataset, tmp_path, capsys):
    for case in GOOD:
        (dataset / "masks" / f"{case}.nii.gz").unlink()
    out = tmp_path / "shards"
    assert _run(dataset, out) == 2
    images = [dataset / "images" / f"{case}.nii.gz" for case in GOOD]
    assert capsys.readouterr().err.splitlines() == [
        *(
            f"skipped {case}: {image}: no mask found for case {case}"
            for case, image in zip(GOOD, images, strict=True)
        ),
        f"error: {out}: no case could be built (2 skipped, listed in {out / bs.SKIPPED})",
    ]
    assert len(json.loads((out / bs.SKIPPED).read_text())) == 2
    assert not (out / bs.MANIFEST).exists()


def test_fixed_case_is_built_on_the_next_run(dataset, tmp_path):
    _missing_mask(dataset)
    out = tmp_path / "shards"
    assert _run(dataset, out) == 1
    _, m, aff = _good_arrays(dataset)
    _save(m, aff, dataset / "masks" / "bad.nii.gz")
    assert _run(dataset, out) == 0
    assert not (out / bs.SKIPPED).exists()
    _check_valid_output(out, [*GOOD, "bad"])


def _nnunet_relabelled(tmp_path, labels: dict, value: int):
    """A 2-case nnU-Net set whose dataset.json declares ``labels``; in one case's mask every
    lesion voxel but one is relabelled ``value``. Returns (cases, index of that case, its mask)."""
    from data_prep.layouts import read_layout
    from data_prep.synthetic.phantom_layouts import write_layout

    root = write_layout(
        "nnunet", tmp_path / "raw", 2, seed=1, shape=(64, 64, 8), spacing=(3.6, 3.6, 12.0)
    )
    meta_path = next(root.glob("*/dataset.json"))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "labels": labels}))
    cases, problems = read_layout("nnunet", root)
    assert not problems
    masks = [np.asarray(nib.load(c.mask).dataobj).astype(np.uint8) for c in cases]
    k = next(i for i, m in enumerate(masks) if m.any())
    label, m = nib.load(cases[k].mask), masks[k]
    relabelled = m.copy()
    relabelled[m > 0] = value
    relabelled[tuple(np.argwhere(m > 0)[0])] = 1
    nib.save(nib.Nifti1Image(relabelled, label.affine), str(cases[k].mask))
    return cases, k, m


def test_nnunet_label_map_foreground_is_every_label(build, tmp_path):
    """nnU-Net / Decathlon masks are label maps: declared labels {0, 1, 2} are accepted,
    foreground = > 0 (the pairs layout rejects the same values, see mask_values_0_2 above)."""
    cases, k, m = _nnunet_relabelled(tmp_path, {"background": 0, "edema": 1, "core": 2}, 2)
    manifest, skipped = build(cases, tmp_path / "out", "nnunet", n_folds=2, windows=["brain"])
    assert not skipped
    by_id = {v["case_id"]: v for v in manifest["volumes"]}
    assert by_id[cases[k].case_id]["lesion_voxels"] == int((m > 0).sum())


def test_nnunet_mask_value_not_declared_in_dataset_json_is_rejected(build, tmp_path, capsys):
    """A stray label 7 in a {0, 1} dataset is not taken as lesion: the case is rejected with the
    value named (nnU-Net's dataset integrity check), the other case is built."""
    cases, k, _ = _nnunet_relabelled(tmp_path, {"background": 0, "hemorrhage": 1}, 7)
    manifest, skipped = build(cases, tmp_path / "out", "nnunet", n_folds=2, windows=["brain"])
    mask = cases[k].mask
    line = (
        f"skipped {cases[k].case_id}: {mask}: mask value(s) 7 not declared in dataset.json "
        "labels (0, 1)"
    )
    assert capsys.readouterr().err.splitlines() == [line]
    assert [s["case_id"] for s in skipped] == [cases[k].case_id]
    assert [v["case_id"] for v in manifest["volumes"]] == [cases[1 - k].case_id]


def _rsna(tmp_path):
    from data_prep.layouts import read_layout
    from data_prep.synthetic.phantom_layouts import write_layout

    root = write_layout(
        "rsna", tmp_path / "raw", 3, seed=2, shape=(64, 64, 8), spacing=(3.6, 3.6, 12.0)
    )
    cases, problems = read_layout("rsna", root)
    assert not problems and len(cases) == 3
    return root, cases


def test_dicom_with_unreadable_tag_is_reported(tmp_path, capsys):
    import pydicom

    root, cases = _rsna(tmp_path)
    victim = cases[1].image_files[3]
    ds = pydicom.dcmread(victim)
    # A value that does not parse as numbers (written as text, read back as garbage).
    ds[0x00200032] = pydicom.dataelem.DataElement(0x00200032, "LO", "not\\a\\number")
    ds.save_as(victim)
    out = tmp_path / "shards"
    assert _run_dataset("rsna", root, out) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {cases[1].case_id}: {victim}: missing or unreadable ImagePositionPatient "
        "(0020,0032) (value ['not', 'a', 'number'])",
        f"1 case(s) skipped, listed in {out / bs.SKIPPED}",
    ]
    _check_valid_output(out, [cases[0].case_id, cases[2].case_id])
    assert _run_dataset("rsna", root, out, "--allow-skips") == 0


def test_csv_row_naming_a_missing_file_is_reported(tmp_path, capsys):
    root, cases = _rsna(tmp_path)
    missing = cases[0].image_files[2]
    missing.unlink()
    out = tmp_path / "shards"
    assert _run_dataset("rsna", root, out) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {missing.stem}: {missing}: listed in stage_2_train.csv but the file is missing",
        f"1 case(s) skipped, listed in {out / bs.SKIPPED}",
    ]
    skipped = json.loads((out / bs.SKIPPED).read_text())
    assert skipped == [
        {
            "case_id": missing.stem,
            "file": str(missing),
            "error": "listed in stage_2_train.csv but the file is missing",
        }
    ]
    manifest = json.loads((out / bs.MANIFEST).read_text())
    assert {v["case_id"] for v in manifest["volumes"]} >= {cases[1].case_id, cases[2].case_id}


def test_nnunet_multichannel_cases_and_a_misregistered_channel(tmp_path, capsys):
    """nnU-Net channels 0001.. become extra input channels (windows x images); a channel on a
    different grid is reported like any other bad file."""
    from data_prep.layouts import read_layout
    from data_prep.synthetic.phantom_layouts import write_layout

    root = write_layout(
        "nnunet", tmp_path / "raw", 3, seed=4, shape=(64, 64, 8), spacing=(3.6, 3.6, 12.0)
    )
    meta_path = next(root.rglob("dataset.json"))
    meta = json.loads(meta_path.read_text())
    meta["channel_names"] = {"0": "CT", "1": "CT"}
    meta_path.write_text(json.dumps(meta))
    images = sorted(meta_path.parent.glob("imagesTr/*_0000.nii.gz"))
    for image in images:
        img = nib.load(image)
        second = np.asarray(img.dataobj, np.float32) * 0.5 + 20.0
        affine = img.affine.copy()
        if image == images[-1]:
            affine[:3, 3] += 4.0  # the last case's channel 1 is not co-registered
        nib.save(nib.Nifti1Image(second, affine), str(image).replace("_0000", "_0001"))
    cases, problems = read_layout("nnunet", root)
    assert not problems and all(len(c.channels) == 1 for c in cases)
    out = tmp_path / "shards"
    assert _run_dataset("nnunet", root, out) == 1
    last = images[-1]
    channel = Path(str(last).replace("_0000", "_0001"))
    case = last.name.removesuffix("_0000.nii.gz")
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {case}: {channel}: channel affine differs from image affine {last} (max "
        "difference 4)",
        f"1 case(s) skipped, listed in {out / bs.SKIPPED}",
    ]
    shards = ShardSet.load(out)
    assert shards.n_channels == 2 and len(shards.volumes) == 2
    vol = shards.read_volume(shards.volumes[0]["case_id"])
    assert vol["image"].shape[-1] == 2
    # Channel 1 is channel 0 halved (+20 HU) under the same brain window: it differs.
    assert not np.array_equal(vol["image"][..., 0], vol["image"][..., 1])


def test_bytes_that_are_not_dicom_in_a_series_are_reported(tmp_path, capsys):
    root, cases = _rsna(tmp_path)
    victim = cases[2].image_files[1]
    victim.write_bytes(b"\x00" * 64 + b"not a DICOM file at all" * 10)
    out = tmp_path / "shards"
    assert _run_dataset("rsna", root, out) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {victim.stem}: {victim}: not a DICOM file (no DICOM header could be parsed)",
        f"1 case(s) skipped, listed in {out / bs.SKIPPED}",
    ]
    # The undamaged series are built and readable.
    shards = ShardSet.load(out)
    assert {cases[0].case_id, cases[1].case_id} <= {v["case_id"] for v in shards.volumes}

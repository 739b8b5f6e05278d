"""``lesionjax.predict``: masks come back on the input's own grid (geometry, with an oracle model),
the outputs and tables, ensembles and TTA, the one-line errors, and (slow) the command end to end
on a tiny trained run.

The geometry tests use an oracle in place of a network: it calls "lesion" every voxel of the
model's input brighter than a level between the tissue and the lesion intensities, so the
predicted mask on the shard grid is the lesion as preprocessing delivered it, and what the test
measures is the way back (in-plane resize, slice selection, resampling, reorientation, the
written NIfTI's affine and shape), against a label computed from world coordinates.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.layouts.base import CaseFiles
from data_prep.plan import PreprocessingPlan
from data_prep.preprocess import preprocess_case
from lesionjax import predict as predict_lib

LESION_CENTRE = np.array([4.0, -6.0, 10.0])  # mm, world (RAS)


class Oracle:
    """A stand-in model: probability 0.5 at input level ``level`` of channel 0, ramping to 0 and
    1 over ``width`` input levels (soft at a partial-volume edge, as a network's output is)."""

    def __init__(self, level: float, width: float = 1.0):
        self.level, self.width = level, width
        self.predictor = self
        self.state = None
        self.calls = 0

    def predict_volume(self, state, channels):
        self.calls += 1
        c = channels[..., 0].astype(np.float32)
        return np.clip(0.5 + (c - self.level) / self.width, 0.0, 1.0)


def _world(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _sphere(shape, affine, radius=12.0) -> np.ndarray:
    return np.linalg.norm(_world(shape, affine) - LESION_CENTRE, axis=-1) < radius


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _affine(orientation: str, shape, spacing) -> np.ndarray:
    """A voxel -> world affine with the given stored orientation, centred on the volume."""
    signs = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1), "LAS": (-1, 1, 1), "oblique": (1, 1, 1)}
    linear = np.diag(np.asarray(signs[orientation], float) * spacing)
    if orientation == "oblique":
        linear = _rotation(20.0, 12.0) @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def _write_scan(
    folder: Path, name: str, shape, affine, modality: str, radius: float = 12.0
) -> tuple[Path, np.ndarray]:
    """A head-like scan (tissue in an ellipsoid, a bright spherical lesion) and its label."""
    folder.mkdir(parents=True, exist_ok=True)
    world = _world(shape, affine)
    head = np.sum((world / np.array([70.0, 80.0, 60.0])) ** 2, axis=-1) < 1
    lesion = _sphere(shape, affine, radius) & head
    if modality == "CT":
        image = np.where(head, np.where(lesion, 70.0, 30.0), -1000.0)
    else:
        image = np.where(head, np.where(lesion, 900.0, 400.0), 0.0)
    rng = np.random.default_rng(0)
    image = image + np.where(head, rng.normal(0, 2.0, shape), 0.0)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(path))
    return path, lesion


def _levels(files: CaseFiles, plan: PreprocessingPlan, label_path: Path) -> tuple[float, float]:
    """(midpoint, difference) of the lesion's and the tissue's input values, from a labelled
    preparation."""
    prepared = preprocess_case(
        CaseFiles(files.case_id, files.image, label_path, modality=files.modality), plan
    )
    c = prepared.channels[..., 0].astype(float)
    lesion = prepared.mask > 0
    tissue = (~lesion) & (c > 0)
    hi, lo = np.median(c[lesion]), np.median(c[tissue])
    return (hi + lo) / 2.0, hi - lo


def _predict_one(tmp_path, image: Path, label: np.ndarray, affine, plan, **kw):
    label_path = image.with_name("label.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(label_path))
    scans, problems = predict_lib.find_scans(image, plan.modality)
    assert not problems and len(scans) == 1
    oracle = Oracle(*_levels(scans[0].files, plan, label_path))
    out = tmp_path / "out"
    row = predict_lib.predict_scan(
        scans[0],
        [(plan, [oracle])],
        out,
        threshold=0.5,
        tta=kw.pop("tta", False),
        save_probabilities=kw.pop("save_probabilities", False),
        cavity_mask=False,
        overlay=kw.pop("overlay", False),
    )
    return nib.load(str(out / row["mask"])), row, oracle


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


CT = PreprocessingPlan("pairs", "CT", windows=("brain",))
GEOMETRY_CASES = {
    "RAS": ("RAS", (41, 37, 15), (1.0, 1.1, 3.0), CT),
    "LPS": ("LPS", (40, 44, 13), (0.9, 0.9, 3.5), CT),
    "LAS": ("LAS", (39, 41, 17), (1.2, 1.0, 2.5), CT),
    "oblique": ("oblique", (45, 43, 19), (1.0, 1.0, 2.0), CT),
    "resized": (
        "LPS",
        (51, 47, 15),
        (0.8, 0.9, 3.0),
        PreprocessingPlan("pairs", "CT", windows=("brain",), size=(40, 40)),
    ),
    "mri_resampled": (
        "LAS",
        (47, 53, 31),
        (1.0, 0.9, 1.3),
        PreprocessingPlan(
            "pairs", "MR", windows=("unit",), spacing=(1.5, 1.5, 1.5), normalize_method="zscore"
        ),
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_the_mask_comes_back_on_the_input_grid(tmp_path, name):
    orientation, shape, spacing, plan = GEOMETRY_CASES[name]
    affine = _affine(orientation, shape, np.asarray(spacing))
    image, label = _write_scan(tmp_path / "in", "scan", shape, affine, plan.modality)
    img, row, _ = _predict_one(tmp_path, image, label, affine, plan)
    assert img.shape == shape
    np.testing.assert_allclose(img.affine, nib.load(str(image)).affine, atol=1e-6)
    assert img.get_data_dtype() == np.uint8
    mask = np.asarray(img.dataobj)
    assert label.sum() > 200  # a lesion of many voxels
    assert _dice(mask, label) >= 0.98, _dice(mask, label)
    # The table's volume is the written mask's, in mL of the input's voxels.
    assert row["lesion_ml"] == pytest.approx(mask.sum() * np.prod(spacing) / 1000.0)
    assert row["n_lesions"] == 1


def test_slices_outside_the_slice_range_come_back_empty(tmp_path):
    shape, spacing = (40, 40, 16), np.array([1.0, 1.0, 2.0])
    affine = _affine("LPS", shape, spacing)
    plan = PreprocessingPlan("pairs", "CT", windows=("brain",), slice_range=(8, 12))
    image, label = _write_scan(tmp_path / "in", "scan", shape, affine, "CT")
    assert label[:, :, :8].any() and label[:, :, 12:].any()  # the lesion spans the range
    img, _, _ = _predict_one(tmp_path, image, label, affine, plan)
    mask = np.asarray(img.dataobj)
    # LPS keeps the stored z axis as RAS z: kept slices 8..11 in the file's own order.
    assert not mask[:, :, :8].any() and not mask[:, :, 12:].any()
    assert _dice(mask[:, :, 8:12], label[:, :, 8:12]) >= 0.98


def test_a_tilted_unevenly_spaced_dicom_series_comes_back_on_its_detilted_grid(tmp_path):
    from data_prep.dicom import read_dicom_series
    from data_prep.synthetic.dicom_writer import write_dicom_series

    shape, spacing = (48, 48, 20), np.array([1.0, 1.0, 2.5])
    affine = _affine("RAS", shape, spacing)
    world = _world(shape, affine)
    head = np.sum((world / np.array([70.0, 80.0, 60.0])) ** 2, axis=-1) < 1
    hu = np.where(head, np.where(_sphere(shape, affine), 70.0, 30.0), -1000.0)
    z_mm = np.cumsum([0.0] + [2.5 if k % 3 else 3.0 for k in range(1, 18)])  # uneven steps
    folder = tmp_path / "in" / "series"
    write_dicom_series(hu, affine, folder, patient_id="p", tilt_deg=12.0, slice_z_mm=z_mm)
    volume = read_dicom_series(folder)
    native_shape, native_affine = volume.native_grid()
    scans, problems = predict_lib.find_scans(tmp_path / "in", "CT")
    assert not problems and [s.case_id for s in scans] == ["series"]
    oracle = Oracle(159.5, 127.0)  # brain window [0, 80]: 30 HU -> 96, 70 HU -> 223
    row = predict_lib.predict_scan(
        scans[0],
        [(CT, [oracle])],
        tmp_path / "out",
        threshold=0.5,
        tta=False,
        save_probabilities=False,
        cavity_mask=False,
        overlay=False,
    )
    img = nib.load(str(tmp_path / "out" / row["mask"]))
    assert img.shape == tuple(native_shape)
    np.testing.assert_allclose(img.affine, native_affine, atol=1e-6)
    mask = np.asarray(img.dataobj) > 0
    # The lesion as the reader sees it on the de-tilted grid (the series itself is a sampled,
    # interpolated copy of the sphere), and its place in the world: the sphere's centre.
    expected = volume.data > 50.0
    assert expected.sum() > 1000
    assert _dice(mask, expected) >= 0.98, _dice(mask, expected)
    centre = _world(mask.shape, img.affine)[mask].mean(axis=0)
    np.testing.assert_allclose(centre, LESION_CENTRE, atol=0.5)


def test_tta_and_ensembles_average_probabilities(tmp_path):
    from lesionjax.eval.ensemble import ensemble_probabilities

    class Half:  # probability 1 on the left half of the input (x < X/2), else 0
        predictor = None
        state = None

        def predict_volume(self, state, channels):
            p = np.zeros(channels.shape[:3], np.float32)
            p[: channels.shape[0] // 2] = 1.0
            return p

    half = Half()
    half.predictor = half
    channels = np.zeros((6, 4, 3, 1), np.uint8)
    # Mirrored input predicts the left half too; flipped back it is the right half: mean 0.5.
    np.testing.assert_allclose(ensemble_probabilities([half], channels, tta=True), 0.5)
    oracle = Oracle(100.0)
    channels[:2] = 200
    mean = ensemble_probabilities([half, oracle], channels)
    assert mean[0, 0, 0] == 1.0 and mean[2, 0, 0] == 0.5 and mean[4, 0, 0] == 0.0


def test_probabilities_are_saved_scaled_and_read_back_by_nibabel(tmp_path):
    shape, spacing = (40, 40, 12), np.array([1.0, 1.0, 3.0])
    affine = _affine("RAS", shape, spacing)
    image, label = _write_scan(tmp_path / "in", "scan", shape, affine, "CT")
    img, row, oracle = _predict_one(
        tmp_path, image, label, affine, CT, save_probabilities=True, tta=True, overlay=True
    )
    assert oracle.calls == 2  # the scan and its mirror
    prob = nib.load(str(tmp_path / "out" / "scan_prob.nii.gz"))
    assert prob.get_data_dtype() == np.uint8
    values = prob.get_fdata()
    assert values.min() >= 0.0 and values.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(values >= 0.5, np.asarray(img.dataobj) > 0)
    assert (tmp_path / "out" / "scan_overlay.png").read_bytes()[:4] == b"\x89PNG"


def test_find_scans_reads_nifti_files_and_dicom_series_in_a_folder(tmp_path):
    from data_prep.synthetic.dicom_writer import write_dicom_series

    shape = (24, 24, 6)
    affine = _affine("RAS", shape, np.array([1.0, 1.0, 3.0]))
    _write_scan(tmp_path / "in", "a", shape, affine, "CT")
    _write_scan(tmp_path / "in" / "sub", "b", shape, affine, "CT")
    write_dicom_series(np.full(shape, 30.0), affine, tmp_path / "in" / "ct1", patient_id="p")
    (tmp_path / "in" / "notes.txt").write_text("not a scan")
    (tmp_path / "in" / "out").mkdir()
    _write_scan(tmp_path / "in" / "out", "old_mask", shape, affine, "CT")
    scans, problems = predict_lib.find_scans(tmp_path / "in", "CT", exclude=tmp_path / "in" / "out")
    assert sorted(s.case_id for s in scans) == ["a", "ct1", "sub_b"]
    assert problems == []
    with pytest.raises(predict_lib.PredictError, match="no such file"):
        predict_lib.find_scans(tmp_path / "missing", "CT")


def test_a_real_scan_prediction_lines_up_with_the_scan_in_world_coordinates(tmp_path, shared_data):
    """A real FLAIR (Lesjak patient19) through the MRI recipe's grid (2 mm, 96x96 slices) and
    back: a model that outputs the prepared lesion mask must land on the real mask file."""
    from data_prep.layouts.lesjak import read_lesjak_layout

    cases = {c.case_id: c for c in read_lesjak_layout(shared_data / "mri_ms_lesjak")}
    files = cases["patient19"]
    plan = PreprocessingPlan(
        "lesjak", "MR", windows=("unit",), spacing=(2.0, 2.0, 2.0), size=(96, 96)
    )
    prepared = preprocess_case(files, plan)

    class Replay:  # outputs the lesion mask the labelled preparation gave
        state = None

        def predict_volume(self, state, channels):
            assert channels.shape[:3] == prepared.mask.shape
            return prepared.mask.astype(np.float32)

    replay = Replay()
    replay.predictor = replay
    scan = predict_lib.Scan("patient19", Path(files.image), files)
    row = predict_lib.predict_scan(
        scan,
        [(plan, [replay])],
        tmp_path,
        threshold=0.5,
        tta=False,
        save_probabilities=True,
        cavity_mask=False,
        overlay=False,
    )
    pred = nib.load(str(tmp_path / row["mask"]))
    prob = nib.load(str(tmp_path / "patient19_prob.nii.gz")).get_fdata()
    truth = nib.load(str(files.mask))
    assert pred.shape == truth.shape
    np.testing.assert_allclose(pred.affine, truth.affine, atol=1e-5)

    def centre(img):
        data = np.asarray(img.dataobj) > 0
        return _world(data.shape, img.affine)[data].mean(axis=0)

    # The probability-weighted centre carries what the 2 mm grid held (the forward resampling
    # moved it by ~0.5 mm); thresholding the many small MS lesions moves the mask's centre by
    # up to half a working voxel more.
    world = _world(prob.shape, truth.affine)
    weighted = (world * prob[..., None]).reshape(-1, 3).sum(axis=0) / prob.sum()
    np.testing.assert_allclose(weighted, centre(truth), atol=0.6)
    np.testing.assert_allclose(centre(pred), centre(truth), atol=1.0)
    assert _dice(np.asarray(pred.dataobj), np.asarray(truth.dataobj) > 0) > 0.5


# ------------------------------------------------------------------------------ end to end


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.slow
def test_predict_command_end_to_end(tiny_run, tiny_phantom, tmp_path, child_env):
    import shutil

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("phantom_000.nii.gz", "phantom_001.nii.gz"):
        shutil.copy(tiny_phantom / "images" / name, inputs / name)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "lesionjax.predict",
        "--model",
        str(tiny_run),
        str(tiny_run),
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--tta",
        "--no-progress",
    ]
    done = subprocess.run(argv, env=child_env(2), capture_output=True, text=True)
    assert done.returncode == 1, done.stderr  # one scan failed
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "broken.nii.gz" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    rows = _read_csv(out / "predictions.csv")
    assert [r["case"] for r in rows] == ["phantom_000", "phantom_001"]
    for r in rows:
        src = nib.load(str(inputs / f"{r['case']}.nii.gz"))
        mask = nib.load(str(out / r["mask"]))
        assert mask.shape == src.shape
        np.testing.assert_allclose(mask.affine, src.affine)
        voxel_ml = float(np.prod(src.header.get_zooms()[:3])) / 1000.0
        assert float(r["lesion_ml"]) == pytest.approx(
            float(np.asarray(mask.dataobj).sum()) * voxel_ml, abs=1e-3
        )
        assert r["tta"] == "True" and r["models"].count(";") == 1
        assert (out / f"{r['case']}_overlay.png").is_file()
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["models"]) == 2 and summary["tta"] is True
    assert len(summary["failed"]) == 1


def test_predict_errors_are_one_line(tmp_path, capsys):
    rc = predict_lib.main(
        ["--model", str(tmp_path / "nope"), "--input", str(tmp_path), "--output", str(tmp_path)]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "no such run folder" in lines[0]


def test_cavity_mask_removes_everything_outside_the_cavity(tiny_phantom, tmp_path):
    """A model that calls every voxel lesion, on the phantom read as a dataset: with
    --cavity-mask what is left is exactly the case's own cavity mask file."""

    class Everywhere:
        state = None

        def predict_volume(self, state, channels):
            return np.ones(channels.shape[:3], np.float32)

    model = Everywhere()
    model.predictor = model
    scans, problems = predict_lib.dataset_scans("pairs", tiny_phantom)
    assert not problems and len(scans) == 10
    scan = scans[0]
    assert scan.files.icm is not None and not scan.files.labelled
    for cavity in (False, True):
        row = predict_lib.predict_scan(
            scan,
            [(CT, [model])],
            tmp_path / str(cavity),
            threshold=0.5,
            tta=False,
            save_probabilities=False,
            cavity_mask=cavity,
            overlay=False,
        )
        mask = np.asarray(nib.load(str(tmp_path / str(cavity) / row["mask"])).dataobj) > 0
        assert row["cavity_mask"] is cavity
        if cavity:
            icm = np.asarray(nib.load(str(scan.files.icm)).dataobj) > 0
            assert 0 < icm.sum() < icm.size
            np.testing.assert_array_equal(mask, icm)
        else:
            assert mask.all()


def test_reading_ahead_gives_the_same_results_and_a_bad_scan_is_skipped(tmp_path):
    shape = (32, 32, 8)
    spacing = np.array([1.0, 1.0, 3.0])
    affine = _affine("LPS", shape, spacing)
    expected = {}
    for name, radius in (("a", 5.0), ("b", 8.0), ("c", 11.0)):  # a different lesion each
        _, label = _write_scan(tmp_path / "in", name, shape, affine, "CT", radius=radius)
        expected[name] = label.sum() * np.prod(spacing) / 1000.0
    (tmp_path / "in" / "b_broken.nii.gz").write_bytes(b"not gzip")
    scans, _ = predict_lib.find_scans(tmp_path / "in", "CT")
    results = {}
    for ahead in (True, False):
        rows, failures = predict_lib.predict_scans(
            scans,
            [(CT, [Oracle(159.5, 127.0)])],
            tmp_path / str(ahead),
            threshold=0.5,
            overlay=False,
            progress=False,
            read_ahead=ahead,
        )
        assert [r["case"] for r in rows] == ["a", "b", "c"]
        assert len(failures) == 1 and "b_broken.nii.gz" in failures[0]
        # Each row holds its own scan's lesion, not a neighbour's (the read-ahead pairing).
        for r in rows:
            assert r["lesion_ml"] == pytest.approx(expected[r["case"]]), r["case"]
        results[ahead] = [(r["lesion_ml"], r["n_lesions"]) for r in rows]
        assert all(set(r["seconds"]) >= {"read_preprocess", "predict", "write"} for r in rows)
    assert results[True] == results[False]


def test_an_output_folder_around_the_input_and_colliding_names(tmp_path):
    shape = (24, 24, 6)
    affine = _affine("RAS", shape, np.array([1.0, 1.0, 3.0]))
    scans_dir = tmp_path / "data" / "scans"
    for name in ("x", "x_1"):
        _write_scan(scans_dir, name, shape, affine, "CT")
    (scans_dir / "x.nii").write_bytes(nib.load(str(scans_dir / "x.nii.gz")).to_bytes())
    (scans_dir / "x_mask.nii.gz").write_bytes((scans_dir / "x.nii.gz").read_bytes())  # an output
    # The output folder holds the input: the scans are found, this command's outputs skipped.
    for out in (tmp_path / "data", scans_dir):
        scans, problems = predict_lib.find_scans(scans_dir, "CT", exclude=out)
        ids = [s.case_id for s in scans]
        assert not problems and len(ids) == len(set(ids)) == 3 + (out != scans_dir), ids
    scans, _ = predict_lib.find_scans(scans_dir, "CT", exclude=scans_dir)
    assert sorted(s.source.name for s in scans) == ["x.nii", "x.nii.gz", "x_1.nii.gz"]


def test_a_dicom_series_of_another_modality_is_refused(tmp_path):
    from data_prep.synthetic.dicom_writer import write_dicom_series
    from data_prep.volumes import CaseError

    shape = (24, 24, 6)
    affine = _affine("RAS", shape, np.array([1.0, 1.0, 3.0]))
    write_dicom_series(np.full(shape, 30.0), affine, tmp_path / "ct", patient_id="p")
    mr_plan = PreprocessingPlan("pairs", "MR", windows=("unit",))
    scans, _ = predict_lib.find_scans(tmp_path / "ct", "MR")
    assert scans[0].files.modality == "CT"  # the series' own header, not the model's
    with pytest.raises(CaseError, match="a CT image, but the plan is for MR"):
        predict_lib.prepare_scan(scans[0], [mr_plan])


def test_the_mask_header_is_the_inputs_without_its_intensity_display(tmp_path):
    shape = (32, 32, 8)
    affine = _affine("LPS", shape, np.array([1.0, 1.0, 3.0]))
    image, label = _write_scan(tmp_path / "in", "scan", shape, affine, "CT")
    src = nib.load(str(image))
    src.header["cal_min"], src.header["cal_max"] = -1000.0, 3000.0
    src.header.set_xyzt_units("mm", "sec")
    nib.save(src, str(image))
    img, _, _ = _predict_one(tmp_path, image, label, affine, CT)
    h = img.header
    assert (float(h["cal_min"]), float(h["cal_max"])) == (0.0, 1.0)
    assert h.get_xyzt_units() == ("mm", "sec")
    assert int(h["qform_code"]) == int(src.header["qform_code"])
    assert int(h["sform_code"]) == int(src.header["sform_code"])
    assert h.get_slope_inter() in ((1.0, 0.0), (None, None))

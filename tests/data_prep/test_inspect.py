"""``python -m data_prep.inspect``: facts about a NIfTI image, a mask, a DICOM series, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.inspect import main
from data_prep.synthetic.dicom_writer import write_dicom_series

REPO = Path(__file__).resolve().parents[2]


def _run_json(capsys, *argv) -> dict:
    assert main([*map(str, argv), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.fixture
def ct_nifti(tmp_path) -> tuple[Path, np.ndarray]:
    """A CT-like float image stored LAS (x flipped), 40x36x10 at 0.8x0.9x2.5 mm."""
    rng = np.random.default_rng(0)
    data = rng.normal(-1000, 5, size=(40, 36, 10)).astype(np.float32)
    data[10:30, 8:28, 2:8] = rng.normal(35, 4, size=(20, 20, 6))
    data[12:14, 8:28, 2:8] = 1200.0
    affine = np.diag([-0.8, 0.9, 2.5, 1.0])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, data


def test_nifti_image(capsys, ct_nifti):
    path, data = ct_nifti
    facts = _run_json(capsys, path)
    assert facts["shape"] == [40, 36, 10] and facts["spacing"] == pytest.approx([0.8, 0.9, 2.5])
    assert facts["source_axcodes"] == "LAS" and facts["axcodes"] == "RAS"
    assert facts["dtype"] == "float32" and facts["format"] == "nifti"
    assert facts["min"] == pytest.approx(float(data.min()))
    assert facts["max"] == pytest.approx(float(data.max()))
    assert facts["mean"] == pytest.approx(float(data.mean()), rel=1e-5)
    expected = np.percentile(data, [1, 5, 50, 95, 99])
    assert [facts["percentiles"][k] for k in ("1", "5", "50", "95", "99")] == pytest.approx(
        expected, rel=1e-5
    )
    assert facts["modality"] == "CT" and facts["unit"] == "HU"  # air at -1000, bone present
    assert facts["is_mask"] is False and facts["lesion_ml"] is None
    assert main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "stored LAS, axcodes after reorientation RAS" in text and "(HU)" in text


def test_mask_labels_and_lesion_volume(capsys, tmp_path):
    mask = np.zeros((30, 32, 12), np.uint8)
    mask[5:9, 10:15, 3:6] = 1  # 60 voxels
    mask[20:22, 20:22, 8] = 2  # 4 voxels of a second label
    spacing = (0.7, 0.8, 3.0)
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.diag([*spacing, 1.0])), path)
    facts = _run_json(capsys, path)
    assert facts["is_mask"] and facts["unit"] == "label" and facts["dtype"] == "uint8"
    assert facts["labels"] == {"0": mask.size - 64, "1": 60, "2": 4}
    assert facts["lesion_voxels"] == 64
    assert facts["lesion_ml"] == pytest.approx(64 * 0.7 * 0.8 * 3.0 / 1000.0)
    # the same file through a real process, as a user runs it
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.inspect", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"64 voxels, {64 * 0.7 * 0.8 * 3.0 / 1000.0:.3f} mL" in proc.stdout
    assert f"0: {mask.size - 64}, 1: 60, 2: 4" in proc.stdout


def test_image_with_many_values_is_not_a_mask(capsys, tmp_path):
    data = np.arange(6 * 6 * 4, dtype=np.int16).reshape(6, 6, 4)
    path = tmp_path / "counts.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    facts = _run_json(capsys, path)
    assert facts["is_mask"] is False and facts["dtype"] == "int16"
    assert facts["min"] == 0 and facts["max"] == 143


def test_dicom_folder_and_file(capsys, tmp_path):
    shape, spacing = (40, 36, 12), (1.5, 1.5, 3.0)
    affine = np.diag([*spacing, 1.0])
    hu = np.full(shape, -1000.0, np.float32)
    hu[12:28, 10:26, :] = 40.0
    folder = tmp_path / "series"
    write_dicom_series(
        hu, affine, folder, patient_id="i", tilt_deg=12.0, series_description="head tilt",
        slice_z_mm=[0, 3, 6, 9, 12, 15, 18, 21, 30, 33],
    )  # fmt: skip
    (folder / "LICENSE").write_text("text")
    facts = _run_json(capsys, folder)
    assert facts["format"] == "dicom" and facts["modality"] == "CT" and facts["unit"] == "HU"
    assert facts["series_description"] == "head tilt" and facts["n_files"] == 10
    assert facts["tilt_deg"] == pytest.approx(12.0, abs=1e-3) and facts["gantry_tilt_tag"] == 12
    assert facts["slice_gaps_mm"] == pytest.approx(
        np.array([3, 3, 3, 3, 3, 3, 3, 9, 3]) * np.cos(np.radians(12.0)), abs=1e-4
    )  # along the tilted slice normal
    assert facts["resampled"] and facts["axcodes"] == "RAS" and facts["source_axcodes"] == "LPS"
    assert facts["spacing"] == pytest.approx([1.5, 1.5, 3.0])
    assert facts["min"] == pytest.approx(-1000.0) and facts["max"] == pytest.approx(40.0, abs=1)
    assert facts["rescale"] == [[1.0, -1024.0]] and facts["padding_value"] == -2000
    one_file = _run_json(capsys, folder / "0003.dcm")  # a file stands for its series
    assert one_file["shape"] == facts["shape"] and one_file["series_uid"] == facts["series_uid"]
    assert main([str(folder)]) == 0
    text = capsys.readouterr().out
    assert "tilt:         12.00 deg" in text and "slice gaps:" in text


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("broken.nii.gz", b"this is not gzip", "cannot read as NIfTI"),
        ("junk.bin", b"\x00\x01 random bytes" * 20, "not a DICOM file"),
        ("slice.dcm", b"text named .dcm", "not a DICOM file"),
    ],
)
def test_bad_file_exits_2_naming_it(capsys, tmp_path, name, content, problem):
    bad = tmp_path / name
    bad.write_bytes(content)
    assert main([str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and problem in err


def test_missing_path_exits_2(capsys, tmp_path):
    assert main([str(tmp_path / "absent.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "absent.nii.gz: no such file or folder" in err


# --------------------------------------------------------------------------- real data


def test_real_ge_dicom(shared_data):
    folder = shared_data / "ct_head_ge_dicom"
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.inspect", str(folder), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["n_files"] == 28 and facts["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert facts["tilt_deg"] == pytest.approx(18.5, abs=0.01) and facts["axcodes"] == "RAS"
    assert min(facts["slice_gaps_mm"]) == pytest.approx(1.08, abs=0.01)
    assert max(facts["slice_gaps_mm"]) == pytest.approx(7.0, abs=0.01)
    assert facts["unit"] == "HU" and facts["dtype"] == "int16"
    assert -1030 < facts["min"] < -990 and 1500 < facts["max"] < 2200  # padding -1500 -> air
    assert facts["percentiles"]["50"] == pytest.approx(-1000, abs=10)
    assert facts["padding_value"] == -1500 and facts["padding_voxels"] > 0


def test_real_ms_lesion_mask(capsys, shared_data):
    (mask,) = (shared_data / "mri_ms_lesjak" / "patient07").glob("*GOLD_STANDARD*")
    facts = _run_json(capsys, mask)
    assert facts["is_mask"] and facts["labels"]["1"] == 1300 and facts["lesion_voxels"] == 1300
    assert facts["spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert facts["lesion_ml"] == pytest.approx(1.3)
    assert facts["shape"] == [182, 218, 182] and facts["source_axcodes"] == "LAS"

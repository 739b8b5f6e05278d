"""DICOM series -> RAS+ volume: synthetic round trips through the writer (tilt, uneven slices,
shuffled files, padding, broken files) and the real tilted GE head CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage
from scipy.ndimage import map_coordinates

from data_prep import dicom
from data_prep.dicom import (
    AIR_HU,
    list_series,
    read_dicom_series,
    read_dicom_series_with_info,
)
from data_prep.synthetic.dicom_writer import write_dicom_series
from data_prep.synthetic.phantom import generate_case
from data_prep.volumes import CaseError

# --------------------------------------------------------------------------- synthetic volumes


@pytest.fixture(scope="module")
def phantom():
    return generate_case(1, shape=(64, 64, 16), spacing=(3.6, 3.6, 6.0))


def _affine(shape, spacing, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(spacing) + np.asarray(offset)
    return a


def _world(affine: np.ndarray, shape) -> np.ndarray:
    """(X, Y, Z, 3) RAS world coordinates of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _smooth_head(xyz: np.ndarray) -> np.ndarray:
    """An analytic 'head': a soft-edged ball of ~+40 HU in air, a bright off-centre blob."""
    r = np.linalg.norm(xyz - np.array([4.0, -6.0, 3.0]), axis=-1)
    ball = 1040.0 / (1.0 + np.exp((r - 20.0) / 2.0))
    blob = 400.0 * np.exp(-np.sum((xyz - np.array([-4.0, 2.0, 6.0])) ** 2, axis=-1) / 80.0)
    return -1000.0 + ball + blob


SMOOTH_SHAPE, SMOOTH_SPACING = (48, 44, 36), (1.75, 1.75, 2.0)


@pytest.fixture(scope="module")
def smooth():
    affine = _affine(SMOOTH_SHAPE, SMOOTH_SPACING, offset=(1.0, -2.0, 3.0))
    return _smooth_head(_world(affine, SMOOTH_SHAPE)).astype(np.float32), affine


def _fov_inside(shape, spacing) -> np.ndarray:
    """(X, Y) True inside the writer's circular reconstruction field of view."""
    nx, ny = shape[:2]
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    return x[:, None] ** 2 + y[None, :] ** 2 <= (min(nx * spacing[0], ny * spacing[1]) / 2) ** 2


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_round_trip_without_tilt_is_exact(tmp_path, phantom, slope):
    paths = write_dicom_series(
        phantom.image, phantom.affine, tmp_path, patient_id="p1", rescale_slope=slope,
        padding_value=None,
    )  # fmt: skip
    assert [p.name for p in paths] == [f"{k + 1:04d}.dcm" for k in range(16)]
    vol, info = read_dicom_series_with_info(tmp_path)
    assert vol.data.shape == phantom.image.shape and vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.affine, phantom.affine, atol=1e-6)
    assert vol.spacing == pytest.approx(phantom.spacing)
    # only the rescale quantization: stored = round((hu + 1024) / slope)
    assert np.abs(vol.data - phantom.image).max() <= slope / 2 + 1e-3
    assert vol.source_axcodes == ("L", "P", "S")  # columns right->left, rows front->back
    np.testing.assert_array_equal(vol.source_slice, np.arange(16))
    assert vol.modality == "CT"
    assert not info.resampled and info.tilt_deg == 0.0
    assert info.rescale == ((slope, -1024.0),)
    assert info.slice_gaps_mm == pytest.approx([6.0] * 15)


def test_oblique_series_keeps_its_affine(tmp_path, smooth):
    """An oblique (rotated, untilted) acquisition: the reader recovers the voxel grid exactly."""
    hu, affine = smooth
    rz, rx = np.radians(25.0), np.radians(10.0)
    rot_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    oblique = affine.copy()
    oblique[:3, :3] = rot_x @ rot_z @ affine[:3, :3]
    write_dicom_series(hu, oblique, tmp_path, patient_id="o", padding_value=None)
    vol, info = read_dicom_series_with_info(tmp_path)
    assert info.tilt_deg == 0.0 and not info.resampled
    np.testing.assert_allclose(vol.affine, oblique, atol=1e-6)
    assert np.abs(vol.data - hu).max() <= 0.5 + 1e-3


def test_written_headers_follow_the_dicom_conventions(tmp_path, phantom):
    paths = write_dicom_series(
        phantom.image, phantom.affine, tmp_path, patient_id="p1", series_description="ax"
    )
    ds = pydicom.dcmread(paths[3])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (ds.Rows, ds.Columns) == (64, 64) and ds.PixelRepresentation == 1  # padding < 0
    # first pixel = the volume's right-front corner, in LPS (x and y negated)
    corner = phantom.affine @ np.array([63, 63, 3, 1.0])
    expected = [-corner[0], -corner[1], corner[2]]
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-6)
    px = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    i, j = 20, 30  # pixel (row i, column j) = voxel (63 - j, 63 - i)
    assert px[i, j] == pytest.approx(phantom.image[63 - j, 63 - i, 3], abs=0.5)
    assert int(ds.PixelPaddingValue) == -2000 and (ds.pixel_array == -2000).any()
    assert not list(tmp_path.glob(".*"))  # no temp files left by the atomic writes


def test_padding_maps_to_air(tmp_path, phantom):
    write_dicom_series(phantom.image, phantom.affine, tmp_path / "a", patient_id="p1")
    vol, info = read_dicom_series_with_info(tmp_path / "a")
    inside = _fov_inside(phantom.image.shape, phantom.spacing)
    assert (~inside).sum() > 0
    assert np.all(vol.data[~inside] == AIR_HU)
    assert np.abs(vol.data[inside] - phantom.image[inside]).max() <= 0.5 + 1e-3
    assert info.padding_value == -2000 and info.padding_voxels == (~inside).sum() * 16
    # the same files without the PixelPaddingValue tag: -2000 stored = -3024 HU, below the
    # physical range, is still recognized as padding
    (tmp_path / "b").mkdir()
    for p in sorted((tmp_path / "a").glob("*.dcm")):
        ds = pydicom.dcmread(p)
        del ds.PixelPaddingValue
        ds.save_as(tmp_path / "b" / p.name)
    untagged = read_dicom_series(tmp_path / "b")
    np.testing.assert_array_equal(untagged.data, vol.data)


@pytest.mark.parametrize("tilt", [18.0, -15.0])
def test_gantry_tilt_is_removed(tmp_path, smooth, tilt):
    hu, affine = smooth
    paths = write_dicom_series(hu, affine, tmp_path, patient_id="t", tilt_deg=tilt)
    ds = pydicom.dcmread(paths[0])
    t = np.radians(tilt)
    np.testing.assert_allclose(
        [float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, np.cos(t), -np.sin(t)],
        atol=1e-9,
    )  # fmt: skip
    assert float(ds.GantryDetectorTilt) == tilt

    vol, info = read_dicom_series_with_info(tmp_path)
    assert info.tilt_deg == pytest.approx(abs(tilt), abs=1e-3)
    assert info.gantry_tilt_tag == tilt and info.resampled
    off_diagonal = vol.affine[:3, :3] - np.diag(np.diag(vol.affine[:3, :3]))
    assert np.abs(off_diagonal).max() < 1e-9  # axis aligned
    np.testing.assert_allclose(np.diag(vol.affine)[:3], SMOOTH_SPACING, atol=1e-6)
    assert vol.source_axcodes == ("L", "P", "S")
    # the read volume against the analytic truth at the read voxels' world positions: the whole
    # head is covered (the reader fills air only outside the tilted slab) and matches within
    # the error of two linear interpolations (a sheared stack would be off by hundreds of HU at
    # the edge of the ball, which moves by up to 20 mm * tan(tilt))
    truth = _smooth_head(_world(vol.affine, vol.data.shape))
    head = truth > -990.0
    assert np.all(vol.data[head] != AIR_HU)
    err = np.abs(vol.data - truth)[head]
    assert err.mean() < 8.0 and err.max() < 40.0, (err.mean(), err.max())
    # the bright blob is where it belongs (a sheared stack would move it by z*tan(tilt))
    peak = np.unravel_index(np.argmax(vol.data), vol.data.shape)
    peak_world = vol.affine[:3, :3] @ np.array(peak) + vol.affine[:3, 3]
    assert np.linalg.norm(peak_world - np.array([-4.0, 2.0, 6.0])) < 2.5


def test_tilted_resampler_reduces_to_the_plain_one_without_tilt(smooth):
    """The general (tilt) resampler, given an untilted stack, gives the plain z interpolation."""
    hu, _ = smooth
    stack = np.ascontiguousarray(hu.transpose(2, 1, 0))  # (K, rows, columns)
    s_pos = np.array([0, 2, 4, 5, 6, 9, 12, 14, 16, 20, 21, 24, 28, 32.0])
    stack = stack[: len(s_pos)]
    first = dicom._Slice(
        Path("x"), 0, None, np.array([1.0, 2.0, 3.0]), np.array([1.0, 0, 0]),
        np.array([0, 1.0, 0]), (1.5, 1.25), stack.shape[1], stack.shape[2],
    )  # fmt: skip
    normal = np.array([0, 0, 1.0])
    plain, aff_plain, s_plain = dicom._resample_along_normal(stack, [first], s_pos, normal, 2.0)
    general, aff_gen, s_gen = dicom._resample_tilted(stack, [first], s_pos, normal, 2.0, -1000.0)
    assert plain.shape == general.shape == (stack.shape[2], stack.shape[1], 17)
    np.testing.assert_allclose(aff_gen, aff_plain, atol=1e-9)
    np.testing.assert_allclose(general, plain, atol=1e-3)
    np.testing.assert_allclose(s_gen, s_plain, atol=1e-9)


def test_separable_tilt_resampling_matches_the_general_one(smooth):
    """The fast path for a tilt about the row direction equals 3D map_coordinates."""
    hu, _ = smooth
    stack = np.ascontiguousarray(hu.transpose(2, 1, 0))[:12]
    s_pos = np.array([0, 2.1, 4.2, 6.3, 7.0, 9.1, 13.3, 17.5, 21.7, 25.9, 30.1, 34.3])
    t = np.radians(17.0)
    first = dicom._Slice(
        Path("x"), 0, None, np.array([-40.0, -35.0, 10.0]), np.array([1.0, 0, 0]),
        np.array([0, np.cos(t), -np.sin(t)]), (1.25, 1.5), stack.shape[1], stack.shape[2],
    )  # fmt: skip
    axis = np.array([0, 0, 1.0])
    fast = dicom._resample_tilted(stack, [first], s_pos, axis, 2.1, -1000.0, separable=True)
    slow = dicom._resample_tilted(stack, [first], s_pos, axis, 2.1, -1000.0, separable=False)
    assert fast[0].shape == slow[0].shape and (fast[0] != -1000.0).mean() > 0.5
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-2)
    np.testing.assert_allclose(fast[1], slow[1])
    np.testing.assert_allclose(fast[2], slow[2])


def test_uneven_slice_positions_resample_linearly(tmp_path):
    shape, spacing = (40, 36, 24), (2.0, 2.0, 1.5)
    affine = _affine(shape, spacing)
    xyz = _world(affine, shape)
    field = 8.0 * xyz[..., 2] + 0.5 * xyz[..., 0] - 200.0  # linear: interpolation is exact
    z_mm = [0.0, 1.5, 3.0, 4.5, 6.0, 10.5, 15.0, 16.5, 18.0, 24.0, 30.0, 31.5, 33.0, 34.5]
    paths = write_dicom_series(field, affine, tmp_path, patient_id="u", slice_z_mm=z_mm)
    vol, info = read_dicom_series_with_info(tmp_path)
    gaps = np.diff(z_mm)
    assert info.slice_gaps_mm == pytest.approx(gaps, abs=1e-6) and info.resampled
    assert vol.spacing[2] == pytest.approx(np.median(gaps))  # 1.5
    assert vol.data.shape[2] == round(34.5 / 1.5) + 1
    np.testing.assert_allclose(vol.affine[:3, 2], [0, 0, 1.5], atol=1e-9)  # regular z grid
    inside = _fov_inside(shape, spacing)
    out_xyz = _world(vol.affine, vol.data.shape)
    truth = 8.0 * out_xyz[..., 2] + 0.5 * out_xyz[..., 0] - 200.0
    assert np.abs(vol.data - truth)[inside].max() <= 0.5 + 1e-3
    # nearest input slice of each output slice
    out_z = np.arange(vol.data.shape[2]) * 1.5
    expected = np.abs(out_z[:, None] - np.array(z_mm)[None]).argmin(axis=1)
    names = sorted(p.name for p in paths)
    assert [names[k] for k in vol.source_slice] == [paths[k].name for k in expected]

    coarse = read_dicom_series(tmp_path, target_spacing_z=4.0)
    assert coarse.data.shape[2] == int(34.5 // 4.0) + 1 and coarse.spacing[2] == 4.0
    out_xyz = _world(coarse.affine, coarse.data.shape)
    truth = 8.0 * out_xyz[..., 2] + 0.5 * out_xyz[..., 0] - 200.0
    assert np.abs(coarse.data - truth)[inside].max() <= 0.5 + 1e-3


def test_shuffled_files_and_instance_numbers_give_the_same_volume(tmp_path, phantom):
    write_dicom_series(phantom.image, phantom.affine, tmp_path / "plain", patient_id="s")
    reference = read_dicom_series(tmp_path / "plain")
    names = [f"IMG{n:03d}.dcm" for n in np.random.default_rng(5).permutation(16)]
    paths = write_dicom_series(
        phantom.image, phantom.affine, tmp_path / "shuffled", patient_id="s",
        file_names=names, shuffle_instance_numbers=True, seed=3,
    )  # fmt: skip
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]
    assert numbers != sorted(numbers) and sorted(numbers) == list(range(1, 17))
    assert sorted(p.name for p in paths) != [p.name for p in paths]
    from_folder = read_dicom_series(tmp_path / "shuffled")
    np.testing.assert_array_equal(from_folder.data, reference.data)
    np.testing.assert_allclose(from_folder.affine, reference.affine, atol=1e-9)
    by_name = sorted(paths, key=lambda p: p.name)
    assert [by_name[k] for k in from_folder.source_slice] == paths
    given = [paths[k] for k in np.random.default_rng(9).permutation(16)]
    from_list = read_dicom_series(given)
    np.testing.assert_array_equal(from_list.data, reference.data)
    assert [given[k] for k in from_list.source_slice] == paths  # indexes the given list


def test_mr_series_keeps_its_units(tmp_path, smooth):
    hu, affine = smooth
    values = (hu + 1000.0) * 2.0  # 0 .. ~3000, "MR units"
    write_dicom_series(values, affine, tmp_path, patient_id="m", rescale_intercept=0.0)
    for p in tmp_path.glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.Modality = "MR"
        ds.save_as(p)
    vol = read_dicom_series(tmp_path)
    inside = _fov_inside(hu.shape, SMOOTH_SPACING)
    assert vol.modality == "MR"
    assert np.abs(vol.data - values)[inside].max() <= 0.5 + 1e-3
    assert np.all(vol.data[~inside] == 0.0)  # MR padding -> 0, not -1000


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def series(tmp_path, smooth):
    hu, affine = smooth
    folder = tmp_path / "series"
    write_dicom_series(hu[:, :, ::6], affine, folder, patient_id="e", padding_value=None)
    return folder


def test_non_dicom_files_are_ignored_but_a_bad_dcm_is_an_error(series):
    (series / "LICENSE").write_text("BSD-2 licence text\n")
    (series / "labels.csv").write_text("slice,any\n1,0\n")
    (series / "sub").mkdir()
    (series / "sub" / "README").write_bytes(b"\x00\x01" * 300)
    report = FileDataset("", Dataset(), file_meta=FileMetaDataset(), preamble=b"\0" * 128)
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID = BasicTextSRStorage
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID = "1.2.3.4"
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.Modality = "SR"
    report.save_as(series / "report.dcm", enforce_file_format=True)  # a non-image object
    assert [len(v) for v in list_series(series).values()] == [6]
    assert read_dicom_series(series).data.shape[2] == 6
    (series / "notes.dcm").write_text("not a DICOM file at all")
    with pytest.raises(CaseError, match=r"notes\.dcm.*not a DICOM"):
        read_dicom_series(series)


def test_missing_image_position_names_file_and_tag(series):
    victim = series / "0003.dcm"
    ds = pydicom.dcmread(victim)
    del ds.ImagePositionPatient
    ds.save_as(victim)
    with pytest.raises(CaseError, match=r"0003\.dcm: missing or unreadable ImagePositionPatient"):
        read_dicom_series(series)


@pytest.mark.parametrize(
    "cut, problem",
    [("pixels", "cannot decode pixel data"), ("header", "incomplete DICOM header"),
     ("start", "not a DICOM")],
)  # fmt: skip
def test_truncated_dicom_names_the_file(series, cut, problem):
    victim = series / "0004.dcm"
    data = victim.read_bytes()
    rows_tag = data.find(b"\x28\x00\x10\x00US")  # (0028,0010) Rows, explicit VR little endian
    assert rows_tag > 0
    keep = {"pixels": len(data) - 1000, "header": rows_tag - 10, "start": 6}[cut]
    victim.write_bytes(data[:keep])
    with pytest.raises(CaseError, match=rf"0004\.dcm: {problem}"):
        read_dicom_series(series)


def test_mixed_series(tmp_path, smooth):
    hu, affine = smooth
    folder = tmp_path / "mixed"
    write_dicom_series(hu[..., :4], affine, folder, patient_id="a", series_description="one")
    second = write_dicom_series(
        hu[..., :3], affine, folder, patient_id="a", series_description="two",
        file_names=["b1.dcm", "b2.dcm", "b3.dcm"],
    )  # fmt: skip
    found = list_series(folder)
    assert sorted(len(v) for v in found.values()) == [3, 4]
    with pytest.raises(CaseError, match=r"2 series, pass series_uid.*b1\.dcm"):
        read_dicom_series(folder)
    uid_two = next(uid for uid, files in found.items() if len(files) == 3)
    assert read_dicom_series(folder, series_uid=uid_two).data.shape[2] == 3
    files = sorted(folder.glob("0*.dcm")) + [second[1]]
    with pytest.raises(CaseError, match=r"b2\.dcm: SeriesInstanceUID .*mixed series"):
        read_dicom_series(files)


def test_duplicate_and_inconsistent_slices(tmp_path, smooth):
    hu, affine = smooth
    write_dicom_series(hu, affine, tmp_path / "dup", patient_id="d", slice_z_mm=[0, 2, 4, 4, 6])
    with pytest.raises(CaseError, match=r"000[34]\.dcm: duplicate slice position"):
        read_dicom_series(tmp_path / "dup")
    paths = write_dicom_series(hu[..., :5], affine, tmp_path / "ori", patient_id="o")
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.99, 0.141067]
    ds.save_as(paths[2])
    with pytest.raises(CaseError, match=r"0003\.dcm: ImageOrientationPatient .* differs"):
        read_dicom_series(tmp_path / "ori")
    paths = write_dicom_series(hu[..., :5], affine, tmp_path / "rows", patient_id="r")
    ds = pydicom.dcmread(paths[4])
    ds.Rows = 40
    ds.save_as(paths[4])
    with pytest.raises(CaseError, match=r"0005\.dcm: Rows/Columns"):
        read_dicom_series(tmp_path / "rows")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "LICENSE").write_text("text")
    with pytest.raises(CaseError, match="no DICOM image files"):
        list_series(tmp_path)
    with pytest.raises(CaseError, match="no such file or folder"):
        read_dicom_series(tmp_path / "absent")


# --------------------------------------------------------------------------- the real GE head CT


@pytest.fixture(scope="module")
def ge(shared_data):
    folder = shared_data / "ct_head_ge_dicom"
    vol, info = read_dicom_series_with_info(folder)
    headers = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    return vol, info, headers


def test_ge_tilt_is_detected_and_removed(ge):
    vol, info, headers = ge
    assert len(info.files) == 28 and info.modality == "CT"
    assert info.gantry_tilt_tag == 18.5
    assert info.tilt_deg == pytest.approx(18.5, abs=0.01)  # from the slice positions
    # uneven gaps along the normal: 4.0 mm, one 1.08 mm, then 7.0 mm
    assert min(info.slice_gaps_mm) == pytest.approx(1.08, abs=0.01)
    assert max(info.slice_gaps_mm) == pytest.approx(7.0, abs=0.01)
    off_diagonal = vol.affine[:3, :3] - np.diag(np.diag(vol.affine[:3, :3]))
    assert np.abs(off_diagonal).max() < 1e-6  # axis aligned after de-tilting
    # regular z grid at the median table step (4.0 mm / cos 18.5 deg along the table)
    assert vol.spacing[2] == pytest.approx(4.0 / np.cos(np.radians(18.5)), abs=0.01)
    assert vol.spacing[:2] == pytest.approx((0.48828, 0.48828), abs=1e-4)
    assert vol.source_axcodes == ("L", "P", "S")
    assert np.all(np.diff(vol.source_slice) >= 0) and vol.source_slice.max() == 27
    # the z grid starts on the first slice's table position and ends within one step of the
    # last one (LPS z = RAS z here): z positions from the header, not from slice indices
    z_first = float(headers[0].ImagePositionPatient[2])
    z_last = float(headers[-1].ImagePositionPatient[2])
    z = vol.affine[2, 3] + vol.affine[2, 2] * np.arange(vol.data.shape[2])
    steps = (z - z_first) / vol.spacing[2]
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-6)
    assert 0 <= z_last - z[-1] < vol.spacing[2]


def test_ge_hu_values(ge):
    vol, _, _ = ge
    data = vol.data
    assert -1030 < data.min() and 1500 < data.max() < 2200
    # measured air, not the fill value given to padding and to voxels outside the slab
    air = data[(data < -500) & (data != AIR_HU)]
    assert air.size > 100_000 and np.median(air) == pytest.approx(-1000, abs=10)
    # brain: soft tissue inside a 40 mm box at the head's centre, well above the skull base
    world = np.array([0.0, 0.0, 80.0, 1.0])  # RAS mm
    centre = np.rint(np.linalg.solve(vol.affine, world)[:3]).astype(int)
    half = np.rint(20.0 / np.array(vol.spacing)).astype(int)
    box = data[tuple(slice(c - h, c + h + 1) for c, h in zip(centre, half, strict=True))]
    soft = box[(box > -50) & (box < 100)]
    assert soft.size > 0.5 * box.size
    assert 20 <= np.median(soft) <= 50, np.median(soft)


def test_ge_geometry_matches_the_headers(ge):
    """Independent check: the pixels of stored slices, placed with their header geometry, find
    nearly the same HU in the read volume; placed as if the slices were untilted they do not."""
    vol, _, headers = ge
    inv = np.linalg.inv(vol.affine)
    for ds in (headers[5], headers[12], headers[20]):
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        d_row, d_col = (float(v) for v in ds.PixelSpacing)
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        i, j = np.mgrid[0 : ds.Rows : 4, 0 : ds.Columns : 4]
        sample = hu[i, j]
        keep = (sample > -900) & (sample < 1500)  # the head, not padding or air
        result = {}
        for untilted in (False, True):
            col = np.array([0.0, 1.0, 0.0]) if untilted else iop[3:]
            lps = ipp + j[..., None] * d_col * iop[:3] + i[..., None] * d_row * col
            ras = lps * np.array([-1.0, -1.0, 1.0])
            vox = ras @ inv[:3, :3].T + inv[:3, 3]
            got = map_coordinates(vol.data, vox[keep].T, order=1, mode="nearest")
            result[untilted] = (
                np.corrcoef(got, sample[keep])[0, 1],
                np.median(np.abs(got - sample[keep])),
            )
        # the read volume interpolates between slices 4-7 mm apart: close, not identical
        assert result[False][0] > 0.95 and result[False][1] < 25.0, result
        assert result[True][0] < 0.7 and result[True][1] > 3 * result[False][1], result

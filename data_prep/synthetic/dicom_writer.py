"""Synthetic DICOM series for tests: a known volume written as one axial CT series, with
gantry tilt, uneven slice positions, padding and shuffled instance numbers, so the reader
(``data_prep.dicom``) can be checked against the volume it came from.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds
from scipy.ndimage import map_coordinates

from data_prep.dicom import AIR_HU, LPS_TO_RAS
from lesionjax.core.atomic import atomic_write_bytes


def write_dicom_series(
    hu: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    *,
    patient_id: str,
    tilt_deg: float = 0.0,
    slice_z_mm: Sequence[float] | None = None,
    file_names: Sequence[str] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    padding_value: int | None = -2000,
    series_description: str = "",
    shuffle_instance_numbers: bool = False,
    seed: int = 0,
) -> list[Path]:
    """Writes a (synthetic) CT volume (X,Y,Z HU in RAS+ with its affine) as one axial DICOM
    series: one file per slice, CT Image Storage, stored uint16/int16 pixels with the rescale
    given, optional gantry tilt (slices sampled on a tilted grid from the volume, with the
    matching ImageOrientationPatient / ImagePositionPatient and GantryDetectorTilt), optional
    uneven slice positions, optional padding value outside the head's field of view. Atomic per
    file.

    Geometry: columns run right->left and rows anterior->posterior (the usual axial display,
    ImageOrientationPatient 1,0,0,0,1,0 for an axis-aligned volume); the image is X columns by
    Y rows at the volume's in-plane spacing. slice_z_mm: table positions of the slices in mm
    along the volume's z axis from voxel z = 0 (default: the voxel centres, k * spacing z);
    each slice is centred on the volume's in-plane centre at its table position and tilted by
    ``tilt_deg`` about the row direction. Pixels are sampled with trilinear interpolation
    (exact copies where the slice grid hits voxel centres). padding_value (stored units) fills
    pixels outside the circular reconstruction field of view (the inscribed circle) and outside
    the volume, and is written as PixelPaddingValue; with None those pixels are air (-1000 HU).
    Returns the paths in slice order (the order of ``slice_z_mm``).
    """
    hu = np.asarray(hu, dtype=np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    if hu.ndim != 3:
        raise ValueError(f"hu must be (X, Y, Z), got shape {hu.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got {affine.shape}")
    if np.linalg.det(affine[:3, :3]) <= 0:
        raise ValueError("affine must be right-handed (a RAS+ volume)")
    if rescale_slope <= 0:
        raise ValueError(f"rescale_slope must be > 0, got {rescale_slope}")
    nx, ny, nz = hu.shape
    a_lps = LPS_TO_RAS @ affine  # the flip is its own inverse
    spacing = np.linalg.norm(a_lps[:3, :3], axis=0)
    row_dir = -a_lps[:3, 0] / spacing[0]
    col0 = -a_lps[:3, 1] / spacing[1]
    axis_z = a_lps[:3, 2] / spacing[2]
    if abs(row_dir @ col0) > 1e-6 or abs(row_dir @ axis_z) > 1e-6 or abs(col0 @ axis_z) > 1e-6:
        raise ValueError("affine axes must be orthogonal")
    t = np.radians(tilt_deg)
    col_dir = np.cos(t) * col0 - np.sin(t) * axis_z
    normal = np.cross(row_dir, col_dir)
    z_mm = np.arange(nz) * spacing[2] if slice_z_mm is None else np.asarray(slice_z_mm, np.float64)
    n_slices = len(z_mm)
    if file_names is None:
        file_names = [f"{k + 1:04d}.dcm" for k in range(n_slices)]
    if len(file_names) != n_slices:
        raise ValueError(f"{len(file_names)} file names for {n_slices} slices")
    rng = np.random.default_rng(seed)
    instance_numbers = (
        rng.permutation(n_slices) + 1 if shuffle_instance_numbers else np.arange(n_slices) + 1
    )
    study_uid = study_uid or generate_uid(entropy_srcs=[patient_id, "study", str(seed)])
    series_uid = series_uid or generate_uid(
        entropy_srcs=[patient_id, study_uid, series_description, str(tilt_deg), str(seed)]
    )
    frame_uid = generate_uid(entropy_srcs=[study_uid, "frame"])

    centre_voxel = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, 0.0, 1.0])
    centre0 = (a_lps @ centre_voxel)[:3]
    jc, ic = (nx - 1) / 2.0, (ny - 1) / 2.0
    jj, ii = np.meshgrid(np.arange(nx) - jc, np.arange(ny) - ic)  # (rows, columns)
    in_plane = jj[..., None] * (spacing[0] * row_dir) + ii[..., None] * (
        spacing[1] * col_dir
    )  # (rows, columns, 3)
    radius = min(nx * spacing[0], ny * spacing[1]) / 2.0
    outside_fov = (jj * spacing[0]) ** 2 + (ii * spacing[1]) ** 2 > radius**2
    to_voxel = np.linalg.inv(a_lps)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    all_stored = []
    for k in range(n_slices):
        centre = centre0 + z_mm[k] * axis_z
        world = centre + in_plane
        vox = world @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        snapped = np.rint(vox)
        near = np.abs(vox - snapped) < 1e-6
        vox[near] = snapped[near]
        inside = np.all((vox >= -1e-6) & (vox <= np.array(hu.shape) - 1 + 1e-6), axis=-1)
        values = map_coordinates(hu, vox.reshape(-1, 3).T, order=1, mode="nearest").reshape(ny, nx)
        stored = np.rint((values - rescale_intercept) / rescale_slope)
        outside = ~inside
        if padding_value is not None:
            outside |= outside_fov
            stored[outside] = padding_value
        else:
            stored[outside] = np.rint((AIR_HU - rescale_intercept) / rescale_slope)
        all_stored.append(stored)
    dtype = _stored_dtype(np.stack(all_stored), folder)
    paths = []
    for k in range(n_slices):
        centre = centre0 + z_mm[k] * axis_z
        first_pixel = centre - jc * spacing[0] * row_dir - ic * spacing[1] * col_dir
        ds = _ct_dataset(
            all_stored[k].astype(dtype),
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            sop_uid=generate_uid(entropy_srcs=[series_uid, str(k)]),
            instance_number=int(instance_numbers[k]),
            position=first_pixel,
            orientation=np.r_[row_dir, col_dir],
            pixel_spacing=(spacing[1], spacing[0]),
            slice_thickness=float(np.median(np.diff(np.sort(z_mm))))
            if n_slices > 1
            else spacing[2],
            slice_location=float(centre @ normal),
            tilt_deg=tilt_deg,
            rescale=(rescale_slope, rescale_intercept),
            padding_value=padding_value,
            series_description=series_description,
        )
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path = folder / file_names[k]
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _stored_dtype(stored: np.ndarray, folder: Path) -> type:
    """int16 when any stored value (padding included) is negative, else uint16."""
    lo, hi = stored.min(), stored.max()
    dtype = np.int16 if lo < 0 else np.uint16
    info = np.iinfo(dtype)
    if lo < info.min or hi > info.max:
        raise ValueError(
            f"{folder}: stored values {lo:g}..{hi:g} do not fit {np.dtype(dtype).name};"
            " change rescale_slope / rescale_intercept"
        )
    return dtype


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _ct_dataset(
    pixels: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    sop_uid: str,
    instance_number: int,
    position: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    slice_thickness: float,
    slice_location: float,
    tilt_deg: float,
    rescale: tuple[float, float],
    padding_value: int | None,
    series_description: str,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.Manufacturer = "lesionjax synthetic"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.SliceThickness = _ds(slice_thickness)
    ds.SliceLocation = _ds(slice_location)
    ds.GantryDetectorTilt = _ds(tilt_deg)
    ds.RescaleSlope = _ds(rescale[0])
    ds.RescaleIntercept = _ds(rescale[1])
    ds.RescaleType = "HU"
    ds.set_pixel_data(pixels, "MONOCHROME2", 16, generate_instance_uid=False)
    if padding_value is not None:
        ds.add_new(0x00280120, "SS" if pixels.dtype == np.int16 else "US", int(padding_value))
    return ds

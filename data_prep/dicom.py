"""DICOM series -> volumes: one axial series into a RAS+ ``Volume`` (HU for CT). Synthetic series
for testing it are written by ``data_prep.synthetic.dicom_writer``.

One piece (~700 lines) on purpose: every convention below is a step of the same read (sort ->
rescale -> padding -> de-tilt -> regular spacing -> RAS), each needing the geometry the step
before derived from the headers; split apart, the steps would pass that geometry between modules
and no part would be usable alone.

Reading conventions (and why):

- Slices are sorted by their position along the slice normal (ImagePositionPatient . (row x col)),
  never by InstanceNumber or file name: both are unreliable in exported and anonymized data.
- Stored values -> RescaleSlope * stored + RescaleIntercept, per slice (slices may differ).
- Padding -> air. Pixels equal to PixelPaddingValue (or in its PixelPaddingRangeLimit range) and,
  for CT, any value below ``CT_PADDING_BELOW_HU`` (-1100 HU: air is -1000 HU and reconstruction
  noise does not take it that low; scanners fill outside the field of view with -1500, -2000 or
  -3024) become ``AIR_HU`` = -1000 for CT (0 for MR). Voxels of the output grid outside the
  acquired slab get the same fill value. This is done before any interpolation, so padding never
  bleeds into tissue.
- Gantry tilt: when the slices are stacked along a direction that is not the slice normal (the
  table moves along the patient axis while the slice planes are tilted), the stack is resampled
  onto an orthogonal grid whose third axis is the stack (table) direction: each output voxel is
  located in the slice planes and interpolated linearly in-plane and between the two neighbouring
  slices along the table direction (the shear that dcm2niix removes). For a tilt about the
  scanner x axis the result is axis aligned.
- Uneven slice spacing: linear interpolation along the stack onto a regular grid with spacing =
  the median gap (along the stack direction) or ``target_spacing_z``; ``source_slice[k]`` is the
  index of the input slice nearest to output slice k (measured at the centre of the field of view
  when the stack was tilted), so per-slice labels given for the files can be carried over.
- DICOM patient space is LPS; the affine is converted to RAS (x and y negated) and the voxels are
  reordered to RAS+ with nibabel's orientation utilities.

One file for one reader: listing series, per-slice geometry and pixel conversion, and the
assembly (sorting, de-tilting, regular spacing) each depend on the conventions above and are
tested together against synthetic series of known geometry (``synthetic.dicom_writer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from scipy.ndimage import map_coordinates

from data_prep.volumes import CaseError, Volume
from lesionjax.core.formats import DICOM_SUFFIXES

AIR_HU = -1000.0
CT_PADDING_BELOW_HU = -1100.0
MR_FILL = 0.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Two slices closer than this along the normal are duplicates (mm).
DUPLICATE_TOL_MM = 1e-3
# Tolerances on header geometry: direction cosines, and positions relative to the pixel size.
ORIENTATION_TOL = 1e-4
POSITION_TOL_PIXELS = 0.1
# A stack counts as tilted when its in-plane drift over the whole stack exceeds this many pixels.
TILT_TOL_PIXELS = 0.01


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """What the reader found in a series' headers (for reports and ``inspect``).

    files: the files in the order ``Volume.source_slice`` indexes (as given, or sorted by path).
    tilt_deg: geometric tilt, the angle between the stack direction and the slice normal.
    gantry_tilt_tag: GantryDetectorTilt (0018,1120) as stored, None when absent.
    slice_gaps_mm: gaps between consecutive sorted slices along the slice normal;
    stack_gaps_mm: the same gaps along the stack direction (= slice gaps / cos(tilt)).
    resampled: True when the output grid needed interpolation (tilt, uneven gaps, target spacing).
    rescale: the distinct (RescaleSlope, RescaleIntercept) pairs of the slices.
    padding_voxels: input pixels mapped to the fill value (padding and, for CT, < -1100 HU).
    """

    series_uid: str
    files: tuple[Path, ...]
    series_description: str
    modality: str
    manufacturer: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    tilt_deg: float
    gantry_tilt_tag: float | None
    slice_gaps_mm: tuple[float, ...]
    stack_gaps_mm: tuple[float, ...]
    resampled: bool
    rescale: tuple[tuple[float, float], ...]
    padding_value: int | None
    padding_voxels: int
    stored_dtype: str


@dataclasses.dataclass
class _Slice:
    path: Path
    index: int  # into the file list that source_slice refers to
    header: Dataset
    position: np.ndarray  # (3,) LPS mm
    row_dir: np.ndarray  # (3,) direction of increasing column index
    col_dir: np.ndarray  # (3,) direction of increasing row index
    spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    columns: int


# ----------------------------------------------------------------------------- listing


def _read_header(path: Path, *, strict: bool) -> Dataset | None:
    """The header of one file, or None for a file that is not DICOM (when not ``strict`` and the
    name has no DICOM suffix). Raises CaseError for unreadable DICOM files."""
    suffix_says_dicom = path.suffix.lower() in DICOM_SUFFIXES
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass  # no preamble / 'DICM' prefix: may still be a raw (ACR-NEMA style) dataset
    except Exception as e:
        if strict or suffix_says_dicom:
            raise CaseError(f"{path}: unreadable DICOM header ({type(e).__name__}: {e})") from e
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SeriesInstanceUID" in ds and "Rows" in ds:
            return ds
    except Exception:
        pass
    if strict or suffix_says_dicom:
        raise CaseError(f"{path}: not a DICOM file (no DICOM header could be parsed)")
    return None


def _scan(files: Sequence[Path], *, strict: bool) -> dict[str, list[tuple[Path, Dataset]]]:
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in files:
        ds = _read_header(path, strict=strict)
        if ds is None or not _is_image(path, ds, strict=strict):
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise CaseError(f"{path}: no SeriesInstanceUID (0020,000E)")
        series.setdefault(uid, []).append((path, ds))
    return series


def _is_image(path: Path, ds: Dataset, *, strict: bool) -> bool:
    """True for an image object; False for other DICOM objects (DICOMDIR, structured reports,
    presentation states), which a series folder may hold. An image object without Rows has a
    damaged (e.g. truncated) header: an error rather than a silently missing slice."""
    if "Rows" in ds:
        return True
    meta = getattr(ds, "file_meta", None)
    sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    if sop and "Image" not in pydicom.uid.UID(str(sop)).name:
        return False
    if sop or strict or path.suffix.lower() in DICOM_SUFFIXES:
        raise CaseError(f"{path}: incomplete DICOM header, no Rows (0028,0010) (truncated file?)")
    return False


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    if not folder.is_dir():
        raise CaseError(f"{folder}: not a folder")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = [
        p
        for p in found
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: str(p))


def list_series(folder: Path, *, recursive: bool = True) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its DICOM files (headers only, stop_before_pixels; files that are not
    DICOM are ignored, e.g. LICENSE, .csv). Raises CaseError when there are none.

    Files are sorted by path. A file named like DICOM (.dcm, .dicom, .ima) that cannot be parsed
    is an error, not silently skipped: it is most likely a damaged slice of a series. Hidden
    files (names starting with '.', e.g. temp files of atomic writes) are skipped.
    """
    folder = Path(folder)
    scanned = _scan(_folder_files(folder, recursive), strict=False)
    if not scanned:
        raise CaseError(f"{folder}: no DICOM image files found")
    return {uid: [p for p, _ in items] for uid, items in scanned.items()}


def _describe_series(scanned: dict[str, list[tuple[Path, Dataset]]]) -> str:
    parts = []
    for uid, items in scanned.items():
        desc = str(items[0][1].get("SeriesDescription", "") or "")
        parts.append(f"{uid} ({len(items)} files, e.g. {items[0][0].name}, {desc!r})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- headers


def _floats(path: Path, ds: Dataset, keyword: str, tag: str, n: int) -> np.ndarray:
    value = ds.get(keyword)
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except Exception:
        values = np.array([])
    if values.shape != (n,) or not np.isfinite(values).all():
        raise CaseError(f"{path}: missing or unreadable {keyword} {tag} (value {value!r})")
    return values


def _slice_geometry(path: Path, index: int, ds: Dataset) -> _Slice:
    frames = ds.get("NumberOfFrames")
    if frames is not None and int(frames or 1) > 1:
        raise CaseError(f"{path}: multi-frame DICOM ({frames} frames) is not supported")
    position = _floats(path, ds, "ImagePositionPatient", "(0020,0032)", 3)
    iop = _floats(path, ds, "ImageOrientationPatient", "(0020,0037)", 6)
    row_dir, col_dir = iop[:3], iop[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if abs(norms[0] - 1) > 1e-2 or abs(norms[1] - 1) > 1e-2 or abs(row_dir @ col_dir) > 1e-2:
        raise CaseError(
            f"{path}: ImageOrientationPatient (0020,0037) {iop.tolist()} is not two orthogonal"
            " unit vectors"
        )
    spacing = _floats(path, ds, "PixelSpacing", "(0028,0030)", 2)
    if (spacing <= 0).any():
        raise CaseError(f"{path}: PixelSpacing (0028,0030) {spacing.tolist()} must be positive")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as e:
        raise CaseError(f"{path}: missing or unreadable Rows/Columns (0028,0010/0011)") from e
    return _Slice(
        path,
        index,
        ds,
        position,
        row_dir / norms[0],
        col_dir / norms[1],
        (float(spacing[0]), float(spacing[1])),
        rows,
        columns,
    )


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if (
            np.abs(s.row_dir - first.row_dir).max() > ORIENTATION_TOL
            or np.abs(s.col_dir - first.col_dir).max() > ORIENTATION_TOL
        ):
            raise CaseError(
                f"{s.path}: ImageOrientationPatient (0020,0037) differs from {first.path.name}"
                f" ({np.r_[s.row_dir, s.col_dir].round(5).tolist()} vs"
                f" {np.r_[first.row_dir, first.col_dir].round(5).tolist()})"
            )
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise CaseError(
                f"{s.path}: Rows/Columns (0028,0010/0011) {s.rows}x{s.columns} differ from"
                f" {first.path.name} ({first.rows}x{first.columns})"
            )
        if not np.allclose(s.spacing, first.spacing, rtol=1e-4, atol=1e-5):
            raise CaseError(
                f"{s.path}: PixelSpacing (0028,0030) {s.spacing} differs from {first.path.name}"
                f" ({first.spacing})"
            )


def _padding_value(ds: Dataset, signed: bool, tag: str) -> int | None:
    value = ds.get(tag)
    if value is None or value == "":
        return None
    value = int(value)
    if signed and value > 32767:  # read as US although the pixels are signed
        value -= 65536
    return value


def _slice_pixels(s: _Slice, modality: str) -> tuple[np.ndarray, tuple[float, float], int, str]:
    """Rescaled pixels of one slice (rows, columns) with padding mapped to the fill value."""
    try:
        ds = pydicom.dcmread(s.path, force=True)
    except Exception as e:
        raise CaseError(f"{s.path}: unreadable DICOM file ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise CaseError(f"{s.path}: no pixel data (7FE0,0010)")
    try:
        stored = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise CaseError(
            f"{s.path}: cannot decode pixel data (7FE0,0010), transfer syntax {syntax}"
            f" ({type(e).__name__}: {e})"
        ) from e
    if stored.shape != (s.rows, s.columns):
        raise CaseError(
            f"{s.path}: pixel data (7FE0,0010) has shape {stored.shape}, expected"
            f" {s.rows}x{s.columns} (one grey-level frame)"
        )
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except Exception as e:
        raise CaseError(
            f"{s.path}: unreadable RescaleSlope/RescaleIntercept (0028,1053/1052)"
        ) from e
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    pad = _padding_value(ds, signed, "PixelPaddingValue")
    pad_limit = _padding_value(ds, signed, "PixelPaddingRangeLimit")
    values = stored.astype(np.float64) * slope + intercept
    padded = np.zeros(stored.shape, bool)
    if pad is not None:
        if pad_limit is not None:
            lo, hi = min(pad, pad_limit), max(pad, pad_limit)
            padded = (stored >= lo) & (stored <= hi)
        else:
            padded = stored == pad
    if modality == "CT":
        padded |= values < CT_PADDING_BELOW_HU
    values[padded] = _fill_value(modality)
    return values.astype(np.float32), (slope, intercept), int(padded.sum()), str(stored.dtype)


def _fill_value(modality: str) -> float:
    return AIR_HU if modality == "CT" else MR_FILL


def _modality(path: Path, ds: Dataset) -> str:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in ("CT", "MR"):
        raise CaseError(f"{path}: Modality (0008,0060) {modality!r} is not CT or MR")
    return modality


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- reading


def read_dicom_series(
    source: Path | Sequence[Path],
    *,
    series_uid: str | None = None,
    target_spacing_z: float | None = None,
) -> Volume:
    """A folder (one series; several -> needs series_uid, else CaseError listing them) or an
    explicit list of files -> Volume in RAS+ (float32 HU for CT), regular z grid.

    A single file stands for its series in its own folder (not recursive). ``source_slice``
    indexes the given list, or the series' files sorted by path for a folder or a file.
    """
    return read_dicom_series_with_info(
        source, series_uid=series_uid, target_spacing_z=target_spacing_z
    )[0]


def read_dicom_series_with_info(
    source: Path | Sequence[Path],
    *,
    series_uid: str | None = None,
    target_spacing_z: float | None = None,
) -> tuple[Volume, SeriesInfo]:
    """``read_dicom_series`` plus what was found in the headers (tilt, gaps, rescale...)."""
    if target_spacing_z is not None and not target_spacing_z > 0:
        raise ValueError(f"target_spacing_z must be > 0, got {target_spacing_z}")
    items, label = _select_series(source, series_uid)
    return _assemble(items, label, target_spacing_z)


def _select_series(
    source: Path | Sequence[Path], series_uid: str | None
) -> tuple[list[tuple[Path, Dataset]], Path]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            ds = _read_header(path, strict=True)
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            if not uid:
                raise CaseError(f"{path}: no SeriesInstanceUID (0020,000E)")
            if series_uid is not None and uid != series_uid:
                raise CaseError(f"{path}: belongs to series {uid}, not {series_uid}")
            scanned = _scan(_folder_files(path.parent, recursive=False), strict=False)
            if uid not in scanned:
                raise CaseError(f"{path}: not an image (SOP class {ds.get('SOPClassUID')})")
            return scanned[uid], path.parent
        if not path.exists():
            raise CaseError(f"{path}: no such file or folder")
        scanned = _scan(_folder_files(path, recursive=True), strict=False)
        if not scanned:
            raise CaseError(f"{path}: no DICOM image files found")
        if series_uid is not None:
            if series_uid not in scanned:
                raise CaseError(
                    f"{path}: no series {series_uid}; found {_describe_series(scanned)}"
                )
            return scanned[series_uid], path
        if len(scanned) > 1:
            raise CaseError(
                f"{path}: {len(scanned)} series, pass series_uid to choose one:"
                f" {_describe_series(scanned)}"
            )
        return next(iter(scanned.values())), path
    files = [Path(f) for f in source]
    if not files:
        raise CaseError("empty list of DICOM files")
    items = []
    expected = series_uid
    for f in files:
        if not f.is_file():
            raise CaseError(f"{f}: no such file")
        ds = _read_header(f, strict=True)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise CaseError(f"{f}: no SeriesInstanceUID (0020,000E)")
        if expected is None:
            expected = uid
        if uid != expected:
            raise CaseError(
                f"{f}: SeriesInstanceUID {uid} differs from {expected} of"
                f" {files[0].name if series_uid is None else 'the requested series'}"
                " (mixed series in one file list)"
            )
        items.append((f, ds))
    return items, files[0].parent


def _assemble(
    items: list[tuple[Path, Dataset]], label: Path, target_spacing_z: float | None
) -> tuple[Volume, SeriesInfo]:
    first_path, first_ds = items[0]
    modality = _modality(first_path, first_ds)
    slices = [_slice_geometry(p, i, ds) for i, (p, ds) in enumerate(items)]
    _check_consistent(slices)
    normal = np.cross(slices[0].row_dir, slices[0].col_dir)
    normal /= np.linalg.norm(normal)
    along_normal = np.array([s.position @ normal for s in slices])
    order = np.argsort(along_normal, kind="stable")
    slices = [slices[i] for i in order]
    along_normal = along_normal[order]
    gaps_normal = np.diff(along_normal)
    for k in np.flatnonzero(gaps_normal < DUPLICATE_TOL_MM):
        raise CaseError(
            f"{slices[k + 1].path}: duplicate slice position (ImagePositionPatient (0020,0032)"
            f" {slices[k + 1].position.tolist()} at the same place along the normal as"
            f" {slices[k].path.name})"
        )
    positions = np.stack([s.position for s in slices])
    pixel = min(slices[0].spacing)
    n = len(slices)
    if n >= 2:
        stack_dir = positions[-1] - positions[0]
        stack_dir /= np.linalg.norm(stack_dir)
        rel = positions - positions[0]
        off_line = rel - np.outer(rel @ stack_dir, stack_dir)
        dev = np.linalg.norm(off_line, axis=1)
        if dev.max() > POSITION_TOL_PIXELS * pixel:
            worst = int(dev.argmax())
            raise CaseError(
                f"{slices[worst].path}: ImagePositionPatient (0020,0032) is {dev.max():.3g} mm"
                " off the line through the first and last slice (irregular slice positions)"
            )
        cos_tilt = float(np.clip(stack_dir @ normal, -1.0, 1.0))
        tilt_deg = float(np.degrees(np.arccos(cos_tilt)))
        drift = np.linalg.norm(rel[-1]) * np.sqrt(max(0.0, 1.0 - cos_tilt**2))
        tilted = drift > TILT_TOL_PIXELS * pixel
    else:
        stack_dir, cos_tilt, tilt_deg, tilted = normal, 1.0, 0.0, False
    if not tilted:
        stack_dir = normal
    s_pos = (positions - positions[0]) @ stack_dir  # positions along the stack
    stack_gaps = np.diff(s_pos)
    if target_spacing_z is not None:
        dz = float(target_spacing_z)
    elif n >= 2:
        dz = float(np.median(stack_gaps))
    else:
        dz = _single_slice_spacing(first_ds)

    fill = _fill_value(modality)
    stack = np.empty((n, slices[0].rows, slices[0].columns), np.float32)
    rescales, n_padding, stored_dtype = [], 0, ""
    for k, s in enumerate(slices):
        stack[k], rescale, n_pad, stored_dtype = _slice_pixels(s, modality)
        n_padding += n_pad
        if rescale not in rescales:
            rescales.append(rescale)

    if tilted:
        data, affine_lps, centre_s = _resample_tilted(stack, slices, s_pos, stack_dir, dz, fill)
    else:
        data, affine_lps, centre_s = _resample_along_normal(stack, slices, s_pos, normal, dz)
    regular = n < 2 or np.abs(stack_gaps - dz).max() <= 1e-3 * dz
    resampled = bool(tilted or not regular)

    source_index = np.array([s.index for s in slices])
    nearest = np.abs(centre_s[:, None] - s_pos[None, :]).argmin(axis=1)
    slice_source = source_index[nearest]

    affine_ras = LPS_TO_RAS @ affine_lps
    stored_affine_lps = np.eye(4)
    stored_affine_lps[:3, 0] = slices[0].row_dir * slices[0].spacing[1]
    stored_affine_lps[:3, 1] = slices[0].col_dir * slices[0].spacing[0]
    stored_affine_lps[:3, 2] = normal * (float(np.median(gaps_normal)) if n >= 2 else dz)
    source_axcodes = tuple(nib.aff2axcodes(LPS_TO_RAS @ stored_affine_lps))

    ornt = nib.io_orientation(affine_ras)
    affine = affine_ras @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    data = nib.apply_orientation(data, ornt)
    if int(ornt[2, 0]) == 2:
        source_slice = slice_source[::-1].copy() if ornt[2, 1] < 0 else slice_source
    else:
        source_slice = None
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))

    volume = Volume(
        np.ascontiguousarray(data, dtype=np.float32),
        affine,
        spacing,
        source_axcodes,
        label,
        source_slice=source_slice,
        modality=modality,
    )
    signed = int(first_ds.get("PixelRepresentation", 0) or 0) == 1
    info = SeriesInfo(
        series_uid=str(first_ds.SeriesInstanceUID),
        files=tuple(p for p, _ in items),
        series_description=str(first_ds.get("SeriesDescription", "") or ""),
        modality=modality,
        manufacturer=str(first_ds.get("Manufacturer", "") or ""),
        rows=slices[0].rows,
        columns=slices[0].columns,
        pixel_spacing=slices[0].spacing,
        tilt_deg=tilt_deg if tilted else 0.0,
        gantry_tilt_tag=_float_or_none(first_ds.get("GantryDetectorTilt")),
        slice_gaps_mm=tuple(float(g) for g in gaps_normal),
        stack_gaps_mm=tuple(float(g) for g in stack_gaps),
        resampled=resampled,
        rescale=tuple(rescales),
        padding_value=_padding_value(first_ds, signed, "PixelPaddingValue"),
        padding_voxels=n_padding,
        stored_dtype=stored_dtype,
    )
    return volume, info


def _single_slice_spacing(ds: Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _float_or_none(ds.get(keyword))
        if value is not None and value > 0:
            return value
    return 1.0


def _grid(step: float, lo: float, hi: float) -> np.ndarray:
    """Positions m * step (aligned on the first slice's first pixel) within [lo, hi]."""
    m_lo = int(np.ceil(lo / step - 1e-6))
    m_hi = int(np.floor(hi / step + 1e-6))
    return np.arange(m_lo, m_hi + 1) * step


def _fractional_index(s: np.ndarray, s_pos: np.ndarray) -> np.ndarray:
    """Position along the stack -> fractional slice index (linear between neighbours), with
    near-integers snapped so that output slices that coincide with input slices are copies."""
    kf = np.interp(s, s_pos, np.arange(len(s_pos), dtype=np.float64))
    snapped = np.rint(kf)
    near = np.abs(kf - snapped) < 1e-6
    kf[near] = snapped[near]
    return kf


def _resample_along_normal(
    stack: np.ndarray, slices: list[_Slice], s_pos: np.ndarray, normal: np.ndarray, dz: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """No tilt: output slices are the slice planes at regular positions along the normal;
    linear interpolation between the two neighbouring slices. Returns (data (C, R, M) in
    (column, row, slice) order, LPS affine, stack position of each output slice)."""
    z = _grid(dz, 0.0, float(s_pos[-1]))
    kf = _fractional_index(z, s_pos)
    k0 = np.clip(np.floor(kf).astype(int), 0, max(len(s_pos) - 2, 0))
    w = (kf - k0).astype(np.float32)
    out = np.empty((len(z), stack.shape[1], stack.shape[2]), np.float32)
    for m in range(len(z)):
        if w[m] == 0.0:
            out[m] = stack[k0[m]]
        elif w[m] == 1.0:
            out[m] = stack[k0[m] + 1]
        else:
            out[m] = (1.0 - w[m]) * stack[k0[m]] + w[m] * stack[k0[m] + 1]
    first = slices[0]
    affine = np.eye(4)
    affine[:3, 0] = first.row_dir * first.spacing[1]
    affine[:3, 1] = first.col_dir * first.spacing[0]
    affine[:3, 2] = normal * dz
    affine[:3, 3] = first.position + z[0] * normal
    return out.transpose(2, 1, 0), affine, z


def _resample_tilted(
    stack: np.ndarray,
    slices: list[_Slice],
    s_pos: np.ndarray,
    stack_dir: np.ndarray,
    dz: float,
    fill: float,
    *,
    separable: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gantry tilt: an orthogonal grid (e1, e2, e3) with e3 the stack (table) direction and e1
    the row direction made orthogonal to it, covering every acquired pixel; each output voxel is
    located in the tilted stack (row, column, position along the stack) and interpolated
    linearly. Spacing: the pixel spacing in-plane, dz along e3. Voxels outside the slab: fill.

    The usual tilt is about the row direction: then output column a is input column a and only
    (row, slice) need interpolating, done for all columns at once (``separable``, ~10x faster
    than the general 3D ``map_coordinates``; None = use it when the geometry allows)."""
    first = slices[0]
    rows, cols = first.rows, first.columns
    d_row, d_col = first.spacing  # between rows (along col_dir), between columns (along row_dir)
    e3 = stack_dir
    e1 = first.row_dir - (first.row_dir @ e3) * e3
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e3, e1)
    # (column j, row i, stack position s) -> offset from the first slice's first pixel
    to_offset = np.column_stack([first.row_dir * d_col, first.col_dir * d_row, e3])
    from_offset = np.linalg.inv(to_offset)
    corners = np.array(
        [[j, i, s] for j in (0, cols - 1) for i in (0, rows - 1) for s in (0.0, s_pos[-1])]
    )
    offsets = corners @ to_offset.T
    frame = np.stack([e1, e2, e3])  # rows: the output axes
    proj = offsets @ frame.T
    a = _grid(d_col, proj[:, 0].min(), proj[:, 0].max())
    b = _grid(d_row, proj[:, 1].min(), proj[:, 1].max())
    z = _grid(dz, proj[:, 2].min(), proj[:, 2].max())
    # stack coordinates (j, i, s) of the output voxel at offsets (a, b, z) mm: a*ja + b*jb + z*jz
    ja, jb, jz = from_offset @ e1, from_offset @ e2, from_offset @ e3
    in_plane = a[:, None, None] * ja + b[None, :, None] * jb  # (A, B, 3)
    centre = (a[len(a) // 2] * ja + b[len(b) // 2] * jb)[2] if len(a) and len(b) else 0.0
    tol = 1e-6
    column_aligned = (
        np.abs(ja - np.array([1.0 / d_col, 0.0, 0.0])).max() < 1e-9
        and abs(jb[0]) < 1e-9
        and abs(jz[0]) < 1e-9
        and len(a) == cols
        and abs(a[0]) < 1e-9
    )
    if separable is None:
        separable = column_aligned
    if separable and not column_aligned:
        raise ValueError("separable resampling needs a tilt about the row direction")
    out = np.empty((len(a), len(b), len(z)), np.float32)
    if separable:
        for m, zm in enumerate(z):
            i = b * jb[1] + zm * jz[1]
            s = b * jb[2] + zm * jz[2]
            valid = (i >= -tol) & (i <= rows - 1 + tol) & (s >= -tol * dz)
            valid &= s <= s_pos[-1] + tol * dz
            kf = _fractional_index(s, s_pos)
            i = np.clip(i, 0, rows - 1)
            k0 = np.clip(np.floor(kf).astype(int), 0, max(len(s_pos) - 2, 0))
            i0 = np.clip(np.floor(i).astype(int), 0, max(rows - 2, 0))
            k1, i1 = np.minimum(k0 + 1, len(s_pos) - 1), np.minimum(i0 + 1, rows - 1)
            wk = (kf - k0).astype(np.float32)[:, None]
            wi = (i - i0).astype(np.float32)[:, None]
            values = (1 - wk) * ((1 - wi) * stack[k0, i0] + wi * stack[k0, i1]) + wk * (
                (1 - wi) * stack[k1, i0] + wi * stack[k1, i1]
            )  # (B, columns)
            out[:, :, m] = np.where(valid[:, None], values, fill).T
    for m, zm in enumerate(z if not separable else ()):
        coords = in_plane + zm * jz
        j, i, s = coords[..., 0], coords[..., 1], coords[..., 2]
        valid = (
            (j >= -tol)
            & (j <= cols - 1 + tol)
            & (i >= -tol)
            & (i <= rows - 1 + tol)
            & (s >= -tol * dz)
            & (s <= s_pos[-1] + tol * dz)
        )
        kf = _fractional_index(s, s_pos)
        values = map_coordinates(stack, [kf, i, j], order=1, mode="nearest")
        out[:, :, m] = np.where(valid, values, fill)
    affine = np.eye(4)
    affine[:3, 0] = e1 * d_col
    affine[:3, 1] = e2 * d_row
    affine[:3, 2] = e3 * dz
    affine[:3, 3] = first.position + a[0] * e1 + b[0] * e2 + z[0] * e3
    centre_s = centre + z * jz[2]
    return out, affine, centre_s

"""The predict command's inputs: which scans a path or a dataset holds.

A NIfTI file, a DICOM series folder, or a folder holding several of them (searched
recursively: every ``.nii`` / ``.nii.gz`` file and every DICOM series is a scan), or a dataset
in any layout ``data_prep.layouts`` reads. Each becomes a ``Scan``: its case name (unique within
one call), what the user gave, and the case files ``data_prep.preprocess`` reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from lesionjax.core.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class PredictError(UserError):
    """The models or the input cannot be used; the message names the file and why."""


@dataclasses.dataclass(frozen=True)
class Scan:
    """One input scan: its case name, what the user gave, and the files preprocessing reads."""

    case_id: str
    source: Path
    files: object  # data_prep.layouts.base.CaseFiles


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _strip_nifti(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _case_files(case_id: str, image: Path, modality: str, image_files=None):
    from data_prep.layouts.base import CaseFiles

    return CaseFiles(
        case_id=case_id,
        image=image,
        mask=None,
        image_files=image_files,
        modality=modality,
        labelled=False,
    )


def _series_modality(files: Sequence[Path], default: str) -> str:
    """The series' own Modality (0008,0060) when it is CT or MR, else ``default``: a series of
    the other modality is then refused by the plan check, not windowed as the wrong one."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    except Exception:  # an unreadable header is reported when the series is read
        return default
    modality = str(ds.get("Modality", "") or "").upper()
    return modality if modality in ("CT", "MR") else default


def _series_scans(name: str, folder: Path, series: dict, modality: str) -> list[Scan]:
    ordered = sorted(series.items(), key=lambda kv: str(kv[1][0]))
    scans = []
    for k, (_, files) in enumerate(ordered):
        case = name if len(ordered) == 1 else f"{name}_{k}"
        files = tuple(files)
        found = _series_modality(files, modality)
        scans.append(Scan(case, folder, _case_files(case, folder, found, files)))
    return scans


def unique_case_ids(scans: Sequence[Scan]) -> list[Scan]:
    """Scans whose case ids are made distinct (``_1``, ``_2``, ... added where needed), so no
    output overwrites another: ``a.nii`` and ``a.nii.gz`` side by side are both kept."""
    used: set[str] = set()
    out = []
    for scan in scans:
        case, n = scan.case_id, 0
        while case in used:
            n += 1
            case = f"{scan.case_id}_{n}"
        used.add(case)
        if case != scan.case_id:
            scan = Scan(case, scan.source, dataclasses.replace(scan.files, case_id=case))
        out.append(scan)
    return out


OUTPUT_SUFFIXES = ("_mask.nii.gz", "_prob.nii.gz")


def find_scans(
    path: Path, modality: str, *, exclude: Path | None = None
) -> tuple[list[Scan], list[str]]:
    """The scans under ``path`` (a NIfTI file, a DICOM series folder, or a folder of them) and
    the problems found (one line each). Hidden files are skipped, and so is ``exclude`` (the
    output folder) when it lies inside ``path``; when it holds ``path``, this command's own
    outputs (``*_mask.nii.gz``, ``*_prob.nii.gz``) are skipped instead. A folder holding
    several DICOM series gives one scan per series."""
    from data_prep.dicom import list_series
    from data_prep.volumes import CaseError

    path = Path(path)
    if not path.exists():
        raise PredictError(f"{path}: no such file or folder")
    root = path.resolve()
    if path.is_file():
        if not is_nifti(path):
            # One DICOM file stands for its series (read_dicom_series: its own folder).
            try:
                series = list_series(path.parent, recursive=False)
            except (CaseError, OSError) as err:
                raise PredictError(f"{path}: not a NIfTI file or a DICOM series ({err})") from None
            for uid, files in series.items():
                if path in files:
                    return _series_scans(root.parent.name, path, {uid: files}, modality), []
            raise PredictError(f"{path}: not a NIfTI file or a DICOM image")
        case = _strip_nifti(path.name)
        return [Scan(case, path, _case_files(case, path, modality))], []

    exclude = exclude.resolve() if exclude is not None else None
    skip_folder = exclude is not None and exclude != root and exclude not in root.parents
    skip_outputs_in = None if skip_folder else exclude
    scans: list[Scan] = []
    problems: list[str] = []
    try:
        folders = [path] + sorted(p for p in path.rglob("*") if p.is_dir())
    except OSError as err:
        raise PredictError(f"{path}: cannot list the folder ({err})") from None
    for folder in folders:
        rel = folder.relative_to(path)
        resolved = folder.resolve()
        if any(part.startswith(".") for part in rel.parts):
            continue
        if skip_folder and (resolved == exclude or exclude in resolved.parents):
            continue
        try:
            entries = sorted(folder.iterdir())
        except OSError as err:
            problems.append(f"{folder}: cannot list the folder ({err})")
            continue
        for f in entries:
            if not is_nifti(f) or f.name.startswith("."):
                continue
            if resolved == skip_outputs_in and f.name.endswith(OUTPUT_SUFFIXES):
                continue
            case = "_".join([*rel.parts, _strip_nifti(f.name)])
            scans.append(Scan(case, f, _case_files(case, f, modality)))
        if not any(p.is_file() and not p.name.startswith(".") and not is_nifti(p) for p in entries):
            continue
        try:
            series = list_series(folder, recursive=False)
        except (CaseError, OSError) as err:
            if "no DICOM image files found" not in str(err):
                problems.append(str(err))
            continue
        scans += _series_scans("_".join(rel.parts) or root.name, folder, series, modality)
    return unique_case_ids(scans), problems


def dataset_scans(name: str, path: Path) -> tuple[list[Scan], list[str]]:
    """The cases of a dataset in a supported layout (``data_prep.layouts``), unlabelled."""
    from data_prep.layouts import read_layout

    try:
        cases, problems = read_layout(name, Path(path))
    except (ValueError, OSError) as err:
        raise PredictError(f"{path}: {err}") from None
    scans = [
        Scan(c.case_id, Path(c.image), dataclasses.replace(c, labelled=False, mask=None))
        for c in cases
    ]
    return unique_case_ids(scans), [
        f"{p.get('file', p.get('case_id'))}: {p['error']}" for p in problems
    ]

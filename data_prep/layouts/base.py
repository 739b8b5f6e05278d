"""What every dataset reader shares: the ``CaseFiles`` it returns, the ``Layout`` it is registered
as, and the folder, CSV and DICOM-listing helpers the readers use.

A reader is ``read(src: Path) -> CaseList``: it turns a folder as downloaded into the files of
each case, and reads no pixel data (the build does, through ``data_prep.preprocess``). The
conventions every reader follows are in the docstring of ``data_prep.layouts``.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from data_prep.volumes import CaseError
from lesionjax.core.formats import DICOM_SUFFIXES, NIFTI_SUFFIXES, find_nifti

__all__ = ["CaseFiles", "CaseList", "Layout", "find_nifti"]


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """The files of one case. Optional maps are None when the dataset has none.

    image: a NIfTI file, or a folder holding one DICOM series.
    image_files: the DICOM files of the series when they are listed explicitly (a folder with
        several series, or files named in a CSV); their order defines the source slice index.
    mask: binary lesion mask (NIfTI); None with ``labelled=True`` is an error ("no mask").
    slice_labels: per-slice labels in SLICE_LABELS order, indexed by source slice (the stored z
        index of a NIfTI image, or the index into ``image_files``), e.g. from a CSV.
    modality: "CT" (HU, windowed) or "MR" (normalized by percentiles, then the "unit" window).
    labelled: False for datasets without masks (RSNA, plain CQ500): the mask is all zeros and
        the volume is marked ``has_mask: false`` in the manifest.
    brain_mask: optional NIfTI brain mask used by MRI normalization.
    channels: further co-registered input images (other MRI sequences, nnU-Net channels 0001..),
        on the image's voxel grid; each is normalized and windowed like the image and adds its
        own channels after the image's.
    mask_nonzero: the mask is a label map whose foreground is every label > 0 (nnU-Net / MSD
        multi-class labels); otherwise only {0, 1} and {0, 255} are accepted.
    mask_labels: with ``mask_nonzero``, the label values the dataset declares (nnU-Net's
        dataset.json ``labels``); a mask holding any other value is rejected, naming the value.
        None: any non-negative integer label.
    """

    case_id: str
    image: Path
    mask: Path | None
    subtypes: Path | None = None
    icm: Path | None = None
    image_files: tuple[Path, ...] | None = None
    slice_labels: tuple[tuple[int, ...], ...] | None = None
    modality: str = "CT"
    labelled: bool = True
    brain_mask: Path | None = None
    mask_nonzero: bool = False
    channels: tuple[Path, ...] = ()
    mask_labels: tuple[int, ...] | None = None


class CaseList(list):
    """A reader's cases (a plain list of ``CaseFiles``) plus the problems it found.

    problems: ``{"case_id", "file", "error"}`` dicts, the format of the build's skipped.json, for
    what the reader could not turn into a case (a CSV row naming a missing file, ...).
    """

    def __init__(self, cases: Iterable[CaseFiles] = (), problems: Iterable[dict] = ()):
        super().__init__(cases)
        self.problems: list[dict] = list(problems)


def problem(case_id: str, file: Path | str, error: str) -> dict:
    return {"case_id": str(case_id), "file": str(file), "error": error}


def nifti_files(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder`` (sorted; hidden files such as temp files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".") and p.is_file()
    )


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def locate(
    src: Path, is_root: Callable[[Path], bool], layout: str, missing: str, *, depth: int = 1
) -> Path:
    """The folder at or below ``src`` (at most ``depth`` levels) that holds the layout.

    Downloads often add a top folder (a versioned name, the archive's name), so ``src`` may be
    that folder's parent. The shallowest match wins; two at the same level are ambiguous.
    missing: what is absent, for the error ("no 'ct_scans/' folder").
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (expected the {layout} layout)")
    level = [src]
    for d in range(depth + 1):
        found = [p for p in level if is_root(p)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p) for p in found)
            raise ValueError(
                f"{src}: holds several {layout} datasets ({names}); point it at one of them"
            )
        if d < depth:
            level = [c for p in level for c in subdirs(p)]
    raise FileNotFoundError(f"{src}: {missing} (expected the {layout} layout)")


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts with stripped header names (BOM tolerated)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            # Extra cells beyond the header land under the key None: ignored.
            rows = [
                {k.strip(): (v or "").strip() for k, v in r.items() if k is not None}
                for r in reader
            ]
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CaseError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from e
    if not header:
        raise CaseError(f"{path}: empty CSV (no header row)")
    return rows


def flag_value(value: str, path: Path, line: int, column: str) -> int:
    """A 0/1 label cell ("", "0", "1", "1.0"; empty counts as 0)."""
    if value == "":
        return 0
    try:
        number = float(value)
    except ValueError:
        raise CaseError(f"{path}: line {line}: {column}={value!r} is not a number") from None
    if number not in (0.0, 1.0):
        raise CaseError(f"{path}: line {line}: {column}={value!r} is not 0 or 1")
    return int(number)


def nifti_depth(path: Path) -> int | None:
    """Number of stored slices (third axis) from the header only, or None if unreadable."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception:  # the build reads the file again and reports the exact problem
        return None
    return int(shape[2]) if len(shape) >= 3 else None


def list_series_tolerant(
    folder: Path, case_id: str, problems: list[dict], *, file_ids: bool = False
) -> dict[str, list[Path]]:
    """``data_prep.dicom.list_series(folder)``, tolerant of damaged files.

    ``list_series`` fails for the whole folder when one file named like DICOM cannot be parsed;
    then the folder is listed file by file and each unreadable file becomes a problem (with the
    file stem as case ID when ``file_ids``, e.g. RSNA image IDs, else ``case_id``). A folder
    without any DICOM image is a problem too. Files are in path order, as ``list_series`` gives.
    """
    from data_prep.dicom import list_series

    try:
        return list_series(folder)
    except CaseError as e:
        listing_error = str(e)
    import pydicom
    import pydicom.errors

    series: dict[str, list[Path]] = {}
    n_problems = len(problems)
    files = []
    if folder.is_dir():
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(q.startswith(".") for q in p.relative_to(folder).parts)
        )
    for path in files:
        named_dicom = path.suffix.lower() in DICOM_SUFFIXES
        why = None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:  # no preamble: maybe a raw dataset
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                if "SeriesInstanceUID" not in ds or "Rows" not in ds:
                    ds, why = None, "not a DICOM file (no DICOM header could be parsed)"
            except Exception as e:
                ds, why = None, f"unreadable DICOM header ({type(e).__name__}: {e})"
        except Exception as e:
            ds, why = None, f"unreadable DICOM header ({type(e).__name__}: {e})"
        if ds is None:
            if named_dicom:
                problems.append(problem(path.stem if file_ids else case_id, path, why))
            continue
        if "Rows" not in ds:
            continue  # a non-image object (DICOMDIR, structured report)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid:
            series.setdefault(uid, []).append(path)
        else:
            problems.append(problem(case_id, path, "no SeriesInstanceUID (0020,000E)"))
    if not series and len(problems) == n_problems:
        problems.append(problem(case_id, folder, listing_error))
    return series


@dataclasses.dataclass(frozen=True)
class Layout:
    """A dataset layout as registered under ``--dataset NAME``.

    name: the registry name. read: ``read(src) -> CaseList``. summary: one line for help texts.
    plan_defaults: preprocessing-plan fields this dataset sets unless the user does (e.g.
        INSTANCE 2022's three HU windows), applied over the modality's defaults
        (``data_prep.plan.MODALITY_DEFAULTS``).
    """

    name: str
    read: Callable[[Path], CaseList]
    summary: str
    plan_defaults: Mapping = dataclasses.field(default_factory=dict)

"""File-name conventions of the image formats read and written (NIfTI, DICOM)."""

from __future__ import annotations

from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def nifti_stem(path: str | Path) -> str:
    """The file name without its NIfTI suffix (``case_0000.nii.gz`` -> ``case_0000``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.nii.gz`` or ``folder/<stem>.nii``, whichever exists (None: neither)."""
    for suffix in NIFTI_SUFFIXES:
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None

"""Lesjak et al. multiple-sclerosis MRI (FLAIR, T1, T1 post-contrast, T2, consensus masks)."""

from __future__ import annotations

import functools
from pathlib import Path

from data_prep.layouts.base import CaseFiles, CaseList, Layout

LESJAK_SEQUENCES = ("FLAIR", "T1", "T1POST", "T2")


def read_lesjak_layout(src: Path, sequence: str = "FLAIR", extra: tuple[str, ...] = ()) -> CaseList:
    """Lesjak et al. (Neuroinformatics 2017, doi 10.1007/s12021-017-9348-7) multiple-sclerosis
    MRI database, multi-rater consensus masks::

        src/patientNN/FLAIR_<processing>.nii.gz            (also T1_, T1POST_, T2_)
        src/patientNN/GOLD_STANDARD_<processing>.nii.gz    consensus lesion mask

    All sequences of a patient are co-registered (MNI space, 1 mm), so the mask fits every one.
    One case per patient: ``sequence`` is the image, ``extra`` sequences are extra channels.
    """
    src = Path(src)
    for name in (sequence, *extra):
        if name not in LESJAK_SEQUENCES:
            raise ValueError(f"unknown sequence {name!r}; known: {LESJAK_SEQUENCES}")
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (expected the Lesjak MS layout: patientNN/)")
    patients = sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("patient"))
    if not patients:
        raise FileNotFoundError(f"{src}: no patientNN/ folders (expected the Lesjak MS layout)")
    cases = []
    for folder in patients:
        found = {}
        for name in (sequence, *extra):
            images = sorted(folder.glob(f"{name}_*.nii*"))
            if not images:
                raise FileNotFoundError(f"{folder}: no {name}_*.nii(.gz) image")
            found[name] = images[0]
        masks = sorted(folder.glob("GOLD_STANDARD*.nii*"))
        cases.append(
            CaseFiles(
                case_id=folder.name,
                image=found[sequence],
                mask=masks[0] if masks else None,
                modality="MR",
                channels=tuple(found[name] for name in extra),
            )
        )
    return CaseList(cases)


LAYOUTS = (
    Layout(
        "lesjak",
        read_lesjak_layout,
        "Lesjak MS MRI: patientNN/FLAIR_*.nii.gz + GOLD_STANDARD_*.nii.gz",
    ),
    Layout(
        "lesjak_multi",
        functools.partial(read_lesjak_layout, extra=("T1", "T2")),
        "Lesjak MS MRI with FLAIR, T1 and T2 as three input channels",
    ),
)

"""Reader for the Lesjak et al. (2017) multiple-sclerosis MRI database layout.

"A novel public MR image dataset of multiple sclerosis patients with lesion segmentations based on
multi-rater consensus" (Neuroinformatics 2017, doi 10.1007/s12021-017-9348-7)::

    src/patientNN/FLAIR_<processing>.nii.gz            (also T1_, T1POST_, T2_)
    src/patientNN/GOLD_STANDARD_<processing>.nii.gz    consensus lesion mask

All sequences of a patient are co-registered (MNI space, 1 mm), so the mask fits every one.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.layouts import CaseFiles

SEQUENCES = ("FLAIR", "T1", "T1POST", "T2")


def read_lesjak_layout(
    src: Path, sequence: str = "FLAIR", extra: tuple[str, ...] = ()
) -> list[CaseFiles]:
    """One case per patient: ``sequence`` is the image, ``extra`` sequences extra channels."""
    src = Path(src)
    for name in (sequence, *extra):
        if name not in SEQUENCES:
            raise ValueError(f"unknown sequence {name!r}; known: {SEQUENCES}")
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
    return cases

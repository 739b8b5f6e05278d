"""ATLAS R2.0 stroke T1 MRI in BIDS."""

from __future__ import annotations

import re
from pathlib import Path

from data_prep.layouts.base import (
    CaseFiles,
    CaseList,
    Layout,
    nifti_files,
)
from lesionjax.core.formats import nifti_stem

_BIDS_PREFIX = re.compile(r"^(sub-[A-Za-z0-9]+)(_ses-[A-Za-z0-9]+)?")


def _bids_prefix(name: str) -> str:
    m = _BIDS_PREFIX.match(name)
    return m.group(0) if m else name.split("_")[0]


def _atlas_mask(image: Path) -> Path | None:
    """The lesion mask next to a T1w image: ``<sub>_<ses>_*_mask.nii[.gz]`` in the same folder.

    Several candidates: prefer names with "lesion", then the one in the same space (the
    ``space-`` entity) as the image.
    """
    prefix = _bids_prefix(image.name)
    found = [
        p
        for p in nifti_files(image.parent)
        if p.name.startswith(prefix) and nifti_stem(p).endswith("_mask")
    ]
    if len(found) > 1 and any("lesion" in p.name for p in found):
        found = [p for p in found if "lesion" in p.name]
    space = re.search(r"_space-[A-Za-z0-9]+", image.name)
    if len(found) > 1 and space is not None and any(space.group(0) in p.name for p in found):
        found = [p for p in found if space.group(0) in p.name]
    return found[0] if found else None


def read_atlas2_layout(src: Path) -> CaseList:
    """ATLAS R2.0 (Liew et al., Sci. Data 2022), BIDS::

        ATLAS_2/Training/R001/sub-r001s001/ses-1/anat/
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
        ATLAS_2/Testing/...   T1w only (the test masks are withheld)

    Every ``sub-*/ses-*/anat/*_T1w.nii[.gz]`` below ``src`` is a case (source: public ATLAS
    loaders globbing ``Training/*/*/*/anat/*_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask
    .nii.gz``); its mask is the ``*_mask.nii.gz`` of the same subject and session in the same
    folder. When ``src`` holds both ``Training`` and ``Testing`` images only the Training ones
    are read; images under a ``Testing`` folder (``src`` pointing at it) are unlabelled.
    Modality "MR" (T1-weighted). Case ID = ``sub-<label>_ses-<label>`` (``sub-r001s001_ses-1``).
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (expected the ATLAS R2.0 BIDS layout)")
    images = sorted(
        p
        for pattern in ("*_T1w.nii.gz", "*_T1w.nii")
        for p in src.rglob(pattern)
        if p.parent.name == "anat"
        and p.parent.parent.name.startswith("ses-")
        and p.parent.parent.parent.name.startswith("sub-")
        and not p.name.startswith(".")
    )
    if not images:
        raise FileNotFoundError(
            f"{src}: no sub-*/ses-*/anat/*_T1w.nii.gz images (expected the ATLAS R2.0 BIDS "
            "layout: Training/R0xx/sub-*/ses-*/anat/*_T1w.nii.gz with *_mask.nii.gz)"
        )

    def is_test(p: Path) -> bool:
        return "Testing" in p.relative_to(src).parts

    if any(is_test(p) for p in images) and not all(is_test(p) for p in images):
        images = [p for p in images if not is_test(p)]
    cases = []
    for image in images:
        labelled = not is_test(image) and "Testing" not in src.parts
        cases.append(
            CaseFiles(
                case_id=_bids_prefix(image.name),
                image=image,
                mask=_atlas_mask(image) if labelled else None,
                modality="MR",
                labelled=labelled,
            )
        )
    return CaseList(cases)


LAYOUTS = (
    Layout(
        "atlas2",
        read_atlas2_layout,
        "ATLAS R2.0 BIDS: sub-*/ses-*/anat/*_T1w.nii.gz + *_mask.nii.gz (MRI)",
    ),
)

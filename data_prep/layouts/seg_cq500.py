"""Seg-CQ500 (Spahr et al.): NIfTI CT and hemorrhage masks per case folder."""

from __future__ import annotations

from pathlib import Path

from data_prep.layouts.base import (
    CaseFiles,
    CaseList,
    Layout,
    find_nifti,
    locate,
    subdirs,
)


def _has_case_dirs(folder: Path, image_stem: str) -> bool:
    return any(find_nifti(c, image_stem) for c in subdirs(folder))


def read_seg_cq500_layout(src: Path) -> CaseList:
    """Seg-CQ500 (Spahr et al., Front. Neuroimaging 2023; Zenodo record 8063221)::

        Seg-CQ500/data/volumes/<CQ500-CT-N>/CT.nii          CT in HU (NIfTI, not DICOM)
        Seg-CQ500/data/volumes/<CQ500-CT-N>/ICH_mask.nii.gz hemorrhage mask
        Seg-CQ500/data/volumes/<CQ500-CT-N>/brain.nii.gz    (not used)
        Seg-CQ500/data/volumes/info.csv                     case-level reads (not used)

    ``src`` may be the volumes folder or any folder up to three levels above it (the zip's
    ``Seg-CQ500/``, its ``data/``). Sources: public loaders reading ``data/volumes/<name>/CT.nii``
    and ``ICH_mask.nii.gz`` with the case list from ``info.csv`` (column ``name``), and a log of
    the zip's contents (51 cases, per-case ``CT.nii``, ``ICH_mask.nii.gz``, ``brain.nii.gz``).
    ``brain.nii.gz`` is left out: its exact definition (brain or whole intracranial cavity) is
    not documented and CT windowing does not use a brain mask. Case ID = folder name, the CQ500
    name (``CQ500-CT-243``), so these masks also pair with the ``cq500`` reader's DICOM cases.
    """
    root = locate(
        src,
        lambda p: _has_case_dirs(p, "CT"),
        "Seg-CQ500",
        "no case folders holding CT.nii (Seg-CQ500/data/volumes/<case>/CT.nii, ICH_mask.nii.gz)",
        depth=3,
    )
    cases = []
    for folder in subdirs(root):
        image = find_nifti(folder, "CT")
        if image is None:
            continue
        cases.append(
            CaseFiles(case_id=folder.name, image=image, mask=find_nifti(folder, "ICH_mask"))
        )
    return CaseList(cases)


LAYOUTS = (
    Layout(
        "seg_cq500",
        read_seg_cq500_layout,
        "Seg-CQ500: data/volumes/<CQ500-CT-N>/CT.nii + ICH_mask.nii.gz",
    ),
)

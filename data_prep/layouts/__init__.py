"""Dataset layouts: one reader per public dataset, each turning a folder as downloaded into a
list of ``CaseFiles``, registered in ``LAYOUTS`` under its ``--dataset`` name.

One module per layout (each reader's docstring gives the exact layout and the sources it was
checked against):

- ``pairs`` / ``phantom``: ``images/<case>.nii.gz`` + ``masks/<case>.nii.gz`` (NIfTI CT)
- ``ct_ich``: PhysioNet CT-ICH, ``ct_scans/NNN.nii`` + ``masks/NNN.nii`` + per-slice CSV
- ``seg_cq500``: Seg-CQ500, ``data/volumes/<CQ500-CT-N>/CT.nii`` + ``ICH_mask.nii.gz``
- ``instance2022``: INSTANCE 2022, ``data/<name>.nii.gz`` + ``label/<name>.nii.gz``
- ``atlas2``: ATLAS R2.0 BIDS, ``sub-*/ses-*/anat/*_T1w.nii.gz`` + ``*_mask.nii.gz`` (MR)
- ``nnunet``: nnU-Net v2 / MSD raw, ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``
- ``rsna``: RSNA ICH detection, ``stage_2_train/ID_<image>.dcm`` + ``stage_2_train.csv`` (DICOM,
  no masks, per-slice labels)
- ``cq500``: CQ500, ``CQ500CT<N> CQ500CT<N>/Unknown Study/CT <desc>/*.dcm`` (DICOM, several
  series per patient; masks only from Seg-CQ500)
- ``lesjak`` / ``lesjak_multi``: Lesjak et al. MS MRI, ``patientNN/FLAIR_*`` + ``GOLD_STANDARD_*``

Most readers also accept the folder above the dataset (downloads add a top folder).

Conventions shared by every reader:

* A folder that is not the expected layout raises ``FileNotFoundError`` naming the folder and
  the layout expected; two candidate datasets under ``src`` raise ``ValueError`` (ambiguous).
* An image without its mask comes back with ``mask=None`` (the build reports "no mask" for a
  labelled dataset); duplicate case IDs are kept (the build reports them).
* Problems found while reading (a CSV row naming a missing file, per-slice labels that do not
  match the image, ...) do not stop the reader: they are collected as ``{case_id, file, error}``
  dicts on the returned ``CaseList`` (``cases.problems``); ``read_layout(name, src)`` returns
  ``(cases, problems)`` and the build lists them with its own skipped cases.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.layouts import (
    atlas2,
    cq500,
    ct_ich,
    instance2022,
    lesjak,
    nnunet,
    pairs,
    rsna,
    seg_cq500,
)
from data_prep.layouts.base import CaseFiles, CaseList, Layout

__all__ = ["LAYOUTS", "CaseFiles", "CaseList", "Layout", "get_layout", "read_layout"]

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for module in (pairs, ct_ich, seg_cq500, instance2022, atlas2, nnunet, rsna, cq500, lesjak)
    for layout in module.LAYOUTS
}


def get_layout(name: str) -> Layout:
    """The registered layout ``name``; ValueError naming the known ones otherwise."""
    if name not in LAYOUTS:
        raise ValueError(f"dataset {name!r}: unknown dataset layout (known: {sorted(LAYOUTS)})")
    return LAYOUTS[name]


def read_layout(name: str, src: Path) -> tuple[list[CaseFiles], list[dict]]:
    """Reads ``src`` with the ``name`` reader: (cases, problems as {case_id, file, error})."""
    cases = get_layout(name).read(Path(src))
    return list(cases), list(getattr(cases, "problems", []))

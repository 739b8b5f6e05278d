"""The generic pairs layout: ``images/<case>.nii.gz`` + ``masks/<case>.nii.gz`` (what the
synthetic generators write)."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.layouts.base import (
    CaseFiles,
    CaseList,
    Layout,
    find_nifti,
    locate,
    nifti_files,
)
from lesionjax.core.formats import nifti_stem


def read_pairs_layout(src: Path) -> CaseList:
    """The generic layout (also what the phantom generator writes)::

    src/images/<case>.nii.gz    image (HU for CT)
    src/masks/<case>.nii.gz     binary lesion mask (a case without one is an error)
    src/subtypes/<case>.nii.gz  optional hemorrhage subtype map (0 background, 1..5)
    src/icm/<case>.nii.gz       optional intracranial-cavity mask
    src/dataset.json            optional; {"modality": "MR"} marks MRI (default CT)
    """
    src = locate(src, lambda p: (p / "images").is_dir(), "pairs", "no 'images/' folder", depth=0)
    images_dir = src / "images"
    modality = "CT"
    meta = src / "dataset.json"
    if meta.is_file():
        try:
            modality = str(json.loads(meta.read_text()).get("modality", "CT")).upper()
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{meta}: not a JSON object ({e})") from e
        modality = {"MRI": "MR"}.get(modality, modality)
        if modality not in ("CT", "MR"):
            raise ValueError(f"{meta}: modality {modality!r} is not CT or MR")
    cases = []
    for image in nifti_files(images_dir):
        stem = nifti_stem(image)
        cases.append(
            CaseFiles(
                case_id=stem,
                image=image,
                mask=find_nifti(src / "masks", stem),
                subtypes=find_nifti(src / "subtypes", stem),
                icm=find_nifti(src / "icm", stem),
                modality=modality,
            )
        )
    if not cases:
        raise FileNotFoundError(f"{images_dir}: no NIfTI images (*.nii, *.nii.gz)")
    return CaseList(cases)


LAYOUTS = (
    Layout(
        "pairs",
        read_pairs_layout,
        "images/<case>.nii[.gz] + masks/<case>.nii[.gz] (+ subtypes/, icm/, dataset.json)",
    ),
    Layout("phantom", read_pairs_layout, "the synthetic phantom set (the pairs layout)"),
)

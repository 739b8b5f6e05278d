"""INSTANCE 2022 challenge: ``data/<name>.nii.gz`` + ``label/<name>.nii.gz``."""

from __future__ import annotations

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


def read_instance2022_layout(src: Path) -> CaseList:
    """INSTANCE 2022 challenge (Li et al., instance.grand-challenge.org)::

        train_2/data/<name>.nii.gz    non-contrast head CT in HU (512 x 512 x 20..70, 5 mm)
        train_2/label/<name>.nii.gz   voxel labels 0 background, 1 ICH (same file name)

    ``src`` is the folder holding ``data/`` or up to two levels above it (``INSTANCE2022/``,
    ``train_2/``). Sources: the challenge README and MONAI Auto3DSeg's INSTANCE22 notes
    (NIfTI images, labels 0/1) and public training scripts globbing ``train_2/data/*.nii.gz``
    and ``train_2/label/*.nii.gz`` and pairing them by sorted name. Here files pair by
    identical name. A split without any ``label/`` folder (the validation images) is read as
    unlabelled (``labelled=False``); with a ``label/`` folder a missing label is "no mask".
    Case ID = the file stem.
    """
    root = locate(
        src,
        lambda p: (p / "data").is_dir() and bool(nifti_files(p / "data")),
        "INSTANCE 2022",
        "no 'data/' folder of NIfTI images (data/<name>.nii.gz, label/<name>.nii.gz)",
        depth=2,
    )
    has_labels = (root / "label").is_dir()
    cases = [
        CaseFiles(
            case_id=nifti_stem(image),
            image=image,
            mask=find_nifti(root / "label", nifti_stem(image)) if has_labels else None,
            labelled=has_labels,
        )
        for image in nifti_files(root / "data")
    ]
    return CaseList(cases)


LAYOUTS = (
    Layout(
        "instance2022",
        read_instance2022_layout,
        "INSTANCE 2022: data/<name>.nii.gz + label/<name>.nii.gz",
        plan_defaults={"windows": ("brain", "subdural", "wide")},
    ),
)

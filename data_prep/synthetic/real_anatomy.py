"""Synthetic lesions placed into real anatomy: hemorrhages in a real head CT, strokes in real MRI.

The phantom generator (`phantom`, `phantom_lesions`) draws lesions into an analytic head. Here the
same hemorrhage painters draw into a *real* head CT (the GE DICOM series or Rorden's CT template
in `../shared/data`), and chronic stroke lesions are drawn into a real T1 MRI (the MNI152
template): CT / MRI lesion sets whose anatomy, contrast and noise are those of real scans.

The pieces: ``host_anatomy`` (loading a host, the per-case deformation, blending and noise),
``ct_hemorrhage`` (CT host analysis and hemorrhages), ``mri_stroke`` (MRI strokes); this module
writes the datasets.

Arrays are (X, Y, Z) in RAS+ voxel order, like ``data_prep.volumes.Volume``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_prep.synthetic.ct_hemorrhage import hemorrhage_cases_from_ct
from data_prep.synthetic.host_anatomy import (
    CT_TEMPLATE_FILE,
    MNI_T1_FILE,
    RealAnatomyCase,
    load_ct_template,
    load_mni152,
)
from data_prep.synthetic.mri_stroke import STROKE_TERRITORIES, stroke_cases_from_mri
from data_prep.synthetic.phantom import save_nifti, write_case_nifti
from data_prep.volumes import CaseError, Volume, load_nifti_ras
from lesionjax.core.atomic import atomic_write_csv, atomic_write_json
from lesionjax.core.labels import SLICE_LABELS

KINDS = ("hemorrhage", "stroke")


def load_real_source(source: Path, kind: str) -> tuple[Volume, dict, str]:
    """Reads a host for `kind`: (Volume, keyword arguments for the case generator, case prefix).

    source: the CT template folder (`scct.nii` + `scct_stripped.nii`, Cormack units), a folder
    of one DICOM CT series, the MNI152 folder (T1 + grey / white maps), or a NIfTI file (a CT in
    HU for "hemorrhage", a T1 MRI for "stroke").
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    source = Path(source)
    if not source.exists():
        raise CaseError(f"{source}: no such file or folder")
    if kind == "hemorrhage":
        if (source / CT_TEMPLATE_FILE).is_file():
            ct, head = load_ct_template(source)
            return ct, {"brain_mask": head}, "scct"
        if source.is_dir():
            from data_prep.dicom import read_dicom_series

            return read_dicom_series(source), {}, source.name
        ct = dataclasses.replace(load_nifti_ras(source), modality="CT")
        return ct, {}, Path(source).name.split(".")[0]
    if (source / MNI_T1_FILE).is_file():
        t1, grey, white = load_mni152(source)
        return t1, {"grey": grey, "white": white}, "mni152"
    if source.is_dir():
        raise CaseError(f"{source}: no {MNI_T1_FILE} in this folder (expected the MNI152 folder)")
    mri = dataclasses.replace(load_nifti_ras(source), modality="MR")
    return mri, {}, Path(source).name.split(".")[0]


def write_case(case: RealAnatomyCase, root: Path) -> None:
    """Writes one case in the pairs layout.

    CT: `phantom.write_case_nifti` (images int16 HU, masks, subtypes, icm). MR: images float32,
    masks, icm (the brain mask) and territories/ (1 + STROKE_TERRITORIES index); MR writes no
    subtypes/ folder, whose values the shard builder reads as hemorrhage subtypes.
    """
    root = Path(root)
    if case.modality == "CT":
        write_case_nifti(case, root)  # type: ignore[arg-type]  # the same fields it reads
        return
    arrays = {
        "images": case.image.astype(np.float32),
        "masks": case.mask.astype(np.uint8),
        "territories": case.subtypes.astype(np.uint8),
        "icm": case.icm.astype(np.uint8),
    }
    for folder, data in arrays.items():
        save_nifti(data, case.affine, root / folder / f"{case.case_id}.nii.gz")


def write_real_anatomy_dataset(
    root: Path,
    kind: str,
    n_cases: int,
    seed: int,
    source: Path,
    *,
    spacing: Sequence[float] | None = None,
    lesion_fraction: float = 0.7,
    probs: dict[str, float] | None = None,
    deform: bool = True,
) -> Path:
    """Generates `n_cases` cases of `kind` ("hemorrhage" or "stroke") on the host `source` and
    writes them like `phantom.generate_dataset`: images/, masks/, subtypes/ (CT) or
    territories/ (MR), icm/, slice_labels.csv and dataset.json (written last: its presence
    marks a complete folder). Returns root.

    probs: subtype (CT) or territory (MR) weights. Re-running with the same arguments on a
    complete folder does nothing; a folder holding a different dataset raises ValueError.
    """
    root = Path(root)
    volume, kwargs, prefix = load_real_source(source, kind)
    meta = {
        "generator": "data_prep.synthetic.real_anatomy",
        "kind": kind,
        "modality": "CT" if kind == "hemorrhage" else "MR",
        "source": str(Path(source).resolve()),
        "seed": int(seed),
        "n_cases": int(n_cases),
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "lesion_fraction": float(lesion_fraction),
        "probs": None if probs is None else {k: float(v) for k, v in probs.items()},
        "deform": bool(deform),
    }
    meta_path = root / "dataset.json"
    if meta_path.exists():
        existing = json.loads(meta_path.read_text())
        if {k: v for k, v in existing.items() if k != "cases"} != meta:
            raise ValueError(f"{meta_path}: holds a different dataset {existing}; wanted {meta}")
        return root
    root.mkdir(parents=True, exist_ok=True)
    common = dict(lesion_fraction=lesion_fraction, spacing=spacing, deform=deform)
    if kind == "hemorrhage":
        cases = hemorrhage_cases_from_ct(
            volume, n_cases, seed, subtype_probs=probs, case_prefix=prefix, **common, **kwargs
        )
        columns = list(SLICE_LABELS)
    else:
        cases = stroke_cases_from_mri(
            volume, n_cases, seed, territory_probs=probs, case_prefix=prefix, **common, **kwargs
        )
        columns = ["any", *STROKE_TERRITORIES]
    rows, summary = [], []
    for case in cases:
        write_case(case, root)
        rows += [[case.case_id, z, *(int(v) for v in case.slice_labels[z])]
                 for z in range(case.slice_labels.shape[0])]  # fmt: skip
        summary.append(
            {"case_id": case.case_id, "lesions": list(case.lesions),
             "lesion_ml": float(case.mask.sum() * np.prod(case.spacing) / 1000.0)}
        )  # fmt: skip
    atomic_write_csv(root / "slice_labels.csv", ["case_id", "slice", *columns], rows)
    atomic_write_json(meta_path, {**meta, "cases": summary})
    return root

"""CQ500: one plain axial DICOM series per patient, masks from Seg-CQ500 when given."""

from __future__ import annotations

import re
from pathlib import Path

from data_prep.layouts.base import (
    CaseFiles,
    CaseList,
    Layout,
    find_nifti,
    list_series_tolerant,
    nifti_depth,
    subdirs,
)

_CQ500_PATIENT = re.compile(r"^CQ500[-_ ]?CT[-_ ]?(\d+)(?:\s|$)", re.IGNORECASE)
# Series descriptions that are not a plain (non-contrast, soft-tissue kernel) axial head CT.
_CQ500_NOT_PLAIN = re.compile(
    r"bone|post|cta|angio|scout|topogram|localizer|d3d|\d+\s*cc\b", re.IGNORECASE
)


def _cq500_patients(src: Path) -> list[tuple[int, Path]]:
    """(patient number, folder) of every ``CQ500CT<N> CQ500CT<N>`` folder at or up to two levels
    below ``src`` (the per-patient zips extract at the top; batch downloads add a folder)."""

    def number(p: Path) -> int | None:
        m = _CQ500_PATIENT.match(p.name)
        return int(m.group(1)) if m else None

    if number(src) is not None:
        return [(number(src), src)]
    found, others = [], []
    for d in subdirs(src):
        (found if number(d) is not None else others).append(d)
    for d in others:
        found += [c for c in subdirs(d) if number(c) is not None]
    return sorted((number(p), p) for p in found)


def _is_plain(description: str) -> bool:
    d = description.lower()
    return not _CQ500_NOT_PLAIN.search(d) and not ("contrast" in d and "pre" not in d)


def _series_summary(files: list[Path]) -> tuple[str, float | None]:
    """(SeriesDescription, SliceThickness) from the first file's header."""
    import pydicom

    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        description = str(ds.get("SeriesDescription", "") or "")
        thickness = float(ds.SliceThickness) if ds.get("SliceThickness") else None
    except Exception:
        description, thickness = "", None
    if not description:  # CQ500 folders are named "CT <description>"
        description = files[0].parent.name.removeprefix("CT ").strip()
    return description, thickness


def _pick_cq500_series(series: dict[str, list[Path]], mask_depth: int | None) -> str:
    """The series UID to use, by the documented rule (see ``read_cq500_layout``)."""
    info = {uid: _series_summary(files) for uid, files in series.items()}
    plain = [u for u in series if _is_plain(info[u][0]) and len(series[u]) > 1]
    pool = plain or list(series)
    if mask_depth is not None:
        fits = [u for u in series if len(series[u]) == mask_depth]
        pool = [u for u in fits if u in plain] or plain or fits or pool

    def key(uid: str):
        description, thickness = info[uid]
        return (thickness if thickness is not None else float("inf"), -len(series[uid]),
                description, uid)  # fmt: skip

    return min(pool, key=key)


def _cq500_mask(masks: Path | None, case_id: str) -> Path | None:
    if masks is None or not masks.is_dir():
        return None
    return find_nifti(masks, case_id) or find_nifti(masks / case_id, "ICH_mask")


def read_cq500_layout(src: Path, masks: Path | None = None) -> CaseList:
    """CQ500 (Chilamkurthy et al., Lancet 2018; headctstudy.qure.ai)::

        CQ500CT<N> CQ500CT<N>/Unknown Study/CT <description>/CT000000.dcm ...
        reads.csv   name (CQ500-CT-<N>), Category, R1:ICH, R1:IPH, ... (scan-level reads)

    Patient folders may sit directly in ``src`` or one folder down (batch downloads). Sources:
    public loaders opening ``CQ500CT<N> CQ500CT<N>/Unknown Study/CT PLAIN THIN`` (also ``CT
    0.625mm``, ``CT 5mm``, ``CT BONE THIN``, ``CT PRE CONTRAST THIN``, contrast series) and
    reading reads.csv's ``name``, ``R1:ICH``.. columns. Each patient has several series
    (``data_prep.dicom.list_series``); one is kept per patient:

    1. plain series only: descriptions without bone / post / CTA / angio / scout / contrast
       (except "pre contrast") / "D3D" / "<N>cc" (all series when none is plain);
    2. when a Seg-CQ500 mask is given, the plain series with as many slices as the mask (the
       mask was drawn on it; Seg-CQ500 used the thin series); a non-plain one only when no
       series is plain (a mismatch is then reported by the build, never silently fixed);
    3. the thinnest (SliceThickness), then the one with most slices.

    Case ID = ``CQ500-CT-<N>`` (the reads.csv and Seg-CQ500 name). Unlabelled
    (``labelled=False``) unless a mask is found in ``masks`` (default ``src/masks``) as
    ``<case>.nii[.gz]`` or ``<case>/ICH_mask.nii[.gz]`` (Seg-CQ500's ``data/volumes`` folder can
    be given as is). reads.csv holds scan-level reads only, so no slice labels. A patient folder
    without DICOM images is a problem (reported, left out).
    """
    src = Path(src)
    layout = "CQ500"
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (expected the {layout} layout)")
    patients = _cq500_patients(src)
    if not patients:
        raise FileNotFoundError(
            f"{src}: no patient folders 'CQ500CT<N> CQ500CT<N>' (expected the {layout} layout: "
            "CQ500CT<N> CQ500CT<N>/Unknown Study/CT <description>/*.dcm)"
        )
    masks = Path(masks) if masks is not None else src / "masks"
    cases, problems = [], []
    for n, folder in patients:
        case_id = f"CQ500-CT-{n}"
        series = list_series_tolerant(folder, case_id, problems)
        if not series:
            continue
        mask = _cq500_mask(masks, case_id)
        uid = _pick_cq500_series(series, nifti_depth(mask) if mask is not None else None)
        files = series[uid]
        cases.append(
            CaseFiles(
                case_id=case_id,
                image=files[0].parent,
                mask=mask,
                image_files=tuple(files),
                labelled=mask is not None,
            )
        )
    return CaseList(cases, problems)


LAYOUTS = (
    Layout(
        "cq500",
        read_cq500_layout,
        "CQ500 DICOM: CQ500CT<N> CQ500CT<N>/Unknown Study/CT <desc>/*.dcm",
    ),
)

"""Synthetic datasets in the layouts of the public datasets, for testing every reader end to end.

``write_layout(name, root, n_cases, seed, shape=..., spacing=...)`` writes ``n_cases`` phantoms
(`phantom.generate_case`, case ``i`` seeded from ``(seed, i)`` as in ``generate_dataset``) with
the folder names, file names, CSVs and dataset.json that the ``data_prep.layouts`` reader of that
name expects, nested as the downloads are (a versioned top folder, ``Seg-CQ500/data/volumes``,
``ATLAS_2/Training/R001``, ...). Odd-numbered NIfTI cases are stored in LPI order (x, y and z
flipped, the affine adjusted) so that readers and the build must honour the stored slice order.
``atlas2`` images get T1-like intensities (``hu_to_t1``). DICOM layouts use
``dicom_writer.write_dicom_series``: ``rsna`` puts every series' slices in one folder under
random ``ID_<hex>`` names (so file order is not z order) with ``stage_2_train.csv``, the last
case in ``stage_2_test``; ``cq500`` writes three series per patient (plain thin, bone kernel,
a thicker one), odd patients inside a batch folder, masks for even patients only.

Beside the dataset, ``root/phantom_truth.json`` records what was written, for tests: per case
its ID, whether it is labelled, the (Z, 6) slice labels in RAS z order, and ``source_slices``,
the RAS z index of each source slice (a list by stored z index for NIfTI, a dict by file name
for DICOM). Readers ignore it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_prep.synthetic.phantom import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    PhantomCase,
    generate_case,
    save_nifti,
)
from lesionjax.core.atomic import atomic_write_csv, atomic_write_json
from lesionjax.core.labels import SLICE_LABELS, SUBTYPE_ABBREV, SUBTYPES

TRUTH = "phantom_truth.json"
CT_ICH_TOP = (
    "computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.3.1"
)
FIRST_CT_ICH_PATIENT = 49  # the release's patient numbers start at 049


def _cases(n_cases, seed, shape, spacing, lesion_fraction, ids) -> list[PhantomCase]:
    out = []
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        out.append(
            generate_case(
                int(rng.integers(2**63 - 1)),
                shape=tuple(shape),
                spacing=tuple(spacing),
                lesion=bool(rng.random() < lesion_fraction),
                case_id=ids[i],
            )
        )
    return out


def _flip(affine: np.ndarray, shape, axes) -> np.ndarray:
    """Affine of the array flipped along ``axes`` (same world positions)."""
    f = np.eye(4)
    for a in axes:
        f[a, a] = -1.0
        f[a, 3] = shape[a] - 1
    return affine @ f


class _Stored:
    """A case's arrays in its stored orientation (RAS for even cases, LPI for odd ones)."""

    def __init__(self, case: PhantomCase, index: int):
        self.axes = (0, 1, 2) if index % 2 else ()
        self.affine = _flip(case.affine, case.image.shape, self.axes)
        depth = case.image.shape[2]
        # RAS z of each stored slice.
        self.source_slices = [depth - 1 - k if 2 in self.axes else k for k in range(depth)]

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return np.flip(array, self.axes).copy() if self.axes else array


def _truth_entry(
    case: PhantomCase, labelled: bool, source_slices, *, given_slice_labels: bool = False
) -> dict:
    """given_slice_labels: the dataset states per-slice labels (a CSV) besides the mask."""
    return {
        "case_id": case.case_id,
        "labelled": labelled,
        "given_slice_labels": given_slice_labels,
        "lesion_voxels": int(case.mask.sum()) if labelled else 0,
        "slice_labels": case.slice_labels.astype(int).tolist(),
        "source_slices": source_slices,
    }


def _hu(case: PhantomCase) -> np.ndarray:
    return np.round(case.image).astype(np.int16)


# ------------------------------------------------------------------------------ NIfTI layouts


def _write_ct_ich(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    top = root / CT_ICH_TOP
    rows, truth = [], []
    for i, case in enumerate(cases):
        stored = _Stored(case, i)
        save_nifti(stored(_hu(case)), stored.affine, top / "ct_scans" / f"{ids[i]}.nii")
        mask = stored(case.mask.astype(np.uint8) * np.uint8(255))  # the release stores 0/255
        save_nifti(mask, stored.affine, top / "masks" / f"{ids[i]}.nii")
        for k, z in enumerate(stored.source_slices):
            labels = case.slice_labels[z]
            flags = dict(zip(SUBTYPES, labels[1:].tolist(), strict=True))
            rows.append(
                [int(ids[i]), k + 1]
                + [flags[s] for s in ("intraventricular", "intraparenchymal", "subarachnoid")]
                + [flags["epidural"], flags["subdural"], int(not labels[0]), 0]
            )
        truth.append(_truth_entry(case, True, stored.source_slices, given_slice_labels=True))
    header = [
        "PatientNumber",
        "SliceNumber",
        "Intraventricular",
        "Intraparenchymal",
        "Subarachnoid",
        "Epidural",
        "Subdural",
        "No_Hemorrhage",
        "Fracture_Yes_No",
    ]
    atomic_write_csv(top / "hemorrhage_diagnosis_raw_ct.csv", header, rows)
    return truth


# Subtype columns of the CQ500 reads (IPH, IVH, SDH, EDH, SAH after ICH).
_CQ500_ORDER = ("intraparenchymal", "intraventricular", "subdural", "epidural", "subarachnoid")


def _write_seg_cq500(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    volumes = root / "Seg-CQ500" / "data" / "volumes"
    truth, rows = [], []
    for i, case in enumerate(cases):
        stored = _Stored(case, i)
        folder = volumes / ids[i]
        save_nifti(stored(_hu(case)), stored.affine, folder / "CT.nii")
        save_nifti(stored(case.mask.astype(np.uint8)), stored.affine, folder / "ICH_mask.nii.gz")
        save_nifti(stored(case.icm.astype(np.uint8)), stored.affine, folder / "brain.nii.gz")
        present = case.slice_labels.any(axis=0).astype(float)
        rows.append([ids[i], present[0], *(present[1 + SUBTYPES.index(s)] for s in _CQ500_ORDER)])
        truth.append(_truth_entry(case, True, stored.source_slices))
    header = ["name", "ICH", *(SUBTYPE_ABBREV[SUBTYPES.index(s)] for s in _CQ500_ORDER)]
    atomic_write_csv(volumes / "info.csv", header, rows)
    return truth


def _write_instance2022(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    top = root / "train_2"
    truth = []
    for i, case in enumerate(cases):
        stored = _Stored(case, i)
        save_nifti(stored(_hu(case)), stored.affine, top / "data" / f"{ids[i]}.nii.gz")
        mask = stored(case.mask.astype(np.uint8))
        save_nifti(mask, stored.affine, top / "label" / f"{ids[i]}.nii.gz")
        truth.append(_truth_entry(case, True, stored.source_slices))
    return truth


# HU -> T1-weighted-like intensity (arbitrary units), piecewise linear: air black, fat bright,
# CSF dark, white matter brighter than grey matter, blood (a chronic lesion on T1) dark, bone
# and calcification dark.
_T1_HU = [-1000.0, -300.0, -100.0, -40.0, 0.0, 12.0, 26.0, 41.0, 48.0, 56.0, 70.0, 150.0, 600.0]
_T1_VALUE = [0.0, 150.0, 880.0, 420.0, 160.0, 180.0, 700.0, 470.0, 420.0, 380.0, 150.0, 200.0, 60.0]


def hu_to_t1(hu: np.ndarray) -> np.ndarray:
    """Maps a phantom's HU to T1-weighted-like float32 intensities (arbitrary scale)."""
    return np.interp(hu, _T1_HU, _T1_VALUE).astype(np.float32)


def _write_atlas2(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    truth = []
    for i, case in enumerate(cases):
        stored = _Stored(case, i)
        subject, session = ids[i].split("_")
        anat = root / "ATLAS_2" / "Training" / "R001" / subject / session / "anat"
        stem = f"{ids[i]}_space-MNI152NLin2009aSym"
        t1 = stored(hu_to_t1(case.image))
        save_nifti(t1, stored.affine, anat / f"{stem}_T1w.nii.gz")
        mask = stored(case.mask.astype(np.uint8))
        save_nifti(mask, stored.affine, anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz")
        truth.append(_truth_entry(case, True, stored.source_slices))
    return truth


def _write_pairs(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    truth = []
    for i, case in enumerate(cases):
        stored = _Stored(case, i)
        maps = {
            "images": _hu(case),
            "masks": case.mask.astype(np.uint8),
            "subtypes": case.subtypes.astype(np.uint8),
            "icm": case.icm.astype(np.uint8),
        }
        for folder, data in maps.items():
            save_nifti(stored(data), stored.affine, root / folder / f"{ids[i]}.nii.gz")
        truth.append(_truth_entry(case, True, stored.source_slices))
    return truth


LESJAK_PROCESSING = "brain_bias_corrected"


def _write_lesjak(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    """MS-like MRI sequences from the phantom's anatomy (arbitrary scales; only the readers and
    the build are tested on them)."""
    truth = []
    for i, case in enumerate(cases):
        stored = _Stored(case, i)
        t1 = hu_to_t1(case.image)
        sequences = {"FLAIR": 1200.0 - t1, "T1": t1, "T1POST": t1 * 1.1, "T2": 0.5 * t1 + 100.0}
        folder = root / ids[i]
        for name, data in sequences.items():
            save_nifti(stored(data), stored.affine, folder / f"{name}_{LESJAK_PROCESSING}.nii.gz")
        mask = stored(case.mask.astype(np.uint8))
        save_nifti(mask, stored.affine, folder / f"GOLD_STANDARD_{LESJAK_PROCESSING}.nii.gz")
        truth.append(_truth_entry(case, True, stored.source_slices))
    return truth


NNUNET_DATASET = "Dataset501_PhantomICH"


def _write_nnunet(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    top = root / NNUNET_DATASET
    truth = []
    for i, case in enumerate(cases):
        stored = _Stored(case, i)
        save_nifti(stored(_hu(case)), stored.affine, top / "imagesTr" / f"{ids[i]}_0000.nii.gz")
        mask = stored(case.mask.astype(np.uint8))
        save_nifti(mask, stored.affine, top / "labelsTr" / f"{ids[i]}.nii.gz")
        truth.append(_truth_entry(case, True, stored.source_slices))
    meta = {
        "name": "PhantomICH",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "hemorrhage": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    atomic_write_json(top / "dataset.json", meta)
    return truth


# ------------------------------------------------------------------------------ DICOM layouts

RSNA_SUBTYPE_ORDER = (*SUBTYPES, "any")  # the order of each image's six CSV rows


def _write_rsna(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    """All series' slices in one flat folder under random ``ID_<hex>`` names, as in the
    competition data; the last case (when there are several) goes to stage_2_test."""
    from pydicom.uid import generate_uid

    from data_prep.synthetic.dicom_writer import write_dicom_series

    rng = np.random.default_rng([len(cases), 2019])
    names = iter(rng.choice(16**9, size=len(cases) * cases[0].image.shape[2] * 2, replace=False))
    rows, truth = [], []
    for i, case in enumerate(cases):
        test = len(cases) > 1 and i == len(cases) - 1
        folder = root / ("stage_2_test" if test else "stage_2_train")
        depth = case.image.shape[2]
        image_ids = [f"ID_{next(names):09x}" for _ in range(depth)]
        uid = generate_uid(entropy_srcs=["rsna", ids[i], *image_ids])
        paths = write_dicom_series(
            case.image,
            case.affine,
            folder,
            patient_id=ids[i],
            file_names=[f"{image_id}.dcm" for image_id in image_ids],
            series_uid=uid,
            seed=i,
        )
        if not test:
            for z, image_id in enumerate(image_ids):
                labels = dict(zip(SLICE_LABELS, case.slice_labels[z].tolist(), strict=True))
                rows += [[f"{image_id}_{s}", labels[s]] for s in RSNA_SUBTYPE_ORDER]
        entry = _truth_entry(
            case, False, {p.name: z for z, p in enumerate(paths)}, given_slice_labels=not test
        )
        entry["case_id"] = uid
        truth.append(entry)
    atomic_write_csv(root / "stage_2_train.csv", ["ID", "Label"], rows)
    return truth


# (description, every k-th slice): the plain thin series the reader must pick, a bone-kernel
# copy and a thicker reconstruction, as CQ500 studies hold several series.
CQ500_SERIES = (("CT PLAIN THIN", 1), ("CT BONE THIN", 1), ("CT 5mm", 2))


def _write_cq500(root: Path, cases: list[PhantomCase], ids: list[str]) -> list[dict]:
    """Patients 0, 2, ... at the top, the others in a batch folder ``qct02/``; Seg-CQ500-style
    masks (``masks/<case>.nii.gz``) for even patients only, so both labelled and unlabelled
    cases occur; reads.csv from the generated subtypes."""
    from data_prep.synthetic.dicom_writer import write_dicom_series

    truth, rows = [], []
    for i, case in enumerate(cases):
        n = int(ids[i].rsplit("-", 1)[1])
        parent = root if i % 2 == 0 else root / "qct02"
        study = parent / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
        depth, dz = case.image.shape[2], case.spacing[2]
        sources = {}
        for description, step in CQ500_SERIES:
            z_mm = np.arange(0, depth, step) * dz
            paths = write_dicom_series(
                case.image,
                case.affine,
                study / description,
                patient_id=f"CQ500CT{n}",
                slice_z_mm=z_mm,
                file_names=[f"CT{k:06d}.dcm" for k in range(len(z_mm))],
                series_description=description.removeprefix("CT "),
                seed=i,
            )
            if description == CQ500_SERIES[0][0]:
                sources = {p.name: z for z, p in enumerate(paths)}
        labelled = i % 2 == 0
        if labelled:
            save_nifti(case.mask.astype(np.uint8), case.affine, root / "masks" / f"{ids[i]}.nii.gz")
        entry = _truth_entry(case, labelled, sources)
        entry["series_description"] = CQ500_SERIES[0][0].removeprefix("CT ")
        truth.append(entry)
        present = case.slice_labels.any(axis=0).astype(int)
        reads = [present[0], *(present[1 + SUBTYPES.index(s)] for s in _CQ500_ORDER)]
        rows.append([ids[i], "B1", *(reads * 3)])
    columns = ["ICH", *(SUBTYPE_ABBREV[SUBTYPES.index(s)] for s in _CQ500_ORDER)]
    header = ["name", "Category", *(f"R{r}:{c}" for r in (1, 2, 3) for c in columns)]
    atomic_write_csv(root / "reads.csv", header, rows)
    return truth


def _ids(name: str, n: int) -> list[str]:
    if name == "ct_ich":
        return [f"{FIRST_CT_ICH_PATIENT + i:03d}" for i in range(n)]
    if name in ("seg_cq500", "cq500"):
        return [f"CQ500-CT-{i}" for i in range(n)]
    if name == "instance2022":
        return [f"{i + 1:03d}" for i in range(n)]
    if name == "atlas2":
        return [f"sub-r001s{i + 1:03d}_ses-1" for i in range(n)]
    if name == "lesjak":
        return [f"patient{i + 1:02d}" for i in range(n)]
    return [f"phantom_{i:03d}" for i in range(n)]


_WRITERS: dict[str, Callable[[Path, list[PhantomCase], list[str]], list[dict]]] = {
    "pairs": _write_pairs,
    "ct_ich": _write_ct_ich,
    "seg_cq500": _write_seg_cq500,
    "instance2022": _write_instance2022,
    "atlas2": _write_atlas2,
    "nnunet": _write_nnunet,
    "rsna": _write_rsna,
    "cq500": _write_cq500,
    "lesjak": _write_lesjak,
}
LAYOUT_NAMES = tuple(_WRITERS)


def write_layout(
    name: str,
    root: Path,
    n_cases: int,
    seed: int,
    *,
    shape=DEFAULT_SHAPE,
    spacing=DEFAULT_SPACING,
    lesion_fraction: float = 0.67,
) -> Path:
    """Writes ``n_cases`` synthetic cases in the ``name`` layout under ``root``; returns ``root``
    (the folder to give the reader: the layouts' own top folders are inside it).

    Deterministic from (seed, shape, spacing, lesion_fraction). ``root/phantom_truth.json``
    describes the cases (see the module docstring).
    """
    if name not in _WRITERS:
        raise ValueError(f"unknown layout {name!r}; known: {sorted(_WRITERS)}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = _ids(name, n_cases)
    cases = _cases(n_cases, seed, shape, spacing, lesion_fraction, ids)
    truth = _WRITERS[name](root, cases, ids)
    atomic_write_json(
        root / TRUTH,
        {
            "layout": name,
            "seed": int(seed),
            "shape": [int(n) for n in shape],
            "spacing": [float(s) for s in spacing],
            "slice_labels_order": list(SLICE_LABELS),
            "cases": truth,
        },
    )
    return root


def read_truth(root: Path) -> dict:
    """The ``phantom_truth.json`` written by ``write_layout``."""
    return json.loads((Path(root) / TRUTH).read_text())

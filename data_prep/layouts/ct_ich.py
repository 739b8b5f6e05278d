"""PhysioNet CT-ICH (Hssayeni et al.): NIfTI CT, masks and a per-slice CSV."""

from __future__ import annotations

from pathlib import Path

from data_prep.layouts.base import (
    CaseFiles,
    CaseList,
    Layout,
    find_nifti,
    flag_value,
    locate,
    nifti_depth,
    nifti_files,
    problem,
    read_csv_rows,
)
from data_prep.volumes import CaseError
from lesionjax.core.formats import nifti_stem
from lesionjax.core.labels import SUBTYPES

CT_ICH_CSV = "hemorrhage_diagnosis_raw_ct.csv"
# CSV column of each SUBTYPES entry (SLICE_LABELS order without "any").
CT_ICH_COLUMNS = {
    "epidural": "Epidural",
    "intraparenchymal": "Intraparenchymal",
    "intraventricular": "Intraventricular",
    "subarachnoid": "Subarachnoid",
    "subdural": "Subdural",
}


def _ct_ich_labels(csv_path: Path) -> dict[int, dict[int, tuple[int, ...]]]:
    """PatientNumber -> {SliceNumber: labels in SLICE_LABELS order}."""
    rows = read_csv_rows(csv_path)
    required = ["PatientNumber", "SliceNumber", *CT_ICH_COLUMNS.values()]
    absent = [c for c in required if rows and c not in rows[0]]
    if absent:
        raise CaseError(f"{csv_path}: missing columns {absent} (expected {required})")
    out: dict[int, dict[int, tuple[int, ...]]] = {}
    for line, row in enumerate(rows, start=2):
        if not row["PatientNumber"]:  # trailing blank rows occur in spreadsheets' exports
            continue
        try:
            patient, number = int(float(row["PatientNumber"])), int(float(row["SliceNumber"]))
        except ValueError:
            raise CaseError(
                f"{csv_path}: line {line}: PatientNumber/SliceNumber "
                f"{row['PatientNumber']!r}/{row['SliceNumber']!r} are not integers"
            ) from None
        subtypes = [
            flag_value(row[CT_ICH_COLUMNS[s]], csv_path, line, CT_ICH_COLUMNS[s]) for s in SUBTYPES
        ]
        any_ich = int(any(subtypes))
        if row.get("No_Hemorrhage", "") != "":
            any_ich |= 1 - flag_value(row["No_Hemorrhage"], csv_path, line, "No_Hemorrhage")
        out.setdefault(patient, {})[number] = (any_ich, *subtypes)
    return out


def read_ct_ich_layout(src: Path) -> CaseList:
    """PhysioNet CT-ICH (Hssayeni et al., Data 2020; physionet.org/content/ct-ich/1.3.1)::

        src/ct_scans/NNN.nii                  CT in HU, NNN = PatientNumber zero-padded (049)
        src/masks/NNN.nii                     hemorrhage mask (0/255 in the release)
        src/hemorrhage_diagnosis_raw_ct.csv   PatientNumber, SliceNumber, Intraventricular,
                                              Intraparenchymal, Subarachnoid, Epidural,
                                              Subdural, No_Hemorrhage, Fracture_Yes_No

    ``src`` may be the folder above (the download's versioned top folder, e.g.
    ``computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.3.1``).
    Sources: the dataset README ("hemorrhage_diagnosis_raw_ct.csv contains the patient #, slice #
    and the labels ... for each slice in the NIfTI CT scans"; slices "started from 1") and its
    ``split_raw_data.py``, which pairs the i-th CSV row of a patient with ``ct_scan[:, :, i]``:
    SliceNumber k is the stored z index k - 1 (a patient numbered from 0 is read 0-based).
    "any" = any subtype flag, or No_Hemorrhage == 0. Fracture_Yes_No is not a hemorrhage label
    and is ignored. Case ID = the file stem ("049").

    Problems (reported and the case left out, as the build does with a case it cannot read):
    the CSV slices of a patient are not exactly 1..Z of its scan (the release's own script warns
    about this; which row belongs to which slice is then unknown); a CSV patient without a CT
    file. Without the CSV the cases have no slice_labels (the build derives "any" from masks).
    """
    root = locate(
        src,
        lambda p: (p / "ct_scans").is_dir(),
        "CT-ICH",
        "no 'ct_scans/' folder (ct_scans/NNN.nii, masks/NNN.nii, " + CT_ICH_CSV + ")",
    )
    images = nifti_files(root / "ct_scans")
    if not images:
        raise FileNotFoundError(f"{root / 'ct_scans'}: no NIfTI scans (NNN.nii)")
    csv_path = root / CT_ICH_CSV
    labels = _ct_ich_labels(csv_path) if csv_path.is_file() else {}
    cases, problems = [], []
    seen_patients = set()
    for image in images:
        stem = nifti_stem(image)
        slice_labels = None
        patient = int(stem) if stem.isdigit() else None
        rows = labels.get(patient) if patient is not None else None
        if rows is not None:
            seen_patients.add(patient)
            depth = nifti_depth(image)
            base = 0 if min(rows) == 0 else 1
            if depth is not None and sorted(rows) == list(range(base, base + depth)):
                slice_labels = tuple(rows[k + base] for k in range(depth))
            elif depth is not None:  # which row belongs to which slice cannot be known
                problems.append(
                    problem(
                        stem,
                        csv_path,
                        f"{CT_ICH_CSV} lists slices {min(rows)}..{max(rows)} ({len(rows)} rows) "
                        f"for patient {patient} but {image.name} has {depth} slices",
                    )
                )
                continue
        cases.append(
            CaseFiles(
                case_id=stem,
                image=image,
                mask=find_nifti(root / "masks", stem),
                slice_labels=slice_labels,
            )
        )
    for patient in sorted(set(labels) - seen_patients):
        problems.append(
            problem(
                f"{patient:03d}",
                root / "ct_scans" / f"{patient:03d}.nii",
                f"listed in {CT_ICH_CSV} but there is no CT file for it",
            )
        )
    return CaseList(cases, problems)


LAYOUTS = (
    Layout(
        "ct_ich",
        read_ct_ich_layout,
        "PhysioNet CT-ICH: ct_scans/NNN.nii, masks/NNN.nii, hemorrhage_diagnosis_raw_ct.csv",
    ),
)

"""RSNA Intracranial Hemorrhage Detection: DICOM slices and a per-slice label CSV (no masks)."""

from __future__ import annotations

import csv
from pathlib import Path

from data_prep.layouts.base import (
    CaseFiles,
    CaseList,
    Layout,
    flag_value,
    list_series_tolerant,
    locate,
    problem,
)
from data_prep.volumes import CaseError
from lesionjax.core.labels import SLICE_LABELS

RSNA_STAGES = ("stage_2", "stage_1")


def _rsna_root(src: Path) -> Path:
    def is_root(p: Path) -> bool:
        return any(
            (p / f"{stage}_{split}").is_dir()
            for stage in RSNA_STAGES
            for split in ("train", "test")
        )

    return locate(
        src,
        is_root,
        "RSNA intracranial hemorrhage detection",
        "no 'stage_2_train/' or 'stage_2_test/' folder (stage_2_train/ID_<image>.dcm, "
        "stage_2_train.csv)",
    )


def _rsna_labels(csv_path: Path) -> tuple[dict[str, list[int | None]], list[dict]]:
    """Image ID ("ID_63eb1e259") -> 6 labels in SLICE_LABELS order (None where no row), and
    problems (conflicting duplicate rows). Rows are ``ID_<image>_<subtype>,Label``."""
    labels: dict[str, list[int | None]] = {}
    problems = []
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise CaseError(f"{csv_path}: cannot read ({type(e).__name__}: {e})") from e
    with f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["ID", "Label"]:
            raise CaseError(f"{csv_path}: header {header} is not ['ID', 'Label']")
        for line, row in enumerate(reader, start=2):
            if not row or not row[0].strip():
                continue
            image, _, subtype = row[0].strip().rpartition("_")
            if subtype not in SLICE_LABELS or not image:
                raise CaseError(
                    f"{csv_path}: line {line}: ID {row[0]!r} is not ID_<image>_<subtype> with a "
                    f"subtype in {list(SLICE_LABELS)}"
                )
            value = flag_value(row[1].strip() if len(row) > 1 else "", csv_path, line, "Label")
            entry = labels.setdefault(image, [None] * len(SLICE_LABELS))
            k = SLICE_LABELS.index(subtype)
            if entry[k] is not None and entry[k] != value:
                problems.append(
                    problem(image, csv_path, f"line {line}: conflicting {subtype} labels")
                )
            entry[k] = value if entry[k] is None else max(entry[k], value)
    return labels, problems


def read_rsna_layout(src: Path) -> CaseList:
    """RSNA Intracranial Hemorrhage Detection (Kaggle 2019; Flanders et al., Radiol AI 2020)::

        stage_2_train/ID_<image>.dcm    one axial slice per file, all series in one folder
        stage_2_test/ID_<image>.dcm     test slices (no labels)
        stage_2_train.csv               ID,Label with ID = ID_<image>_<subtype>, subtype in
                                        epidural, intraparenchymal, intraventricular,
                                        subarachnoid, subdural, any

    (``stage_1_*`` when there is no stage 2; ``src`` may be the folder above, e.g. the Kaggle
    download's ``rsna-intracranial-hemorrhage-detection/``.) Sources: the competition's data
    page and public loaders splitting ``ID_63eb1e259_epidural`` at its last underscore into the
    image ID (the file stem) and the subtype. Slices are grouped into volumes by
    SeriesInstanceUID (``data_prep.dicom.list_series``), which is also the case ID (RSNA's
    anonymized UIDs are short ``ID_<hex>`` strings, as readable as the StudyInstanceUID, and
    the series is the unit that forms a volume). ``image_files`` are the series' files (sorted
    by path) and ``slice_labels`` their CSV rows in that order. No masks: ``labelled=False``.
    Test series have no slice labels.

    Problems (reported, the case left out): CSV rows naming an image that is not a file of the
    train folder (missing, or not a DICOM image); a train series with slices that have no (or
    incomplete) rows; conflicting duplicate rows; a file whose header cannot be read (its
    series cannot be known, so that series is built from its other slices, the DICOM reader
    interpolating over the gap).
    """
    root = _rsna_root(src)
    stage = next(
        s for s in RSNA_STAGES if (root / f"{s}_train").is_dir() or (root / f"{s}_test").is_dir()
    )
    train, test = root / f"{stage}_train", root / f"{stage}_test"
    csv_path = root / f"{stage}_train.csv"
    cases, problems = [], []
    labels: dict[str, list[int | None]] = {}
    if train.is_dir():
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"{root}: no '{csv_path.name}' for the slices in {train.name}/ (expected the "
                "RSNA layout)"
            )
        labels, problems = _rsna_labels(csv_path)
        seen = set()
        for uid, files in list_series_tolerant(train, train.name, problems, file_ids=True).items():
            seen.update(p.stem for p in files)
            rows = [labels.get(p.stem) for p in files]
            bad = [p for p, r in zip(files, rows, strict=True) if r is None or None in r]
            if bad:
                problems.append(
                    problem(
                        uid,
                        bad[0],
                        f"{len(bad)} of {len(files)} slices have no (or incomplete) rows in "
                        f"{csv_path.name}",
                    )
                )
                continue
            cases.append(
                CaseFiles(
                    case_id=uid,
                    image=train,
                    mask=None,
                    image_files=tuple(files),
                    slice_labels=tuple(tuple(r) for r in rows),
                    labelled=False,
                )
            )
        reported = {p["case_id"] for p in problems}  # unreadable files, already reported
        for image in sorted(set(labels) - seen - reported):
            path = train / f"{image}.dcm"
            what = "is not a DICOM image" if path.exists() else "is missing"
            problems.append(problem(image, path, f"listed in {csv_path.name} but the file {what}"))
    if test.is_dir():
        for uid, files in list_series_tolerant(test, test.name, problems, file_ids=True).items():
            cases.append(
                CaseFiles(
                    case_id=uid, image=test, mask=None, image_files=tuple(files), labelled=False
                )
            )
    return CaseList(cases, problems)


LAYOUTS = (
    Layout(
        "rsna",
        read_rsna_layout,
        "RSNA ICH detection: stage_2_train/ID_<image>.dcm + stage_2_train.csv (no masks)",
    ),
)

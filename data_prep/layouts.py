"""Dataset layouts: each reader turns a folder as downloaded into a list of ``CaseFiles``.

One reader per public dataset, registered in ``LAYOUTS`` under its name (``--dataset NAME``);
each docstring gives the exact layout and the sources it was checked against:

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

import csv
import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from data_prep.volumes import CaseError
from lesionjax.data.labels import SLICE_LABELS, SUBTYPES

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """The files of one case. Optional maps are None when the dataset has none.

    image: a NIfTI file, or a folder holding one DICOM series.
    image_files: the DICOM files of the series when they are listed explicitly (a folder with
        several series, or files named in a CSV); their order defines the source slice index.
    mask: binary lesion mask (NIfTI); None with ``labelled=True`` is an error ("no mask").
    slice_labels: per-slice labels in SLICE_LABELS order, indexed by source slice (the stored z
        index of a NIfTI image, or the index into ``image_files``), e.g. from a CSV.
    modality: "CT" (HU, windowed) or "MR" (normalized by percentiles, then the "unit" window).
    labelled: False for datasets without masks (RSNA, plain CQ500): the mask is all zeros and
        the volume is marked ``has_mask: false`` in the manifest.
    brain_mask: optional NIfTI brain mask used by MRI normalization.
    channels: further co-registered input images (other MRI sequences, nnU-Net channels 0001..),
        on the image's voxel grid; each is normalized and windowed like the image and adds its
        own channels after the image's.
    mask_nonzero: the mask is a label map whose foreground is every label > 0 (nnU-Net / MSD
        multi-class labels); otherwise only {0, 1} and {0, 255} are accepted.
    """

    case_id: str
    image: Path
    mask: Path | None
    subtypes: Path | None = None
    icm: Path | None = None
    image_files: tuple[Path, ...] | None = None
    slice_labels: tuple[tuple[int, ...], ...] | None = None
    modality: str = "CT"
    labelled: bool = True
    brain_mask: Path | None = None
    mask_nonzero: bool = False
    channels: tuple[Path, ...] = ()


class CaseList(list):
    """A reader's cases (a plain list of ``CaseFiles``) plus the problems it found.

    problems: ``{"case_id", "file", "error"}`` dicts, the format of the build's skipped.json, for
    what the reader could not turn into a case (a CSV row naming a missing file, ...).
    """

    def __init__(self, cases: Iterable[CaseFiles] = (), problems: Iterable[dict] = ()):
        super().__init__(cases)
        self.problems: list[dict] = list(problems)


def _problem(case_id: str, file: Path | str, error: str) -> dict:
    return {"case_id": str(case_id), "file": str(file), "error": error}


def nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _find_by_stem(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder`` (sorted; hidden files such as temp files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".") and p.is_file()
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _locate(
    src: Path, is_root: Callable[[Path], bool], layout: str, missing: str, *, depth: int = 1
) -> Path:
    """The folder at or below ``src`` (at most ``depth`` levels) that holds the layout.

    Downloads often add a top folder (a versioned name, the archive's name), so ``src`` may be
    that folder's parent. The shallowest match wins; two at the same level are ambiguous.
    missing: what is absent, for the error ("no 'ct_scans/' folder").
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (expected the {layout} layout)")
    level = [src]
    for d in range(depth + 1):
        found = [p for p in level if is_root(p)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p) for p in found)
            raise ValueError(
                f"{src}: holds several {layout} datasets ({names}); point it at one of them"
            )
        if d < depth:
            level = [c for p in level for c in _subdirs(p)]
    raise FileNotFoundError(f"{src}: {missing} (expected the {layout} layout)")


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts with stripped header names (BOM tolerated)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            # Extra cells beyond the header land under the key None: ignored.
            rows = [
                {k.strip(): (v or "").strip() for k, v in r.items() if k is not None}
                for r in reader
            ]
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CaseError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from e
    if not header:
        raise CaseError(f"{path}: empty CSV (no header row)")
    return rows


def _flag(value: str, path: Path, line: int, column: str) -> int:
    """A 0/1 label cell ("", "0", "1", "1.0"; empty counts as 0)."""
    if value == "":
        return 0
    try:
        number = float(value)
    except ValueError:
        raise CaseError(f"{path}: line {line}: {column}={value!r} is not a number") from None
    if number not in (0.0, 1.0):
        raise CaseError(f"{path}: line {line}: {column}={value!r} is not 0 or 1")
    return int(number)


# --------------------------------------------------------------------------------------- pairs


def read_pairs_layout(src: Path) -> list[CaseFiles]:
    """The generic layout (also what the phantom generator writes)::

    src/images/<case>.nii.gz    image (HU for CT)
    src/masks/<case>.nii.gz     binary lesion mask (a case without one is an error)
    src/subtypes/<case>.nii.gz  optional hemorrhage subtype map (0 background, 1..5)
    src/icm/<case>.nii.gz       optional intracranial-cavity mask
    src/dataset.json            optional; {"modality": "MR"} marks MRI (default CT)
    """
    src = _locate(src, lambda p: (p / "images").is_dir(), "pairs", "no 'images/' folder", depth=0)
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
    for image in _nifti_files(images_dir):
        stem = nifti_stem(image)
        cases.append(
            CaseFiles(
                case_id=stem,
                image=image,
                mask=_find_by_stem(src / "masks", stem),
                subtypes=_find_by_stem(src / "subtypes", stem),
                icm=_find_by_stem(src / "icm", stem),
                modality=modality,
            )
        )
    if not cases:
        raise FileNotFoundError(f"{images_dir}: no NIfTI images (*.nii, *.nii.gz)")
    return CaseList(cases)


# -------------------------------------------------------------------------------------- ct_ich

CT_ICH_CSV = "hemorrhage_diagnosis_raw_ct.csv"
# CSV column of each SUBTYPES entry (SLICE_LABELS order without "any").
CT_ICH_COLUMNS = {
    "epidural": "Epidural",
    "intraparenchymal": "Intraparenchymal",
    "intraventricular": "Intraventricular",
    "subarachnoid": "Subarachnoid",
    "subdural": "Subdural",
}


def _nifti_depth(path: Path) -> int | None:
    """Number of stored slices (third axis) from the header only, or None if unreadable."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception:  # the build reads the file again and reports the exact problem
        return None
    return int(shape[2]) if len(shape) >= 3 else None


def _ct_ich_labels(csv_path: Path) -> dict[int, dict[int, tuple[int, ...]]]:
    """PatientNumber -> {SliceNumber: labels in SLICE_LABELS order}."""
    rows = _read_csv(csv_path)
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
            _flag(row[CT_ICH_COLUMNS[s]], csv_path, line, CT_ICH_COLUMNS[s]) for s in SUBTYPES
        ]
        any_ich = int(any(subtypes))
        if row.get("No_Hemorrhage", "") != "":
            any_ich |= 1 - _flag(row["No_Hemorrhage"], csv_path, line, "No_Hemorrhage")
        out.setdefault(patient, {})[number] = (any_ich, *subtypes)
    return out


def read_ct_ich_layout(src: Path) -> list[CaseFiles]:
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
    root = _locate(
        src,
        lambda p: (p / "ct_scans").is_dir(),
        "CT-ICH",
        "no 'ct_scans/' folder (ct_scans/NNN.nii, masks/NNN.nii, " + CT_ICH_CSV + ")",
    )
    images = _nifti_files(root / "ct_scans")
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
            depth = _nifti_depth(image)
            base = 0 if min(rows) == 0 else 1
            if depth is not None and sorted(rows) == list(range(base, base + depth)):
                slice_labels = tuple(rows[k + base] for k in range(depth))
            elif depth is not None:  # which row belongs to which slice cannot be known
                problems.append(
                    _problem(
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
                mask=_find_by_stem(root / "masks", stem),
                slice_labels=slice_labels,
            )
        )
    for patient in sorted(set(labels) - seen_patients):
        problems.append(
            _problem(
                f"{patient:03d}",
                root / "ct_scans" / f"{patient:03d}.nii",
                f"listed in {CT_ICH_CSV} but there is no CT file for it",
            )
        )
    return CaseList(cases, problems)


# ----------------------------------------------------------------------------------- seg_cq500


def _has_case_dirs(folder: Path, image_stem: str) -> bool:
    return any(_find_by_stem(c, image_stem) for c in _subdirs(folder))


def read_seg_cq500_layout(src: Path) -> list[CaseFiles]:
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
    root = _locate(
        src,
        lambda p: _has_case_dirs(p, "CT"),
        "Seg-CQ500",
        "no case folders holding CT.nii (Seg-CQ500/data/volumes/<case>/CT.nii, ICH_mask.nii.gz)",
        depth=3,
    )
    cases = []
    for folder in _subdirs(root):
        image = _find_by_stem(folder, "CT")
        if image is None:
            continue
        cases.append(
            CaseFiles(case_id=folder.name, image=image, mask=_find_by_stem(folder, "ICH_mask"))
        )
    return CaseList(cases)


# -------------------------------------------------------------------------------- instance2022


def read_instance2022_layout(src: Path) -> list[CaseFiles]:
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
    root = _locate(
        src,
        lambda p: (p / "data").is_dir() and bool(_nifti_files(p / "data")),
        "INSTANCE 2022",
        "no 'data/' folder of NIfTI images (data/<name>.nii.gz, label/<name>.nii.gz)",
        depth=2,
    )
    has_labels = (root / "label").is_dir()
    cases = [
        CaseFiles(
            case_id=nifti_stem(image),
            image=image,
            mask=_find_by_stem(root / "label", nifti_stem(image)) if has_labels else None,
            labelled=has_labels,
        )
        for image in _nifti_files(root / "data")
    ]
    return CaseList(cases)


# -------------------------------------------------------------------------------------- atlas2

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
        for p in _nifti_files(image.parent)
        if p.name.startswith(prefix) and nifti_stem(p).endswith("_mask")
    ]
    if len(found) > 1 and any("lesion" in p.name for p in found):
        found = [p for p in found if "lesion" in p.name]
    space = re.search(r"_space-[A-Za-z0-9]+", image.name)
    if len(found) > 1 and space is not None and any(space.group(0) in p.name for p in found):
        found = [p for p in found if space.group(0) in p.name]
    return found[0] if found else None


def read_atlas2_layout(src: Path) -> list[CaseFiles]:
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


# -------------------------------------------------------------------------------------- nnunet

_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


def _nnunet_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CaseError(f"{path}: cannot read as JSON ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise CaseError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _nnunet_modality(meta: dict) -> str:
    """ "CT" when channel 0 is named CT (nnU-Net v2 ``channel_names``, MSD ``modality``)."""
    names = meta.get("channel_names") or meta.get("modality") or {}
    name = str(names.get("0", names.get(0, "CT"))) if isinstance(names, dict) else "CT"
    return "CT" if name.strip().lower() == "ct" else "MR"


def read_nnunet_layout(src: Path) -> list[CaseFiles]:
    """nnU-Net v2 raw dataset (and the Medical Segmentation Decathlon / nnU-Net v1 layout)::

        Dataset501_Name/imagesTr/<case>_0000.nii.gz   channel 0 of each training case
        Dataset501_Name/labelsTr/<case>.nii.gz        label map
        Dataset501_Name/dataset.json                  channel_names, labels, file_ending
        (MSD: imagesTr/<case>.nii.gz without a channel suffix, "modality" in dataset.json)

    Source: nnU-Net v2 ``documentation/dataset_format.md``. ``src`` may be the folder above the
    dataset (a single ``DatasetXXX_*`` inside it). Choices:

    * every channel: ``0000`` is the image, ``0001``.. are extra input channels (in order),
      treated with channel 0's modality; a case missing a channel that dataset.json names (or
      that other cases have) is reported; MSD files without a suffix are used as they are (a
      4D multi-modal MSD file is rejected by the build);
      files are channel-suffixed when dataset.json has ``channel_names``, else when the label
      names are not the image names and every image ends in ``_NNNN``.
    * modality "CT" when channel 0 is named "CT" (any case), else "MR"; no dataset.json: CT.
    * labels: foreground = any label > 0 (nnU-Net's label 0 is background), ``mask_nonzero``.
    * ``imagesTs`` is not read: nnU-Net never trains on it and it usually has no labels.
    * ``file_ending`` other than .nii.gz / .nii is rejected (only NIfTI is read here).
    """
    root = _locate(
        src,
        lambda p: (p / "imagesTr").is_dir(),
        "nnU-Net raw",
        "no 'imagesTr/' folder (imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz)",
    )
    meta = _nnunet_json(root)
    ending = meta.get("file_ending")
    if ending is not None and ending not in NIFTI_SUFFIXES:
        raise CaseError(
            f"{root / 'dataset.json'}: file_ending {ending!r} is not NIfTI (.nii.gz or .nii); "
            "convert the images to NIfTI first"
        )
    images = [
        p for p in _nifti_files(root / "imagesTr") if ending is None or p.name.endswith(ending)
    ]
    if not images:
        raise FileNotFoundError(f"{root / 'imagesTr'}: no NIfTI images (<case>_0000.nii.gz)")
    stems = [nifti_stem(p) for p in images]
    label_stems = {nifti_stem(p) for p in _nifti_files(root / "labelsTr")}
    if "channel_names" in meta:
        suffixed = True
    elif label_stems and set(stems) <= label_stems:
        suffixed = False
    else:
        suffixed = all(_CHANNEL.match(s) for s in stems)
    modality = _nnunet_modality(meta)
    cases, problems = [], []
    channels: dict[str, dict[str, Path]] = {}
    for image, stem in zip(images, stems, strict=True):
        if suffixed:
            m = _CHANNEL.match(stem)
            if m is None:
                problems.append(
                    _problem(stem, image, "image name has no channel suffix _NNNN; ignored")
                )
                continue
            channels.setdefault(m.group(1), {})[m.group(2)] = image
        else:
            channels.setdefault(stem, {})["0000"] = image
    named = meta.get("channel_names")
    codes = (
        [f"{int(k):04d}" for k in named]
        if isinstance(named, dict)
        else sorted({c for files in channels.values() for c in files})
    )
    for case_id, files in channels.items():
        missing = [c for c in codes if c not in files]
        if missing:
            first = files[min(files)]
            problems.append(
                _problem(case_id, first, f"no channel {', '.join(missing)} image for this case")
            )
            continue
        cases.append(
            CaseFiles(
                case_id=case_id,
                image=files["0000"],
                mask=_find_by_stem(root / "labelsTr", case_id),
                modality=modality,
                mask_nonzero=True,
                channels=tuple(files[c] for c in sorted(codes) if c != "0000"),
            )
        )
    return CaseList(cases, problems)


# ---------------------------------------------------------------------------------------- rsna

RSNA_STAGES = ("stage_2", "stage_1")


def _rsna_root(src: Path) -> Path:
    def is_root(p: Path) -> bool:
        return any(
            (p / f"{stage}_{split}").is_dir()
            for stage in RSNA_STAGES
            for split in ("train", "test")
        )

    return _locate(
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
            value = _flag(row[1].strip() if len(row) > 1 else "", csv_path, line, "Label")
            entry = labels.setdefault(image, [None] * len(SLICE_LABELS))
            k = SLICE_LABELS.index(subtype)
            if entry[k] is not None and entry[k] != value:
                problems.append(
                    _problem(image, csv_path, f"line {line}: conflicting {subtype} labels")
                )
            entry[k] = value if entry[k] is None else max(entry[k], value)
    return labels, problems


DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _list_series(
    folder: Path, case_id: str, problems: list[dict], *, file_ids: bool = False
) -> dict[str, list[Path]]:
    """``data_prep.dicom.list_series(folder)``, tolerant of damaged files.

    ``list_series`` fails for the whole folder when one file named like DICOM cannot be parsed;
    then the folder is listed file by file and each unreadable file becomes a problem (with the
    file stem as case ID when ``file_ids``, e.g. RSNA image IDs, else ``case_id``). A folder
    without any DICOM image is a problem too. Files are in path order, as ``list_series`` gives.
    """
    from data_prep.dicom import list_series

    try:
        return list_series(folder)
    except CaseError as e:
        listing_error = str(e)
    import pydicom
    import pydicom.errors

    series: dict[str, list[Path]] = {}
    n_problems = len(problems)
    files = []
    if folder.is_dir():
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(q.startswith(".") for q in p.relative_to(folder).parts)
        )
    for path in files:
        named_dicom = path.suffix.lower() in DICOM_SUFFIXES
        why = None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:  # no preamble: maybe a raw dataset
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                if "SeriesInstanceUID" not in ds or "Rows" not in ds:
                    ds, why = None, "not a DICOM file (no DICOM header could be parsed)"
            except Exception as e:
                ds, why = None, f"unreadable DICOM header ({type(e).__name__}: {e})"
        except Exception as e:
            ds, why = None, f"unreadable DICOM header ({type(e).__name__}: {e})"
        if ds is None:
            if named_dicom:
                problems.append(_problem(path.stem if file_ids else case_id, path, why))
            continue
        if "Rows" not in ds:
            continue  # a non-image object (DICOMDIR, structured report)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid:
            series.setdefault(uid, []).append(path)
        else:
            problems.append(_problem(case_id, path, "no SeriesInstanceUID (0020,000E)"))
    if not series and len(problems) == n_problems:
        problems.append(_problem(case_id, folder, listing_error))
    return series


def read_rsna_layout(src: Path) -> list[CaseFiles]:
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
        for uid, files in _list_series(train, train.name, problems, file_ids=True).items():
            seen.update(p.stem for p in files)
            rows = [labels.get(p.stem) for p in files]
            bad = [p for p, r in zip(files, rows, strict=True) if r is None or None in r]
            if bad:
                problems.append(
                    _problem(
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
            problems.append(_problem(image, path, f"listed in {csv_path.name} but the file {what}"))
    if test.is_dir():
        for uid, files in _list_series(test, test.name, problems, file_ids=True).items():
            cases.append(
                CaseFiles(
                    case_id=uid, image=test, mask=None, image_files=tuple(files), labelled=False
                )
            )
    return CaseList(cases, problems)


# --------------------------------------------------------------------------------------- cq500

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
    for d in _subdirs(src):
        (found if number(d) is not None else others).append(d)
    for d in others:
        found += [c for c in _subdirs(d) if number(c) is not None]
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
    return _find_by_stem(masks, case_id) or _find_by_stem(masks / case_id, "ICH_mask")


def read_cq500_layout(src: Path, masks: Path | None = None) -> list[CaseFiles]:
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
        series = _list_series(folder, case_id, problems)
        if not series:
            continue
        mask = _cq500_mask(masks, case_id)
        uid = _pick_cq500_series(series, _nifti_depth(mask) if mask is not None else None)
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


# ---------------------------------------------------------------------------------- registry

# ---------------------------------------------------------------------------------------- lesjak

LESJAK_SEQUENCES = ("FLAIR", "T1", "T1POST", "T2")


def read_lesjak_layout(
    src: Path, sequence: str = "FLAIR", extra: tuple[str, ...] = ()
) -> list[CaseFiles]:
    """Lesjak et al. (Neuroinformatics 2017, doi 10.1007/s12021-017-9348-7) multiple-sclerosis
    MRI database, multi-rater consensus masks::

        src/patientNN/FLAIR_<processing>.nii.gz            (also T1_, T1POST_, T2_)
        src/patientNN/GOLD_STANDARD_<processing>.nii.gz    consensus lesion mask

    All sequences of a patient are co-registered (MNI space, 1 mm), so the mask fits every one.
    One case per patient: ``sequence`` is the image, ``extra`` sequences are extra channels.
    """
    src = Path(src)
    for name in (sequence, *extra):
        if name not in LESJAK_SEQUENCES:
            raise ValueError(f"unknown sequence {name!r}; known: {LESJAK_SEQUENCES}")
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (expected the Lesjak MS layout: patientNN/)")
    patients = sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("patient"))
    if not patients:
        raise FileNotFoundError(f"{src}: no patientNN/ folders (expected the Lesjak MS layout)")
    cases = []
    for folder in patients:
        found = {}
        for name in (sequence, *extra):
            images = sorted(folder.glob(f"{name}_*.nii*"))
            if not images:
                raise FileNotFoundError(f"{folder}: no {name}_*.nii(.gz) image")
            found[name] = images[0]
        masks = sorted(folder.glob("GOLD_STANDARD*.nii*"))
        cases.append(
            CaseFiles(
                case_id=folder.name,
                image=found[sequence],
                mask=masks[0] if masks else None,
                modality="MR",
                channels=tuple(found[name] for name in extra),
            )
        )
    return cases


LAYOUTS: dict[str, Callable[[Path], list[CaseFiles]]] = {
    "pairs": read_pairs_layout,
    "phantom": read_pairs_layout,
    "ct_ich": read_ct_ich_layout,
    "seg_cq500": read_seg_cq500_layout,
    "instance2022": read_instance2022_layout,
    "atlas2": read_atlas2_layout,
    "nnunet": read_nnunet_layout,
    "rsna": read_rsna_layout,
    "cq500": read_cq500_layout,
    "lesjak": read_lesjak_layout,
    "lesjak_multi": functools.partial(read_lesjak_layout, extra=("T1", "T2")),  # 3 channels
}


def read_layout(name: str, src: Path) -> tuple[list[CaseFiles], list[dict]]:
    """Reads ``src`` with the ``name`` reader: (cases, problems as {case_id, file, error})."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {name!r}; known: {sorted(LAYOUTS)}")
    cases = LAYOUTS[name](Path(src))
    return list(cases), list(getattr(cases, "problems", []))

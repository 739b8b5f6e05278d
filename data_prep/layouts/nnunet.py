"""nnU-Net v2 raw datasets (and the Medical Segmentation Decathlon layout)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from data_prep.layouts.base import (
    CaseFiles,
    CaseList,
    Layout,
    find_nifti,
    locate,
    nifti_files,
    problem,
)
from data_prep.volumes import CaseError
from lesionjax.core.formats import NIFTI_SUFFIXES, nifti_stem

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


def _nnunet_labels(meta: dict, path: Path) -> tuple[int, ...] | None:
    """The label values dataset.json declares: nnU-Net v2 ``{"background": 0, "lesion": 1}``
    (region-based entries list several values), MSD ``{"0": "background", "1": "edema"}``.
    None when dataset.json has no ``labels``."""
    labels = meta.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, dict) or not labels:
        raise CaseError(f"{path}: 'labels' must be a non-empty object, got {labels!r}")
    values: set[int] = set()
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in labels):  # MSD: value -> name
            values = {int(k) for k in labels}
        else:  # nnU-Net v2: name -> value (or a list of values for a region)
            for v in labels.values():
                values.update(int(x) for x in (v if isinstance(v, list | tuple) else [v]))
    except (TypeError, ValueError):
        raise CaseError(f"{path}: 'labels' values must be integers, got {labels!r}") from None
    return tuple(sorted(values | {0}))


def read_nnunet_layout(src: Path) -> CaseList:
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
    * labels: foreground = any label > 0 (nnU-Net's label 0 is background), ``mask_nonzero``;
      a mask value that dataset.json's ``labels`` does not declare rejects the case, naming the
      value (nnU-Net's dataset integrity check does the same).
    * ``imagesTs`` is not read: nnU-Net never trains on it and it usually has no labels.
    * ``file_ending`` other than .nii.gz / .nii is rejected (only NIfTI is read here).
    """
    root = locate(
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
        p for p in nifti_files(root / "imagesTr") if ending is None or p.name.endswith(ending)
    ]
    if not images:
        raise FileNotFoundError(f"{root / 'imagesTr'}: no NIfTI images (<case>_0000.nii.gz)")
    stems = [nifti_stem(p) for p in images]
    label_stems = {nifti_stem(p) for p in nifti_files(root / "labelsTr")}
    if "channel_names" in meta:
        suffixed = True
    elif label_stems and set(stems) <= label_stems:
        suffixed = False
    else:
        suffixed = all(_CHANNEL.match(s) for s in stems)
    modality = _nnunet_modality(meta)
    mask_labels = _nnunet_labels(meta, root / "dataset.json")
    cases, problems = [], []
    channels: dict[str, dict[str, Path]] = {}
    for image, stem in zip(images, stems, strict=True):
        if suffixed:
            m = _CHANNEL.match(stem)
            if m is None:
                problems.append(
                    problem(stem, image, "image name has no channel suffix _NNNN; ignored")
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
                problem(case_id, first, f"no channel {', '.join(missing)} image for this case")
            )
            continue
        cases.append(
            CaseFiles(
                case_id=case_id,
                image=files["0000"],
                mask=find_nifti(root / "labelsTr", case_id),
                modality=modality,
                mask_nonzero=True,
                mask_labels=mask_labels,
                channels=tuple(files[c] for c in sorted(codes) if c != "0000"),
            )
        )
    return CaseList(cases, problems)


LAYOUTS = (
    Layout(
        "nnunet",
        read_nnunet_layout,
        "nnU-Net v2 / MSD raw: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json",
    ),
)

"""Dataset layouts: each reader turns a folder as downloaded into a list of ``CaseFiles``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

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


def read_pairs_layout(src: Path) -> list[CaseFiles]:
    """The generic layout (also what the phantom generator writes)::

    src/images/<case>.nii.gz    image (HU for CT)
    src/masks/<case>.nii.gz     binary lesion mask (a case without one is an error)
    src/subtypes/<case>.nii.gz  optional hemorrhage subtype map (0 background, 1..5)
    src/icm/<case>.nii.gz       optional intracranial-cavity mask
    """
    src = Path(src)
    images_dir = src / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{src}: no 'images/' folder (expected the pairs layout)")
    cases = []
    for image in sorted(images_dir.iterdir()):
        if not image.name.endswith(NIFTI_SUFFIXES):
            continue
        stem = nifti_stem(image)
        cases.append(
            CaseFiles(
                case_id=stem,
                image=image,
                mask=_find_by_stem(src / "masks", stem),
                subtypes=_find_by_stem(src / "subtypes", stem),
                icm=_find_by_stem(src / "icm", stem),
            )
        )
    if not cases:
        raise FileNotFoundError(f"{images_dir}: no NIfTI images (*.nii, *.nii.gz)")
    return cases


LAYOUTS: dict[str, Callable[[Path], list[CaseFiles]]] = {
    "pairs": read_pairs_layout,
    "phantom": read_pairs_layout,
}

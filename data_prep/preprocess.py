"""Preprocessing as one pure function: a case's files + a plan -> the model's input volume.

``preprocess_case(files, plan)`` reads the case (NIfTI or DICOM, reoriented to RAS+), checks its
mask, normalizes MRI, resamples to the plan's spacing, selects axial slices, resizes them
in-plane and windows the intensities into uint8 channels. It returns a ``PreparedVolume``: the
channels, the mask, the optional cavity mask and slice labels, all on the shard grid, plus the
``GridChain`` that maps a prediction on that grid back to the scan's native voxels. The shard
writer (``data_prep.build_shards``) calls it for every case; applying a trained run to a new
scan calls it with the plan recorded in the run's manifest, so training and inference prepare a
scan the same way.

Slice labels (Z, 6) in ``SLICE_LABELS`` order: "any" is read from the mask as stored in the
shard (after the in-plane resize), so a lesion too small to survive the resize does not make a
"lesion slice" with an empty mask; a subtype flag (from a subtype map or a CSV) only stands on a
slice whose "any" is set. Unlabelled cases (no masks) keep the CSV's labels as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_prep.intensity import normalize_intensity, slice_content
from data_prep.layouts.base import CaseFiles
from data_prep.plan import PreprocessingPlan
from data_prep.resample import resample_mask, resample_to_spacing, resize_inplane
from data_prep.volumes import (
    CaseError,
    Volume,
    binarize_mask,
    check_same_grid,
    load_nifti_ras,
)
from lesionjax.core.geometry import GridChain
from lesionjax.core.labels import SLICE_LABELS
from lesionjax.core.windows import window_to_uint8


@dataclasses.dataclass(frozen=True)
class PreparedVolume:
    """One case on the shard grid (X, Y, Z = the plan's size and the kept slices).

    channels: (X, Y, Z, C) uint8, every window of the image then of each extra input image.
    mask: (X, Y, Z) uint8 {0, 1} (zeros for an unlabelled case). icm: (X, Y, Z) uint8 or None.
    slice_labels: (Z, 6) uint8 in SLICE_LABELS order. grid: the way back to the native grid.
    modality: "CT" | "MR". source_axcodes: orientation of the file as stored.
    """

    case_id: str
    channels: np.ndarray
    mask: np.ndarray
    icm: np.ndarray | None
    slice_labels: np.ndarray
    grid: GridChain
    modality: str
    source_axcodes: tuple[str, str, str]
    labelled: bool

    @property
    def spacing(self) -> np.ndarray:
        """(3,) mm of a shard voxel."""
        return self.grid.shard_spacing


def is_dicom_series(files: CaseFiles) -> bool:
    """The image is a DICOM series (listed files or a folder), not a NIfTI file."""
    return files.image_files is not None or Path(files.image).is_dir()


def load_image(files: CaseFiles) -> Volume:
    """The case's image as a RAS+ Volume: a NIfTI file, or a DICOM series (folder or file list)."""
    if is_dicom_series(files):
        from data_prep.dicom import read_dicom_series

        volume = read_dicom_series(files.image_files or files.image)
    else:
        volume = load_nifti_ras(files.image)
    if volume.modality != files.modality:
        volume = dataclasses.replace(volume, modality=files.modality)
    return volume


def _check_not_constant(data: np.ndarray, path: Path) -> None:
    if float(data.max()) == float(data.min()):
        raise CaseError(f"{path}: constant image (all voxels {data.min():g})")


def _load_channel(path: Path, image: Volume) -> np.ndarray:
    """A co-registered extra input image (another MRI sequence) on the main image's grid."""
    extra = load_nifti_ras(path)
    check_same_grid(extra, image, "channel")
    _check_not_constant(extra.data, path)
    return extra.data


def _labels_from_csv(files: CaseFiles, image: Volume) -> np.ndarray:
    """Per-slice labels given by the dataset (indexed by source slice) -> (Z, 6) in RAS z order."""
    given = np.asarray(files.slice_labels, dtype=np.uint8)
    if given.ndim != 2 or given.shape[1] != len(SLICE_LABELS):
        raise CaseError(
            f"{files.image}: slice labels must have {len(SLICE_LABELS)} columns, got {given.shape}"
        )
    if image.source_slice is None:
        raise CaseError(
            f"{files.image}: per-slice labels given but the stored slice axis is not axial"
        )
    src = np.asarray(image.source_slice)
    if src.max() >= len(given):
        raise CaseError(
            f"{files.image}: {len(given)} slice labels for an image with {src.max() + 1} slices"
        )
    return given[src].copy()


def slice_labels_from_maps(mask: np.ndarray, subtypes: np.ndarray | None) -> np.ndarray:
    """(X, Y, Z) maps -> (Z, 6) uint8 labels in SLICE_LABELS order ("any" from the mask)."""
    z = mask.shape[2]
    labels = np.zeros((z, len(SLICE_LABELS)), np.uint8)
    labels[:, 0] = mask.reshape(-1, z).any(axis=0)
    if subtypes is not None:
        flat = subtypes.reshape(-1, z)
        for k in range(1, len(SLICE_LABELS)):
            labels[:, k] = (flat == k).any(axis=0)
    return labels


def select_axial_slices(
    data: np.ndarray,
    modality: str,
    *,
    slice_range: Sequence[int] | None = None,
    min_content: float = 0.0,
) -> np.ndarray:
    """Indices of the axial slices to keep: inside ``slice_range`` (Python slice semantics, so
    (70, 90) keeps 70..89 and negative bounds count from the top) with ``min_content`` tissue
    (``intensity.slice_content``)."""
    keep = np.arange(data.shape[2])
    if slice_range is not None:
        keep = keep[slice(int(slice_range[0]), int(slice_range[1]))]
    if min_content > 0.0:
        keep = keep[slice_content(data, modality)[keep] >= min_content]
    return keep


def target_files(files: CaseFiles, target: str) -> CaseFiles:
    """The case as a plan with ``target`` sees it: "lesion" as it is; "cavity": its
    intracranial-cavity mask (``icm``) stands in for the lesion mask (a binary {0, 1} map, no
    subtype map), so cavity models train and are scored by the lesion pipeline unchanged;
    "slice_labels": as it is (``preprocess_case`` then keeps the slice labels its masks give
    and drops the masks: a slice-labelled pool, as RSNA's)."""
    if target in ("lesion", "slice_labels"):
        return files
    if target != "cavity":
        raise CaseError(f"{files.image}: unknown target {target!r} (lesion or cavity)")
    if files.icm is None:
        raise CaseError(
            f"{files.image}: no intracranial-cavity mask (icm) for case {files.case_id}; a "
            "cavity model trains and is scored only on cases that have one"
        )
    return dataclasses.replace(
        files,
        mask=files.icm,
        mask_nonzero=False,
        mask_labels=None,
        subtypes=None,
        slice_labels=None,
        labelled=True,
    )


def target_spacing(plan, spacing, shape) -> tuple[float, float, float] | None:
    """The spacing a case is resampled to: the plan's ``spacing``, with z set so the volume
    has ``axial_slices`` slices when the plan says so (the z extent kept); None for none."""
    if plan.spacing is None and plan.axial_slices is None:
        return None
    out = [float(v) for v in (plan.spacing if plan.spacing is not None else spacing)]
    if plan.axial_slices is not None:
        out[2] = float(spacing[2]) * int(shape[2]) / int(plan.axial_slices)
    return tuple(out)


def preprocess_case(files: CaseFiles, plan: PreprocessingPlan) -> PreparedVolume:
    """Reads and prepares one case (see the module docstring). Raises CaseError naming the file
    and the problem for anything that makes the case unusable."""
    files = target_files(files, plan.target)
    if files.modality != plan.modality:
        raise CaseError(
            f"{files.image}: a {files.modality} image, but the plan is for {plan.modality} "
            f"({plan.dataset})"
        )
    if files.labelled and files.mask is None:
        raise CaseError(f"{files.image}: no mask found for case {files.case_id}")
    image = load_image(files)
    _check_not_constant(image.data, files.image)
    if files.labelled:
        mask = binarize_mask(
            load_nifti_ras(files.mask),
            image,
            nonzero=files.mask_nonzero,
            labels=files.mask_labels,
        )
    else:
        mask = np.zeros(image.data.shape, np.uint8)
    subtypes = icm = brain = None
    if files.subtypes is not None:
        sub_vol = load_nifti_ras(files.subtypes)
        if sub_vol.data.shape != image.data.shape:
            raise CaseError(f"{files.subtypes}: shape {sub_vol.data.shape} != image shape")
        subtypes = np.rint(sub_vol.data).astype(np.uint8)
    if files.icm is not None:
        icm = binarize_mask(load_nifti_ras(files.icm), image)
    if files.brain_mask is not None:
        brain = binarize_mask(load_nifti_ras(files.brain_mask), image)
    extras = [_load_channel(path, image) for path in files.channels]
    csv_labels = _labels_from_csv(files, image) if files.slice_labels is not None else None

    # ---- intensities: MRI normalized to [0, 1] over its foreground, CT stays in HU
    data = image.data
    if image.modality == "MR":
        data, *extras = (
            normalize_intensity(x, brain, percentiles=plan.normalize, method=plan.normalize_method)
            for x in [data, *extras]
        )

    # ---- resampling to the plan's spacing (and along z to the plan's slice count)
    affine, spacing = image.affine, np.asarray(image.spacing, np.float64)
    target = target_spacing(plan, spacing, data.shape)
    if target is not None:
        src_affine, src_spacing = affine, spacing
        data, (mask, icm), subtypes, affine, spacing, z_source = resample_to_spacing(
            data, [mask, icm], subtypes, affine, spacing, target
        )
        extras = [
            resample_to_spacing(x, [], None, src_affine, src_spacing, target)[0] for x in extras
        ]
        if csv_labels is not None:
            csv_labels = csv_labels[z_source]
    resampled_shape = tuple(int(n) for n in data.shape)

    # ---- axial slice selection
    keep = select_axial_slices(
        data, image.modality, slice_range=plan.slice_range, min_content=plan.min_content
    )
    if keep.size == 0:
        raise CaseError(f"{files.image}: no slice left after slice selection")
    kept_all = keep.size == data.shape[2]
    if not kept_all:
        data, mask = data[:, :, keep], mask[:, :, keep]
        extras = [x[:, :, keep] for x in extras]
        icm = icm[:, :, keep] if icm is not None else None
        subtypes = subtypes[:, :, keep] if subtypes is not None else None
        csv_labels = csv_labels[keep] if csv_labels is not None else None

    # Subtype flags come from the maps at this resolution; "any" is set after the resize.
    labels = csv_labels.copy() if csv_labels is not None else slice_labels_from_maps(mask, subtypes)

    # ---- in-plane resize to the training size
    if plan.size is not None:
        data = resize_inplane(data, plan.size, order=1)
        extras = [resize_inplane(x, plan.size, order=1) for x in extras]
        shard_shape = (int(plan.size[0]), int(plan.size[1]), int(keep.size))
        mask = resample_mask(mask, shard_shape)
        icm = None if icm is None else resample_mask(icm, shard_shape)

    # ---- "any" from the mask as stored in the shard
    if files.labelled:
        labels[:, 0] = mask.reshape(-1, mask.shape[2]).any(axis=0)
        labels[:, 1:] &= labels[:, :1]

    # ---- a slice-labelled pool (pretext tasks): the labels stay, the mask does not
    labelled = bool(files.labelled)
    if plan.target == "slice_labels":
        mask, labelled = np.zeros_like(mask), False

    # (X, Y, Z, C): every window of the main image, then of each extra channel image.
    channels = np.concatenate([window_to_uint8(x, plan.windows) for x in [data, *extras]], axis=-1)
    native_shape, native_affine = image.native_grid()
    grid = GridChain(
        native_shape=native_shape,
        native_affine=native_affine,
        ras_shape=tuple(int(n) for n in image.data.shape),
        ras_affine=image.affine,
        resampled_shape=resampled_shape,
        resampled_affine=affine,
        kept_slices=None if kept_all else tuple(int(k) for k in keep),
        shard_shape=tuple(int(n) for n in channels.shape[:3]),
    )
    return PreparedVolume(
        case_id=files.case_id,
        channels=channels,
        mask=mask.astype(np.uint8),
        icm=None if icm is None else icm.astype(np.uint8),
        slice_labels=labels,
        grid=grid,
        modality=image.modality,
        source_axcodes=tuple(image.source_axcodes),
        labelled=labelled,
    )


def native_mask(files: CaseFiles, grid: GridChain, target: str = "lesion") -> np.ndarray:
    """The case's lesion mask (``target="cavity"``: its cavity mask) on its native grid (the
    image file's voxels as stored; a DICOM series: its de-tilted volume's), binarized as
    `preprocess_case` binarizes it: the ground truth a prediction mapped back with
    ``grid.to_native`` is scored against."""
    files = target_files(files, target)
    if files.mask is None:
        raise CaseError(f"{files.image}: no mask found for case {files.case_id}")
    mask = load_nifti_ras(files.mask)
    # binarize_mask checks the mask against its image's grid: the RAS grid the chain recorded.
    image = Volume(
        data=np.broadcast_to(np.zeros((), np.float32), grid.ras_shape),
        affine=np.asarray(grid.ras_affine, float),
        spacing=tuple(float(v) for v in np.linalg.norm(grid.ras_affine[:3, :3], axis=0)),
        source_axcodes=("R", "A", "S"),
        path=Path(files.image),
    )
    binary = binarize_mask(mask, image, nonzero=files.mask_nonzero, labels=files.mask_labels)
    return grid.ras_to_native(binary)

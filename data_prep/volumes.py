"""Reading NIfTI volumes into RAS+ voxel order, with errors that name the file and the problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


class CaseError(ValueError):
    """A problem with one case's files; the build reports it and goes on with the others."""


@dataclasses.dataclass(frozen=True)
class Volume:
    """A volume reoriented to RAS+ (axes: left->right, posterior->anterior, inferior->superior).

    data: (X, Y, Z) float32; affine: (4, 4) voxel -> world (mm, RAS); spacing: (3,) mm;
    source_axcodes: orientation codes of the file as stored (to write predictions back).
    source_slice: (Z,) int, for each output axial slice the index of the source slice it comes
    from (or is nearest to after resampling): the stored z index of a NIfTI file, or the index
    into the list of DICOM files given to the reader. None when the stored slice axis is not
    the axial one (then per-slice labels from a CSV cannot be attached).
    modality: "CT" (data in HU) or "MR" (arbitrary units until normalized).
    native_affine, native_shape: the grid as stored in the file (before reorientation), where
    predictions are written back; None for a volume read straight into RAS+ (a DICOM series,
    whose native grid is the de-tilted volume itself).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source_axcodes: tuple[str, str, str]
    path: Path
    source_slice: np.ndarray | None = None
    modality: str = "CT"
    native_affine: np.ndarray | None = None
    native_shape: tuple[int, int, int] | None = None

    def native_grid(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """(shape, affine) of the native grid (see the class docstring)."""
        if self.native_affine is None:
            return tuple(self.data.shape), self.affine
        return tuple(self.native_shape), self.native_affine


def load_nifti_ras(path: Path, *, dtype=np.float32) -> Volume:
    """Loads a 3D NIfTI file and reorients it to the closest canonical (RAS+) voxel order."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        source_axcodes = nib.aff2axcodes(img.affine)
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.dataobj, dtype=dtype)
    except CaseError:
        raise
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
        raise CaseError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        raise CaseError(f"{path}: {n_bad} voxels are NaN or infinite")
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return Volume(
        data,
        canonical.affine.astype(np.float64),
        zooms,
        tuple(source_axcodes),
        path,
        source_slice=_axial_source_slices(img.affine, data.shape[2]),
        native_affine=np.asarray(img.affine, np.float64),
        native_shape=tuple(int(n) for n in img.shape[:3]),
    )


def _axial_source_slices(stored_affine: np.ndarray, n: int) -> np.ndarray | None:
    """For each RAS z index, the stored slice index, when the stored third axis is the axial one."""
    ornt = nib.io_orientation(stored_affine)  # row i: stored axis i -> (RAS axis, flip)
    axis, flip = int(ornt[2, 0]), int(ornt[2, 1])
    if axis != 2:
        return None
    k = np.arange(n)
    return k[::-1].copy() if flip < 0 else k


def check_same_grid(volume: Volume, image: Volume, what: str) -> None:
    """A mask or extra input image must lie on its image's voxel grid (shape and affine)."""
    if volume.data.shape != image.data.shape:
        raise CaseError(
            f"{volume.path}: {what} shape {volume.data.shape} != image shape {image.data.shape}"
        )
    if not np.allclose(volume.affine, image.affine, atol=1e-3):
        raise CaseError(
            f"{volume.path}: {what} affine differs from image affine {image.path}"
            f" (max difference {np.abs(volume.affine - image.affine).max():.4g})"
        )


def binarize_mask(
    mask: Volume,
    image: Volume,
    *,
    nonzero: bool = False,
    labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Checks a mask against its image and returns it as uint8 {0, 1}.

    Accepted values: {0, 1} and {0, 255} (a common export of 8-bit tools). Any other value is
    rejected rather than guessed (a label map with several classes needs an explicit mapping),
    unless ``nonzero``: then the mask is a label map of non-negative integers and every label > 0
    is foreground (the nnU-Net / Decathlon convention for "lesion of any class"); ``labels``
    then lists the values the dataset declares, and a mask holding any other value is rejected
    with the values named (as nnU-Net's dataset integrity check does).
    """
    check_same_grid(mask, image, "mask")
    values = np.unique(mask.data)
    if nonzero and values.min() >= 0 and np.all(values == np.rint(values)):
        if labels is not None:
            undeclared = sorted(set(int(v) for v in values) - {int(v) for v in labels})
            if undeclared:
                shown = ", ".join(str(v) for v in undeclared[:8])
                declared = ", ".join(str(v) for v in sorted(labels))
                raise CaseError(
                    f"{mask.path}: mask value(s) {shown} not declared in dataset.json labels "
                    f"({declared})"
                )
        return (mask.data > 0).astype(np.uint8)
    if set(values.tolist()) <= {0.0, 1.0}:
        return mask.data.astype(np.uint8)
    if set(values.tolist()) <= {0.0, 255.0}:
        return (mask.data > 0).astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:8])
    raise CaseError(f"{mask.path}: mask values {{{shown}}} are not binary ({{0,1}} or {{0,255}})")

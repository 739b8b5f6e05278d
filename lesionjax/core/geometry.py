"""Voxel grids and the chain of steps between a scan's native grid and the shard grid.

Preprocessing (``data_prep.preprocess``) takes a scan through four steps, each recorded here so
that a prediction made on the shard grid can be carried back to the scan's own voxels:

1. reorientation: the stored voxel order -> RAS+ (``nibabel.as_closest_canonical``; a DICOM
   series is read straight into RAS+, so its native grid is the de-tilted volume's);
2. resampling to a target spacing (``scipy.ndimage.zoom`` with ``grid_mode=True``: the volume's
   extent is kept, sizes are rounded to whole voxels);
3. axial slice selection (an index range and/or enough tissue);
4. in-plane resize of every kept slice to the training size (``zoom``, ``grid_mode=True``).

``GridChain.to_native`` inverts them in reverse order: a zoom back to the previous shape (with
``grid_mode=True`` the inverse of a zoom from A to B is the zoom from B to A), the dropped slices
filled with ``fill``, and the inverse axis permutation and flips. Reorientation and slice
selection are exact; the two zooms are interpolations (``order`` 1 for probabilities, 0 for
labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

RAS_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """(3,) voxel spacing (mm) of a (4, 4) voxel -> world affine: the lengths of its columns."""
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL (spacing in mm)."""
    return float(np.prod(np.asarray(spacing, float))) / 1000.0


def zoom_affine(affine: np.ndarray, shape_in: Sequence[int], shape_out: Sequence[int]):
    """The affine of a ``zoom(..., grid_mode=True)`` from ``shape_in`` to ``shape_out``.

    Output voxel k sits at input coordinate ``s * k + (s - 1) / 2`` with ``s = in / out`` per
    axis, so world coordinates of the volume's extent are preserved.
    """
    scale = np.asarray(shape_in, float) / np.asarray(shape_out, float)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0
    return np.asarray(affine, float) @ step


def zoom_to_shape(volume: np.ndarray, shape: Sequence[int], *, order: int) -> np.ndarray:
    """``volume`` resampled to ``shape`` over the same extent (``zoom``, ``grid_mode=True``)."""
    from scipy import ndimage

    shape = tuple(int(n) for n in shape)
    if tuple(volume.shape) == shape:
        return volume
    factors = [b / a for a, b in zip(volume.shape, shape, strict=True)]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    if out.shape != shape:  # zoom rounds n * factor; a float error could miss by one voxel
        raise ValueError(f"zoom to {shape} gave {out.shape}")
    return out


def orientation_to_ras(native_affine: np.ndarray) -> np.ndarray:
    """nibabel orientation (3, 2) taking the stored voxel axes to the closest RAS+ axes."""
    import nibabel as nib

    return nib.orientations.io_orientation(np.asarray(native_affine, float))


def reorient(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Applies a nibabel orientation transform to the first three axes of ``data``."""
    import nibabel as nib

    return np.ascontiguousarray(nib.orientations.apply_orientation(data, ornt))


@dataclasses.dataclass(frozen=True)
class GridChain:
    """Native grid -> RAS+ -> resampled -> kept slices -> shard grid (see the module docstring).

    native_shape, native_affine: the scan's voxel grid as stored (a DICOM series: its
        de-tilted RAS+ volume). ras_shape, ras_affine: after reorientation (same voxels).
    resampled_shape, resampled_affine: after resampling to the plan's spacing (the RAS grid
        when the plan keeps the scan's spacing).
    kept_slices: the axial indices of the resampled grid that were kept (None: all).
    shard_shape: (X, Y, Z) of the shard volume (Z = number of kept slices).
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    ras_shape: tuple[int, int, int]
    ras_affine: np.ndarray
    resampled_shape: tuple[int, int, int]
    resampled_affine: np.ndarray
    kept_slices: tuple[int, ...] | None
    shard_shape: tuple[int, int, int]

    @property
    def selected_shape(self) -> tuple[int, int, int]:
        """The resampled grid after slice selection, before the in-plane resize."""
        x, y, _ = self.resampled_shape
        return (x, y, self.shard_shape[2])

    @property
    def shard_spacing(self) -> np.ndarray:
        """(3,) mm of a shard voxel (the in-plane resize stretches x and y)."""
        sel = np.asarray(self.selected_shape, float)
        return spacing_of(self.resampled_affine) * sel / np.asarray(self.shard_shape, float)

    def to_native(self, volume: np.ndarray, *, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """A volume on the shard grid (X, Y, Z) -> the same quantity on the native grid.

        order: 1 (linear) for probabilities, 0 (nearest) for label maps. Slices that the slice
        selection dropped get ``fill``. The result has ``native_shape`` and lies on
        ``native_affine``: write it with that affine and it overlays the input scan.
        """
        volume = np.asarray(volume)
        if tuple(volume.shape) != tuple(self.shard_shape):
            raise ValueError(f"volume shape {volume.shape} != shard shape {self.shard_shape}")
        x = zoom_to_shape(volume, self.selected_shape, order=order)
        if self.kept_slices is not None:
            full = np.full(self.resampled_shape, fill, dtype=x.dtype)
            full[:, :, list(self.kept_slices)] = x
            x = full
        return self.ras_to_native(zoom_to_shape(x, self.ras_shape, order=order))

    def ras_to_native(self, volume: np.ndarray) -> np.ndarray:
        """A volume on the RAS+ grid (``ras_shape``) -> the same voxels in the native order."""
        volume = np.asarray(volume)
        if tuple(volume.shape[:3]) != tuple(self.ras_shape):
            raise ValueError(f"volume shape {volume.shape} != RAS shape {self.ras_shape}")
        return reorient(volume, _ras_to_native(self.native_affine))

    def to_dict(self) -> dict:
        return {
            "native_shape": list(self.native_shape),
            "native_affine": np.asarray(self.native_affine).tolist(),
            "ras_shape": list(self.ras_shape),
            "ras_affine": np.asarray(self.ras_affine).tolist(),
            "resampled_shape": list(self.resampled_shape),
            "resampled_affine": np.asarray(self.resampled_affine).tolist(),
            "kept_slices": None if self.kept_slices is None else list(self.kept_slices),
            "shard_shape": list(self.shard_shape),
        }

    @classmethod
    def from_dict(cls, d: dict) -> GridChain:
        kept = d.get("kept_slices")
        return cls(
            native_shape=tuple(int(v) for v in d["native_shape"]),
            native_affine=np.asarray(d["native_affine"], float),
            ras_shape=tuple(int(v) for v in d["ras_shape"]),
            ras_affine=np.asarray(d["ras_affine"], float),
            resampled_shape=tuple(int(v) for v in d["resampled_shape"]),
            resampled_affine=np.asarray(d["resampled_affine"], float),
            kept_slices=None if kept is None else tuple(int(k) for k in kept),
            shard_shape=tuple(int(v) for v in d["shard_shape"]),
        )


def _ras_to_native(native_affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.ornt_transform(RAS_ORNT, orientation_to_ras(native_affine))

"""Resampling a volume to a target spacing, and resizing axial slices in-plane.

Both are ``scipy.ndimage.zoom`` with ``grid_mode=True`` (``lesionjax.core.geometry``): the
volume's extent in world coordinates is kept and voxel centres move accordingly, which is what
``GridChain.to_native`` inverts. Images are interpolated linearly, binary masks linearly then
thresholded at 0.5 (thin structures survive better than with nearest neighbour), label maps by
nearest neighbour. The in-plane resize never resamples across z.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionjax.core.geometry import zoom_affine, zoom_to_shape


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]):
    """The grid size for ``target`` spacing over the same extent (at least one voxel per axis)."""
    n = np.rint(np.asarray(shape) * np.asarray(spacing, float) / np.asarray(target, float))
    return tuple(int(v) for v in np.maximum(1, n))


def resample_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A binary mask on another grid: linear interpolation, then >= 0.5; uint8 {0, 1}."""
    if tuple(mask.shape) == tuple(shape):
        return mask.astype(np.uint8)
    return (zoom_to_shape(mask.astype(np.float32), shape, order=1) >= 0.5).astype(np.uint8)


def resample_to_spacing(
    data: np.ndarray,
    masks: Sequence[np.ndarray | None],
    label_map: np.ndarray | None,
    affine: np.ndarray,
    spacing: Sequence[float],
    target: Sequence[float],
) -> tuple[np.ndarray, list, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """Resamples a volume and its masks to ``target`` spacing (mm).

    Returns (data, masks, label_map, affine, spacing, z_source): ``spacing`` is the exact new
    spacing (sizes are rounded to whole voxels), ``z_source[k]`` the input slice nearest to output
    slice k (to carry per-slice labels).
    """
    shape = target_shape(data.shape, spacing, target)
    if shape == tuple(data.shape):
        return data, list(masks), label_map, affine, np.asarray(spacing, float), np.arange(shape[2])
    out = zoom_to_shape(data, shape, order=1)
    out_masks = [None if m is None else resample_mask(m, shape) for m in masks]
    out_labels = None if label_map is None else zoom_to_shape(label_map, shape, order=0)
    scale = np.asarray(data.shape) / np.asarray(shape)  # input voxels per output voxel
    new_spacing = np.asarray(spacing, float) * scale
    # Output slice k sits at input z = scale * k + (scale - 1) / 2 (grid_mode=True).
    z = scale[2] * np.arange(shape[2]) + (scale[2] - 1.0) / 2.0
    z_source = np.clip(np.rint(z), 0, data.shape[2] - 1).astype(np.int64)
    return out, out_masks, out_labels, zoom_affine(affine, data.shape, shape), new_spacing, z_source


def resize_inplane(volume: np.ndarray, size: Sequence[int], *, order: int) -> np.ndarray:
    """(X, Y, Z) -> (size[0], size[1], Z); slices are never resampled across z."""
    return zoom_to_shape(volume, (int(size[0]), int(size[1]), volume.shape[2]), order=order)

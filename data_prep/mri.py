"""Intensity normalization, resampling and slice selection (MRI first, CT where it applies).

MRI has no absolute intensity scale, so an MR volume is normalized before windowing, over the
foreground (the brain mask when one is given, else the non-zero voxels, which is the brain in
skull-stripped data and the head otherwise), to [0, 1]; the ``unit`` window then stores it as uint8.
Two methods:

- ``percentile`` (default): clip to the (lo, hi) ``percentiles`` of the foreground, scale linearly.
- ``zscore`` (nnU-Net's MRI scheme): (x - mean) / std over the foreground, then z in
  [-ZSCORE_RANGE, +ZSCORE_RANGE] mapped linearly to [0, 1] (one uint8 step = 0.04 std). Less
  sensitive to lesion load than the upper percentile: in FLAIR with many bright lesions the 99.5th
  percentile falls inside the lesions, which darkens the whole scan relative to a scan with few.
 With a brain mask, voxels outside
it are set to 0 (skull stripping). CT stays in HU and is windowed as it is.

Resampling to a target spacing is linear for images and linear-then-threshold-at-0.5 for binary
masks (thin structures survive better than with nearest neighbour), nearest for label maps; the
affine is updated so world coordinates are preserved. Slice selection keeps an index range (the
residual U-Net paper keeps axial slices 70-90 of each ATLAS volume) and/or slices with enough
tissue ("content": the fraction of voxels above -300 HU for CT, above 0.05 for normalized MR).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from data_prep.volumes import CaseError

DEFAULT_PERCENTILES = (0.5, 99.5)
ZSCORE_RANGE = 5.0
NORMALIZE_METHODS = ("percentile", "zscore")
CONTENT_THRESHOLD = {"CT": -300.0, "MR": 0.05}


def check_settings(settings: dict) -> None:
    """Rejects impossible preprocessing settings before any volume is read."""
    norm = settings.get("normalize")
    if norm is not None and not (len(norm) == 2 and 0.0 <= norm[0] < norm[1] <= 100.0):
        raise ValueError(f"normalize percentiles must be 0 <= lo < hi <= 100, got {norm}")
    spacing = settings.get("spacing")
    if spacing is not None and not (len(spacing) == 3 and all(v > 0 for v in spacing)):
        raise ValueError(f"target spacing must be three positive numbers (mm), got {spacing}")
    rng = settings.get("slice_range")
    if rng is not None and len(rng) != 2:
        raise ValueError(f"slice range must be (lo, hi), got {rng}")
    method = settings.get("normalize_method") or "percentile"
    if method not in NORMALIZE_METHODS:
        raise ValueError(f"unknown normalization {method!r}; known: {NORMALIZE_METHODS}")
    content = settings.get("min_content", 0.0)
    if not 0.0 <= content < 1.0:
        raise ValueError(f"min_content must be in [0, 1), got {content}")


def normalize_intensity(
    data: np.ndarray,
    brain_mask: np.ndarray | None = None,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    method: str = "percentile",
) -> np.ndarray:
    """(X, Y, Z) MR intensities -> float32 in [0, 1] (see the module docstring)."""
    if brain_mask is not None:
        region = brain_mask.astype(bool)
        if not region.any():
            raise CaseError("brain mask is empty")
    else:
        # Non-zero voxels: the brain of a skull-stripped scan, the head of a masked one.
        region = data != 0
        if region.sum() < 0.01 * data.size:  # almost nothing non-zero: use every voxel
            region = np.ones(data.shape, bool)
    values = data[region]
    if method == "zscore":
        mean, std = float(values.mean()), float(values.std())
        lo, hi = mean - ZSCORE_RANGE * std, mean + ZSCORE_RANGE * std
    else:
        lo, hi = np.percentile(values, [float(percentiles[0]), float(percentiles[1])])
    if not hi > lo:
        raise CaseError(f"intensities are constant in the normalization region ({lo:g})")
    out = (data.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    # Outside the foreground (the brain mask, or the zero background of a skull-stripped or
    # masked scan) stays 0, so "no tissue" is 0 whatever the method (z-scoring would otherwise
    # lift the background to (0 - mean) / std).
    out[~region] = 0.0
    return out


def _zoom_factors(shape, spacing, target) -> np.ndarray:
    """Per-axis output/input size ratio for a target spacing (at least one voxel per axis)."""
    n_out = np.maximum(1, np.rint(np.asarray(shape) * np.asarray(spacing) / np.asarray(target)))
    return n_out / np.asarray(shape)


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
    zoom = _zoom_factors(data.shape, spacing, target)
    if np.allclose(zoom, 1.0):
        return (
            data,
            list(masks),
            label_map,
            affine,
            np.asarray(spacing, float),
            np.arange(data.shape[2]),
        )
    out = ndimage.zoom(data, zoom, order=1, mode="nearest", grid_mode=True)
    out_masks = [
        None
        if m is None
        else (
            ndimage.zoom(m.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True) >= 0.5
        ).astype(np.uint8)
        for m in masks
    ]
    out_labels = None
    if label_map is not None:
        out_labels = ndimage.zoom(label_map, zoom, order=0, mode="nearest", grid_mode=True)
    scale = np.asarray(data.shape) / np.asarray(out.shape)  # input voxels per output voxel
    # Output voxel k sits at input coordinate scale * k + (scale - 1) / 2 (grid_mode=True).
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0
    new_spacing = np.asarray(spacing, float) * scale
    z = scale[2] * np.arange(out.shape[2]) + (scale[2] - 1.0) / 2.0
    z_source = np.clip(np.rint(z), 0, data.shape[2] - 1).astype(np.int64)
    return out, out_masks, out_labels, affine @ step, new_spacing, z_source


def slice_content(data: np.ndarray, modality: str) -> np.ndarray:
    """(Z,) fraction of each axial slice's voxels that are tissue (see CONTENT_THRESHOLD)."""
    threshold = CONTENT_THRESHOLD.get(modality, CONTENT_THRESHOLD["MR"])
    z = data.shape[2]
    return (data.reshape(-1, z) > threshold).mean(axis=0)


def select_slices(
    data: np.ndarray,
    modality: str,
    *,
    slice_range: Sequence[int] | None = None,
    min_content: float = 0.0,
) -> np.ndarray:
    """Indices of the axial slices to keep: inside ``slice_range`` (Python slice semantics, so
    (70, 90) keeps 70..89 and negative bounds count from the top) with ``min_content`` tissue."""
    z = data.shape[2]
    keep = np.arange(z)
    if slice_range is not None:
        keep = keep[slice(int(slice_range[0]), int(slice_range[1]))]
    if min_content > 0.0:
        keep = keep[slice_content(data, modality)[keep] >= min_content]
    return keep

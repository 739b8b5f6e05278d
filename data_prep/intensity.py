"""Intensity normalization (MRI) and tissue content per slice (MRI and CT).

MRI has no absolute intensity scale, so an MR volume is normalized before windowing, over the
foreground (the brain mask when one is given, else every voxel that is not the constant
background, ``foreground_mask``), to [0, 1]; the ``unit`` window then stores it as uint8.
Two methods:

- ``percentile`` (default): clip to the (lo, hi) ``percentiles`` of the foreground, scale linearly.
- ``zscore`` (nnU-Net's MRI scheme): (x - mean) / std over the foreground, then z in
  [-ZSCORE_RANGE, +ZSCORE_RANGE] mapped linearly to [0, 1] (one uint8 step = 0.04 std). Less
  sensitive to lesion load than the upper percentile: in FLAIR with many bright lesions the 99.5th
  percentile falls inside the lesions, which darkens the whole scan relative to a scan with few.

The background is what a skull-stripped or masked scan fills its outside with: a constant, 0 in
most releases but any value in data normalized upstream (a mean/std-normalized BraTS-style
volume has its background at -mean/std, e.g. -0.8). It is found from the volume's border: the
value most of the border voxels take, when it also fills a good part of the volume. Without a
constant background (raw scans with noise outside the head) the foreground is every voxel.
Outside the foreground (or the brain mask) the output is 0, so "no tissue" is 0 whatever the
method and whatever the upstream scaling. CT stays in HU and is windowed as it is.

Tissue content of an axial slice (what the slice selection's ``min_content`` rule reads): the
fraction of its voxels above -300 HU for CT, above 0.05 for normalized MR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_prep.volumes import CaseError

ZSCORE_RANGE = 5.0
CONTENT_THRESHOLD = {"CT": -300.0, "MR": 0.05}
# A border value is the background when it covers this much of the border and of the volume.
BACKGROUND_BORDER_FRACTION = 0.5
BACKGROUND_VOLUME_FRACTION = 0.05


def background_value(data: np.ndarray) -> float | None:
    """The constant background of a volume (see the module docstring), or None."""
    faces = [
        np.take(data, index, axis=axis).ravel()
        for axis in range(data.ndim)
        for index in (0, data.shape[axis] - 1)
    ]
    border = np.concatenate(faces)
    values, counts = np.unique(border, return_counts=True)
    k = int(np.argmax(counts))
    value = values[k]
    if counts[k] < BACKGROUND_BORDER_FRACTION * border.size:
        return None
    if np.count_nonzero(data == value) < BACKGROUND_VOLUME_FRACTION * data.size:
        return None
    return float(value)


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: the voxels that are not the constant background (all without one)."""
    value = background_value(data)
    if value is None:
        return np.ones(data.shape, bool)
    region = data != np.asarray(value, data.dtype)
    # Almost nothing else (a mostly empty volume): normalize over every voxel.
    return region if region.sum() >= 0.01 * data.size else np.ones(data.shape, bool)


def normalize_intensity(
    data: np.ndarray,
    brain_mask: np.ndarray | None = None,
    *,
    percentiles: Sequence[float] = (0.5, 99.5),
    method: str = "percentile",
) -> np.ndarray:
    """(X, Y, Z) MR intensities -> float32 in [0, 1] (see the module docstring)."""
    if brain_mask is not None:
        region = brain_mask.astype(bool)
        if not region.any():
            raise CaseError("brain mask is empty")
    else:
        # Not the background: the brain of a skull-stripped scan, the head of a masked one.
        region = foreground_mask(data)
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
    # Outside the foreground stays 0, so "no tissue" is 0 whatever the method (z-scoring would
    # otherwise lift the background to (background - mean) / std).
    out[~region] = 0.0
    return out


def slice_content(data: np.ndarray, modality: str) -> np.ndarray:
    """(Z,) fraction of each axial slice's voxels that are tissue (see CONTENT_THRESHOLD)."""
    threshold = CONTENT_THRESHOLD.get(modality, CONTENT_THRESHOLD["MR"])
    z = data.shape[2]
    return (data.reshape(-1, z) > threshold).mean(axis=0)

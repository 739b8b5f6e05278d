"""Intensity normalization (MRI) and tissue content per slice (MRI and CT).

MRI has no absolute intensity scale, so an MR volume is normalized before windowing, over the
foreground (the brain mask when one is given, else the non-zero voxels, which is the brain in
skull-stripped data and the head otherwise), to [0, 1]; the ``unit`` window then stores it as uint8.
Two methods:

- ``percentile`` (default): clip to the (lo, hi) ``percentiles`` of the foreground, scale linearly.
- ``zscore`` (nnU-Net's MRI scheme): (x - mean) / std over the foreground, then z in
  [-ZSCORE_RANGE, +ZSCORE_RANGE] mapped linearly to [0, 1] (one uint8 step = 0.04 std). Less
  sensitive to lesion load than the upper percentile: in FLAIR with many bright lesions the 99.5th
  percentile falls inside the lesions, which darkens the whole scan relative to a scan with few.

With a brain mask, voxels outside it are set to 0 (skull stripping). CT stays in HU and is
windowed as it is.

Tissue content of an axial slice (what the slice selection's ``min_content`` rule reads): the
fraction of its voxels above -300 HU for CT, above 0.05 for normalized MR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_prep.volumes import CaseError

ZSCORE_RANGE = 5.0
CONTENT_THRESHOLD = {"CT": -300.0, "MR": 0.05}


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


def slice_content(data: np.ndarray, modality: str) -> np.ndarray:
    """(Z,) fraction of each axial slice's voxels that are tissue (see CONTENT_THRESHOLD)."""
    threshold = CONTENT_THRESHOLD.get(modality, CONTENT_THRESHOLD["MR"])
    z = data.shape[2]
    return (data.reshape(-1, z) > threshold).mean(axis=0)

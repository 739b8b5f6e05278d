"""The 3D plan: from a dataset's fingerprint to the target spacing, patch, batch and pooling of
the 3D U-Net, for the full-resolution stage and the low-resolution stage 1 of the cascade.

The rules are nnU-Net's (Isensee et al. 2021, ``ExperimentPlanner``), restated:

- **target spacing**: the median spacing per axis; when the data is strongly anisotropic (the
  coarsest axis' median spacing > 3x the finest *and* its median size < 1/3 of the others'),
  that axis takes the 10th percentile of its spacings instead (not finer than the other axes):
  resampling thick slices to the median thickness would invent detail on most cases.
- **pooling per axis** (``pools_for``): at each level, pool (stride 2) every axis whose current
  spacing is less than twice the finest current spacing and whose feature map stays at least
  ``min_feature_map`` (4) voxels; stop when no axis can be pooled (a single axis is pooled only
  while it is at least 3 x min_feature_map). The patch is then rounded up to a multiple of each
  axis' total pooling.
- **patch size**: start from a patch whose shape follows 1/spacing with 256^3 voxels, clipped to
  the median shape; while the estimated training memory at batch 2 exceeds the budget, shrink
  the axis whose patch is largest relative to the median shape by one pooling multiple.
- **batch size**: as many patches as the budget holds (at least 2), and no more than cover 5 %
  of the dataset's voxels per step.
- **low resolution** (stage 1 of the cascade): the spacing grows by 3 % per step (the finer axes
  first when anisotropic) until one patch covers at least 1/4 of the median volume; nnU-Net
  plans no low-resolution stage when the full-resolution patch already does, ``min_lowres_factor``
  forces one that is at least that much coarser (the cascade needs a stage 1).

Memory is estimated (``estimate_memory``) as the activations the training step keeps for the
backward pass: per level and voxel, about 15 values per feature (encoder and decoder: conv,
norm and activation outputs of two convs, the upsampled map and the concatenation), in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ANISOTROPY = 3.0
MIN_FEATURE_MAP = 4
INITIAL_PATCH_VOXELS = 256**3
MAX_BATCH_FRACTION = 0.05
LOWRES_COVERAGE = 0.25
LOWRES_STEP = 1.03
ACTIVATIONS_PER_FEATURE = 15
BASE_FEATURES = 32
MAX_FEATURES = 320
DEFAULT_MEMORY_GB = 8.0


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]):
    """nnU-Net's full-resolution target spacing (x, y, z) mm from every case's spacing and shape."""
    spacings = np.asarray(spacings, float)
    shapes = np.asarray(shapes, float)
    target = np.percentile(spacings, 50, axis=0)
    sizes = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > ANISOTROPY * max(target[i] for i in others)
    aniso_voxels = sizes[worst] * ANISOTROPY < min(sizes[i] for i in others)
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        finest_other = max(target[i] for i in others)
        if coarse < finest_other:
            coarse = finest_other + 1e-5
        target[worst] = coarse
    return tuple(float(v) for v in target)


def pools_for(
    spacing: Sequence[float], patch: Sequence[int], min_feature_map: int = MIN_FEATURE_MAP
) -> tuple[list[list[int]], list[int]]:
    """nnU-Net's ``get_pool_and_conv_props`` (pooling part): per level the stride per axis, and
    the patch rounded up to a multiple of each axis' total pooling. Returns (pools, patch)."""
    spacing = [float(s) for s in spacing]
    size = [float(n) for n in patch]
    count = [0, 0, 0]
    pools: list[list[int]] = []
    while True:
        valid = [i for i in range(3) if size[i] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(spacing[i] for i in valid)
        valid = [i for i in valid if spacing[i] / finest < 2]
        if len(valid) == 1 and size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        stride = [1, 1, 1]
        for i in valid:
            stride[i] = 2
            count[i] += 1
            spacing[i] *= 2
            size[i] = math.ceil(size[i] / 2)
        pools.append(stride)
    divisor = [2**c for c in count]
    rounded = [int(math.ceil(n / d) * d) for n, d in zip(patch, divisor, strict=True)]
    return pools, rounded


def divisor_of(pools: Sequence[Sequence[int]]) -> list[int]:
    """What every patch axis must be a multiple of: the product of its strides."""
    return [math.prod(p[i] for p in pools) for i in range(3)]


def features_for(levels: int) -> list[int]:
    return [min(BASE_FEATURES * 2**i, MAX_FEATURES) for i in range(levels)]


def estimate_memory(
    patch: Sequence[int], pools: Sequence[Sequence[int]], batch: int, in_channels: int = 1
) -> float:
    """Estimated bytes of a training step's activations (see the module docstring)."""
    features = features_for(len(pools) + 1)
    voxels = float(math.prod(patch))
    total = in_channels * voxels
    for level, f in enumerate(features):
        if level:
            voxels /= math.prod(pools[level - 1])
        total += ACTIVATIONS_PER_FEATURE * f * voxels
    return 4.0 * batch * total


def _initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    inverse = 1.0 / np.asarray(spacing, float)
    patch = inverse * (INITIAL_PATCH_VOXELS / np.prod(inverse)) ** (1.0 / 3.0)
    return [int(round(min(p, m))) for p, m in zip(patch, median_shape, strict=True)]


def plan_stage(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    total_voxels: float,
    *,
    memory_bytes: float,
    in_channels: int,
) -> dict:
    """Patch, pools, batch and features for one stage at ``spacing``."""
    patch = _initial_patch(spacing, median_shape)
    pools, patch = pools_for(spacing, patch)
    while estimate_memory(patch, pools, 2, in_channels) > memory_bytes:
        ratio = [p / m for p, m in zip(patch, median_shape, strict=True)]
        divisor = divisor_of(pools)
        # The axis largest relative to the median shape, among those that can still shrink.
        order = [i for i in np.argsort(ratio)[::-1] if patch[i] - divisor[i] >= MIN_FEATURE_MAP]
        if not order:
            break
        axis = int(order[0])
        patch[axis] -= divisor[axis]
        pools, patch = pools_for(spacing, patch)
    per_patch = estimate_memory(patch, pools, 1, in_channels)
    batch = max(2, int(memory_bytes // per_patch))
    cap = max(2, int(MAX_BATCH_FRACTION * total_voxels // math.prod(patch)))
    batch = min(batch, cap)
    return {
        "spacing": [float(s) for s in spacing],
        "median_shape": [int(round(m)) for m in median_shape],
        # nnU-Net's "dummy 2D" augmentation: thick slices make the patch flat, and rotations
        # out of the axial plane would interpolate across 5 mm; rotate about z only, fully.
        "rotate_axial_only": bool(max(patch) / patch[2] > ANISOTROPY),
        "patch": [int(p) for p in patch],
        "batch_size": int(batch),
        "pools": pools,
        "features": features_for(len(pools) + 1),
        "memory_bytes": estimate_memory(patch, pools, batch, in_channels),
    }


def _median_shape(spacings, shapes, spacing) -> np.ndarray:
    extent = np.asarray(shapes, float) * np.asarray(spacings, float)
    return np.percentile(extent / np.asarray(spacing, float), 50, axis=0)


def lowres_spacing(
    fullres: Sequence[float],
    spacings,
    shapes,
    patch: Sequence[int],
    *,
    min_factor: float = 1.0,
) -> tuple[float, float, float] | None:
    """Stage 1's spacing: coarser by 3 % steps (finer axes first) until ``patch`` covers
    ``LOWRES_COVERAGE`` of the median volume, and at least ``min_factor`` coarser in every axis
    that was the finest. None when no coarser stage is needed and none is forced."""
    spacing = np.asarray(fullres, float)
    coverage = np.prod(patch) / np.prod(_median_shape(spacings, shapes, spacing))
    if coverage >= LOWRES_COVERAGE and min_factor <= 1.0:
        return None
    finest = spacing.min()
    forced = np.where(spacing < 2 * finest, np.maximum(spacing, finest * min_factor), spacing)
    spacing = forced
    for _ in range(1000):
        median = _median_shape(spacings, shapes, spacing)
        if np.prod(patch) / np.prod(median) >= LOWRES_COVERAGE:
            break
        if spacing.max() > 2 * spacing.min():  # anisotropic: raise the finer axes first
            fine = spacing < 2 * spacing.min()
            spacing = np.where(fine, spacing * LOWRES_STEP, spacing)
        else:
            spacing = spacing * LOWRES_STEP
    return tuple(float(v) for v in spacing)


def make_plan(
    fingerprint: Mapping,
    *,
    memory_gb: float = DEFAULT_MEMORY_GB,
    in_channels: int = 1,
    min_lowres_factor: float = 1.0,
    spacing: Sequence[float] | None = None,
) -> dict:
    """The 3D plan of a dataset from its fingerprint (``data_prep.fingerprint``): ``stages``
    ``fullres`` and (when planned) ``lowres``, each with spacing, median shape, patch, batch
    size, pools and features; ``spacing`` overrides the full-resolution target spacing."""
    spacings = [c["spacing"] for c in fingerprint["cases"]]
    shapes = [c["shape"] for c in fingerprint["cases"]]
    if not spacings:
        raise ValueError("fingerprint without cases: nothing to plan")
    budget = memory_gb * 1024**3
    full = tuple(spacing) if spacing is not None else target_spacing(spacings, shapes)
    median = _median_shape(spacings, shapes, full)
    voxels = float(np.sum(np.prod(np.asarray(shapes, float) * spacings / full, axis=1)))
    stages = {
        "fullres": plan_stage(full, median, voxels, memory_bytes=budget, in_channels=in_channels)
    }
    low = lowres_spacing(
        full, spacings, shapes, stages["fullres"]["patch"], min_factor=min_lowres_factor
    )
    if low is not None:
        low_median = _median_shape(spacings, shapes, low)
        low_voxels = float(np.sum(np.prod(np.asarray(shapes, float) * spacings / low, axis=1)))
        stages["lowres"] = plan_stage(
            low, low_median, low_voxels, memory_bytes=budget, in_channels=in_channels
        )
    return {
        "memory_gb": float(memory_gb),
        "in_channels": int(in_channels),
        "anisotropic": bool(max(full) > ANISOTROPY * min(full)),
        "stages": stages,
    }

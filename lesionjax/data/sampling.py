"""Which volumes and slices a run uses: the volume-level split by the manifest's folds, and the
sampling policy over the training split's slices (all, lesion slices only, or "mixed").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionjax.core.errors import ConfigError
from lesionjax.data.shards import ShardSet

POLICIES = ("all", "lesion", "mixed")


def split_case_ids(shards: ShardSet, test_fold: int, val_fold: int | None) -> dict[str, list[str]]:
    """Volume-level split by the manifest's folds: test = one fold, val = another, train = rest.
    A negative or None ``val_fold`` means no validation set (e.g. leave-one-patient-out)."""
    n = shards.manifest["n_folds"]
    if val_fold is not None and val_fold < 0:
        val_fold = None
    if not 0 <= test_fold < n:
        raise ConfigError(f"data.test_fold={test_fold} is out of range for {n} folds")
    if val_fold is not None and (val_fold == test_fold or not 0 <= val_fold < n):
        raise ConfigError(
            f"data.val_fold={val_fold} must differ from data.test_fold and be < {n} (or -1: none)"
        )
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for v in shards.volumes:
        fold = v["fold"]
        name = "test" if fold == test_fold else "val" if fold == val_fold else "train"
        split[name].append(v["case_id"])
    return split


def sample_training_slices(
    shards: ShardSet,
    case_ids: Sequence[str],
    policy: str,
    *,
    normal_ratio: float = 2.0,
    normal_weight: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Record indices and per-slice loss weights of a split under a sampling policy.

    "all": every slice, weight 1. "lesion": slices with lesion voxels only (ICH-only baseline).
    "mixed": every lesion slice plus ``normal_ratio`` times as many normal slices drawn without
    replacement (seeded, fixed for the run) from the split's normal slices, each normal slice
    weighted ``normal_weight`` (alpha) in the loss. Returns (indices int64, weights float32).
    """
    if policy not in POLICIES:
        raise ConfigError(f"data.policy={policy!r}: expected one of {POLICIES}")
    lesion, normal = [], []
    for case_id in case_ids:
        v = shards.volume(case_id)
        is_lesion = np.zeros(v["n_slices"], bool)
        is_lesion[v["lesion_slices"]] = True
        idx = v["record_offset"] + np.arange(v["n_slices"])
        lesion.append(idx[is_lesion])
        normal.append(idx[~is_lesion])
    lesion_idx = np.concatenate(lesion) if lesion else np.zeros(0, np.int64)
    normal_idx = np.concatenate(normal) if normal else np.zeros(0, np.int64)
    if policy == "all":
        idx = np.sort(np.concatenate([lesion_idx, normal_idx]))
        return idx.astype(np.int64), np.ones(len(idx), np.float32)
    if policy == "lesion":
        return lesion_idx.astype(np.int64), np.ones(len(lesion_idx), np.float32)
    n_normal = min(len(normal_idx), int(round(normal_ratio * len(lesion_idx))))
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(normal_idx, size=n_normal, replace=False))
    idx = np.concatenate([lesion_idx, picked]).astype(np.int64)
    weights = np.concatenate(
        [np.ones(len(lesion_idx), np.float32), np.full(n_normal, normal_weight, np.float32)]
    )
    return idx, weights

"""Host input pipeline: shards + manifest -> per-process batches (grain) -> global jax.Arrays.

The host only reads, decodes and batches uint8 slices; conversion to float and augmentation run
on the accelerator inside the jitted step (``augment.py``).

Order of operations (as in maxtext): select the slices of the split and sampling policy, shuffle
with the config seed (reshuffled every epoch), repeat forever, then take every
``process_count``-th element starting at ``process_index``. Processes therefore read disjoint
shares of one global stream, and the iterator state is checkpointed with the model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionjax.data import records

POLICIES = ("all", "lesion", "mixed")


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """A built shard folder: its manifest and the record index of every volume's slices."""

    root: Path
    manifest: dict

    @classmethod
    def load(cls, root: str | Path) -> ShardSet:
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no manifest; build shards first with python -m data_prep.build_shards"
            )
        manifest = json.loads(path.read_text())
        version = manifest.get("schema_version")
        if version != records.SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema version {version} != {records.SCHEMA_VERSION}; rebuild the shards"
            )
        for v in manifest["volumes"]:
            if not (root / v["shard"]).exists():
                raise FileNotFoundError(f"{root / v['shard']}: shard listed in {path} is missing")
        return cls(root, manifest)

    @property
    def volumes(self) -> list[dict]:
        return self.manifest["volumes"]

    @property
    def n_channels(self) -> int:
        """Input channels: windows x input images (1 + extra sequences / nnU-Net channels)."""
        return int(self.manifest.get("channels", len(self.manifest["windows"])))

    def volume(self, case_id: str) -> dict:
        for v in self.volumes:
            if v["case_id"] == case_id:
                return v
        raise KeyError(f"{self.root}: no volume {case_id!r} in the manifest")

    def shard_paths(self) -> list[str]:
        return [str(self.root / v["shard"]) for v in self.volumes]

    def source(self):
        """All slices of all volumes, in manifest order (record i = global slice index i)."""
        import grain

        return grain.sources.ArrayRecordDataSource(self.shard_paths())

    def read_volume(self, case_id: str, source=None) -> dict[str, np.ndarray]:
        """All slices of one volume stacked along z: image (X, Y, Z, C) uint8, mask (X, Y, Z)."""
        v = self.volume(case_id)
        source = source if source is not None else self.source()
        start = v["record_offset"]
        raw = [source[i] for i in range(start, start + v["n_slices"])]
        decoded = [records.decode_record(r) for r in raw]
        out = {
            "image": np.stack([d["image"] for d in decoded], axis=2),
            "mask": np.stack([d["mask"] for d in decoded], axis=2),
        }
        if "icm" in decoded[0]:
            out["icm"] = np.stack([d["icm"] for d in decoded], axis=2)
        return out


def split_case_ids(shards: ShardSet, test_fold: int, val_fold: int | None) -> dict[str, list[str]]:
    """Volume-level split by the manifest's folds: test = one fold, val = another, train = rest.
    A negative or None ``val_fold`` means no validation set (e.g. leave-one-patient-out)."""
    n = shards.manifest["n_folds"]
    if val_fold is not None and val_fold < 0:
        val_fold = None
    if not 0 <= test_fold < n:
        raise ValueError(f"test fold {test_fold} out of range for {n} folds")
    if val_fold is not None and (val_fold == test_fold or not 0 <= val_fold < n):
        raise ValueError(f"validation fold {val_fold} must differ from test fold and be < {n}")
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for v in shards.volumes:
        fold = v["fold"]
        name = "test" if fold == test_fold else "val" if fold == val_fold else "train"
        split[name].append(v["case_id"])
    return split


def select_slices(
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
        raise ValueError(f"unknown sampling policy {policy!r}; expected one of {POLICIES}")
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


class WeightedSlices:
    """grain random-access source over a subset of records, each with its loss weight."""

    def __init__(self, source, indices: np.ndarray, weights: np.ndarray):
        if len(indices) != len(weights):
            raise ValueError(f"{len(indices)} indices but {len(weights)} weights")
        self._source = source
        self._indices = np.asarray(indices, np.int64)
        self._weights = np.asarray(weights, np.float32)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> tuple[int, float, bytes]:
        index = int(self._indices[i])
        return index, float(self._weights[i]), self._source[index]


def decode_example(item: tuple[int, float, bytes]) -> dict[str, np.ndarray]:
    """-> {"image": (H, W, C) uint8, "mask": (H, W, 1) uint8, "weight": f32, "index": i64}."""
    index, weight, raw = item
    rec = records.decode_record(raw)
    return {
        "image": rec["image"],
        "mask": rec["mask"][..., None],
        "weight": np.float32(weight),
        "index": np.int64(index),
    }


def make_train_dataset(
    shards: ShardSet,
    indices: np.ndarray,
    weights: np.ndarray,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    read_threads: int = 2,
):
    """An endless grain IterDataset of this process's local batches (global_batch / processes).

    Each element: {"image": (b, H, W, C) uint8, "mask": (b, H, W, 1) uint8, "weight": (b,) f32,
    "index": (b,) int64}; the global batch of step s is the concatenation over processes.
    """
    import grain

    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} not divisible by {process_count} processes")
    if len(indices) < global_batch:
        raise ValueError(
            f"{shards.root}: only {len(indices)} training slices for a global batch of "
            f"{global_batch}; lower the batch size or add data"
        )
    local_batch = global_batch // process_count
    ds = (
        grain.MapDataset.source(WeightedSlices(shards.source(), indices, weights))
        .shuffle(seed=seed)
        .repeat(None)
    )
    ds = ds[process_index::process_count]
    ds = ds.map(decode_example).batch(local_batch, drop_remainder=True)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * local_batch)
    )
    if worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it


def to_global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, Any]:
    """Process-local numpy batch -> global jax.Arrays sharded along the batch axis."""
    import jax

    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }

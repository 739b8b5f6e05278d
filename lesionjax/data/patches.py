"""3D patches for the cascade U-Net: read from a 3D shard set, sampled as nnU-Net samples them,
fed by grain.

A 3D shard set holds whole volumes, one record per axial slice (``data_prep.build_shards
--layout 3d``). A patch of ``size`` voxels starting at (x0, y0, z0) reads the records of slices
z0 .. z0 + Z - 1 that exist and crops each in-plane; what lies outside the volume is zero (the
uint8 0 of every window, and background). Only the patch's slices are read, never the volume.

Sampling (nnU-Net's ``DataLoader``): the stream visits the training cases in a seeded order,
reshuffled each epoch (one patch per case and epoch). Sample k of each global batch of B is
forced to contain foreground when ``k >= round(B * (1 - fg_fraction))`` (nnU-Net's
``oversample_foreground_percent``, one third by default: the last third of every batch). A
forced patch is centred on a lesion voxel (a random lesion slice of the case, a random lesion
voxel of that slice); any other patch starts uniformly at random.
Starts may run past the border by half of ``size - final`` (the margin read around the final
patch for rotation and scaling, cropped away on the device) and, for volumes smaller than the
patch, by what is missing (nnU-Net's ``need_to_pad``), so border voxels reach the patch centre.
A case without lesions gets a random patch either way.

Determinism: element i of the stream is a pure function of (seed, i), so a restored grain
iterator (its state is in the checkpoint) continues with exactly the patches an uninterrupted
run would have read; processes read disjoint batches of one global stream, as in 2D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionjax.core import records
from lesionjax.data.pipeline import process_stream
from lesionjax.data.shards import ShardSet

FG_FRACTION = 1.0 / 3.0


def start_bounds(shape: int, size: int, final: int) -> tuple[int, int]:
    """(lo, hi) inclusive range of patch starts along one axis (nnU-Net's ``get_bbox``)."""
    need = size - final
    if shape + need < size:
        need = size - shape
    lo = -(need // 2)
    hi = shape + need // 2 + need % 2 - size
    return lo, hi


def read_patch(
    source, volume: dict, start: Sequence[int], size: Sequence[int], prior: np.ndarray | None = None
) -> dict:
    """The patch of ``size`` at ``start`` (voxels, may lie partly outside) of one volume.

    source: the shard set's record source; volume: its manifest entry; prior: the volume's
    stage-1 probabilities (X, Y, Z) uint8 (memory-mapped), appended as the last channel.
    Returns {"image": (X, Y, Z, C) uint8, "mask": (X, Y, Z, 1) uint8}, zero outside the volume.
    """
    nx, ny, nz = volume["shard_shape"][:3]
    sx, sy, sz = (int(s) for s in size)
    x0, y0, z0 = (int(s) for s in start)
    channels = int(volume["channels"])
    image = np.zeros((sx, sy, sz, channels + (prior is not None)), np.uint8)
    mask = np.zeros((sx, sy, sz, 1), np.uint8)
    xa, xb = max(x0, 0), min(x0 + sx, nx)
    ya, yb = max(y0, 0), min(y0 + sy, ny)
    if xa >= xb or ya >= yb:
        return {"image": image, "mask": mask}
    za, zb = max(z0, 0), min(z0 + sz, nz)
    for z in range(za, zb):
        rec = records.decode_record(source[volume["record_offset"] + z])
        image[xa - x0 : xb - x0, ya - y0 : yb - y0, z - z0, :channels] = rec["image"][xa:xb, ya:yb]
        mask[xa - x0 : xb - x0, ya - y0 : yb - y0, z - z0, 0] = rec["mask"][xa:xb, ya:yb]
    if prior is not None and za < zb:
        image[xa - x0 : xb - x0, ya - y0 : yb - y0, za - z0 : zb - z0, channels] = prior[
            xa:xb, ya:yb, za:zb
        ]
    return {"image": image, "mask": mask}


class PatchSampler:
    """``sampler(i, case_position) -> example`` for grain's ``map_with_index`` (see the module
    docstring). size: the patch read (final patch + augmentation margin); final: the patch the
    model sees; batch: the global batch the forced-foreground rule counts in (so that N
    processes read exactly the global batches one process reads)."""

    def __init__(
        self,
        shards: ShardSet,
        case_ids: Sequence[str],
        size: Sequence[int],
        *,
        final: Sequence[int] | None = None,
        batch: int,
        fg_fraction: float = FG_FRACTION,
        seed: int = 0,
    ):
        if not case_ids:
            raise ValueError(f"{shards.root}: no training volumes to sample patches from")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction {fg_fraction}: expected a fraction in [0, 1]")
        self.shards = shards
        self.volumes = [shards.volume(c) for c in case_ids]
        self.size = tuple(int(n) for n in size)
        self.final = tuple(int(n) for n in (final if final is not None else size))
        if any(f > s for f, s in zip(self.final, self.size, strict=True)):
            raise ValueError(f"final patch {self.final} larger than the patch read {self.size}")
        self.batch = int(batch)
        self.first_forced = int(round(self.batch * (1.0 - fg_fraction)))
        self.seed = int(seed)
        self._source = None

    @property
    def source(self):
        if self._source is None:  # opened lazily: in each grain worker, not pickled across
            self._source = self.shards.source()
        return self._source

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def forced(self, index: int) -> bool:
        """Whether element ``index`` of the stream must contain foreground."""
        return index % self.batch >= self.first_forced

    def choose_start(self, rng: np.random.Generator, v: dict, forced: bool) -> np.ndarray:
        shape = v["shard_shape"][:3]
        bounds = [
            start_bounds(n, s, f) for n, s, f in zip(shape, self.size, self.final, strict=True)
        ]
        lesion_slices = v["lesion_slices"]
        if forced and lesion_slices:
            z = int(rng.choice(lesion_slices))
            rec = records.decode_record(self.source[v["record_offset"] + z])
            xs, ys = np.nonzero(rec["mask"])
            k = int(rng.integers(len(xs)))
            centre = np.array([xs[k], ys[k], z])
            start = centre - np.asarray(self.size) // 2
            return np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])
        return np.array([rng.integers(lo, hi + 1) for lo, hi in bounds])

    def __call__(self, index: int, position: int) -> dict[str, np.ndarray]:
        v = self.volumes[int(position)]
        rng = np.random.default_rng([self.seed, int(index)])
        forced = self.forced(int(index))
        start = self.choose_start(rng, v, forced)
        prior = self.shards.prior(v["case_id"]) if hasattr(self.shards, "prior") else None
        patch = read_patch(self.source, v, start, self.size, prior)
        patch["weight"] = np.float32(1.0)
        patch["index"] = np.int64(position)
        patch["start"] = start.astype(np.int64)
        patch["forced"] = np.bool_(forced)
        return patch


def make_patch_dataset(
    shards: ShardSet,
    case_ids: Sequence[str],
    size: Sequence[int],
    *,
    global_batch: int,
    seed: int,
    final: Sequence[int] | None = None,
    fg_fraction: float = FG_FRACTION,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    read_threads: int = 2,
):
    """An endless grain IterDataset of this process's local batches of 3D patches.

    Each element: {"image": (b, X, Y, Z, C) uint8, "mask": (b, X, Y, Z, 1) uint8, "weight":
    (b,) f32, "index": (b,) case positions, "start": (b, 3), "forced": (b,) bool}, b =
    global_batch / process_count; the global batch of step s is the concatenation over
    processes.
    """
    import grain

    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} not divisible by {process_count} processes")
    local_batch = global_batch // process_count
    sampler = PatchSampler(
        shards,
        case_ids,
        size,
        final=final,
        batch=global_batch,
        fg_fraction=fg_fraction,
        seed=seed,
    )
    ds = (
        grain.MapDataset.range(len(case_ids))
        .shuffle(seed=seed)
        .repeat(None)
        .map_with_index(sampler)
        .batch(local_batch, drop_remainder=True)
    )
    return process_stream(
        ds,
        local_batch=local_batch,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
        read_threads=read_threads,
    )

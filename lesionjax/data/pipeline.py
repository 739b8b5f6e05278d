"""Host input pipeline: shards + manifest -> per-process batches (grain) -> global jax.Arrays.

The host only reads, decodes and batches uint8 slices; conversion to float and augmentation run
on the accelerator inside the jitted step (``augment.py``).

Order of operations: select the slices of the split and sampling policy, shuffle with the config
seed (reshuffled every epoch), repeat forever, cut the stream into local batches, and give each
process every ``process_count``-th local batch starting at ``process_index``. Processes therefore
read disjoint shares of one global stream, and global batch b is elements
``b * G .. (b + 1) * G - 1`` of the stream whatever the number of processes (process p holding
the p-th block of it, which is what ``jax.make_array_from_process_local_data`` assembles on a
mesh ordered by process): N processes train on exactly the batches one process would. The
iterator state is checkpointed with the model.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np

from lesionjax.core import records
from lesionjax.data.shards import ShardSet


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


class EpochShuffled(grain.MapDataset):
    """``parent`` (a grain MapDataset of n elements) shuffled with a new permutation every epoch
    and repeated forever: element i of the stream is ``parent[perm_e[i % n]]`` with
    e = i // n and ``perm_e = default_rng([seed, e]).permutation(n)``.

    What ``parent.shuffle(seed).repeat(None)`` does, with numpy's permutation (computed once per
    epoch) instead of grain's per-index Feistel shuffle, which cost 0.39 ms per slice on this
    CPU: 40 % of the 2D pipeline's time (``benchmarks/pipeline.py``).
    """

    def __init__(self, parent, seed: int):
        super().__init__(parent)
        self._seed, self._n, self._perms = int(seed), len(parent), {}

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f"EpochShuffled(seed={self._seed})"

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) >= 2:  # the readers are at most one epoch apart
                self._perms.clear()
            perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
            self._perms[epoch] = perm
        return perm

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(int(index), self._n)
        return self._parent[int(self._perm(epoch)[position])]


def decode_example(item: tuple[int, float, bytes]) -> dict[str, np.ndarray]:
    """-> {"image": (H, W, C) uint8, "mask": (H, W, 1) uint8, "labels": (6,) uint8 (the
    slice's ``SLICE_LABELS``), "weight": f32, "index": i64}."""
    index, weight, raw = item
    rec = records.decode_record(raw)
    return {
        "image": rec["image"],
        "mask": rec["mask"][..., None],
        "labels": rec["labels"],
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
    ds = EpochShuffled(
        grain.MapDataset.source(WeightedSlices(shards.source(), indices, weights)), seed
    )
    ds = ds.map(decode_example).batch(local_batch, drop_remainder=True)
    return process_stream(
        ds,
        local_batch=local_batch,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
        read_threads=read_threads,
    )


def process_stream(
    batches, *, local_batch: int, process_index: int, process_count: int, worker_count: int,
    read_threads: int,
):  # fmt: skip
    """This process's share of an endless MapDataset of local batches, as an IterDataset:
    every ``process_count``-th batch from ``process_index`` (lazy: only those are read), read
    with ``read_threads`` threads, in ``worker_count`` processes when > 0."""
    import grain

    ds = batches[process_index::process_count]
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * local_batch)
    )
    if worker_count > 0:
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count),
            worker_init_fn=ignore_stop_signals,
        )
    return it


def ignore_stop_signals(worker_index: int = 0, worker_count: int = 0) -> None:
    """grain workers ignore SIGTERM and SIGINT: those are for the trainer, which stops its
    workers itself (``lesionjax.train.preemption``); a scheduler that signals every process of
    the job, or Ctrl-C (the terminal's whole process group), must not kill the workers first."""
    import signal

    del worker_index, worker_count
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def to_global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, Any]:
    """Process-local numpy batch -> global jax.Arrays sharded along the batch axis."""
    import jax

    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }

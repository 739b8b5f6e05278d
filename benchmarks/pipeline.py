"""Host input pipeline throughput: 3D patches and 2D slices from ArrayRecord shards through
grain to device-ready numpy batches, and how many host cores one accelerator step needs.

    python benchmarks/pipeline.py [--part all|3d|2d] [--volumes 4] [--shape 512,512,40]
        [--spacing 0.45,0.45,5] [--patch 256,192,24] [--seconds 10] [--workers 1,2,4]

Builds a 3D shard set of clinical-size synthetic head CTs (INSTANCE-like: 512 x 512 x 40 at
0.45 x 0.45 x 5 mm, three windows) once, then measures for ``--seconds`` each:

- ``sampler``: ``PatchSampler`` called in a loop in this thread (read + crop + pad: the work of
  one core);
- ``grain threads=T``: the grain dataset of ``lesionjax.data.patches`` with T read threads in
  this process;
- ``grain workers=W``: the same with W worker processes (``mp_prefetch``);
- ``2d``: the 2D pipeline (``pipeline.make_train_dataset``, batches of 32 as
  ``configs/seg_cq500.py``) on 2D shards of the same scans built with that config's plan
  (256 x 256, one window [-50, 150]): 1 and 2 read threads in this process, and 1, 2, 4 worker
  processes (``--workers``); then the 2D U-Net's (32..512, 256 x 256, 1 channel) training FLOPs
  per slice at 40 % of an H100's bf16 peak, the slices/s that is, the host cores it needs at the
  best measured per-core rate, and what 16 host cores deliver against it (the goal: 10x).

Patches are read at the size the 3D augmentation needs (the final patch plus the margin for
rotation and scaling, ``augment3d.patch_read_size``; axial-only rotation when the plan says the
patch is flat). Then the consumption side: the analytic FLOPs of the 3D U-Net training step
(32..320, pools of the plan) at 40 % of an H100's dense bf16 peak (989 TFLOP/s), the patches per
second that implies, and the cores needed at the measured single-core rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

H100_BF16_DENSE = 989e12
MFU = 0.40


def _ints(text):
    return tuple(int(v) for v in text.split(","))


def _floats(text):
    return tuple(float(v) for v in text.split(","))


def rate(fn, seconds: float) -> tuple[float, int]:
    """Items per second of ``fn() -> n items`` over about ``seconds`` (after one warm call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0), n


def bench_2d(args, raw: Path, out: Path) -> None:
    """The 2D half (see the module docstring); prints its table and the consumption line."""
    import numpy as np

    from benchmarks.train_step import conv_flops as conv_flops_2d
    from data_prep.shard_writer import build_dataset
    from lesionjax.data.pipeline import make_train_dataset
    from lesionjax.data.shards import ShardSet

    t0 = time.perf_counter()
    if not (out / "manifest.json").is_file():
        build_dataset(
            "instance2022",
            raw,
            out,
            {"windows": ((-50.0, 150.0),), "size": 256},
            workers=min(2, os.cpu_count() or 1),
            progress=False,
        )
    shards = ShardSet.load(out)
    n = sum(v["n_slices"] for v in shards.volumes)
    batch = 32
    print(
        f"2d: {len(shards.volumes)} volumes, {n} slices 256x256x{shards.n_channels} uint8, built "
        f"in {time.perf_counter() - t0:.0f} s; batch {batch}; cores "
        f"{len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f}"
    )

    def slices_rate(**kw) -> float:
        it = iter(
            make_train_dataset(
                shards, np.arange(n), np.ones(n, np.float32), global_batch=batch, seed=0, **kw
            )
        )

        def one():
            b = next(it)
            assert b["image"].shape == (batch, 256, 256, shards.n_channels)
            return batch

        return rate(one, args.seconds)[0]

    rows = [(f"2d threads={t}", t, slices_rate(read_threads=t)) for t in (1, 2)]
    rows += [(f"2d workers={w}", w, slices_rate(worker_count=w)) for w in args.workers]
    print(f"{'pipeline':<22} {'cores':>5} {'slices/s':>9} {'per core':>9}")
    for name, cores, r in rows:
        print(f"{name:<22} {cores:>5} {r:>9.1f} {r / cores:>9.1f}")
    flops = conv_flops_2d(1, 256, shards.n_channels, (32, 64, 128, 256, 512))["train"]
    per_s = MFU * H100_BF16_DENSE / flops
    best = max(r / c for _, c, r in rows)
    print(
        f"2d consumption: one 256x256 slice costs {flops / 1e9:.1f} GFLOP to train (U-Net "
        f"32..512); at {MFU:.0%} of an H100's {H100_BF16_DENSE / 1e12:.0f} TFLOP/s: "
        f"{per_s:.0f} slices/s, i.e. {per_s / best:.1f} host cores at the best per-core rate "
        f"({best:.0f} slices/s); 16 cores at that rate: {16 * best:.0f} slices/s = "
        f"{16 * best / per_s:.1f}x one chip (goal 10x)"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--shape", type=_ints, default=(512, 512, 40))
    parser.add_argument("--spacing", type=_floats, default=(0.45, 0.45, 5.0))
    parser.add_argument("--patch", type=_ints, default=None, help="final patch (default: plan's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here")
    parser.add_argument("--part", choices=("all", "3d", "2d"), default="all")
    parser.add_argument("--workers", type=_ints, default=(1, 2, 4), help="2D worker processes")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags (no absl.app here)

    import numpy as np

    from benchmarks.train_step3d import conv_flops
    from data_prep.build3d import build_3d, stage_dir
    from data_prep.synthetic.phantom_layouts import write_layout
    from lesionjax.data import augment3d
    from lesionjax.data.patches import PatchSampler, make_patch_dataset
    from lesionjax.data.pipeline import make_train_dataset
    from lesionjax.data.shards import ShardSet

    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    root = Path(tmp.name) if tmp else args.workdir
    raw, out = root / "raw", root / "shards"
    t0 = time.perf_counter()
    if not raw.is_dir():
        write_layout("instance2022", raw, args.volumes, 0, shape=args.shape, spacing=args.spacing)
    if args.part in ("all", "2d"):
        bench_2d(args, raw, root / "shards2d")
    if args.part == "2d":
        if tmp is not None:
            tmp.cleanup()
        return
    if not (out / "plans3d.json").is_file():
        build_3d(
            "instance2022",
            raw,
            out,
            {"windows": ("brain", "subdural", "wide")},
            workers=min(2, os.cpu_count() or 1),
            progress=False,
        )
    prep_s = time.perf_counter() - t0
    plan = json.loads((out / "plans3d.json").read_text())["stages"]["fullres"]
    shards = ShardSet.load(stage_dir(out, "fullres"))
    ids = [v["case_id"] for v in shards.volumes]
    final = args.patch or tuple(plan["patch"])
    cfg = augment3d.Augment3DConfig(axial_only=bool(plan["rotate_axial_only"]))
    read = augment3d.patch_read_size(final, cfg)
    shape = [*shards.volumes[0]["shard_shape"][:3], shards.volumes[0]["channels"]]
    print(
        f"{len(ids)} volumes {shape[0]}x{shape[1]}x{shape[2]}x{shape[3]} uint8 "
        f"({np.prod(shape) / 1e6:.1f} MB each) in {prep_s:.0f} s; final patch "
        f"{'x'.join(map(str, final))}, read {'x'.join(map(str, read))} "
        f"({np.prod(read) * shape[3] / 1e6:.1f} MB); batch {args.batch}; cores "
        f"{len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    sampler = PatchSampler(shards, ids, read, final=final, batch=args.batch, seed=0)
    counter = iter(range(10**9))

    def one_patch():
        i = next(counter)
        sampler(i, i % len(ids))
        return 1

    per_core, _ = rate(one_patch, args.seconds)
    rows.append(("sampler (1 thread)", 1, per_core))

    def grain_rate(**kw):
        ds = make_patch_dataset(
            shards, ids, read, final=final, global_batch=args.batch, seed=0, **kw
        )
        it = iter(ds)

        def batch():
            next(it)
            return args.batch

        return rate(batch, args.seconds)[0]

    for threads in (1, 2):
        rows.append(
            (f"grain threads={threads}", threads, grain_rate(read_threads=threads, worker_count=0))
        )
    for workers in (1, 2):
        rows.append((f"grain workers={workers}", workers, grain_rate(worker_count=workers)))

    n_slices = sum(v["n_slices"] for v in shards.volumes)
    it2d = iter(
        make_train_dataset(
            shards,
            np.arange(n_slices),
            np.ones(n_slices, np.float32),
            global_batch=16,
            seed=0,
        )
    )

    def slices():
        next(it2d)
        return 16

    rows.append(("2d slices, threads=2", 2, rate(slices, args.seconds)[0]))

    print(f"{'pipeline':<22} {'cores':>5} {'items/s':>9} {'per core':>9}")
    for name, cores, r in rows:
        print(f"{name:<22} {cores:>5} {r:>9.1f} {r / cores:>9.1f}")
    features = plan["features"]
    flops = conv_flops(1, final, 3, features, plan["pools"])["train"]
    per_s = MFU * H100_BF16_DENSE / flops
    print(
        f"consumption: one patch of {'x'.join(map(str, final))} costs {flops / 1e9:.0f} GFLOP "
        f"to train (3D U-Net {features}); at {MFU:.0%} of an H100's {H100_BF16_DENSE / 1e12:.0f} "
        f"TFLOP/s: {per_s:.1f} patches/s, i.e. {per_s / per_core:.1f} host cores at the "
        f"single-core sampler rate ({per_core:.1f} patches/s)"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

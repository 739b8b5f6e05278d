"""Shard-building throughput: clinical-size head CT (512 x 512 x 32) -> ArrayRecord shards.

    python benchmarks/prep.py [--volumes 8] [--workers 1,2] [--windows brain,subdural,wide]

Generates synthetic volumes once (the phantom generator, NIfTI int16 + gzip like a typical export),
then builds the shards from scratch with each worker count in a fresh subprocess and reports
volumes/s, input MB/s (compressed NIfTI read) and voxel MB/s (float32 HU processed), and the peak
resident memory of the building processes. Memory is measured twice, with half and with all the
volumes: shard building streams one volume per worker, so the peak must not grow with the number of
volumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from data_prep.shard_writer import build_cases
from data_prep.layouts.pairs import read_pairs_layout
src, out, windows = sys.argv[1], sys.argv[2], sys.argv[5]
workers, n = int(sys.argv[3]), int(sys.argv[4])
cases = read_pairs_layout(Path(src))[:n]
t = time.perf_counter()
manifest, skipped = build_cases("pairs", cases, Path(out), {"windows": windows.split(",")},
                                workers=workers, progress=False)
seconds = time.perf_counter() - t
assert not skipped, skipped
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "self_mb": self_kb / 1024, "child_mb": child_kb / 1024,
                  "slices": manifest["counts"]["slices"]}))
"""


def build(src: Path, workers: int, n: int, windows: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), out, str(workers), str(n), windows],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parents[1],
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        stats = json.loads(result.stdout.strip().splitlines()[-1])
        stats["shard_mb"] = sum(p.stat().st_size for p in Path(out).rglob("*")) / 1e6
    # Peak of one building process: the main one with 1 worker, the largest worker with 2+.
    stats["peak_mb"] = (
        stats["self_mb"] if workers == 1 else max(stats["child_mb"], stats["self_mb"])
    )
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--windows", default="brain,subdural,wide")
    parser.add_argument("--data", type=Path, default=None, help="reuse a generated folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from data_prep.synthetic import phantom

    tmp = None
    src = args.data
    if src is None:
        tmp = tempfile.TemporaryDirectory()
        src = Path(tmp.name) / "raw"
    t = time.perf_counter()
    phantom.generate_dataset(
        src, args.volumes, seed=0, shape=(512, 512, 32), spacing=(0.45, 0.45, 5.0), workers=2
    )
    gen_s = time.perf_counter() - t
    images = sorted((src / "images").glob("*.nii.gz"))[: args.volumes]
    masks = sorted((src / "masks").glob("*.nii.gz"))[: args.volumes]
    in_mb = sum(p.stat().st_size for p in images + masks) / 1e6
    voxel_mb = args.volumes * 512 * 512 * 32 * 4 / 1e6
    print(
        f"# {args.volumes} volumes 512x512x32 ({in_mb:.0f} MB NIfTI.gz in, {voxel_mb:.0f} MB "
        f"float32 HU), windows {args.windows}; generated in {gen_s:.0f} s"
    )
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {time.ctime()}")
    header = (
        f"{'workers':>7} {'volumes':>7} {'seconds':>8} {'vol/s':>6} {'in MB/s':>8} "
        f"{'HU MB/s':>8} {'shards MB':>9} {'peak MB':>8} {'peak MB (half)':>14}"
    )
    print(header)
    for workers in (int(w) for w in args.workers.split(",")):
        half = build(src, workers, max(1, args.volumes // 2), args.windows)
        full = build(src, workers, args.volumes, args.windows)
        s = full["seconds"]
        print(
            f"{workers:>7} {args.volumes:>7} {s:>8.2f} {args.volumes / s:>6.2f} "
            f"{in_mb / s:>8.1f} {voxel_mb / s:>8.1f} {full['shard_mb']:>9.1f} "
            f"{full['peak_mb']:>8.0f} {half['peak_mb']:>14.0f}"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

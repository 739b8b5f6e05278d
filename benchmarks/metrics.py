"""Per-volume metric time on a head-CT-sized case: lesionjax vs surface-distance vs MONAI.

    python benchmarks/metrics.py --repeats 9 --cases 3

Case: a 512x512x40 volume at 0.45 x 0.45 x 5 mm (an INSTANCE 2022 head CT) with a few lesions
of 0.5-20 mL spread over the brain; the prediction is the ground truth perturbed (shifted,
grown or shrunk, boundary noise; the smallest lesion missed, one false-positive blob); the
probabilities are a blurred, noisy version of the prediction (for the AUC).

Timed, per case (median over ``--repeats`` rounds; implementations alternate within a round so
that background load hits all alike):

* ``lesionjax all``: `volume_metrics` with spacing: Dice, IoU, precision, recall (plain and
  eps 1), volumes, RVD, HD, HD95, ASSD, NSD.
* ``lesionjax all + auc``: the same with ``prob=`` (voxel-level ROC AUC over 10.5 M voxels).
* ``lesionjax surface (edt)``: `surface.surface_metrics` with the feature-transform method.
* ``surface-distance HD+NSD``: ``compute_surface_distances`` + ``compute_robust_hausdorff(100)``
  + ``compute_surface_dice_at_tolerance`` (what the INSTANCE 2022 evaluation runs).
* ``surface-distance HD+HD95+ASD+NSD``: the same plus the 95th percentile and mean distances.
* ``MONAI HD+HD95+NSD``: ``compute_hausdorff_distance`` (max and percentile 95) and
  ``compute_surface_dice(use_subvoxels=True)`` on CPU tensors.

The table gives the median over all cases and rounds and each case's median. The last lines
give the values each implementation computed for the first case (lesionjax and
surface-distance agree to ~1e-12; MONAI's HD and HD95 measure between boundary voxels with an
unweighted percentile, so they differ a little) and
``speedup=<surface-distance HD+NSD / lesionjax all>`` (median over cases of the per-case ratio).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lesionjax.eval import surface  # noqa: E402
from lesionjax.eval.metrics import volume_metrics  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--cases", type=int, default=3, help="different random cases")
    parser.add_argument("--lesions", type=int, default=4, help="lesions per case")
    parser.add_argument("--shape", type=str, default="512,512,40")
    parser.add_argument("--spacing", type=str, default="0.45,0.45,5.0", help="mm per axis")
    parser.add_argument("--tolerance", type=float, default=0.42, help="NSD tolerance, mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for MONAI")
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--skip-surface-distance", action="store_true")
    return parser.parse_args(argv)


def _ellipsoid(mask: np.ndarray, centre, radii_vox) -> None:
    """ORs a filled axis-aligned ellipsoid into ``mask`` (computed on its own box only)."""
    lo = [max(0, int(math.floor(c - r))) for c, r in zip(centre, radii_vox, strict=True)]
    hi = [
        min(n, int(math.ceil(c + r)) + 1)
        for c, r, n in zip(centre, radii_vox, mask.shape, strict=True)
    ]
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
        return
    grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii_vox, strict=True)) <= 1.0
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] |= inside


def make_case(rng: np.random.Generator, shape, spacing, n_lesions: int):
    """(gt, pred, prob): bool, bool, float32 volumes of ``shape``; see the module docstring."""
    spacing = np.asarray(spacing, np.float64)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    brain_lo = np.array([0.2, 0.2, 0.2]) * shape
    brain_hi = np.array([0.8, 0.8, 0.8]) * shape
    volumes_ml = np.sort(np.exp(rng.uniform(math.log(0.5), math.log(20.0), n_lesions)))[::-1]
    for i, volume_ml in enumerate(volumes_ml):
        volume_mm3 = 1000.0 * volume_ml
        lesion = np.zeros(shape, bool)
        centre = rng.uniform(brain_lo, brain_hi)
        # Two overlapping ellipsoids: irregular, like a hematoma with a tail.
        for part in range(2):
            share = 0.75 if part == 0 else 0.35
            aspect = rng.uniform(0.6, 1.6, 3)
            r_mm = (3 * share * volume_mm3 / (4 * math.pi * np.prod(aspect))) ** (1 / 3) * aspect
            offset = rng.normal(0, 0.5, 3) * r_mm / spacing if part else 0.0
            _ellipsoid(lesion, centre + offset, np.maximum(r_mm / spacing, 0.6))
        gt |= lesion
        if i == n_lesions - 1 and n_lesions > 1:
            continue  # the smallest lesion is missed (unless it is the only one)
        perturbed = np.roll(lesion, tuple(rng.integers(-2, 3, 2)) + (0,), axis=(0, 1, 2))
        grow = rng.integers(-1, 2)
        structure = np.ones((3, 3, 1), bool)
        if grow > 0:
            perturbed = ndimage.binary_dilation(perturbed, structure)
        elif grow < 0:
            perturbed = ndimage.binary_erosion(perturbed, structure)
        edge = perturbed ^ ndimage.binary_erosion(perturbed, structure)
        perturbed &= ~(edge & (rng.random(shape) < 0.2))
        pred |= perturbed
    fp = np.zeros(shape, bool)
    _ellipsoid(fp, rng.uniform(brain_lo, brain_hi), np.maximum(4.0 / spacing, 0.6))
    pred |= fp
    prob = ndimage.gaussian_filter(pred.astype(np.float32), sigma=(1.5, 1.5, 0.5))
    prob = np.clip(prob + rng.normal(0, 0.02, shape).astype(np.float32), 0, 1)
    prob = np.where(pred, np.maximum(prob, 0.5), np.minimum(prob, 0.499)).astype(np.float32)
    return gt, pred, prob


def implementations(args, spacing):
    """name -> fn(gt, pred, prob, extra) returning a dict of metric values."""
    tol = args.tolerance
    impls = {
        "lesionjax all": lambda gt, pred, prob, _: volume_metrics(
            pred, gt, spacing, nsd_tolerance_mm=tol
        ),
        "lesionjax all + auc": lambda gt, pred, prob, _: volume_metrics(
            pred, gt, spacing, nsd_tolerance_mm=tol, prob=prob
        ),
        "lesionjax surface (edt)": lambda gt, pred, prob, _: surface.surface_metrics(
            pred, gt, spacing, nsd_tolerance_mm=tol, method="edt"
        ),
    }
    if not args.skip_surface_distance:
        import surface_distance as sd

        def sd_hd_nsd(gt, pred, prob, _):
            d = sd.compute_surface_distances(gt, pred, spacing)
            return {
                "hd": sd.compute_robust_hausdorff(d, 100),
                "nsd": sd.compute_surface_dice_at_tolerance(d, tol),
            }

        def sd_all(gt, pred, prob, _):
            d = sd.compute_surface_distances(gt, pred, spacing)
            m_gp, m_pg = sd.compute_average_surface_distance(d)
            a_g, a_p = np.sum(d["surfel_areas_gt"]), np.sum(d["surfel_areas_pred"])
            return {
                "hd": sd.compute_robust_hausdorff(d, 100),
                "hd95": sd.compute_robust_hausdorff(d, 95),
                "assd": (m_gp * a_g + m_pg * a_p) / (a_g + a_p),
                "nsd": sd.compute_surface_dice_at_tolerance(d, tol),
            }

        impls["surface-distance HD+NSD"] = sd_hd_nsd
        impls["surface-distance HD+HD95+ASD+NSD"] = sd_all
    if not args.skip_monai:
        import torch
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice

        torch.set_num_threads(args.threads)

        def monai_all(gt, pred, prob, tensors):
            y_pred, y = tensors
            kw = {"include_background": True, "spacing": list(spacing)}
            return {
                "hd": float(compute_hausdorff_distance(y_pred, y, **kw)[0, 0]),
                "hd95": float(compute_hausdorff_distance(y_pred, y, percentile=95, **kw)[0, 0]),
                "nsd": float(
                    compute_surface_dice(y_pred, y, [tol], use_subvoxels=True, **kw)[0, 0]
                ),
            }

        impls["MONAI HD+HD95+NSD"] = monai_all
    return impls


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    shape = tuple(int(s) for s in args.shape.split(","))
    spacing = tuple(float(s) for s in args.spacing.split(","))
    rng = np.random.default_rng(args.seed)
    cases = []
    for _ in range(args.cases):
        gt, pred, prob = make_case(rng, shape, spacing, args.lesions)
        tensors = None
        if not args.skip_monai:
            import torch

            tensors = (torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])
        cases.append((gt, pred, prob, tensors))
    impls = implementations(args, spacing)
    times: dict[str, list[list[float]]] = {name: [[] for _ in cases] for name in impls}
    values: dict[str, dict] = {}
    for round_ in range(args.warmup + args.repeats):
        for name, fn in impls.items():
            for i, case in enumerate(cases):
                start = time.perf_counter()
                out = fn(*case)
                elapsed = time.perf_counter() - start
                if round_ >= args.warmup:
                    times[name][i].append(elapsed)
                if i == 0:
                    values[name] = out

    voxel_ml = math.prod(spacing) / 1000
    sizes = [f"{c[0].sum() * voxel_ml:.1f}" for c in cases]
    print(
        f"{'x'.join(map(str, shape))} at {spacing} mm, {args.lesions} lesions, "
        f"gt mL per case {sizes}, NSD tolerance {args.tolerance} mm; "
        f"{args.cases} cases x {args.repeats} rounds (+{args.warmup} warm-up), median per case; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    case_cols = " ".join(f"{f'case {i}':>8s}" for i in range(len(cases)))
    header = (
        f"{'implementation (ms per case)':34s} {'median':>8s} {case_cols} {'min':>7s} {'max':>7s}"
    )
    print(header)
    print("-" * len(header))
    median, per_case = {}, {}
    for name, ts in times.items():
        pooled = [t for case_times in ts for t in case_times]
        median[name] = statistics.median(pooled) * 1e3
        per_case[name] = [statistics.median(case_times) * 1e3 for case_times in ts]
        cells = " ".join(f"{m:8.1f}" for m in per_case[name])
        print(
            f"{name:34s} {median[name]:8.1f} {cells} "
            f"{min(pooled) * 1e3:7.1f} {max(pooled) * 1e3:7.1f}"
        )
    print("values on case 0:")
    for name, out in values.items():
        shown = {
            k: round(float(out[k]), 6) for k in ("hd", "hd95", "assd", "nsd", "auc") if k in out
        }
        print(f"  {name:34s} {shown}")
    if "surface-distance HD+NSD" in median:
        ref = per_case["surface-distance HD+NSD"]

        def speedup(name: str) -> float:
            """Median over cases of the ratio of per-case medians."""
            return statistics.median(r / o for r, o in zip(ref, per_case[name], strict=True))

        print(
            f"speedup={speedup('lesionjax all'):.1f} "
            f"(surface-distance HD+NSD / lesionjax all, median over cases) "
            f"speedup_with_auc={speedup('lesionjax all + auc'):.1f}"
        )


if __name__ == "__main__":
    main()

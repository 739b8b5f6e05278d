"""Seconds per scan of ``lesionjax-predict``, end to end, and scans per second over a folder.

    python benchmarks/predict.py [--scans 8] [--work DIR] [--only ct,mri]

Two cases, each a run folder with the recipe's model and preprocessing and random weights
(speed does not depend on the weights; no training needed) and a synthetic scan of the usual
size, copied ``--scans`` times into a folder:

- ``ct``: a 512 x 512 x 40 head CT (int16 HU, 0.45 x 0.45 x 5 mm) through ``configs/seg_cq500.py``
  (window [-50, 150] HU, slices resized to 256 x 256, U-Net widths 32..512);
- ``mri``: a 182 x 218 x 182 T1 (float32, 1 mm, the MNI152 grid) through ``configs/mri_lesjak.py``
  (z-scored, resampled to 2 mm, 5 % tissue rule, 96 x 96 slices, InstanceNorm U-Net 16..256).

For each case: one untimed scan first (compilation), then the folder twice: once with each scan
read after the previous one is written (``read_ahead=False``: the stage times are clean), once as
the command runs it (the next scan read and preprocessed in a thread while the current one is
predicted). Stages: read + preprocess (``data_prep.preprocess``), predict (every slice, on every
device), map back (``GridChain.to_native``), write (threshold, NIfTI mask, overlay PNG, lesion
table). Prints one table and, as the last lines, ``seconds_per_scan_<case>=`` and
``scans_per_second_<case>=`` (read-ahead run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("read_preprocess", "predict", "map_back", "write")


def _config(spec: str):
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_bench_config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)


def make_run(workdir: Path, config_spec: str, dataset: str, modality: str) -> Path:
    """A run folder with the config's model at random initialization and its resolved plan."""
    import jax

    from data_prep.plan import plan_options, resolve_plan
    from lesionjax.eval.runs import write_preprocessing
    from lesionjax.train import state as state_lib

    config = _config(config_spec)
    plan = resolve_plan(dataset, modality, plan_options(config.data))
    channels = len(plan.windows)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
    write_preprocessing(workdir, plan.to_dict(), channels)
    run_state = state_lib.build_run_state(config, channels)
    state = run_state.init_state(jax.random.key(0))
    manager = state_lib.open_checkpoints(workdir, keep_best=False)
    state_lib.save_state(manager, 1, state)
    manager.wait_until_finished()
    manager.close()
    return workdir


def _head(shape, spacing):
    grids = np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)],
        indexing="ij",
    )
    r = np.sqrt((grids[0] / 75.0) ** 2 + (grids[1] / 90.0) ** 2 + (grids[2] / 70.0) ** 2)
    lesion = np.sqrt((grids[0] - 20) ** 2 + (grids[1] + 10) ** 2 + grids[2] ** 2) < 15.0
    return r, lesion


def make_scan(path: Path, case: str) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    if case == "ct":
        shape, spacing = (512, 512, 40), (0.45, 0.45, 5.0)
        r, lesion = _head(shape, spacing)
        hu = np.where(r < 1, 35.0, -1000.0)
        hu = np.where((r > 0.93) & (r < 1), 1200.0, hu)
        hu = np.where(lesion & (r < 0.93), 70.0, hu) + rng.normal(0, 4, shape)
        data = hu.astype(np.int16)
    else:
        shape, spacing = (182, 218, 182), (1.0, 1.0, 1.0)
        r, lesion = _head(shape, spacing)
        t1 = np.where(r < 1, 600.0, 0.0)
        t1 = np.where(lesion & (r < 1), 250.0, t1) + np.where(r < 1, rng.normal(0, 20, shape), 0)
        data = t1.astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


CASES = {
    "ct": ("configs/seg_cq500.py", "seg_cq500", "CT"),
    "mri": ("configs/mri_lesjak.py", "lesjak", "MR"),
}


def run_case(case: str, work: Path, n_scans: int) -> dict:
    from lesionjax import predict, predict_inputs

    spec, dataset, modality = CASES[case]
    run = make_run(work / f"run_{case}", spec, dataset, modality)
    inputs = work / f"in_{case}"
    inputs.mkdir(parents=True, exist_ok=True)
    first = make_scan(inputs / "scan_00.nii.gz", case)
    for k in range(1, n_scans):
        shutil.copy(first, inputs / f"scan_{k:02d}.nii.gz")
    models, groups = predict.model_groups([str(run)])
    scans, _ = predict_inputs.find_scans(inputs, modality)
    threshold = 0.5
    kw = dict(threshold=threshold, progress=False, overlay=True)
    predict.predict_scans(scans[:1], groups, work / f"warm_{case}", **kw)  # compile
    t = time.perf_counter()
    rows, failed = predict.predict_scans(
        scans, groups, work / f"seq_{case}", read_ahead=False, **kw
    )
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    rows_ahead, failed_ahead = predict.predict_scans(scans, groups, work / f"ahead_{case}", **kw)
    ahead = time.perf_counter() - t
    assert not failed and not failed_ahead, failed + failed_ahead
    stages = {s: statistics.median(r["seconds"][s] for r in rows) for s in STAGES}
    return {
        "case": case,
        "shape": rows[0]["shape"],
        "stages": stages,
        "per_scan": sum(stages.values()),
        "sequential_scans_per_s": len(scans) / sequential,
        "ahead_scans_per_s": len(scans) / ahead,
        "n": len(scans),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scans", type=int, default=8)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp one)")
    p.add_argument("--only", default="ct,mri")
    args = p.parse_args(argv)
    from absl import flags, logging

    flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.WARNING)
    import jax

    work = args.work or Path(tempfile.mkdtemp(prefix="lesionjax_predict_bench_"))
    results = [run_case(c, work, args.scans) for c in args.only.split(",")]
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    header = "| case | scan | " + " | ".join(f"{s} s" for s in STAGES)
    print(header + " | s/scan | scans/s one by one | scans/s read-ahead |")
    print("|---|---|" + "---:|" * (len(STAGES) + 3))
    for r in results:
        cells = " | ".join(f"{r['stages'][s]:.2f}" for s in STAGES)
        shape = "x".join(str(n) for n in r["shape"])
        print(
            f"| {r['case']} | {shape} | {cells} | {r['per_scan']:.2f} | "
            f"{r['sequential_scans_per_s']:.3f} | {r['ahead_scans_per_s']:.3f} |"
        )
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for r in results:
        print(f"seconds_per_scan_{r['case']}={r['per_scan']:.3f}")
        print(f"scans_per_second_{r['case']}={r['ahead_scans_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""lesionjax's recipe against a stock MONAI 2D recipe, on the same prepared slices, in one run.

    python benchmarks/peer_recipe.py --dataset NAME [--folds 0,1,2] [--epochs N]
        [--recipes lesionjax,monai_bn,monai_default] [--out DIR] [--set key=value ...]
        [--seeds 0,1,2]

For each fold of the row ``NAME`` (``ROWS``): the shards are built once by lesionjax from the
row's config (so preprocessing is identical), then every recipe trains on the same training
volumes' slices under the config's sampling policy, for the same number of epochs and batch
size, and is scored on the same held-out volumes by lesionjax's metrics (``volume_metrics`` on
the shard grid, threshold 0.5):

- ``lesionjax``: the config as it is (``lesionjax.train.trainer.train``);
- ``monai_bn``: ``monai.networks.nets.BasicUNet`` with the config's widths, BatchNorm + ReLU (the
  architecture of lesionjax's U-Net), ``DiceLoss(sigmoid=True, batch=True)``, Adam at the config's
  learning rate, L2 and per-epoch decay, MONAI's ``RandAffined`` / ``RandFlipd`` and intensity
  transforms with the config's ranges;
- ``monai_default``: the same with BasicUNet's defaults (InstanceNorm, LeakyReLU 0.1).

PyTorch runs on ``torch.set_num_threads(os.cpu_count())`` threads. No validation set is used by
any recipe (``data.val_fold = -1``): each is evaluated after its last epoch. Prints one table
(per-volume Dice of each recipe, means, training minutes), Welch p-values of lesionjax against
each MONAI recipe over the volumes (``lesionjax.eval.stats``), and as the last line
``ratio_dice=<lesionjax mean / best MONAI mean>``. Results are written to
``<out>/<NAME>/results.json``. Needs the ``bench`` extra (torch, MONAI).

``--seeds`` repeats the whole row once per training seed (``config.seed``: initialisation, slice
sampling, augmentation and batch order of every recipe; the folds stay fixed), each into
``<out>/seed<S>/<NAME>/``, and ends with a summary over seeds: each recipe's mean Dice per seed,
their mean and standard deviation, Welch p-values of lesionjax against each MONAI recipe over the
per-seed means (the noise estimate for rows with one held-out volume, where volumes give none),
and ``ratio_dice`` of the seed-averaged means.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RECIPES = ("lesionjax", "monai_bn", "monai_default")


# ------------------------------------------------------------------------------ the rows


def _lesjak() -> Path:
    return SHARED / "mri_ms_lesjak"


def _prenormalized(src_dir: Path, work: Path, images_of: Callable[[Path], list]) -> Path:
    """A copy of an MRI set with its images mean/std-normalized over the brain upstream and the
    rest set to the constant -mean/std (as BraTS-style releases ship skull-stripped scans).

    images_of(src_dir) -> [(image path, brain mask path or None: the non-zero voxels)]; every
    other file is copied as it is.
    """
    import nibabel as nib

    out = work / f"{src_dir.name}_prenormalized"
    if (out / ".complete").exists():
        return out
    images = dict(images_of(src_dir))
    for path in sorted(p for p in src_dir.rglob("*") if p.is_file()):
        target = out / path.relative_to(src_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path not in images:
            shutil.copyfile(path, target)
            continue
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, np.float32)
        brain_path = images[path]
        brain = data != 0 if brain_path is None else np.asarray(nib.load(brain_path).dataobj) > 0
        mean, std = data[brain].mean(), data[brain].std()
        data = np.where(brain, (data - mean) / std, -mean / std).astype(np.float32)
        nib.save(nib.Nifti1Image(data, img.affine), str(target))
    (out / ".complete").write_text("")
    return out


def _lesjak_images(root: Path) -> list:
    return [(p, None) for p in sorted(root.glob("patient*/*.nii*")) if "GOLD" not in p.name]


def _pairs_images(root: Path) -> list:
    """images/<case>, with icm/<case> as the brain mask (the stroke generator's)."""
    return [(p, root / "icm" / p.name) for p in sorted((root / "images").glob("*.nii*"))]


def _synthetic(kind: str, source: str, n: int, seed: int, spacing) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        from data_prep.synthetic.real_anatomy import write_real_anatomy_dataset

        root = work / f"{kind}_{source}_{n}"
        return write_real_anatomy_dataset(
            root, kind, n, seed, SHARED / source, spacing=spacing, lesion_fraction=0.8
        )

    return make


@dataclasses.dataclass(frozen=True)
class Row:
    """config: ``configs/<file>.py[:variant]``; overrides: config keys set on top; raw: makes
    (or finds) the dataset folder from a work folder (None: the config's own ``raw_dir``);
    folds: the test folds run by default."""

    config: str
    overrides: dict
    raw: Callable[[Path], Path] | None
    folds: tuple[int, ...]


_MR_SYNTHETIC = {
    "data.dataset": "pairs",
    "data.n_folds": 3,
    "data.windows": ("unit",),
    "data.normalize_method": "zscore",
    "data.min_content": 0.05,
    "data.spacing": (),
    "data.size": 96,
    "train.epochs": 12,
}
_CT_SYNTHETIC = {
    "data.dataset": "pairs",
    "data.source": "folder",
    "data.n_folds": 3,
    "data.size": 128,
    "data.min_content": 0.05,
    "train.epochs": 12,
}
ROWS = {
    "lesjak": Row("configs/mri_lesjak.py", {}, None, (0,)),
    "lesjak_swap": Row("configs/mri_lesjak.py:swap", {}, None, (1,)),
    "lesjak_multi": Row("configs/mri_lesjak.py", {"data.dataset": "lesjak_multi"}, None, (0,)),
    "lesjak_prenormalized": Row(
        "configs/mri_lesjak.py", {}, lambda w: _prenormalized(_lesjak(), w, _lesjak_images), (0,)
    ),
    "lesjak_swap_prenormalized": Row(
        "configs/mri_lesjak.py:swap",
        {},
        lambda w: _prenormalized(_lesjak(), w, _lesjak_images),
        (1,),
    ),
    "demo": Row("configs/demo.py", {}, None, (0,)),
    "stroke_mni152": Row(
        "configs/mri_lesjak.py",
        _MR_SYNTHETIC,
        _synthetic("stroke", "mri_template_mni152", 24, 11, (2.0, 2.0, 2.0)),
        (0, 1, 2),
    ),
    "stroke_mni152_prenormalized": Row(
        "configs/mri_lesjak.py",
        _MR_SYNTHETIC,
        lambda w: _prenormalized(
            _synthetic("stroke", "mri_template_mni152", 24, 11, (2.0, 2.0, 2.0))(w),
            w,
            _pairs_images,
        ),
        (0, 1, 2),
    ),
    "hemorrhage_ge_ct": Row(
        "configs/demo.py",
        _CT_SYNTHETIC,
        _synthetic("hemorrhage", "ct_head_ge_dicom", 24, 12, (0.98, 0.98, 4.22)),
        (0, 1, 2),
    ),
    "hemorrhage_ct_template": Row(
        "configs/demo.py",
        _CT_SYNTHETIC,
        _synthetic("hemorrhage", "ct_template_scct", 24, 13, None),
        (0, 1, 2),
    ),
}


def load_config(spec: str, overrides: dict):
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_peer_config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant or None)
    config.unlock()
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _parse_value(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ------------------------------------------------------------------------------ data


def _slices(shards, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decoded training slices: images (N, H, W, C) uint8 and masks (N, H, W) uint8."""
    from lesionjax.core import records

    source = shards.source()
    images, masks = [], []
    for i in indices:
        rec = records.decode_record(source[int(i)])
        images.append(np.array(rec["image"]))
        masks.append(np.array(rec["mask"]))
    return np.stack(images), np.stack(masks)


def _score(shards, case_id: str, probs: np.ndarray) -> dict:
    from lesionjax.eval.metrics import volume_metrics

    gt = shards.read_volume(case_id)["mask"] > 0
    entry = shards.volume(case_id)
    m = volume_metrics(probs >= 0.5, gt, spacing=entry["shard_spacing"], surface=False)
    return {"case_id": case_id, "dice": m["dice"], "gt_voxels": m["gt_voxels"]}


# ------------------------------------------------------------------------------ recipes


def _median_epoch_seconds(ends: list[float]) -> float:
    """Median duration of the epochs after the first (which holds the compilation)."""
    durations = np.diff(ends)
    return float(np.median(durations)) if len(durations) else math.nan


def run_lesionjax(config, workdir: Path, shards, split) -> tuple[list[dict], float, float]:
    from lesionjax.eval.evaluate_volumes import evaluate_cases
    from lesionjax.train.trainer import train

    t0 = time.perf_counter()
    result = train(config, workdir, shards, split)
    minutes = (time.perf_counter() - t0) / 60
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    ends = [r["seconds"] for r in log if r["split"] == "train" and float(r["epoch"]).is_integer()]
    per_volume, _ = evaluate_cases(
        result.predictor,
        result.state,
        shards,
        split["test"],
        threshold=0.5,
        n_overlays=0,
        progress=False,
        surface=False,
    )
    volumes = [
        {"case_id": v["case_id"], "dice": v["dice"], "gt_voxels": v["gt_voxels"]}
        for v in per_volume
    ]
    return volumes, minutes, _median_epoch_seconds(ends)


def _monai_transforms(config, size: tuple[int, int]):
    import monai.transforms as T

    a = config.augment
    steps = []
    if tuple(a.brightness) != (1.0, 1.0):
        b0, b1 = a.brightness
        steps.append(T.RandScaleIntensityd(keys="image", factors=(b0 - 1.0, b1 - 1.0), prob=1.0))
    if tuple(a.contrast) != (1.0, 1.0):
        c0, c1 = a.contrast
        steps.append(
            T.RandScaleIntensityFixedMeand(keys="image", factors=(c0 - 1.0, c1 - 1.0), prob=1.0)
        )
    if tuple(a.brightness) != (1.0, 1.0) or tuple(a.contrast) != (1.0, 1.0):
        # Back into [0, 1], as lesionjax's jitter clips (gamma needs non-negative values).
        steps.append(T.Lambdad(keys="image", func=lambda x: x.clip(0.0, 1.0)))
    if tuple(a.gamma) != (1.0, 1.0):
        steps.append(T.RandAdjustContrastd(keys="image", gamma=tuple(a.gamma), prob=1.0))
    if a.enabled:
        s0, s1 = a.scale
        steps.append(
            T.RandAffined(
                keys=["image", "mask"],
                prob=1.0,
                rotate_range=(math.radians(a.rotate_deg),),
                scale_range=((s0 - 1.0, s1 - 1.0), (s0 - 1.0, s1 - 1.0)),
                translate_range=(a.translate * size[0], a.translate * size[1]),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
        steps.append(T.RandFlipd(keys=["image", "mask"], spatial_axis=0, prob=a.flip_prob))
    return T.Compose(steps)


def run_monai(config, shards, split, indices, variant: str, seed: int):
    import torch
    from monai.losses import DiceLoss
    from monai.networks.nets import BasicUNet

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    features = tuple(config.model.features)
    if len(features) != 5:
        raise SystemExit(
            f"error: model.features={features}: BasicUNet has 5 levels; the row's config must too"
        )
    kw = {"norm": ("batch", {}), "act": ("relu", {})} if variant == "monai_bn" else {}
    model = BasicUNet(
        spatial_dims=2,
        in_channels=shards.n_channels,
        out_channels=1,
        features=(*features, features[0]),
        **kw,
    )
    images, masks = _slices(shards, indices)
    size = images.shape[1:3]
    transforms = _monai_transforms(config, size)
    transforms.set_random_state(seed)
    batch = config.train.batch_size
    steps_per_epoch = len(indices) // batch
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.optim.decay_rate)
    loss_fn = DiceLoss(sigmoid=True, batch=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    ends = []
    model.train()
    for _ in range(config.train.epochs):
        order = rng.permutation(len(indices))
        for s in range(steps_per_epoch):
            xs, ys = [], []
            for i in order[s * batch : (s + 1) * batch]:
                sample = {
                    # (C, H, W) float in [0, 1], like lesionjax's uint8 -> unit conversion.
                    "image": np.moveaxis(images[i], -1, 0).astype(np.float32) / 255.0,
                    "mask": masks[i][None].astype(np.float32),
                }
                out = transforms(sample)
                xs.append(torch.as_tensor(np.asarray(out["image"])))
                ys.append(torch.as_tensor(np.asarray(out["mask"])))
            x, y = torch.stack(xs), torch.stack(ys)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        scheduler.step()
        ends.append(time.perf_counter() - t0)
    minutes = (time.perf_counter() - t0) / 60
    model.eval()
    per_volume = []
    with torch.no_grad():
        for case_id in split["test"]:
            vol = shards.read_volume(case_id)["image"]  # (X, Y, Z, C) uint8
            x = torch.as_tensor(np.moveaxis(vol, (2, 3), (0, 1)).astype(np.float32) / 255.0)
            probs = torch.sigmoid(model(x))[:, 0].numpy()  # (Z, X, Y)
            per_volume.append(_score(shards, case_id, np.moveaxis(probs, 0, 2)))
    return per_volume, minutes, _median_epoch_seconds(ends)


# ------------------------------------------------------------------------------ the run


def run_row(name: str, folds, recipes, out: Path, extra: dict, epochs: int | None) -> dict:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    from lesionjax.data import sampling
    from lesionjax.tasks.data import build_config_shards

    row = ROWS[name]
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "dataset": name,
        "folds": {},
        "minutes": {r: 0.0 for r in recipes},
        "epoch_seconds": {r: [] for r in recipes},
        "settings": {k: str(v) for k, v in extra.items()},
    }
    for fold in folds:
        config = load_config(row.config, {**row.overrides, **extra})
        if row.raw is not None:
            config.data.source = "folder"
            config.data.raw_dir = str(row.raw(out / "data"))
        if epochs is not None:
            config.train.epochs = epochs
        config.data.test_fold = fold
        config.data.val_fold = -1
        config.data.shards_dir = str(work / "shards")
        config.progress = False
        shards = build_config_shards(config, work, progress=False)
        split = sampling.split_case_ids(shards, fold, None)
        d = config.data
        indices, _ = sampling.sample_training_slices(
            shards,
            split["train"],
            d.policy,
            normal_ratio=d.normal_ratio,
            normal_weight=d.normal_weight,
            seed=config.seed,
        )
        per_fold = {}
        for recipe in recipes:
            if recipe == "lesionjax":
                fold_dir = work / f"fold{fold}"
                shutil.rmtree(fold_dir, ignore_errors=True)  # train afresh, never resume
                per_volume, minutes, epoch_s = run_lesionjax(config, fold_dir, shards, split)
            else:
                per_volume, minutes, epoch_s = run_monai(
                    config, shards, split, indices, recipe, config.seed + fold
                )
            per_fold[recipe] = per_volume
            results["minutes"][recipe] += minutes
            results["epoch_seconds"][recipe].append(epoch_s)
            dice = [v["dice"] for v in per_volume]
            shown = np.round(dice, 3).tolist()
            print(f"{name} fold {fold} {recipe}: Dice {shown}, {minutes:.1f} min", flush=True)
        results["folds"][str(fold)] = per_fold
        results["epochs"] = config.train.epochs
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def report(results: dict, recipes) -> str:
    from lesionjax.eval.stats import welch_tests

    volumes = {r: [] for r in recipes}
    for per_fold in results["folds"].values():
        for r in recipes:
            volumes[r] += [dict(v) for v in per_fold[r]]
    lesion = {r: [v for v in vs if v["gt_voxels"] > 0] for r, vs in volumes.items()}
    lines = [f"{results['dataset']}: {results.get('epochs')} epochs, {len(results['folds'])} folds"]
    header = f"{'volume':<40}" + "".join(f"{r:>16}" for r in recipes)
    lines += [header, "-" * len(header)]
    for i, v in enumerate(lesion[recipes[0]]):
        cells = "".join(f"{lesion[r][i]['dice']:>16.3f}" for r in recipes)
        lines.append(f"{v['case_id'][:40]:<40}{cells}")
    means = {r: float(np.mean([v["dice"] for v in lesion[r]])) for r in recipes}
    lines.append("-" * len(header))
    lines.append(
        f"{'mean Dice (lesion volumes)':<40}" + "".join(f"{means[r]:>16.3f}" for r in recipes)
    )
    minutes = "".join(f"{results['minutes'][r]:>16.1f}" for r in recipes)
    lines.append(f"{'training minutes':<40}{minutes}")
    epoch_s = "".join(f"{np.nanmedian(results['epoch_seconds'][r]):>16.2f}" for r in recipes)
    lines.append(f"{'seconds per epoch (median, 2nd on)':<40}{epoch_s}")
    if "lesionjax" in recipes:
        for row in welch_tests(lesion, ["dice"]):
            if "lesionjax" in (row["a"], row["b"]):
                lines.append(f"Welch {row['a']} vs {row['b']}: p = {row['p']:.3g}")
        peers = [means[r] for r in recipes if r != "lesionjax"]
        if peers:
            lines.append(f"ratio_dice={means['lesionjax'] / max(peers):.3f}")
    return "\n".join(lines)


def lesion_mean(results: dict, recipe: str) -> float:
    """Mean Dice over the held-out lesion volumes of every fold of one run."""
    dice = [
        v["dice"]
        for per_fold in results["folds"].values()
        for v in per_fold[recipe]
        if v["gt_voxels"] > 0
    ]
    return float(np.mean(dice))


def seed_report(per_seed: dict, recipes) -> str:
    """The summary over seeds: per-seed means, their mean and sd, Welch over the per-seed means."""
    from lesionjax.eval.stats import welch_tests

    seeds = sorted(per_seed)
    name = per_seed[seeds[0]]["dataset"]
    means = {r: [lesion_mean(per_seed[s], r) for s in seeds] for r in recipes}
    header = f"{'seed':<40}" + "".join(f"{r:>16}" for r in recipes)
    lines = [f"{name}: {len(seeds)} seeds", header, "-" * len(header)]
    for i, seed in enumerate(seeds):
        lines.append(f"{seed:<40}" + "".join(f"{means[r][i]:>16.3f}" for r in recipes))
    lines.append("-" * len(header))
    lines.append(
        f"{'mean over seeds':<40}" + "".join(f"{np.mean(means[r]):>16.3f}" for r in recipes)
    )
    lines.append(
        f"{'sd over seeds':<40}"
        + "".join(
            f"{np.std(means[r], ddof=1) if len(seeds) > 1 else math.nan:>16.3f}" for r in recipes
        )
    )
    if "lesionjax" in recipes:
        samples = {r: [{"dice": m} for m in means[r]] for r in recipes}
        for row in welch_tests(samples, ["dice"]):
            if "lesionjax" in (row["a"], row["b"]):
                lines.append(f"Welch over seeds {row['a']} vs {row['b']}: p = {row['p']:.3g}")
        peers = [float(np.mean(means[r])) for r in recipes if r != "lesionjax"]
        if peers:
            lines.append(f"ratio_dice={np.mean(means['lesionjax']) / max(peers):.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(ROWS))
    parser.add_argument("--folds", default=None, help="comma-separated test folds")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "peer_recipe")
    parser.add_argument("--set", action="append", default=[], help="config key=value")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated training seeds: repeat the row per seed"
    )
    args = parser.parse_args(argv)
    recipes = tuple(r for r in args.recipes.split(",") if r)
    unknown = set(recipes) - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; known: {RECIPES}")
    if not SHARED.is_dir():
        print(f"error: {SHARED}: the real data folder is absent", file=sys.stderr)
        return 2
    folds = tuple(int(f) for f in args.folds.split(",")) if args.folds else ROWS[args.dataset].folds
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = _parse_value(value)
    if args.seeds is None:
        results = run_row(args.dataset, folds, recipes, args.out, extra, args.epochs)
        print(report(results, recipes))
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s]
    per_seed = {}
    for seed in seeds:
        out = args.out / f"seed{seed}"
        results = run_row(args.dataset, folds, recipes, out, {**extra, "seed": seed}, args.epochs)
        print(report(results, recipes), flush=True)
        per_seed[seed] = results
    print(seed_report(per_seed, recipes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

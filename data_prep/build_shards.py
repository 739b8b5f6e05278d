"""The offline stage's command: dataset folder -> windowed axial slices in ArrayRecord shards.

    python -m data_prep.build_shards --dataset pairs --src DIR --out DIR \
        [--config configs/EXP.py[:variant]] [--windows ich | brain,subdural,wide | -50:150] \
        [--size 256] [--spacing 2,2,2] [--slices 70:90] [--min-content 0.05] \
        [--normalize 0.5:99.5] [--normalize-method zscore] [--folds 5] [--seed 0] \
        [--workers 2] [--allow-skips]

(also ``lesionjax-prep``). Options given here come first, then a ``--config``'s ``data``
section, then the dataset's defaults. The writer is ``data_prep.shard_writer`` (one shard and
sidecar per volume, ``manifest.json``, ``skipped.json``); ``--layout 3d`` builds the 3D plan and
one shard set per cascade stage instead (``data_prep.build3d``). The exit status is non-zero
when any case was skipped, unless ``--allow-skips``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.build3d import PLANS, build_3d, stage_dir
from data_prep.layouts import LAYOUTS
from data_prep.plan import plan_options
from data_prep.shard_writer import CAVITY_DIR, MANIFEST, SKIPPED, build_dataset
from lesionjax.core.errors import UserError


def parse_window_arg(text: str) -> list:
    """ "ich" | "brain,subdural,wide" | "-50:150,0:80" -> list of names or (lo, hi) pairs."""
    out: list = []
    for part in text.split(","):
        part = part.strip()
        if ":" in part:
            lo, hi = part.split(":")
            out.append((float(lo), float(hi)))
        else:
            out.append(part)
    return out


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(":", ",").split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(":", ",").split(",") if v.strip()]


def load_config_data(spec: str):
    """``path/to/config.py[:variant]`` -> its ``config.data`` (the options of a training config).

    The file is executed like any config file (its ``get_config(variant)``); only its ``data``
    section is used.
    """
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_lesionjax_config", path)
    if module_spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None).data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.build_shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default=None, choices=sorted(LAYOUTS), help="layout reader")
    parser.add_argument("--src", type=Path, help="dataset folder as downloaded")
    parser.add_argument("--out", type=Path, help="output folder for shards")
    parser.add_argument(
        "--config",
        help="a training config (configs/NAME.py[:variant]) whose data options are the defaults",
    )
    parser.add_argument(
        "--windows",
        default=None,
        type=parse_window_arg,
        help="window names or lo:hi pairs, comma separated (default: the dataset's; CT: ich, "
        "MRI: unit)",
    )
    parser.add_argument(
        "--size", type=int, default=None, help="resample slices in-plane to SIZE x SIZE"
    )
    parser.add_argument(
        "--spacing", type=_floats, default=None, help="resample volumes to X,Y,Z mm first"
    )
    parser.add_argument(
        "--axial-slices", type=int, default=None, metavar="N",
        help="resample each volume along z to N axial slices (before --slices)",
    )  # fmt: skip
    parser.add_argument(
        "--slices", type=_ints, default=None, help="keep axial slices LO:HI (e.g. 70:90)"
    )
    parser.add_argument(
        "--min-content", type=float, default=None, help="keep slices with this tissue fraction"
    )
    parser.add_argument(
        "--normalize", type=_floats, default=None, help="MRI percentiles LO:HI (default 0.5:99.5)"
    )
    parser.add_argument(
        "--normalize-method", choices=("percentile", "zscore"), default=None, help="MRI scheme"
    )
    parser.add_argument(
        "--cavity-model",
        default=None,
        metavar="RUN",
        help="compute the cavity mask of every case without one with the cavity models of RUN "
        f"(configs/cavity.py), stored in OUT/{CAVITY_DIR}/ (lesionjax-prep only)",
    )
    parser.add_argument(
        "--target",
        choices=("lesion", "cavity", "slice_labels"),
        default=None,
        help="what the shards' masks hold: lesions (default), the cases' cavity masks (icm/), "
        "or nothing (slice_labels: the labels the masks give, for a pretext pool)",
    )
    parser.add_argument(
        "--layout",
        choices=("2d", "3d"),
        default=None,
        help="2d: slices for the 2D models (default); 3d: the 3D plan and one shard set per "
        "cascade stage (data_prep.build3d)",
    )
    parser.add_argument(
        "--memory-gb", type=float, default=None, help="3d: accelerator memory budget (default 8)"
    )
    parser.add_argument(
        "--min-lowres-factor",
        type=float,
        default=None,
        help="3d: stage 1 at least this much coarser than full resolution (default 1: "
        "nnU-Net's rule alone)",
    )
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--allow-skips", action="store_true", help="exit 0 even when some cases were skipped"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None, *, cavity_masks=None) -> int:
    """The command. ``cavity_masks(run, cases, folder, progress=) -> cases``: what
    ``--cavity-model RUN`` computes the missing cavity masks with; the trained models live in
    ``lesionjax``, so only its ``lesionjax-prep`` (``lesionjax.prep``) passes one."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cavity_model and cavity_masks is None:
        print(
            f"error: --cavity-model {args.cavity_model}: the cavity models run in lesionjax; "
            "use lesionjax-prep (python -m lesionjax.prep) with the same arguments",
            file=sys.stderr,
        )
        return 2
    try:
        d = load_config_data(args.config) if args.config else None
    except Exception as err:
        print(
            f"error: {args.config}: cannot load config ({type(err).__name__}: {err})",
            file=sys.stderr,
        )
        return 2

    def pick(cli_value, key: str, default):
        if cli_value is not None:
            return cli_value
        if d is not None and key in d and d[key] not in ("", (), None):
            return d[key]
        return default

    dataset = pick(args.dataset, "dataset", "pairs")
    three_d = pick(args.layout, "layout", "2d") == "3d"
    if args.cavity_model and three_d:  # also a config's data.layout, not only --layout
        parser.error("--cavity-model builds 2D shards (drop --layout 3d / data.layout='3d')")
    src = pick(args.src, "raw_dir", None)
    out = pick(args.out, "shards_dir", None)
    if src is None or out is None:
        parser.error("--src and --out are required (or a --config with data.raw_dir/shards_dir)")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    options = plan_options(d) if d is not None else {}
    given = {
        "windows": args.windows,
        "size": args.size,
        "spacing": args.spacing,
        "slice_range": args.slices,
        "axial_slices": args.axial_slices,
        "min_content": args.min_content,
        "normalize": args.normalize,
        "normalize_method": args.normalize_method,
        "target": args.target,
    }
    options.update(plan_options({k: v for k, v in given.items() if v is not None}))
    if args.size == 0:  # an explicit 0 keeps the scan's size over a config's size
        options.pop("size", None)
    common = {
        "n_folds": pick(args.folds, "n_folds", 5),
        "seed": pick(args.seed, "fold_seed", 0),
        "workers": pick(args.workers, "prep_workers", min(4, os.cpu_count() or 1)),
        "progress": not args.no_progress,
    }
    try:
        if three_d:
            plan, manifests, skipped = build_3d(
                dataset,
                src,
                out,
                options,
                memory_gb=pick(args.memory_gb, "memory_gb", 8.0),
                min_lowres_factor=pick(args.min_lowres_factor, "min_lowres_factor", 1.0),
                **common,
            )
            lines = [f"{out / PLANS}: 3D plan"]
            for stage, manifest in manifests.items():
                st, c = plan["stages"][stage], manifest["counts"]
                lines.append(
                    f"{stage_dir(out, stage) / MANIFEST}: {c['volumes']} volumes at "
                    f"{'x'.join(f'{v:.2f}' for v in st['spacing'])} mm, patch "
                    f"{'x'.join(map(str, st['patch']))}, batch {st['batch_size']}"
                )
            listed = f"each stage's {SKIPPED}"
        else:
            hook = None
            if args.cavity_model:

                def hook(cases):
                    return cavity_masks(
                        args.cavity_model, cases, out / CAVITY_DIR, progress=not args.no_progress
                    )

            manifest, skipped = build_dataset(dataset, src, out, options, cases_hook=hook, **common)
            c = manifest["counts"]
            lines = [
                f"{out / MANIFEST}: {c['volumes']} volumes ({c['lesion_volumes']} with "
                f"lesions), {c['slices']} slices ({c['lesion_slices']} with lesions)"
            ]
            listed = str(out / SKIPPED)
    except (FileNotFoundError, NotADirectoryError, ValueError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if skipped:
        print(f"{len(skipped)} case(s) skipped, listed in {listed}", file=sys.stderr)
        allow = args.allow_skips or (d is not None and d.get("allow_skips", False))
        return 0 if allow else 1
    return 0


def cli() -> None:
    """The console-script entry point (see pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

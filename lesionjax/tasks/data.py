"""From a config to a built shard folder: generate the phantom set or find the user's data, then
build (or reuse) the shards with the plan the config's ``data`` section resolves to.

Shards are built on process 0 only. Whether that worked is then agreed on by every process
(``distributed.agree_on_error``): when it failed, every process stops with the same message
instead of waiting at a barrier for shards that will never come.
"""

from __future__ import annotations

from pathlib import Path

import jax

from lesionjax.core.errors import UserError
from lesionjax.data.shards import ShardSet, shards_dir
from lesionjax.distributed import agree_on_error


class DataNotFoundError(UserError, FileNotFoundError):
    """The configured dataset folder is absent; the message says where to put it."""


class DataPreparationError(UserError):
    """Building the shards failed (on process 0); the message is process 0's."""


def raw_dir(config, workdir: Path) -> Path:
    d = config.data
    if d.raw_dir:
        return Path(d.raw_dir).expanduser()
    return Path(workdir) / "phantom"


def raw_source(config, workdir: Path, *, progress: bool = True) -> Path:
    """The dataset folder of a config: the phantom set or (``data.source = "real_anatomy"``)
    synthetic lesions in a real scan (``data_prep.synthetic.real_anatomy``), generated when
    absent, or the user's."""
    d = config.data
    src = raw_dir(config, workdir)
    if d.source == "phantom":
        from data_prep.synthetic import phantom

        p = d.phantom
        phantom.generate_dataset(
            src,
            p.n_cases,
            p.seed,
            shape=tuple(p.shape),
            spacing=tuple(p.spacing),
            lesion_fraction=p.lesion_fraction,
            workers=d.prep_workers,
            progress=progress,
            prefix=p.get("prefix", "phantom"),
        )
    elif d.source == "real_anatomy":
        from data_prep.synthetic.real_anatomy import write_real_anatomy_dataset

        r = d.real_anatomy
        host = Path(r.host).expanduser()
        if not host.exists():
            hint = d.get("missing_hint", "")
            raise DataNotFoundError(
                f"{host}: data.real_anatomy.host not found" + (f"; {hint}" if hint else "")
            )
        spacing = tuple(r.spacing) or None
        write_real_anatomy_dataset(
            src, r.kind, r.n_cases, r.seed, host, spacing=spacing,
            lesion_fraction=r.lesion_fraction,
        )  # fmt: skip
    elif not src.exists():
        raise DataNotFoundError(d.get("missing_hint", "") or f"{src}: dataset folder not found")
    return src


def build_config_shards(config, workdir: Path, *, progress: bool = True) -> ShardSet:
    """Generates the phantom set if the config asks for it and it is absent, builds the shards
    (reusing valid ones) and returns the loaded ShardSet. Runs on one process."""
    build_config_data(config, workdir, progress=progress)
    return ShardSet.load(shards_dir(config, workdir))


def build_config_data(config, workdir: Path, *, progress: bool = True) -> None:
    """The phantom set if asked for, then the shards of the config's ``data.layout`` in
    ``shards_dir``: the 2D shard set, or (``"3d"``) the 3D plan and one shard set per cascade
    stage (``data_prep.build3d.build_3d``). Runs on one process."""
    from data_prep.build3d import build_3d
    from data_prep.plan import plan_options
    from data_prep.shard_writer import SKIPPED, build_dataset

    d = config.data
    src = raw_source(config, workdir, progress=progress)
    out = shards_dir(config, workdir)
    common = {
        "n_folds": d.n_folds,
        "seed": d.fold_seed,
        "workers": d.prep_workers,
        "progress": progress,
    }
    three_d = d.get("layout", "2d") == "3d"
    try:
        if three_d:
            _, _, skipped = build_3d(
                d.dataset,
                src,
                out,
                plan_options(d),
                memory_gb=d.memory_gb,
                min_lowres_factor=d.min_lowres_factor,
                **common,
            )
        else:
            _, skipped = build_dataset(d.dataset, src, out, plan_options(d), **common)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise DataPreparationError(str(err)) from None
    if skipped and not d.get("allow_skips", False):
        if three_d:
            raise DataPreparationError(
                f"{out}: {len(skipped)} case(s) could not be read (each named above, listed in "
                f"each stage's {SKIPPED}); fix or remove them, or set "
                "--config.data.allow_skips=True"
            )
        raise DataPreparationError(
            f"{out / SKIPPED}: {len(skipped)} case(s) could not be read (each named above); fix "
            "or remove them, or set --config.data.allow_skips=True to train on the others"
        )


def _built_on_process_0(build, name: str) -> None:
    """Runs ``build()`` on process 0 and has every process agree on how it went: a failure
    on process 0 stops every process with its message (a bug is re-raised there)."""
    error, unexpected = None, None
    if jax.process_index() == 0:
        try:
            build()
        except UserError as err:
            error = str(err)
        except Exception as err:  # a bug: the others must still hear of it, then it surfaces
            error, unexpected = f"{type(err).__name__} while building shards: {err}", err
    error = agree_on_error(error, name)
    if unexpected is not None:
        raise unexpected
    if error is not None:
        raise DataPreparationError(error)


def prepare_shards(config, workdir: Path, *, progress: bool = True) -> ShardSet:
    """The run's shards on every process: built on process 0, loaded by the others once process
    0 is done; a failure on process 0 stops every process with its message."""
    _built_on_process_0(
        lambda: build_config_data(config, workdir, progress=progress), "shards-ready"
    )
    return ShardSet.load(shards_dir(config, workdir))


def prepare_3d(config, workdir: Path, *, progress: bool = True) -> tuple[dict, dict[str, ShardSet]]:
    """The 3D plan and each stage's ShardSet on every process (built on process 0)."""
    import json

    _built_on_process_0(
        lambda: build_config_data(config, workdir, progress=progress), "shards3d-ready"
    )
    out = shards_dir(config, workdir)
    plan = json.loads((out / "plans3d.json").read_text())
    stages = {name: ShardSet.load(out / f"3d_{name}") for name in plan["stages"]}
    return plan, stages

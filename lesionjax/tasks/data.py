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


def build_config_shards(config, workdir: Path, *, progress: bool = True) -> ShardSet:
    """Generates the phantom set if the config asks for it and it is absent, builds the shards
    (reusing valid ones) and returns the loaded ShardSet. Runs on one process."""
    from data_prep.build_shards import SKIPPED, build_dataset
    from data_prep.plan import plan_options

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
        )
    elif not src.exists():
        raise DataNotFoundError(d.get("missing_hint", "") or f"{src}: dataset folder not found")
    out = shards_dir(config, workdir)
    try:
        _, skipped = build_dataset(
            d.dataset,
            src,
            out,
            plan_options(d),
            n_folds=d.n_folds,
            seed=d.fold_seed,
            workers=d.prep_workers,
            progress=progress,
        )
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise DataPreparationError(str(err)) from None
    if skipped and not d.get("allow_skips", False):
        raise DataPreparationError(
            f"{out / SKIPPED}: {len(skipped)} case(s) could not be read (each named above); fix "
            "or remove them, or set --config.data.allow_skips=True to train on the others"
        )
    return ShardSet.load(out)


def prepare_shards(config, workdir: Path, *, progress: bool = True) -> ShardSet:
    """The run's shards on every process: built on process 0, loaded by the others once process
    0 is done; a failure on process 0 stops every process with its message."""
    error, shards, unexpected = None, None, None
    if jax.process_index() == 0:
        try:
            shards = build_config_shards(config, workdir, progress=progress)
        except UserError as err:
            error = str(err)
        except Exception as err:  # a bug: the others must still hear of it, then it surfaces
            error, unexpected = f"{type(err).__name__} while building shards: {err}", err
    error = agree_on_error(error, "shards-ready")
    if unexpected is not None:
        raise unexpected
    if error is not None:
        raise DataPreparationError(error)
    return shards if shards is not None else ShardSet.load(shards_dir(config, workdir))

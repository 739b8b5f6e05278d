"""From a config to a built shard folder: generate the phantom set or find the user's data, then
build (or reuse) the shards. Runs on process 0 only; the others wait at a barrier."""

from __future__ import annotations

from pathlib import Path

from lesionjax.data.pipeline import ShardSet


class DataNotFoundError(FileNotFoundError):
    """The configured dataset folder is absent; the message says where to put it."""


def raw_dir(config, workdir: Path) -> Path:
    d = config.data
    if d.raw_dir:
        return Path(d.raw_dir).expanduser()
    return Path(workdir) / "phantom"


def shards_dir(config, workdir: Path) -> Path:
    return (
        Path(config.data.shards_dir).expanduser()
        if config.data.shards_dir
        else Path(workdir) / "shards"
    )


def prepare_shards(config, workdir: Path, *, progress: bool = True) -> ShardSet:
    """Generates the phantom set if the config asks for it and it is absent, builds the shards
    (reusing valid ones) and returns the loaded ShardSet."""
    from data_prep.build_shards import build_shards
    from data_prep.layouts import read_layout

    d = config.data
    src = raw_dir(config, workdir)
    if d.source == "phantom":
        from lesionjax.data import phantom

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
    cases, problems = read_layout(d.dataset, src)
    out = shards_dir(config, workdir)
    _, skipped = build_shards(
        cases,
        out,
        windows=list(d.windows),
        size=(d.size, d.size) if d.size else None,
        n_folds=d.n_folds,
        seed=d.fold_seed,
        workers=d.prep_workers,
        progress=progress,
        dataset=d.dataset,
        normalize=tuple(d.normalize) or None,
        spacing=tuple(d.spacing) or None,
        slice_range=tuple(d.slice_range) or None,
        min_content=d.min_content,
        normalize_method=d.normalize_method,
        reader_problems=problems,
    )
    if skipped and not d.get("allow_skips", False):
        raise RuntimeError(
            f"{len(skipped)} case(s) could not be read; see {out / 'skipped.json'} "
            "(set --config.data.allow_skips=True to train on the others)"
        )
    return ShardSet.load(out)

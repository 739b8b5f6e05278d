"""A slice-labelled pretext pool: the role RSNA's 211,000 labelled slices play in the
label-efficient paper (half of them with ICH), built as an ordinary shard set whose volumes
carry per-slice labels (any ICH + the 5 subtypes) and no masks (``has_mask: false``, so a
segmentation run refuses them).

    python -m lesionjax.main --config configs/pretext/pool.py [--workdir runs/pool]

The default generates synthetic head CTs (``data.phantom``, case ids ``pool_000``, ... and a
seed of their own, so no volume is one of the segmentation set's) and builds them with
``data.target = "slice_labels"``: the slice labels their masks give, the masks dropped. The RSNA
reader's slices (``data.source = "folder"``, ``data.dataset = "rsna"``) are slice-labelled as
they are. ``<workdir>/pool.json`` counts the slices per label.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from lesionjax.core.atomic import atomic_write_json
from lesionjax.core.labels import SLICE_LABELS
from lesionjax.eval.runs import write_config
from lesionjax.tasks.data import prepare_shards


def pool_counts(shards) -> dict:
    """Volumes, slices, and slices per label (SLICE_LABELS order) of a shard set."""
    labels = np.concatenate(
        [
            np.asarray(v["slice_labels"], np.int64).reshape(-1, len(SLICE_LABELS))
            for v in shards.volumes
        ]
    )
    return {
        "volumes": len(shards.volumes),
        "volumes_with_masks": sum(bool(v["has_mask"]) for v in shards.volumes),
        "slices": int(labels.shape[0]),
        "slices_per_label": {
            name: int(n) for name, n in zip(SLICE_LABELS, labels.sum(0), strict=True)
        },
    }


def run_pool(config, workdir: Path) -> dict:
    """Builds (or reuses) the pool's shards and writes ``pool.json``; returns it."""
    t0 = time.perf_counter()
    workdir = Path(workdir)
    if jax.process_index() == 0:
        write_config(workdir, config)
    shards = prepare_shards(config, workdir, progress=config.get("progress", True))
    result = {"shards": str(shards.root), **pool_counts(shards)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if jax.process_index() == 0:
        atomic_write_json(workdir / "pool.json", result)
        per = result["slices_per_label"]
        print(
            f"pool: {result['volumes']} volumes, {result['slices']} slices, {per['any']} with "
            f"ICH ({', '.join(f'{k} {v}' for k, v in per.items() if k != 'any')})"
        )
    result["n_volumes"] = result["volumes"]
    result["report"] = str(workdir / "pool.json")
    result["summary_path"] = str(workdir / "pool.json")
    return result

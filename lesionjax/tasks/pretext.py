"""The pretext task (``config.task = "pretext"``): a pretext model trained on the
slice-labelled pool, whose encoder (and decoder) a segmentation run then starts from
(``train.init_from``).

    python -m lesionjax.main --config configs/pretext/global_contrastive.py

Data -> pool shards (``data.target = "slice_labels"``, built or reused as any run's; several
pretext runs can share one with ``data.shards_dir``) -> train every volume's slices with the
objective of ``config.pretext.task`` (``lesionjax.pretext.objectives``), resuming, with the
segmentation runs' checkpoints, progress bar and ``metrics.jsonl`` -> ``pretext.json`` (final
loss, steps, time). There is no held-out evaluation: the pretext model is judged by the
segmentation runs that start from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from lesionjax.core.atomic import atomic_write_json
from lesionjax.core.labels import SLICE_LABELS
from lesionjax.tasks.data import prepare_shards


def pool_targets(shards, case_ids) -> np.ndarray:
    """The multi-label targets (N, 7) of the volumes' slices (``losses.multilabel_targets``)."""
    labels = np.concatenate(
        [
            np.asarray(shards.volume(c)["slice_labels"], np.float32).reshape(-1, len(SLICE_LABELS))
            for c in case_ids
        ]
    )
    return np.concatenate([1.0 - labels[:, :1], labels], axis=1)


def last_train_loss(workdir: Path) -> float | None:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None
    loss = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == "train":
            loss = record["loss"]
    return loss


def run_pretext(config, workdir: Path) -> dict:
    from lesionjax.pretext.objectives import build_objective
    from lesionjax.train.trainer import train

    workdir = Path(workdir)
    t0 = time.perf_counter()
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
    shards = prepare_shards(config, workdir, progress=config.get("progress", True))
    case_ids = [v["case_id"] for v in shards.volumes]
    objective = build_objective(config, label_targets=pool_targets(shards, case_ids))
    split = {"train": case_ids, "val": [], "test": []}
    result = train(config, workdir, shards, split, objective=objective)
    summary = {
        "task": objective.name,
        "shards": str(shards.root),
        "volumes": len(case_ids),
        "slices": int(sum(v["n_slices"] for v in shards.volumes)),
        "checkpoint_step": result.checkpoint_step,
        "final_loss": last_train_loss(workdir),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if is_main:
        atomic_write_json(workdir / "pretext.json", summary)
        print(
            f"pretext {objective.name}: {summary['checkpoint_step']} steps on "
            f"{summary['slices']} slices, final loss {summary['final_loss']:.4f}"
        )
    summary["n_volumes"] = len(case_ids)
    summary["report"] = str(workdir / "pretext.json")
    summary["summary_path"] = str(workdir / "pretext.json")
    return summary

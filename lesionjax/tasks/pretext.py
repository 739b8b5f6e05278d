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
from lesionjax.eval.runs import write_config
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
        write_config(workdir, config)
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


def load_pretext_model(workdir: Path):
    """(run state, restored state) of a finished pretext run, for its bottleneck features."""
    from lesionjax.eval.runs import load_config, read_preprocessing
    from lesionjax.pretext.objectives import build_objective
    from lesionjax.train import state as state_lib

    workdir = Path(workdir)
    config = load_config(workdir)
    _, channels = read_preprocessing(workdir, config)
    objective = build_objective(config, label_targets=np.ones((2, 7), np.float32))
    run = state_lib.build_run_state(config, channels, objective=objective)
    manager = state_lib.open_checkpoints(workdir, read_only=True)
    try:
        step, _ = state_lib.pick_step(manager)
        state = state_lib.restore_state(manager, step, run)
    finally:
        manager.close()
    return run, state


def pool_slices(shards, *, max_slices: int = 400, seed: int = 0) -> list[tuple[str, int, list]]:
    """(case id, z, SLICE_LABELS flags) of up to ``max_slices`` pool slices, half with ICH and
    half without where the pool has them (seeded draws), sorted by case and z."""
    ich, normal = [], []
    for v in shards.volumes:
        for z, flags in enumerate(v["slice_labels"]):
            (ich if flags[0] else normal).append((v["case_id"], z, list(flags)))
    rng = np.random.default_rng(seed)
    picked = []
    for group in (ich, normal):
        n = min(len(group), max_slices // 2)
        picked += [group[i] for i in rng.choice(len(group), n, replace=False)]
    return sorted(picked, key=lambda s: (s[0], s[1]))


def pool_features(workdir: Path, shards, slices) -> np.ndarray:
    """Global-average-pooled bottleneck features (N, C) of a pretext run on pool slices."""
    from lesionjax.core import records
    from lesionjax.eval.evaluate_volumes import make_features_fn
    from lesionjax.eval.inference import VolumePredictor

    run, state = load_pretext_model(workdir)
    extractor = VolumePredictor(make_features_fn(run.graphdef), run.mesh, run.state_sharding)
    source = shards.source()
    images = [
        records.decode_record(source[shards.volume(c)["record_offset"] + z])["image"]
        for c, z, _ in slices
    ]
    return np.asarray(extractor.predict_slices(state, np.stack(images)), np.float32)

"""The pretext task end to end on a tiny pool: checkpoints, metrics log, resume, and the
local contrastive model starting from the global one's encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def _config(name: str, **overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / "pretext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.unlock()
    config.progress = False
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def restoration(tmp_path_factory):
    from lesionjax.tasks import run_task

    workdir = tmp_path_factory.mktemp("pretext") / "restoration"
    return workdir, run_task(_config("context_restoration"), workdir)


def _train_records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def test_a_pretext_run_checkpoints_logs_and_resumes(restoration):
    from lesionjax.tasks import run_task
    from lesionjax.train.state import saved_steps

    workdir, summary = restoration
    assert summary["task"] == "context_restoration"
    assert summary["checkpoint_step"] == 4 and saved_steps(workdir) == [4]
    records = _train_records(workdir)
    assert [r["step"] for r in records] == [2, 4]
    assert summary["final_loss"] == records[-1]["loss"]
    assert json.loads((workdir / "pretext.json").read_text())["slices"] == summary["slices"]
    # Again with two more steps: it resumes at step 4 and logs only the new ones.
    more = run_task(_config("context_restoration", **{"train.max_steps": 6}), workdir)
    assert more["checkpoint_step"] == 6 and saved_steps(workdir) == [6]
    assert [r["step"] for r in _train_records(workdir)] == [2, 4, 6]


def test_local_contrastive_starts_from_the_global_models_encoder(restoration, tmp_path):
    from lesionjax.tasks import run_task
    from lesionjax.train import transfer

    pool_shards = str(restoration[0] / "shards")
    global_dir, local_dir = tmp_path / "global", tmp_path / "local"
    run_task(_config("global_contrastive", **{"data.shards_dir": pool_shards}), global_dir)
    config = _config(
        "local_contrastive",
        **{"data.shards_dir": pool_shards, "train.init_from": str(global_dir)},
    )
    summary = run_task(config, local_dir)
    assert np.isfinite(summary["final_loss"])
    report = json.loads((local_dir / "init_from.json").read_text())
    assert report["init_parts"] == "encoder"
    assert report["loaded"] and all(k.split("/")[1] == "encoder" for k in report["loaded"])
    assert any(k.startswith("params/projector") for k in report["left_out"])
    # The encoder is frozen: the local run's encoder is still the global run's.
    source, _ = transfer.read_source(global_dir)
    local, _ = transfer.read_source(local_dir)
    for key in report["loaded"]:
        np.testing.assert_array_equal(local[key], source[key], key)


def test_multilabel_runs_on_the_pool(restoration, tmp_path):
    from lesionjax.tasks import run_task

    config = _config("multilabel_bce", **{"data.shards_dir": str(restoration[0] / "shards")})
    summary = run_task(config, tmp_path / "ml")
    assert summary["task"] == "multilabel_bce" and np.isfinite(summary["final_loss"])

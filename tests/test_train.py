"""Training end to end on the tiny phantom set: learning, resume after a kill, NaN stop."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lesionjax.data import pipeline

REPO = Path(__file__).resolve().parents[1]


def tiny_config(shards_dir: Path, **overrides):
    sys.path.insert(0, str(REPO / "configs"))
    try:
        import demo
    finally:
        sys.path.pop(0)
    config = demo.get_config("tiny")
    config.unlock()
    config.progress = False
    config.data.source = "folder"
    config.data.shards_dir = str(shards_dir)
    config.data.windows = ("brain", "ich")
    config.data.policy = "all"
    config.train.log_every = 1
    for key, value in overrides.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_evaluates(tiny_shards, tmp_path):
    from lesionjax.train.trainer import train

    config = tiny_config(
        tiny_shards,
        **{
            "train.epochs": 25,
            "train.batch_size": 4,
            "train.checkpoint_every_epochs": 5,
            "optim.decay_rate": 1.0,
            "data.policy": "lesion",
        },
    )
    shards = pipeline.ShardSet.load(tiny_shards)
    split = pipeline.split_case_ids(shards, 0, 1)
    result = train(config, tmp_path, shards, split)
    log = _read_jsonl(tmp_path / "metrics.jsonl")
    train_losses = [r["loss"] for r in log if r["split"] == "train"]
    assert len(train_losses) == result.last_step
    first, last = sum(train_losses[:3]) / 3, sum(train_losses[-3:]) / 3
    assert last < first - 0.05, (first, last)
    assert [r["epoch"] for r in log if r["split"] == "val"] == list(range(1, 26))
    assert result.best_step is not None and (tmp_path / "checkpoints").is_dir()


def _order(workdir: Path) -> dict[int, list[int]]:
    # The last entry of a step wins: a killed run may have read batches past its checkpoint.
    return {r["step"]: r["index"] for r in _read_jsonl(workdir / "data_order.jsonl")}


@pytest.mark.slow
def test_killed_training_resumes_from_the_checkpoint_with_the_same_data_order(
    tiny_main_command, child_env, tmp_path
):
    def cmd(workdir):
        return tiny_main_command(
            workdir, "--config.data.windows=('brain','ich')", "--config.train.epochs=6"
        )

    env = child_env(2)
    reference = tmp_path / "reference"
    subprocess.run(cmd(reference), env=env, check=True, capture_output=True)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        cmd(resumed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    ckpt = resumed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit()] if ckpt.exists() else []
        if steps:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name) for p in ckpt.glob("*") if p.name.isdigit())

    out = subprocess.run(cmd(resumed), env=env, check=True, capture_output=True, text=True)
    assert f"at step {killed_at}" in out.stdout + out.stderr

    ref_order, res_order = _order(reference), _order(resumed)
    assert sorted(res_order) == sorted(ref_order)
    assert res_order == ref_order
    ref_summary = json.loads((reference / "eval" / "summary.json").read_text())
    res_summary = json.loads((resumed / "eval" / "summary.json").read_text())
    assert res_summary["n_volumes"] == ref_summary["n_volumes"] > 0


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step(tiny_shards, tmp_path):
    from lesionjax.train.trainer import NonFiniteLossError, train

    config = tiny_config(tiny_shards, **{"optim.lr": 1e30, "train.epochs": 3})
    shards = pipeline.ShardSet.load(tiny_shards)
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf|-inf) at step \d+"):
        train(config, tmp_path, shards, pipeline.split_case_ids(shards, 0, 1))

"""Training end to end on the tiny phantom set: learning, resume after a kill, NaN stop."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lesionjax.data import sampling
from lesionjax.data.shards import ShardSet

REPO = Path(__file__).resolve().parents[3]
# Runs the main job and SIGKILLs it at a chosen checkpoint commit (see its docstring).
KILL_AT_CHECKPOINT = REPO / "tests" / "kill_at_checkpoint.py"


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


def _assert_the_loss_fell(losses: list[float]) -> None:
    """The mean of the last three logged losses is at least 0.05 below the first three's."""
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.05, (first, last)


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
    shards = ShardSet.load(tiny_shards)
    split = sampling.split_case_ids(shards, 0, 1)
    result = train(config, tmp_path, shards, split)
    log = _read_jsonl(tmp_path / "metrics.jsonl")
    train_log = [r for r in log if r["split"] == "train"]
    assert [r["step"] for r in train_log] == list(range(1, len(train_log) + 1))  # log_every=1
    _assert_the_loss_fell([r["loss"] for r in train_log])
    val = [r for r in log if r["split"] == "val"]
    assert [r["epoch"] for r in val] == list(range(1, 26))
    # The evaluated state is the best checkpoint's: every new best validation Dice is saved
    # (between the 5-epoch saves too), so it is the best epoch's.
    best = max(val, key=lambda r: r["dice"])
    assert result.best_val_dice == pytest.approx(best["dice"])
    assert result.checkpoint_step == best["step"]


def _order(workdir: Path) -> dict[int, list[int]]:
    return {r["step"]: r["index"] for r in _read_jsonl(workdir / "data_order.jsonl")}


EPOCHS = 3


def _epochs(tiny_main_command, workdir):
    return tiny_main_command(
        workdir, "--config.data.windows=('brain','ich')", f"--config.train.epochs={EPOCHS}"
    )


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_main_command, child_env, tmp_path_factory) -> Path:
    """The tiny demo run from start to end: what every interrupted run must end as."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(
        _epochs(tiny_main_command, workdir), env=child_env(2), check=True, capture_output=True
    )
    return workdir


def _saved_steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.glob("*") if p.name.isdigit()) if ckpt.exists() else []


def _wait_for(proc, condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"training ended (status {proc.returncode}) before {what}")


def _assert_same_run(reference: Path, resumed: Path, checkpoint_params) -> None:
    """``resumed`` (interrupted and restarted) ended as the uninterrupted ``reference``."""
    ref_order, res_order = _order(reference), _order(resumed)
    assert sorted(res_order) == sorted(ref_order)
    assert res_order == ref_order
    # The same final parameters as the uninterrupted run (same machine: within float noise;
    # a resume from the wrong step, state or data position is off by far more).
    last = max(ref_order) + 1
    for a, b in zip(
        checkpoint_params(reference, last), checkpoint_params(resumed, last), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # And the same evaluation, volume by volume.
    ref = json.loads((reference / "eval" / "per_volume.json").read_text())
    res = json.loads((resumed / "eval" / "per_volume.json").read_text())
    assert [v["case_id"] for v in res] == [v["case_id"] for v in ref] and ref
    for r, v in zip(ref, res, strict=True):
        for key in ("dice", "precision", "recall", "pred_voxels"):
            assert v[key] == pytest.approx(r[key], abs=1e-6), (r["case_id"], key)
    # Steps logged between the checkpoint and the interruption appear once in each log.
    steps = [r["step"] for r in _read_jsonl(resumed / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(set(steps))
    order_steps = [r["step"] for r in _read_jsonl(resumed / "data_order.jsonl")]
    assert order_steps == list(range(last))


@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_exits_75_and_resumes_there(
    tiny_main_command, child_env, checkpoint_params, uninterrupted_run, tmp_path
):
    """A preemption notice (SIGTERM) in the middle of epoch 2: the step in flight finishes, a
    checkpoint is saved at once (not at the epoch's end), the job exits with status 75, and the
    same command resumes there and ends as the uninterrupted run."""
    env = child_env(2)
    steps_per_epoch = len(_order(uninterrupted_run)) // EPOCHS
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _epochs(tiny_main_command, run),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    order = run / "data_order.jsonl"
    signalled_after = steps_per_epoch + steps_per_epoch // 2
    _wait_for(
        proc,
        lambda: order.exists() and len(order.read_text().splitlines()) >= signalled_after,
        "the middle of epoch 2",
    )
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, out[-3000:]
    assert "Traceback" not in out
    stopped = [line for line in out.splitlines() if line.startswith("stopped: SIGTERM: ")]
    assert len(stopped) == 1, out[-3000:]
    saved_at = int(stopped[0].split("checkpoint saved at step ")[1].split()[0])
    # Saved within a few steps of the signal, before the epoch's end (its own save, not the
    # epoch's), and the data order logged stops there.
    assert signalled_after <= saved_at < 2 * steps_per_epoch, (signalled_after, saved_at)
    assert max(_saved_steps(run)) == saved_at
    assert len(_read_jsonl(order)) == saved_at

    out = subprocess.run(
        _epochs(tiny_main_command, run), env=env, check=True, capture_output=True, text=True
    )
    assert f"at step {saved_at}" in out.stdout + out.stderr
    _assert_same_run(uninterrupted_run, run, checkpoint_params)


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_usable(
    tiny_main_command, child_env, checkpoint_params, uninterrupted_run, tmp_path
):
    """SIGKILL (nothing runs after it) while the second checkpoint is committed, steps after
    the first: the first checkpoint survives, and the restart resumes from it with the same
    data order and ends as the uninterrupted run (this is also the plain kill-and-resume test:
    a kill at any other moment after a checkpoint leaves no more than this one)."""
    env = child_env(2)
    run = tmp_path / "run"
    command = _epochs(tiny_main_command, run)
    assert command[1:3] == ["-m", "lesionjax.main"]
    out = subprocess.run(
        [command[0], str(KILL_AT_CHECKPOINT), *command[3:]],
        env={**env, "LESIONJAX_TEST_KILL": "before:2"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == -signal.SIGKILL, out.stdout[-2000:] + out.stderr[-2000:]
    killed = out.stdout.split("killed while committing step ")[1].split()[0]
    first = _saved_steps(run)
    # The first checkpoint is still there (the policy keeps one latest: it must not have been
    # deleted before the second was committed), the second is not a checkpoint.
    assert len(first) == 1 and first[0] < int(killed), (first, killed)
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if not p.name.isdigit()]
    assert any(killed in name for name in leftovers), leftovers

    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    assert f"at step {first[0]}" in out.stdout + out.stderr
    _assert_same_run(uninterrupted_run, run, checkpoint_params)


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step(tiny_shards, tmp_path):
    from lesionjax.train.trainer import NonFiniteLossError, train

    config = tiny_config(tiny_shards, **{"optim.lr": 1e30, "train.epochs": 3})
    shards = ShardSet.load(tiny_shards)
    with pytest.raises(NonFiniteLossError, match=r"step \d+: loss (nan|inf|-inf), gradient norm"):
        train(config, tmp_path, shards, sampling.split_case_ids(shards, 0, 1))


@pytest.mark.slow
def test_non_finite_gradient_after_a_checkpoint_is_never_saved_and_resuming_works(
    tiny_shards, tmp_path, monkeypatch, checkpoint_params
):
    """A batch without lesion pixels makes the loss below finite but its gradient NaN
    (0 * d sqrt(x)/dx at x = 0). It comes at the last step of epoch 2, when epoch 1's checkpoint
    exists: training must stop before saving epoch 2, and a restart resumes from epoch 1."""
    import jax
    import jax.numpy as jnp

    from lesionjax.losses import soft_dice_loss
    from lesionjax.train import step as step_lib
    from lesionjax.train import trainer

    config = tiny_config(
        tiny_shards,
        **{"train.epochs": 3, "train.batch_size": 4, "data.policy": "lesion", "data.val_fold": -1},
    )
    shards = ShardSet.load(tiny_shards)
    split = sampling.split_case_ids(shards, 0, None)
    n_lesion = len(sampling.sample_training_slices(shards, split["train"], "lesion")[0])
    steps_per_epoch = n_lesion // 4
    bad_step = 2 * steps_per_epoch - 1  # the step index ending epoch 2

    def sqrt_dice(logits, target, weights=None):
        overlap = jnp.sum(jax.nn.sigmoid(logits) * target)
        return soft_dice_loss(logits, target, weights) + 0.0 * jnp.sqrt(overlap)

    original = step_lib.make_train_step

    def poisoned(graphdef, tx, loss_fn, **kw):
        inner = original(graphdef, tx, sqrt_dice, **kw)

        def step(state, batch, key):
            mask = jnp.where(state.step == bad_step, jnp.zeros_like(batch["mask"]), batch["mask"])
            return inner(state, {**batch, "mask": mask}, key)

        return step

    config.loss = "dice"
    with monkeypatch.context() as patch:
        patch.setattr(step_lib, "make_train_step", poisoned)
        with pytest.raises(trainer.NonFiniteLossError) as err:
            trainer.train(config, tmp_path, shards, split)
    message = str(err.value)
    assert message.startswith(f"step {bad_step + 1}: loss ")
    assert "gradient norm nan" in message
    assert f"the last checkpoint is step {steps_per_epoch}" in message
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [steps_per_epoch]
    assert all(np.isfinite(p).all() for p in checkpoint_params(tmp_path, steps_per_epoch))

    result = trainer.train(config, tmp_path, shards, split)  # the real step again: resumes
    assert result.checkpoint_step == 3 * steps_per_epoch
    leaves = jax.tree.leaves(result.state.params)
    assert all(bool(jnp.isfinite(x).all()) for x in leaves)


def test_metrics_log_resume_drops_a_cut_line_and_the_steps_after_the_checkpoint(tmp_path):
    """Killed after logging step 4 (its line cut short) with the checkpoint at step 2: the
    resumed run logs step 3 again, on a line of its own, once."""
    from lesionjax.train.trainer import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "split": "train"}\n{"step": 2, "split": "val"}\n'
        '{"step": 3, "split": "train"}\n{"step": 4, "spl'
    )
    log = MetricsLog(path)
    log.resume(keep_through=2)
    log.write({"step": 3, "split": "train", "loss": 0.5})
    assert _read_jsonl(path) == [
        {"step": 1, "split": "train"},
        {"step": 2, "split": "val"},
        {"step": 3, "split": "train", "loss": 0.5},
    ]


def test_checkpoints_are_due_at_the_end_for_a_new_best_and_not_too_often():
    from lesionjax.train.trainer import checkpoint_due

    base = dict(every_epochs=2, min_seconds=60.0, metric=None, best=None, final=False)
    assert checkpoint_due(epoch=2, since_last=None, **base)  # the first save
    assert not checkpoint_due(epoch=3, since_last=None, **base)  # not an every-2 epoch
    assert not checkpoint_due(epoch=4, since_last=10.0, **base)  # saved 10 s ago
    assert checkpoint_due(epoch=4, since_last=61.0, **base)
    assert checkpoint_due(epoch=5, since_last=1.0, **{**base, "final": True})
    # A better validation score is saved at once, a worse or NaN one waits.
    assert checkpoint_due(epoch=5, since_last=1.0, **{**base, "metric": 0.6, "best": 0.5})
    assert not checkpoint_due(epoch=5, since_last=1.0, **{**base, "metric": 0.4, "best": 0.5})
    assert not checkpoint_due(epoch=5, since_last=1.0, **{**base, "metric": float("nan")})


@pytest.mark.slow
def test_precise_bn_only_before_saves_gives_the_run_that_computes_it_every_epoch(
    tiny_shards, tmp_path, monkeypatch
):
    """Without validation, precise BN runs only before a save. The result must be the run that
    saves (and so computes precise BN) after every epoch: the same losses and the same final
    parameters and running statistics."""
    import jax

    from lesionjax.train import trainer

    calls = []
    real = trainer.precise_bn_statistics

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(trainer, "precise_bn_statistics", counted)
    shards = ShardSet.load(tiny_shards)
    split = sampling.split_case_ids(shards, 0, -1)
    assert split["val"] == []
    runs = {}
    for name, every in (("every_epoch", 1), ("end_only", 1000)):
        config = tiny_config(
            tiny_shards,
            **{
                "train.epochs": 3,
                "train.batch_size": 4,
                "train.precise_bn_batches": 2,
                "train.checkpoint_every_epochs": every,
                "train.checkpoint_min_seconds": 0.0,
            },
        )
        calls.clear()
        result = trainer.train(config, tmp_path / name, shards, split)
        losses = [r["loss"] for r in _read_jsonl(tmp_path / name / "metrics.jsonl")]
        runs[name] = (
            len(calls),
            losses,
            jax.tree.leaves((result.state.params, result.state.model_state)),
        )
    (calls_all, losses_all, leaves_all), (calls_end, losses_end, leaves_end) = runs.values()
    assert (calls_all, calls_end) == (3, 1)  # after each of the 3 epochs against at the end
    assert losses_end == pytest.approx(losses_all, abs=1e-6)
    for a, b in zip(leaves_all, leaves_end, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


@pytest.mark.slow
def test_bf16_training_lowers_the_loss_and_saves_float32(tiny_shards, tmp_path):
    import jax
    import orbax.checkpoint as ocp

    from lesionjax.train.trainer import train

    config = tiny_config(
        tiny_shards,
        **{
            "train.epochs": 12,
            "train.batch_size": 4,
            "train.precision": "bf16",
            "optim.decay_rate": 1.0,
            "data.policy": "lesion",
            "data.val_fold": -1,
        },
    )
    shards = ShardSet.load(tiny_shards)
    result = train(config, tmp_path, shards, sampling.split_case_ids(shards, 0, None))
    log = _read_jsonl(tmp_path / "metrics.jsonl")
    _assert_the_loss_fell([r["loss"] for r in log if r["split"] == "train"])
    # Everything saved is float32 (parameters, BN statistics, Adam moments), the step int32.
    path = tmp_path / "checkpoints" / str(result.checkpoint_step) / "state"
    meta = ocp.StandardCheckpointer().metadata(path.absolute()).item_metadata
    dtypes = {str(m.dtype) for m in jax.tree.leaves(meta)}
    assert dtypes == {"float32", "int32"}, dtypes

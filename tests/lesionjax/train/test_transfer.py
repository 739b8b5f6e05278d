"""train.init_from: a run starts from another run's weights, matched by parameter path."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from lesionjax.core.errors import ConfigError
from lesionjax.models.unet2d import UNet2D
from lesionjax.train import transfer
from lesionjax.train.step import make_init_fn, make_optimizer


def _state(in_channels: int, seed: int, **model):
    tx, _ = make_optimizer(1e-3, 10)
    _, init = make_init_fn(lambda rngs: UNet2D(in_channels, 1, (4, 8), rngs=rngs, **model), tx)
    return jax.jit(init)(jax.random.key(seed))


def _host(state) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in transfer.flat_variables(state).items()}


def test_the_encoder_is_copied_the_rest_kept_heads_and_mismatches_reported():
    # Source: a 1-channel U-Net with deep-supervision heads and a pretext projection head.
    source = _host(_state(1, seed=0))
    source["params/projection/0/kernel"] = np.ones((8, 16), np.float32)
    fresh = _state(3, seed=1)  # 3 input channels: the first conv's kernel cannot be copied
    before = _host(fresh)
    new, report = transfer.transfer(fresh, source, "encoder")
    after = _host(new)

    first = "params/encoder/0/first/conv/kernel"
    assert report["initialised"][first] == (
        "shape mismatch: (3, 3, 1, 4) in the source, (3, 3, 3, 4) here"
    )
    assert "params/projection/0/kernel" in report["left_out"]
    assert not any(p.startswith(("params/projection", "model_state/projection")) for p in after)
    for path, value in after.items():
        top = path.split("/")[1]
        if top == "encoder" and path != first:
            assert path in report["loaded"]
            np.testing.assert_array_equal(value, source[path])  # BN statistics included
        else:
            assert path not in report["loaded"]
            np.testing.assert_array_equal(value, before[path])  # the fresh initialisation
    # The decoder of the source was not asked for: it is left out, not copied.
    assert all(p in report["left_out"] for p in source if p.split("/")[1] == "decoder")
    assert any(p.startswith("model_state/encoder") for p in report["loaded"])


def test_all_parts_copy_every_matching_variable_and_the_optimizer_starts_fresh():
    source_state = _state(1, seed=0)
    source = _host(source_state)
    new, report = transfer.transfer(_state(1, seed=1), source, "all")
    assert sorted(report["loaded"]) == sorted(source) and not report["left_out"]
    for path, value in _host(new).items():
        np.testing.assert_array_equal(value, source[path])
    # Adam's moments are those of a fresh start (zeros), whatever the source's were.
    assert all(float(np.abs(x).max()) == 0.0 for x in jax.tree.leaves(new.opt_state)
               if np.asarray(x).ndim)  # fmt: skip


def test_an_unknown_part_or_a_folder_without_checkpoints_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train.init_parts='decoder': expected one of"):
        transfer.check_init_config({"init_from": "x", "init_parts": "decoder"})
    with pytest.raises(ConfigError, match=r"no checkpoints/ folder"):
        transfer.read_source(tmp_path)


def test_loading_the_same_run_twice_gives_identical_starting_weights(tiny_run, tmp_path):
    """Two fresh states (other seeds) initialised from the tiny demo run: the same weights, and
    those of the run's checkpoint as evaluation restores it (an independent reader)."""
    from lesionjax.eval.runs import load_model

    model = load_model(tiny_run)
    run_state = model.run_state
    tcfg = {"init_from": str(tiny_run), "init_parts": "all"}
    fresh = [run_state.init_state(jax.random.key(k)) for k in (5, 6)]
    a = transfer.init_from_run(fresh[0], tcfg, tmp_path, announce=True)
    b = transfer.init_from_run(fresh[1], tcfg, tmp_path, announce=False)
    reference = _host(model.state)
    ha, hb = _host(a), _host(b)
    assert ha.keys() == reference.keys()
    for path in reference:
        np.testing.assert_array_equal(ha[path], hb[path])
        np.testing.assert_array_equal(ha[path], reference[path])
    report = json.loads((tmp_path / "init_from.json").read_text())
    assert report["step"] == model.step and len(report["loaded"]) == len(reference)
    assert report["initialised"] == {} and report["left_out"] == []


@pytest.mark.slow
def test_the_main_job_starts_from_the_source_runs_weights(
    tiny_run, tiny_main_command, child_env, checkpoint_params, tmp_path
):
    """The main job with train.init_from and encoder+decoder, one step at learning rate 0: it
    says what it loaded, and its checkpoint holds the source checkpoint's parameters except the
    output head's (read back with Orbax, not through the trainer)."""
    import subprocess

    workdir = tmp_path / "tuned"
    out = subprocess.run(
        tiny_main_command(
            workdir,
            "--config.train.epochs=1",
            "--config.train.max_steps=1",
            "--config.optim.lr=0.0",
            f"--config.train.init_from={tiny_run}",
            "--config.train.init_parts=encoder+decoder",
        ),
        env=child_env(2),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"init_from {tiny_run} (step " in out.stdout
    report = json.loads((workdir / "init_from.json").read_text())
    # Only the 1x1 output head is outside encoder+decoder.
    assert set(report["initialised"]) == {"params/head/bias", "params/head/kernel"}
    source = checkpoint_params(tiny_run, report["step"])
    tuned = checkpoint_params(workdir, 1)
    assert len(tuned) == len(source)
    differ = [i for i, (a, b) in enumerate(zip(source, tuned, strict=True))
              if a.shape != b.shape or not np.array_equal(a, b)]  # fmt: skip
    assert len(differ) == 2  # the head's kernel and bias, freshly initialised

"""A trained run folder, restored to predict: its config, its preprocessing, its model state.

A run folder (``python -m lesionjax.main --config ... --workdir DIR``) holds ``config.json``,
``preprocessing.json`` (the preprocessing plan its shards were built with and the number of
input channels; runs trained before that file existed fall back to their shards'
``manifest.json``) and ``checkpoints/``. `load_model` needs nothing else: neither the shards nor
the config file the run was started from.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lesionjax.core.atomic import atomic_write_json
from lesionjax.core.errors import UserError

PREPROCESSING_FILE = "preprocessing.json"


class RunError(UserError):
    """A run folder cannot be used; the message names the file and why."""


@dataclasses.dataclass
class Model:
    """One restored run, ready to predict volumes (``predictor.predict_volume(state, x)``)."""

    workdir: Path
    config: object  # ml_collections.ConfigDict
    plan: dict  # data_prep.plan.PreprocessingPlan.to_dict()
    channels: int
    state: object  # step.TrainState (replicated)
    step: int
    best_val_dice: float | None
    run_state: object  # train.state.RunState
    predictor: object  # inference.VolumePredictor


def load_config(workdir: Path):
    """The run's saved config (``workdir/config.json``, written by the main job)."""
    import ml_collections

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise RunError(f"{workdir}: no such run folder")
    path = workdir / "config.json"
    if not path.is_file():
        raise RunError(
            f"{path}: not found; {workdir} is not a lesionjax run folder (train one with "
            "python -m lesionjax.main --config ... --workdir DIR)"
        )
    try:
        config = ml_collections.ConfigDict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: not a JSON config ({err})") from None
    for key in ("task", "model", "data", "eval", "optim"):
        if key not in config:
            raise RunError(f"{path}: no {key!r} section; not a lesionjax run config")
    return config


def write_preprocessing(workdir: Path, plan: dict, channels: int) -> Path:
    """Records the run's preprocessing (``workdir/preprocessing.json``)."""
    return atomic_write_json(
        Path(workdir) / PREPROCESSING_FILE, {"plan": dict(plan), "channels": int(channels)}
    )


def read_preprocessing(workdir: Path, config) -> tuple[dict, int]:
    """(plan, input channels) of a run: from ``preprocessing.json``, else from its shards."""
    workdir = Path(workdir)
    path = workdir / PREPROCESSING_FILE
    if path.is_file():
        try:
            d = json.loads(path.read_text())
            return dict(d["plan"]), int(d["channels"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise RunError(f"{path}: not a preprocessing record ({err})") from None
    from lesionjax.data.shards import ShardSet, ShardSetError, shards_dir

    try:
        shards = ShardSet.load(shards_dir(config, workdir))
    except ShardSetError as err:
        raise RunError(
            f"{path}: not found, and the run's shards cannot give its preprocessing ({err})"
        ) from None
    return dict(shards.plan), shards.n_channels


def check_run(workdir: Path):
    """The config of a trained 2D segmentation run; RunError when ``workdir`` is none."""
    from lesionjax.train import state as state_lib

    config = load_config(workdir)
    if config.task != "segment2d":
        raise RunError(f"{Path(workdir) / 'config.json'}: task {config.task!r} cannot predict")
    if not state_lib.saved_steps(workdir):
        raise RunError(
            f"{state_lib.checkpoint_dir(workdir)}: no checkpoint; train the run first (python -m "
            f"lesionjax.main --config ... --workdir {workdir})"
        )
    return config


def load_model(
    workdir: str | Path,
    *,
    step: int | None = None,
    channels: int | None = None,
    mesh=None,
    batch_size: int | None = None,
) -> Model:
    """Restores a run's model at ``step`` (default: the best checkpoint by validation Dice, or
    the latest when none has a validation score) with a predictor on ``mesh`` (default: every
    device). ``channels`` overrides the recorded input channels (a caller that holds the
    shards)."""
    from lesionjax.eval.inference import VolumePredictor
    from lesionjax.train import state as state_lib

    workdir = Path(workdir)
    config = check_run(workdir)
    if channels is None:
        plan, channels = read_preprocessing(workdir, config)
    else:
        plan = {}
    run_state = state_lib.build_run_state(config, channels, mesh=mesh)
    manager = state_lib.open_checkpoints(workdir, read_only=True)
    try:
        step, best_val = state_lib.pick_step(manager, step)
        state = state_lib.restore_state(manager, step, run_state)
    finally:
        manager.close()
    predictor = VolumePredictor(
        run_state.predict_fn(),
        run_state.mesh,
        run_state.state_sharding,
        batch_size=batch_size or config.eval.batch_size,
    )
    return Model(
        workdir=workdir,
        config=config,
        plan=plan,
        channels=channels,
        state=state,
        step=step,
        best_val_dice=best_val,
        run_state=run_state,
        predictor=predictor,
    )

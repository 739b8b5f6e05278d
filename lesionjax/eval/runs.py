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
CASCADE_FILE = "cascade.json"


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


def write_config(workdir: Path, config, name: str = "config.json") -> Path:
    """Creates the run folder and writes its config (what ``load_config`` reads back),
    atomically."""
    from lesionjax.core.atomic import atomic_write_text

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(workdir / name, config.to_json_best_effort(indent=1) + "\n")


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
    if config.task == "cascade3d" and (Path(workdir) / CASCADE_FILE).is_file():
        raise RunError(
            f"{Path(workdir)}: a whole 3D cascade (lesionjax-predict --model {workdir} runs "
            "it; predictor files and re-evaluation take 2D runs only)"
        )
    if config.task not in ("segment2d", "cascade3d"):
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
    from lesionjax.train.step import train_compiler_options

    if config.data.get("layout", "2d") == "3d":
        from lesionjax.eval.sliding_window import SlidingWindowPredictor

        predictor = SlidingWindowPredictor(
            run_state.predict_fn(),
            run_state.mesh,
            run_state.state_sharding,
            tuple(config.data.patch),
            batch_size=batch_size or config.eval.batch_size,
            step=config.eval.window_step,
            compiler_options=train_compiler_options(),
        )
    else:
        predictor = VolumePredictor(
            run_state.predict_fn(),
            run_state.mesh,
            run_state.state_sharding,
            batch_size=batch_size or config.eval.batch_size,
            compiler_options=train_compiler_options(),
            multiple=2 ** (len(config.model.features) - 1),  # any in-plane size of a new scan
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


@dataclasses.dataclass
class CascadeModel:
    """A trained 3D cascade (``lesionjax.tasks.cascade3d``): per stage its plan (the stage's
    shard plan) and the models that predict with it. Every stage but the last predicts with
    all its fold models (their mean is the next stage's prior, as for the held-out cases in
    training); the last stage with its ensemble's members."""

    workdir: Path
    config: object
    stages: list[str]
    plans: list[dict]
    members: list[list[Model]]

    @property
    def plan(self) -> dict:
        return self.plans[-1]

    @property
    def channels(self) -> int:
        return self.members[-1][0].channels

    step = None
    best_val_dice = None

    def predict_prepared(self, volumes, *, tta: bool = False):
        """volumes: per stage, the scan's channels (X, Y, Z, C) uint8 on that stage's grid ->
        probabilities (X, Y, Z) on the last stage's grid."""
        import numpy as np

        from lesionjax.core.geometry import zoom_to_shape
        from lesionjax.eval.ensemble import ensemble_probabilities

        prior = None
        for channels, members in zip(volumes, self.members, strict=True):
            if prior is not None:
                prior = zoom_to_shape(prior, channels.shape[:3], order=1)
                q = np.clip(np.rint(prior * 255.0), 0, 255).astype(np.uint8)[..., None]
                channels = np.concatenate([channels, q], axis=-1)
            prior = ensemble_probabilities(members, channels, tta=tta)
        return prior


def load_cascade(workdir: str | Path, *, mesh=None) -> CascadeModel:
    """Restores a trained 3D cascade from its top folder (``cascade.json`` + stage folders)."""
    workdir = Path(workdir)
    config = load_config(workdir)
    path = workdir / CASCADE_FILE
    if config.task != "cascade3d" or not path.is_file():
        raise RunError(f"{path}: not found; {workdir} is not a finished 3D cascade run")
    try:
        rows = json.loads(path.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunError(f"{path}: not a cascade record ({err})") from None
    stages = list(config.cascade.stages)
    plans, members = [], []
    for index, stage in enumerate(stages, start=1):
        stage_dir = workdir / f"stage{index}_{stage}"
        folds = [r["fold"] for r in rows if r["stage"] == index and r["fold"] != "ensemble"]
        if index == len(stages):
            ens = [r for r in rows if r["stage"] == index and r["fold"] == "ensemble"]
            folds = ens[0]["members"] if ens else folds
        if not folds:
            raise RunError(f"{path}: no trained fold for stage {index} ({stage})")
        models = [load_model(stage_dir / f"fold_{f}", mesh=mesh) for f in folds]
        plans.append(models[0].plan)
        members.append(models)
    return CascadeModel(workdir, config, stages, plans, members)


def is_cascade(workdir: str | Path) -> bool:
    return (Path(workdir) / CASCADE_FILE).is_file()

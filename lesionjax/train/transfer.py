"""Transfer learning: a new run starts from another run's weights (``train.init_from``).

    --config.train.init_from=runs/pretext --config.train.init_parts=encoder

Weights are matched by parameter path (``encoder/0/first/conv/kernel``, ...): the parts named
by ``train.init_parts`` (``"encoder"``, ``"encoder+decoder"``, ``"all"``) are copied from the
source run's checkpoint (its best by validation Dice, else its latest) when the path exists
there with the same shape; everything else keeps its fresh initialisation. BatchNorm running
statistics of the copied parts come along with their scales and offsets. Nothing is frozen,
and the optimizer starts fresh (Adam moments at zero): the whole model fine-tunes.

Paths of the source that the new model has no place for (a pretext task's projection or
classification head, the decoder when only the encoder is asked for) are left out and listed:
they never enter the new model. The report (``init_from.json`` in the run folder, and one line
on the terminal) lists every path as loaded, initialised (with the reason) or left out.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from lesionjax.core.errors import ConfigError

INIT_PARTS = {
    "encoder": ("encoder",),
    "encoder+decoder": ("encoder", "decoder"),
    "all": None,  # every path
}
_GROUPS = ("params", "model_state")  # the TrainState fields that hold the model's variables


def _path(keys) -> str:
    text = jax.tree_util.keystr(tuple(keys), simple=True, separator="/")
    return text[: -len("/value")] if text.endswith("/value") else text


def flat_variables(tree) -> dict[str, object]:
    """``{"params/encoder/0/first/conv/kernel": leaf, ...}`` of a TrainState-like tree (or of
    the nested dicts Orbax restores one as)."""
    out = {}
    for group in _GROUPS:
        sub = getattr(tree, group, None) if not isinstance(tree, dict) else tree.get(group)
        if sub is None:
            continue
        for keys, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
            out[f"{group}/{_path(keys)}"] = leaf
    return out


def _in_parts(path: str, parts: str) -> bool:
    prefixes = INIT_PARTS[parts]
    if prefixes is None:
        return True
    top = path.split("/", 2)[1]  # after "params/" or "model_state/"
    return top in prefixes


def check_init_config(tcfg) -> tuple[Path | None, str]:
    source = str(tcfg.get("init_from", "") or "")
    parts = str(tcfg.get("init_parts", "all"))
    if parts not in INIT_PARTS:
        raise ConfigError(
            f"train.init_parts={parts!r}: expected one of {', '.join(map(repr, INIT_PARTS))}"
        )
    return (Path(source) if source else None), parts


def read_source(run_dir: Path) -> tuple[dict[str, np.ndarray], int]:
    """The source run's variables (flat paths -> host arrays) and the step they are from."""
    import orbax.checkpoint as ocp

    from lesionjax.train import state as state_lib

    if not (state_lib.checkpoint_dir(run_dir)).is_dir():
        raise ConfigError(f"train.init_from={run_dir}: no checkpoints/ folder (not a run?)")
    manager = state_lib.open_checkpoints(run_dir, read_only=True)
    try:
        if manager.latest_step() is None:
            raise ConfigError(f"train.init_from={run_dir}: the run has no checkpoint")
        step, _ = state_lib.pick_step(manager)
        from absl import logging

        verbosity = logging.get_verbosity()
        # Orbax warns, reading the metadata and restoring, that the "data" item is not read
        logging.set_verbosity(logging.ERROR)
        try:
            meta = manager.item_metadata(step)["state"]
            device = jax.local_devices()[0]
            sharding = jax.sharding.SingleDeviceSharding(device)
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), meta
            )
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"]
        finally:
            logging.set_verbosity(verbosity)
    finally:
        manager.close()
    return {k: np.asarray(v) for k, v in flat_variables(restored).items()}, int(step)


def transfer(state, source: dict[str, np.ndarray], parts: str):
    """``state`` with the variables of ``parts`` replaced by the source's where path and shape
    match; (new_state, report). Each new leaf keeps the sharding of the one it replaces."""
    loaded, initialised = [], {}
    used = set()

    def pick(group: str):
        def leaf_fn(keys, leaf):
            path = f"{group}/{_path(keys)}"
            if not _in_parts(path, parts):
                initialised[path] = f"not in init_parts={parts!r}"
                return leaf
            if path not in source:
                initialised[path] = "not in the source run"
                return leaf
            value = source[path]
            used.add(path)
            if tuple(value.shape) != tuple(leaf.shape):
                initialised[path] = (
                    f"shape mismatch: {tuple(value.shape)} in the source, {tuple(leaf.shape)} here"
                )
                return leaf
            loaded.append(path)
            return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

        return leaf_fn

    new = {g: jax.tree_util.tree_map_with_path(pick(g), getattr(state, g)) for g in _GROUPS}
    left_out = sorted(set(source) - used)
    report = {"loaded": sorted(loaded), "initialised": dict(sorted(initialised.items())),
              "left_out": left_out}  # fmt: skip
    return state.replace(**new), report


def init_from_run(state, tcfg, workdir: Path, *, announce: bool):
    """Applies ``train.init_from`` to a freshly initialised ``state`` (no-op when unset);
    writes ``init_from.json`` into ``workdir`` and prints a one-line summary."""
    source_dir, parts = check_init_config(tcfg)
    if source_dir is None:
        return state
    from lesionjax.core.atomic import atomic_write_json

    source, step = read_source(source_dir)
    state, report = transfer(state, source, parts)
    if not report["loaded"]:
        raise ConfigError(
            f"train.init_from={source_dir}: no parameter of init_parts={parts!r} matches this "
            f"model by path and shape (the source has {len(source)} variables)"
        )
    mismatched = [p for p, why in report["initialised"].items() if why.startswith("shape")]
    report = {"source": str(source_dir), "step": step, "init_parts": parts, **report}
    if announce:
        atomic_write_json(Path(workdir) / "init_from.json", report)
        print(
            f"init_from {source_dir} (step {step}, {parts}): {len(report['loaded'])} variables "
            f"loaded, {len(report['initialised'])} initialised"
            + (f" ({len(mismatched)} by shape mismatch: {', '.join(mismatched[:3])})"
               if mismatched else "")
            + f", {len(report['left_out'])} of the source left out; "
            f"{Path(workdir) / 'init_from.json'}",
            flush=True,
        )  # fmt: skip
    return state

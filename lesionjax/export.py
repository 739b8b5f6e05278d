"""Export trained runs as one self-contained predictor file, and load it back to predict.

    python -m lesionjax.export --model RUN [RUN ...] --out model.ljx [--platforms cpu cuda]

A ``.ljx`` file is a zip archive, with no pickle anywhere:

- ``manifest.json``: the format and its version, the ensemble rule (the mean of the members'
  probabilities; with ``lesionjax-predict --tta`` also of their left-right mirrors), the
  platforms the forwards were exported for, and for each member: the run it came from, its
  checkpoint step, its preprocessing plan (``data_prep.plan`` as JSON), its input channels and
  in-plane size, its threshold, and the names of its two entries below;
- ``member<k>.stablehlo``: the member's network forward serialized with ``jax.export``
  (StableHLO): ``forward(weights, image) -> probabilities``, image (B, H, W, C) uint8 with a
  symbolic batch dimension B, so it runs on any batch size, probabilities (B, H, W) float32;
- ``member<k>.npz``: the weights (parameters and BatchNorm statistics) as a flat list of arrays,
  read back with ``numpy.load(..., allow_pickle=False)``.

``lesionjax-predict --model model.ljx ...`` loads it (`load_predictor_file`) without the run
folders or configs and gives the same masks as the runs (probabilities within 1e-5 on CPU).
A run whose plan keeps each scan's in-plane size (no ``data.size``) is exported for its shards'
size and refuses scans of another size with a clear error.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lesionjax.cli import prepare_command, run_command
from lesionjax.core.errors import UserError

FORMAT = "lesionjax-predictor"
FORMAT_VERSION = 1
SUFFIX = ".ljx"
ENSEMBLE_RULE = (
    "mean of the members' probabilities (with --tta also of each member's prediction of the "
    "left-right mirrored input, flipped back)"
)


class ExportError(UserError):
    """A run cannot be exported, or a file is not a lesionjax predictor; names the file."""


def _in_plane_size(model) -> tuple[int, int]:
    size = model.plan.get("size")
    if size:
        return int(size[0]), int(size[1])
    from lesionjax.data.shards import ShardSet, shards_dir

    try:
        shards = ShardSet.load(shards_dir(model.config, model.workdir))
    except UserError as err:
        raise ExportError(
            f"{model.workdir}: its plan keeps each scan's in-plane size and its shards, which "
            f"give the size to export for, cannot be read ({err})"
        ) from None
    sizes = {tuple(v["shard_shape"][:2]) for v in shards.volumes}
    if len(sizes) != 1:
        raise ExportError(
            f"{model.workdir}: its volumes have several in-plane sizes ({sorted(sizes)}); "
            "export needs one (train with data.size set)"
        )
    return tuple(int(n) for n in sizes.pop())


def export_member(model, platforms: Sequence[str]) -> tuple[bytes, list[np.ndarray], dict]:
    """(serialized forward, weight arrays, manifest entry) of one restored run."""
    import jax
    import jax.numpy as jnp
    from jax import export as jax_export

    from lesionjax.core.windows import uint8_to_unit
    from lesionjax.train import step as step_lib

    variables = (model.state.params, model.state.model_state)
    leaves, treedef = jax.tree.flatten(variables)
    weights = [np.asarray(jax.device_get(x)) for x in leaves]
    predict = step_lib.make_predict_fn(model.run_state.graphdef)

    def forward(flat, image):
        params_and_stats = jax.tree.unflatten(treedef, list(flat))
        return predict(params_and_stats, uint8_to_unit(image))[..., 0].astype(jnp.float32)

    h, w = _in_plane_size(model)
    (batch,) = jax_export.symbolic_shape("b")
    specs = (
        tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in weights),
        jax.ShapeDtypeStruct((batch, h, w, model.channels), jnp.uint8),
    )
    exported = jax_export.export(jax.jit(forward), platforms=tuple(platforms))(*specs)
    entry = {
        "run": str(model.workdir),
        "step": int(model.step),
        "plan": model.plan,
        "channels": int(model.channels),
        "size": [h, w],
        "threshold": float(model.config.eval.threshold),
    }
    return bytes(exported.serialize()), weights, entry


def write_predictor_file(
    run_dirs: Sequence[str], out: str | Path, *, platforms: Sequence[str] = ("cpu", "cuda")
) -> Path:
    """Restores every run and writes them as one ``.ljx`` predictor file (atomically)."""
    from lesionjax.core.atomic import atomic_path
    from lesionjax.eval.runs import check_run, load_model

    out = Path(out)
    if out.suffix != SUFFIX:
        raise ExportError(f"{out}: a predictor file's name ends in {SUFFIX}")
    members = []
    blobs: dict[str, bytes] = {}
    for k, run_dir in enumerate(run_dirs):
        # The saved config says whether the run is 3D: refuse before restoring any weights.
        if check_run(Path(run_dir)).data.get("layout", "2d") != "2d":
            raise ExportError(
                f"{run_dir}: a 3D model; predictor files hold 2D slice models only for now "
                "(predict from the run folder: lesionjax-predict --model RUN)"
            )
        model = load_model(run_dir)
        serialized, weights, entry = export_member(model, platforms)
        buffer = io.BytesIO()
        np.savez(buffer, *weights)
        entry["forward"], entry["weights"] = f"member{k}.stablehlo", f"member{k}.npz"
        blobs[entry["forward"]], blobs[entry["weights"]] = serialized, buffer.getvalue()
        members.append(entry)
    modalities = {m["plan"].get("modality") for m in members}
    if len(modalities) > 1:
        raise ExportError(f"--model: runs of different modalities ({sorted(modalities)})")
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "ensemble": ENSEMBLE_RULE,
        "platforms": list(platforms),
        "members": members,
    }
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1) + "\n")
            for name, data in blobs.items():
                z.writestr(name, data)
    return out


# ------------------------------------------------------------------------------ loading


class ExportedPredictor:
    """``predict_volume(state, channels)`` of one exported member (``state`` is unused)."""

    def __init__(self, exported, weights: list[np.ndarray], size, channels, batch_size=32):
        import jax

        self._exported = exported
        self._weights = tuple(jax.device_put(w) for w in weights)
        self.size, self.channels, self.batch_size = tuple(size), int(channels), batch_size

    def predict_slices(self, image: np.ndarray) -> np.ndarray:
        """image (N, H, W, C) uint8 -> probabilities (N, H, W) float32, in batches (the last
        one padded, so one batch shape is compiled)."""
        if tuple(image.shape[1:]) != (*self.size, self.channels):
            raise ValueError(
                f"the exported model takes slices of {self.size[0]}x{self.size[1]} with "
                f"{self.channels} channels, the scan gives {image.shape[1]}x{image.shape[2]} "
                f"with {image.shape[3]}"
            )
        bs, out = self.batch_size, []
        for start in range(0, image.shape[0], bs):
            chunk = image[start : start + bs]
            n = chunk.shape[0]
            if n < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self._exported.call(self._weights, chunk))[:n])
        return np.concatenate(out, axis=0)

    def predict_volume(self, state, channels: np.ndarray) -> np.ndarray:
        slices = np.ascontiguousarray(np.moveaxis(np.asarray(channels, np.uint8), 2, 0))
        return np.moveaxis(self.predict_slices(slices), 0, 2)


@dataclasses.dataclass
class ExportedMember:
    """One member of a predictor file, shaped like ``eval.runs.Model`` for prediction."""

    workdir: Path  # the predictor file (and the member's index, in ``source``)
    source: str
    plan: dict
    channels: int
    threshold: float
    step: int
    predictor: ExportedPredictor
    state: None = None
    best_val_dice: float | None = None

    @property
    def config(self):  # predict reads config.eval.threshold
        import ml_collections

        return ml_collections.ConfigDict({"eval": {"threshold": self.threshold}})


def load_predictor_file(path: str | Path) -> list[ExportedMember]:
    """The members of a ``.ljx`` file, ready to predict."""
    import zlib

    import jax
    from jax import export as jax_export

    path = Path(path)
    backend = jax.default_backend()
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise ExportError(f"{path}: not a lesionjax predictor file")
            if int(manifest.get("version", 0)) > FORMAT_VERSION:
                raise ExportError(
                    f"{path}: predictor format version {manifest['version']} is newer than "
                    f"this lesionjax reads ({FORMAT_VERSION})"
                )
            platforms = [str(p) for p in manifest.get("platforms", [])]
            if backend not in platforms:
                raise ExportError(
                    f"{path}: exported for {', '.join(platforms)}, this machine runs {backend}; "
                    f"export it again with --platforms {' '.join([*platforms, backend])}"
                )
            members = []
            for k, m in enumerate(manifest["members"]):
                try:
                    exported = jax_export.deserialize(bytearray(z.read(m["forward"])))
                except ExportError:
                    raise
                except Exception as err:  # a damaged or foreign StableHLO blob
                    raise ExportError(f"{path}: {m['forward']}: cannot be loaded ({err})") from None
                with np.load(io.BytesIO(z.read(m["weights"])), allow_pickle=False) as npz:
                    weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
                expected = [tuple(a.shape) for a in exported.in_avals[: len(weights)]]
                if len(exported.in_avals) != len(weights) + 1 or expected != [
                    w.shape for w in weights
                ]:
                    raise ExportError(f"{path}: {m['weights']} does not match {m['forward']}")
                predictor = ExportedPredictor(exported, weights, m["size"], m["channels"])
                members.append(
                    ExportedMember(
                        workdir=path,
                        source=f"{path}#member{k} (from {m['run']})",
                        plan=m["plan"],
                        channels=int(m["channels"]),
                        threshold=float(m["threshold"]),
                        step=int(m["step"]),
                        predictor=predictor,
                    )
                )
    except (
        zipfile.BadZipFile,
        zlib.error,
        KeyError,
        TypeError,
        AttributeError,
        json.JSONDecodeError,
        ValueError,
        OSError,
    ) as err:
        if isinstance(err, ExportError):
            raise
        raise ExportError(f"{path}: not a readable lesionjax predictor file ({err})") from None
    return members


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lesionjax-export", description=__doc__.split("\n")[0].rstrip(".")
    )
    p.add_argument("--model", nargs="+", required=True, metavar="RUN", help="trained run folders")
    p.add_argument("--out", required=True, help=f"the predictor file to write (*{SUFFIX})")
    p.add_argument(
        "--platforms",
        nargs="+",
        default=["cpu", "cuda"],
        choices=("cpu", "cuda", "rocm", "tpu"),
        help="platforms to export the forwards for (default: cpu cuda)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lesionjax.export`` and the ``lesionjax-export`` entry point."""
    args = _parser().parse_args(argv)
    prepare_command()

    def body() -> int:
        out = write_predictor_file(args.model, args.out, platforms=args.platforms)
        size = out.stat().st_size / 1e6
        print(f"wrote {out} ({size:.1f} MB, {len(args.model)} member(s), {args.platforms})")
        return 0

    return run_command(body)


def cli() -> None:
    """The console-script entry point (see pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

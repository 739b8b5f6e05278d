"""Intracranial-cavity masks applied to lesion predictions, on the scans' native grids.

``CavityModel``: the trained cavity models of a run folder (``configs/cavity.py``,
``lesionjax.tasks.cavity``) and the union of their masks for one case, each model fed with its
own preprocessing. ``native_cavity_filter``: ``eval.cavity_mask`` as the evaluation's filter.
``lesionjax-predict --cavity-mask RUN`` uses the same ``CavityModel``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from lesionjax.core.errors import ConfigError, UserError

RESULT = "cavity.json"


class CavityModelError(UserError):
    """A cavity run folder is not complete, or a case cannot get a cavity mask."""


@dataclasses.dataclass
class CavityModel:
    """The trained cavity models of a run folder: each with its own preprocessing plan."""

    workdir: Path
    models: list  # eval.runs.Model, one per window
    plans: list  # data_prep.plan.PreprocessingPlan, one per model, as inference reads a scan
    threshold: float

    @classmethod
    def load(cls, workdir: str | Path, *, mesh=None) -> CavityModel:
        from data_prep.plan import PreprocessingPlan
        from lesionjax.eval.runs import load_config, load_model

        workdir = Path(workdir)
        result = workdir / RESULT
        if not result.is_file():
            raise CavityModelError(
                f"{workdir}: not a finished cavity run (no {RESULT}); train one with python -m "
                f"lesionjax.main --config configs/cavity.py --workdir {workdir}"
            )
        windows = json.loads(result.read_text())["windows"]
        models = [load_model(workdir / w, mesh=mesh) for w in windows]
        plans = [PreprocessingPlan.from_dict(m.plan).for_inference() for m in models]
        threshold = float(load_config(workdir).eval.threshold)
        return cls(workdir, models, plans, threshold)

    def probabilities(self, files) -> tuple[list[np.ndarray], object]:
        """Each model's cavity probabilities on the case's native grid, and that grid."""
        from data_prep.preprocess import preprocess_case

        out, grid = [], None
        for model, plan in zip(self.models, self.plans, strict=True):
            prepared = preprocess_case(files, plan)
            probs = model.predictor.predict_volume(model.state, prepared.channels)
            out.append(prepared.grid.to_native(probs, order=1, fill=0.0))
            grid = prepared.grid
        return out, grid

    def union(self, files) -> tuple[np.ndarray, object]:
        """The union of the models' masks on the case's native grid, (X, Y, Z) bool, and the
        grid."""
        probs, grid = self.probabilities(files)
        return np.maximum.reduce(probs) >= self.threshold, grid

    def native_mask(self, files) -> np.ndarray:
        """The union of the models' masks on the case's native grid, (X, Y, Z) bool."""
        return self.union(files)[0]


def native_cavity_filter(config, workdir: Path, *, choice=None, native=None):
    """``eval.cavity_mask`` (or ``choice``) as ``fn(case_id, grid) -> native bool mask``, or
    None when unset: "dataset" reads each case's own cavity mask (``icm/``), a run folder
    predicts it. ``native``: whether the evaluation scores on the native grid (default: the
    config's ``eval.native``); the filter applies only there."""
    from data_prep.volumes import CaseError
    from lesionjax.tasks.native import dataset_cases, native_truth

    if choice is None:
        choice = config.eval.get("cavity_mask", "")
    choice = str(choice or "")
    if not choice:
        return None
    if not (config.eval.get("native", True) if native is None else native):
        raise ConfigError(
            f"eval.cavity_mask={choice!r} applies on the native grid: set eval.native=True "
            "(lesionjax-evaluate: drop --shard-grid)"
        )
    if choice == "dataset":
        truth = native_truth(config, workdir, "cavity")
        return lambda case_id, grid: truth(case_id, grid) > 0
    import jax

    from lesionjax.eval.inference import local_mesh

    # With several processes each predicts its own volumes' cavities: on its own devices.
    mesh = local_mesh() if jax.process_count() > 1 else None
    model = CavityModel.load(Path(choice).expanduser(), mesh=mesh)
    case = dataset_cases(config, workdir)

    def get(case_id: str, grid) -> np.ndarray:
        files = case(case_id)
        try:
            cavity = model.native_mask(files)
        except (CaseError, OSError) as err:
            raise CavityModelError(str(err)) from None
        if cavity.shape != tuple(grid.native_shape):
            raise CavityModelError(
                f"{files.image}: cavity mask {cavity.shape} != the native grid "
                f"{tuple(grid.native_shape)}"
            )
        return cavity

    return get


def fill_cavity_masks(run: str | Path, cases, folder: Path, *, progress: bool = True) -> list:
    """The cases with a cavity mask for each one that has none (``build_shards --cavity-model
    RUN``): the union of RUN's models, on the case's native grid, written as
    ``<folder>/<case>.nii.gz`` and set as the case's ``icm``. A mask is reused only when
    ``<folder>/sources.json`` says it came from the same run and the same image file (path,
    size, modification time). A case the models cannot read is reported on one ``error:``
    line and keeps no cavity mask."""
    import nibabel as nib
    from tqdm import tqdm

    from data_prep.volumes import CaseError
    from lesionjax.cli import print_error
    from lesionjax.core.atomic import atomic_path, atomic_write_json

    folder = Path(folder)
    todo = [c for c in cases if c.icm is None]
    if not todo:
        return list(cases)
    run = Path(run).expanduser()
    model = CavityModel.load(run)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "sources.json"
    sources = json.loads(record.read_text()) if record.is_file() else {}
    filled = {}
    for files in tqdm(todo, desc="cavity masks", unit="case", disable=not progress):
        path = folder / f"{files.case_id}.nii.gz"
        image = Path(files.image)
        stat = image.stat()
        source = {
            "run": str(run.resolve()),
            "image": str(image.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
        if not path.is_file() or sources.get(files.case_id) != source:
            try:
                mask, grid = model.union(files)
            except (CaseError, OSError, ValueError) as err:
                message = str(err) if str(files.image) in str(err) else f"{files.image}: {err}"
                print_error(f"{message} (no cavity mask computed)")
                continue
            affine = np.asarray(grid.native_affine, float)
            with atomic_path(path) as tmp:
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(tmp))
            sources[files.case_id] = source
            atomic_write_json(record, sources)
        filled[files.case_id] = path
    return [
        dataclasses.replace(c, icm=filled[c.case_id]) if c.case_id in filled else c for c in cases
    ]

"""The ground truth on the scans' native grids, for the final evaluation (``eval.native``).

The library's evaluation (``lesionjax.eval.evaluate_volumes``) scores predictions mapped back to
the native grid against a mask it is handed; reading a dataset's mask files is ``data_prep``'s
business, so this top-floor module wires the two: it reads the run's dataset layout again and
loads each case's original mask the way the shard writer binarized it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lesionjax.core.errors import UserError
from lesionjax.core.geometry import GridChain
from lesionjax.tasks.data import raw_dir


class NativeTruthError(UserError):
    """A case's original mask cannot be found or read for the native-grid evaluation."""


def dataset_cases(config, workdir: Path) -> Callable[[str], object]:
    """``fn(case_id) -> CaseFiles`` of the run's dataset, its layout read once, on the first
    case; a layout that cannot be read or a case no longer in it is a NativeTruthError."""
    from data_prep.layouts import read_layout

    src = raw_dir(config, Path(workdir))
    cases: dict | None = None

    def get(case_id: str):
        nonlocal cases
        if cases is None:
            try:
                found, _ = read_layout(config.data.dataset, src)
            except (ValueError, OSError) as err:
                raise NativeTruthError(
                    f"{src}: {err} (score on the shard grid instead: eval.native=False, or "
                    "evaluate --shard-grid)"
                ) from None
            cases = {c.case_id: c for c in found}
        if case_id not in cases:
            raise NativeTruthError(
                f"{src}: case {case_id} of the shards is not in the dataset any more (score on the "
                "shard grid instead: eval.native=False, or evaluate --shard-grid)"
            )
        return cases[case_id]

    return get


def native_truth(
    config, workdir: Path, target: str | None = None
) -> Callable[[str, GridChain], np.ndarray]:
    """``fn(case_id, grid) -> (native X, Y, Z) uint8 mask`` for the cases of the run's dataset:
    their lesion masks, or (``target``, default the config's ``data.target``) cavity masks."""
    from data_prep.preprocess import native_mask
    from data_prep.volumes import CaseError

    case = dataset_cases(config, workdir)
    target = target or config.data.get("target", "lesion")

    def get(case_id: str, grid: GridChain) -> np.ndarray:
        files = case(case_id)
        try:
            return native_mask(files, grid, target)
        except (CaseError, OSError) as err:
            raise NativeTruthError(str(err)) from None

    return get

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


def native_truth(config, workdir: Path) -> Callable[[str, GridChain], np.ndarray]:
    """``fn(case_id, grid) -> (native X, Y, Z) uint8 mask`` for the cases of the run's dataset."""
    from data_prep.layouts import read_layout
    from data_prep.preprocess import native_mask
    from data_prep.volumes import CaseError

    src = raw_dir(config, Path(workdir))
    target = config.data.get("target", "lesion")
    cases: dict | None = None

    def get(case_id: str, grid: GridChain) -> np.ndarray:
        nonlocal cases
        if cases is None:  # read the layout once, on the first case
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
        try:
            return native_mask(cases[case_id], grid, target)
        except (CaseError, OSError) as err:
            raise NativeTruthError(str(err)) from None

    return get

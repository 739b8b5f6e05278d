"""Stage 2 of the cascade sees stage 1's probabilities as one more input channel.

``ShardSetWithPriors`` wraps a full-resolution 3D shard set and a folder of stage-1 probability
volumes, ``<case>.npy``, uint8 (probability x 255) on that set's grid (X, Y, Z): everything
that reads volumes (evaluation, validation, the patch sampler) then sees ``C + 1`` channels, the
last one the prior. The volumes are memory-mapped, so a patch reads only its own voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionjax.core.atomic import atomic_path
from lesionjax.core.errors import UserError


class MissingPriorError(UserError, FileNotFoundError):
    """A case has no stage-1 probability volume."""


def write_prior(folder: Path, case_id: str, probs: np.ndarray) -> Path:
    """Stores stage-1 probabilities (X, Y, Z) float in [0, 1] as ``<case>.npy`` uint8 (atomic)."""
    path = Path(folder) / f"{case_id}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    q = np.clip(np.rint(np.asarray(probs, np.float32) * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, q)
    return path


class ShardSetWithPriors:
    """A ShardSet whose volumes carry the stage-1 prior as their last channel."""

    def __init__(self, shards, folder: Path):
        self._shards = shards
        self.prior_dir = Path(folder)
        self._open: dict[str, np.ndarray] = {}  # case -> memory map, opened once per process

    def __getattr__(self, name):
        if name.startswith("_"):  # unpickling looks up dunders before __dict__ is set
            raise AttributeError(name)
        return getattr(self._shards, name)

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}  # memory maps are reopened, never pickled

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def n_channels(self) -> int:
        return self._shards.n_channels + 1

    def prior(self, case_id: str) -> np.ndarray:
        """(X, Y, Z) uint8, memory-mapped (the patch sampler asks for it once per patch)."""
        if case_id in self._open:
            return self._open[case_id]
        path = self.prior_dir / f"{case_id}.npy"
        if not path.is_file():
            raise MissingPriorError(f"{path}: no stage-1 probabilities for case {case_id!r}")
        prior = np.load(path, mmap_mode="r")
        want = tuple(self._shards.volume(case_id)["shard_shape"][:3])
        if prior.shape != want:
            raise MissingPriorError(f"{path}: shape {prior.shape}, the volume's is {want}")
        self._open[case_id] = prior
        return prior

    def read_volume(self, case_id: str, source=None) -> dict[str, np.ndarray]:
        out = self._shards.read_volume(case_id, source)
        prior = np.asarray(self.prior(case_id))[..., None]
        out["image"] = np.concatenate([out["image"], prior], axis=-1)
        return out

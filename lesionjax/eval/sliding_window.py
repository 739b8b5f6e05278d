"""Sliding-window inference of 3D models over whole volumes, on the device mesh (nnU-Net's).

A volume is covered by windows of the patch size whose starts are spaced at most ``step`` (0.5:
half a patch) apart along each axis (``window_starts``, nnU-Net's rule: the first window at 0,
the last flush with the end, evenly in between). Each window's probabilities are weighted by a
Gaussian importance map (sigma = ``sigma_scale`` = 1/8 of the patch per axis, peak 1, floored
at its smallest positive value) and the weighted sum is divided by the summed weights, so
predictions near a window's border, where the network sees least context, count least.
Volumes smaller than the patch are zero-padded (the uint8 0 of every window channel) and the
padding is cut off again.

Windows are predicted in batches of ``batch_size`` (rounded up to the data axis), sharded over
every device; the batch shape is fixed, so one compilation serves every volume. Mirroring TTA
averages the prediction over every combination of flips of ``mirror_axes`` (nnU-Net mirrors
every axis it trained with mirroring: 8 forwards for 3 axes), inside the same jitted function.

``SlidingWindowPredictor.predict_volume(state, image)`` has the signature of
``inference.VolumePredictor.predict_volume``, so evaluation, the native-grid mapping and the
predict command take a 3D model as they take a 2D one.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lesionjax.core.windows import uint8_to_unit
from lesionjax.eval.inference import LocalDevices

SIGMA_SCALE = 1.0 / 8.0
STEP = 0.5


def window_starts(size: int, patch: int, step: float = STEP) -> list[int]:
    """Starts of the windows covering ``size`` voxels with windows of ``patch`` (size >= patch),
    at most ``step * patch`` apart: nnU-Net's ``compute_steps_for_sliding_window``."""
    if size < patch:
        raise ValueError(f"size {size} < patch {patch}: pad the volume first")
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step {step}: expected a fraction of the patch in (0, 1]")
    n = math.ceil((size - patch) / (step * patch)) + 1
    if n == 1:
        return [0]
    spacing = (size - patch) / (n - 1)
    return [int(round(spacing * i)) for i in range(n)]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """(X, Y, Z) float32 weights: a Gaussian centred in the patch, sigma = sigma_scale * patch
    per axis, peak 1, with no zero (floored at its smallest positive value, as nnU-Net)."""
    axes = []
    for n in patch:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    weights = functools.reduce(np.multiply.outer, axes)
    weights = weights / weights.max()
    positive = weights[weights > 0]
    return np.maximum(weights, positive.min()).astype(np.float32)


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (spatial axes 0, 1, 2), the empty one (no flip) first."""
    axes = tuple(sorted(set(int(a) for a in axes)))
    if set(axes) - {0, 1, 2}:
        raise ValueError(f"mirror axes {axes}: expected spatial axes among 0, 1, 2")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class SlidingWindowPredictor(LocalDevices):
    """Wraps ``predict_fn(state, image (B, X, Y, Z, C) f32) -> probs (B, X, Y, Z, 1)`` for
    whole volumes (see the module docstring)."""

    def __init__(
        self,
        predict_fn: Callable,
        mesh: Mesh,
        state_sharding,
        patch: Sequence[int],
        *,
        batch_size: int = 2,
        step: float = STEP,
        sigma_scale: float = SIGMA_SCALE,
        mirror_axes: Sequence[int] = (),
        compiler_options: dict | None = None,
    ):
        """compiler_options: XLA options of the jitted window batch (the train step's
        ``train_compiler_options()`` on CPU: convolutions on Eigen, see ``benchmarks/RESULTS.md``).
        """
        self._remember(
            predict_fn,
            (patch,),
            {
                "batch_size": batch_size,
                "step": step,
                "sigma_scale": sigma_scale,
                "mirror_axes": mirror_axes,
                "compiler_options": compiler_options,
            },
        )
        self.mesh = mesh
        n_data = mesh.shape["data"]
        self.batch_size = max(n_data, -(-batch_size // n_data) * n_data)
        self.patch = tuple(int(n) for n in patch)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch {patch}: expected three positive sizes (X, Y, Z)")
        self.step = float(step)
        self.weights = gaussian_importance(self.patch, sigma_scale)
        self.mirrors = mirror_combinations(mirror_axes)
        self._batch_sharding = NamedSharding(mesh, P("data"))
        self._replicated = NamedSharding(mesh, P())
        mirrors = self.mirrors

        def predict_windows(state, image):
            x = uint8_to_unit(image) if image.dtype == jnp.uint8 else image.astype(jnp.float32)
            total = 0.0
            for axes in mirrors:
                flip = tuple(1 + a for a in axes)
                xi = jnp.flip(x, flip) if flip else x
                probs = predict_fn(state, xi)[..., 0]
                total = total + (jnp.flip(probs, flip) if flip else probs)
            return total / len(mirrors)

        self._predict = jax.jit(
            predict_windows,
            in_shardings=(state_sharding, self._batch_sharding),
            out_shardings=self._replicated,
            compiler_options=compiler_options,
        )

    def windows(self, shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """Window starts over a volume of ``shape`` (already padded to at least the patch)."""
        starts = [window_starts(n, p, self.step) for n, p in zip(shape, self.patch, strict=True)]
        return list(itertools.product(*starts))

    def _global(self, batch: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(
            batch.shape, self._batch_sharding, lambda index: batch[index]
        )

    def predict_volume(self, state, image: np.ndarray) -> np.ndarray:
        """image: (X, Y, Z, C) uint8 (or float in [0, 1]) -> probabilities (X, Y, Z) float32."""
        if image.ndim != 4:
            raise ValueError(f"image shape {image.shape}: expected (X, Y, Z, C)")
        shape = image.shape[:3]
        # Pad to at least the patch, centred (nnU-Net), with the channels' zero.
        pad = [max(p - n, 0) for n, p in zip(shape, self.patch, strict=True)]
        before = [d // 2 for d in pad]
        widths = [(b, d - b) for b, d in zip(before, pad, strict=True)] + [(0, 0)]
        padded = np.pad(image, widths) if any(pad) else image
        total = np.zeros(padded.shape[:3], np.float32)
        norm = np.zeros(padded.shape[:3], np.float32)
        windows = self.windows(padded.shape[:3])
        px, py, pz = self.patch
        bs = self.batch_size
        for first in range(0, len(windows), bs):
            group = windows[first : first + bs]
            batch = np.zeros((bs, px, py, pz, padded.shape[3]), padded.dtype)
            for i, (x, y, z) in enumerate(group):
                batch[i] = padded[x : x + px, y : y + py, z : z + pz]
            probs = np.asarray(self._predict(state, self._global(batch)))
            for i, (x, y, z) in enumerate(group):
                total[x : x + px, y : y + py, z : z + pz] += probs[i] * self.weights
                norm[x : x + px, y : y + py, z : z + pz] += self.weights
        out = total / norm
        crop = tuple(slice(b, b + n) for b, n in zip(before, shape, strict=True))
        return out[crop]

"""Slice-wise inference over whole volumes on the device mesh.

On the global mesh, every process calls these functions with the same volume (lock-step); the
batch axis is sharded over the mesh's ``data`` axis and the probabilities come back replicated,
so any process can read them. Each device takes the rows its sharding names
(``jax.make_array_from_callback``), whatever the mesh's device order: on TPU meshes a process's
devices need not hold a contiguous block of the batch. ``on_local_devices`` gives the same
predictor over this process's devices alone, with which each process predicts volumes of its
own (``evaluate_cases`` splits held-out volumes across processes that way).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lesionjax.core.windows import uint8_to_unit


def local_mesh() -> Mesh:
    """This process's devices alone, on one ``data`` axis."""
    return Mesh(np.array(jax.local_devices()), ("data",))


def state_on(state, mesh: Mesh):
    """A replicated ``state`` (every leaf whole on each device) copied onto ``mesh``, replicated:
    from this process's own copy, no communication."""
    replicated = NamedSharding(mesh, P())

    def move(x):
        if isinstance(x, jax.Array):
            return jax.device_put(x.addressable_data(0), replicated)
        return x

    return jax.tree.map(move, state)


class LocalDevices:
    """``on_local_devices(state) -> (predictor, state)`` for predictors built from
    ``(predict_fn, mesh, state_sharding, *args, **kwargs)``: the same predictor over
    ``local_mesh()`` (built once), and ``state`` copied there."""

    def _remember(self, predict_fn, args: tuple, kwargs: dict) -> None:
        self._rebuild = (predict_fn, args, kwargs)
        self._local = None

    def on_local_devices(self, state):
        if self._local is None:
            predict_fn, args, kwargs = self._rebuild
            mesh = local_mesh()
            self._local = type(self)(predict_fn, mesh, NamedSharding(mesh, P()), *args, **kwargs)
            self._local._local = self._local
        return self._local, state_on(state, self._local.mesh)


class VolumePredictor(LocalDevices):
    """Wraps ``predict_fn(state, image (B, H, W, C) f32) -> probs (B, H, W, 1)`` for volumes."""

    def __init__(
        self,
        predict_fn: Callable,
        mesh: Mesh,
        state_sharding,
        *,
        batch_size: int = 32,
        compiler_options: dict | None = None,
        multiple: int = 1,
    ):
        """compiler_options: XLA options of the jitted batch (``train_compiler_options()`` on
        CPU: convolutions on Eigen; 1.18x PyTorch's inference against 0.90 without, on the 2-core
        VM of ``benchmarks/RESULTS.md``). multiple: the in-plane sizes the network takes (2 **
        its poolings); a slice of another size is padded with zeros (air, background) on both
        sides up to the next multiple and the probabilities cropped back."""
        self._remember(
            predict_fn,
            (),
            {"batch_size": batch_size, "compiler_options": compiler_options, "multiple": multiple},
        )
        self.multiple = max(1, int(multiple))
        self.mesh = mesh
        n_data = mesh.shape["data"]
        self.batch_size = max(n_data, -(-batch_size // n_data) * n_data)
        self._batch_sharding = NamedSharding(mesh, P("data"))
        self._replicated = NamedSharding(mesh, P())

        def predict_uint8(state, image):
            return predict_fn(state, uint8_to_unit(image))[..., 0]

        self._predict = jax.jit(
            predict_uint8,
            in_shardings=(state_sharding, self._batch_sharding),
            out_shardings=self._replicated,
            compiler_options=compiler_options,
        )

    def _global(self, batch: np.ndarray) -> jax.Array:
        """Every process holds the whole batch; each of its devices gets the rows it owns."""
        return jax.make_array_from_callback(
            batch.shape, self._batch_sharding, lambda index: batch[index]
        )

    def predict_slices(self, state, image: np.ndarray) -> np.ndarray:
        """image: (N, H, W, C) uint8 -> probabilities (N, H, W) float32."""
        h, w = image.shape[1:3]
        m = self.multiple
        if h % m or w % m:
            ph, pw = -h % m, -w % m
            pad = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
            probs = self.predict_slices(state, np.pad(image, pad))
            return probs[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        n = image.shape[0]
        bs = self.batch_size
        out = []
        for start in range(0, n, bs):
            chunk = image[start : start + bs]
            pad = bs - chunk.shape[0]
            if pad:
                # A fixed batch shape means one compilation for every volume.
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            probs = self._predict(state, self._global(chunk))
            out.append(np.asarray(probs)[: bs - pad])
        return np.concatenate(out, axis=0)

    def predict_volume(self, state, image: np.ndarray) -> np.ndarray:
        """image: (X, Y, Z, C) uint8 volume -> probabilities (X, Y, Z) float32."""
        slices = np.moveaxis(image, 2, 0)  # (Z, X, Y, C)
        return np.moveaxis(self.predict_slices(state, slices), 0, 2)

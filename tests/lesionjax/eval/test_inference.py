"""Inference over whole volumes puts every row where the mesh's sharding says it belongs, also
when a process's devices are not a contiguous block of the mesh (TPU meshes reorder devices)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lesionjax.eval.inference import VolumePredictor

# The predict function under test returns channel 0 of its input: the probabilities must then be
# the input volume itself, slice for slice.
SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from lesionjax.eval.inference import VolumePredictor

    by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    # Interleaved: process 1, process 0, process 1, process 0.
    order = [by_process[2], by_process[0], by_process[3], by_process[1]]
    mesh = Mesh(np.array(order), ("data",))
    state = jax.device_put(np.zeros((), np.float32), NamedSharding(mesh, P()))
    predictor = VolumePredictor(
        lambda s, x: x[..., :1] + s, mesh, NamedSharding(mesh, P()), batch_size=4
    )
    volume = np.arange(6 * 5 * 10, dtype=np.uint8).reshape(6, 5, 10, 1)  # 10 slices
    probs = predictor.predict_volume(state, volume)
    expected = volume[..., 0].astype(np.float32) / 255.0
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    print("ok", jax.process_index(), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rows_land_on_their_devices_with_an_interleaved_two_process_mesh(child_env, tmp_path):
    script = tmp_path / "infer.py"
    script.write_text(SCRIPT)
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), address, str(i)],
            env=child_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, out[-3000:]
        assert f"ok {i}" in out


def test_rows_land_on_their_devices_with_a_permuted_mesh_in_one_process():
    """The order-independence on one process (where every device is addressable); the
    two-process test above is the one that the block-per-process assumption fails."""
    devices = jax.devices()
    assert len(devices) == 4
    mesh = Mesh(np.array([devices[k] for k in (2, 0, 3, 1)]), ("data",))
    state = jax.device_put(np.zeros((), np.float32), NamedSharding(mesh, P()))
    predictor = VolumePredictor(
        lambda s, x: x[..., :1] + s, mesh, NamedSharding(mesh, P()), batch_size=4
    )
    volume = np.arange(4 * 3 * 7, dtype=np.uint8).reshape(4, 3, 7, 1)
    probs = predictor.predict_volume(state, volume)
    np.testing.assert_allclose(probs, volume[..., 0] / 255.0, rtol=1e-6)

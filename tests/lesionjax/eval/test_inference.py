"""Inference over whole volumes puts every row where the mesh's sharding says it belongs, also
when a process's devices are not a contiguous block of the mesh (TPU meshes reorder devices);
on a process's own devices it needs no other process; volumes split across processes by
slices."""

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
    # The same predictor on this process's devices alone: each process predicts volumes of its
    # own, process 1 twice as many as process 0 (no collective may be left in it, or the
    # processes would wait for each other).
    local, local_state = predictor.on_local_devices(state)
    assert {d.process_index for d in local.mesh.devices.flat} == {jax.process_index()}
    for k in range(1 + jax.process_index()):
        own = volume + np.uint8(10 * (jax.process_index() + k))
        probs = local.predict_volume(local_state, own)
        np.testing.assert_allclose(probs, own[..., 0].astype(np.float32) / 255.0, rtol=1e-6)
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


class _Volumes:
    def __init__(self, slices: dict[str, int]):
        self.slices = slices

    def volume(self, case_id):
        return {"n_slices": self.slices[case_id]}


def test_volumes_are_split_across_processes_by_slices():
    from lesionjax.eval.evaluate_volumes import process_share

    shards = _Volumes({"a": 40, "b": 10, "c": 30, "d": 20, "e": 5})
    ids = ["a", "b", "c", "d", "e"]
    # Largest first to the least loaded: a->0 (40), c->1 (30), d->1 (50), b->0 (50), e->0.
    assert process_share(shards, ids, 0, 2) == ["a", "b", "e"]
    assert process_share(shards, ids, 1, 2) == ["c", "d"]
    shares = [process_share(shards, ids, p, 3) for p in range(3)]
    assert sorted(sum(shares, [])) == ids  # each volume once
    assert process_share(shards, ids, 0, 1) == ids
    assert process_share(shards, ["a"], 1, 2) == []  # more processes than volumes


def test_the_sliding_window_predictor_moves_to_the_local_devices_unchanged():
    from lesionjax.eval.sliding_window import SlidingWindowPredictor

    mesh = Mesh(np.array(jax.devices()[::-1]), ("data",))
    state = jax.device_put(np.float32(0.25), NamedSharding(mesh, P()))
    predictor = SlidingWindowPredictor(
        lambda s, x: x[..., :1] * s, mesh, NamedSharding(mesh, P()), (8, 8, 4), batch_size=4
    )
    volume = np.random.default_rng(0).integers(0, 255, (12, 10, 6, 1), dtype=np.uint8)
    local, local_state = predictor.on_local_devices(state)
    assert local.patch == predictor.patch and local.batch_size == predictor.batch_size
    np.testing.assert_allclose(
        local.predict_volume(local_state, volume), volume[..., 0] / 255.0 * 0.25, rtol=1e-5
    )
    assert local.on_local_devices(local_state)[0] is local  # built once


def test_an_ensemble_moves_when_every_member_can():
    from lesionjax.eval.ensemble import EnsemblePredictor, Member

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep = NamedSharding(mesh, P())
    members = [
        Member(VolumePredictor(lambda s, x: x[..., :1] * s, mesh, rep, batch_size=4), state)
        for state in (jax.device_put(np.float32(k), rep) for k in (1.0, 3.0))
    ]
    volume = np.full((3, 3, 5, 1), 51, np.uint8)  # 0.2
    moved, _ = EnsemblePredictor(members).on_local_devices(None)
    np.testing.assert_allclose(moved.predict_volume(None, volume), 0.4, rtol=1e-6)  # (0.2+0.6)/2

    class Fixed:  # a predictor that cannot move
        def predict_volume(self, state, image):
            return np.zeros(image.shape[:3], np.float32)

    assert EnsemblePredictor([*members, Member(Fixed(), None)]).on_local_devices(None) is None


def test_a_slice_of_any_size_is_padded_to_the_networks_multiple_and_cropped_back():
    """The predict function refuses sizes that are not multiples of 16 (as a 5-level U-Net
    does) and returns its input's first channel shifted by one pixel row: the predictor's
    output is then the input, shifted the same way, on the input's own 37 x 21 grid."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    seen = []

    def predict_fn(state, x):
        assert x.shape[1] % 16 == 0 and x.shape[2] % 16 == 0, x.shape
        seen.append(x.shape[1:3])
        return jax.numpy.roll(x[..., :1], 1, axis=1) + state

    state = jax.device_put(np.zeros((), np.float32), NamedSharding(mesh, P()))
    predictor = VolumePredictor(predict_fn, mesh, NamedSharding(mesh, P()), multiple=16)
    rng = np.random.default_rng(0)
    volume = rng.integers(1, 255, size=(37, 21, 5, 2), dtype=np.uint8)
    probs = predictor.predict_volume(state, volume)
    assert probs.shape == (37, 21, 5) and seen == [(48, 32)]
    expected = volume[..., 0].astype(np.float32) / 255.0
    # Row 0 receives the padding row above it (zeros); every other row its upper neighbour.
    np.testing.assert_allclose(probs[1:], expected[:-1], rtol=1e-6)
    np.testing.assert_array_equal(probs[0], 0.0)

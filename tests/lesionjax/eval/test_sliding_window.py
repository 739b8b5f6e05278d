"""Sliding-window inference: window placement, the Gaussian weights, reconstruction of a volume
by a model that returns its input, the weighted average against a loop, and mirroring TTA."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lesionjax.eval.sliding_window import (
    SlidingWindowPredictor,
    gaussian_importance,
    mirror_combinations,
    window_starts,
)


def _mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def _predictor(fn, patch, **kw):
    mesh = _mesh()
    return SlidingWindowPredictor(fn, mesh, NamedSharding(mesh, P()), patch, **kw)


def test_window_starts_follow_nnunets_rule():
    assert window_starts(8, 8) == [0]
    assert window_starts(13, 8) == [0, 2, 5]  # ceil(5 / 4) + 1 = 3 windows, 2.5 apart
    assert window_starts(100, 64) == [0, 18, 36]
    assert window_starts(16, 8, step=1.0) == [0, 8]
    for size, patch in [(13, 8), (100, 64), (41, 7)]:
        starts = window_starts(size, patch)
        assert starts[0] == 0 and starts[-1] == size - patch
        assert max(np.diff(starts)) <= np.ceil(0.5 * patch)  # spacing <= patch / 2, rounded
    with pytest.raises(ValueError, match="pad the volume"):
        window_starts(5, 8)


def test_gaussian_peaks_in_the_centre_with_sigma_an_eighth_of_the_patch():
    w = gaussian_importance((16, 16, 8))
    assert w.shape == (16, 16, 8) and w.min() > 0
    np.testing.assert_allclose(w.max(), 1.0, rtol=1e-6)
    # Along x, centre at 7.5: exp(-0.5 * (d / 2)^2) for d = 0.5, 1.5, ... (times the y, z peaks).
    line = w[:, 7, 3] / w[7, 7, 3]
    d = np.arange(16) - 7.5
    np.testing.assert_allclose(
        line, np.exp(-0.5 * (d / 2.0) ** 2) / np.exp(-0.5 * 0.25**2), rtol=1e-5
    )


def test_mirror_combinations():
    assert mirror_combinations(()) == [()]
    assert mirror_combinations((0, 1, 2)) == [
        (),
        (0,),
        (1,),
        (2,),
        (0, 1),
        (0, 2),
        (1, 2),
        (0, 1, 2),
    ]


def test_a_model_that_returns_its_input_reproduces_the_volume():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, size=(21, 8, 3, 2), dtype=np.uint8)  # z smaller than the patch
    predictor = _predictor(lambda s, x: x[..., :1], (8, 8, 4), batch_size=3)
    probs = predictor.predict_volume(None, volume)
    assert probs.shape == (21, 8, 3)
    np.testing.assert_allclose(probs, volume[..., 0] / np.float32(255.0), rtol=1e-6, atol=1e-7)


def test_overlapping_windows_are_averaged_with_the_gaussian_weights():
    # Each window predicts its own mean everywhere: the result is the Gaussian-weighted mean of
    # the windows covering each voxel, computed here with loops.
    rng = np.random.default_rng(1)
    volume = rng.random((12, 10, 6, 1)).astype(np.float32)
    patch = (8, 6, 4)

    def window_mean(state, x):
        return jnp.broadcast_to(x.mean(axis=(1, 2, 3, 4), keepdims=True), x.shape[:4] + (1,))

    probs = _predictor(window_mean, patch, batch_size=4).predict_volume(None, volume)
    w = gaussian_importance(patch)
    total = np.zeros(volume.shape[:3])
    norm = np.zeros(volume.shape[:3])
    starts = [window_starts(n, p) for n, p in zip(volume.shape[:3], patch, strict=True)]
    for x, y, z in itertools.product(*starts):
        region = (slice(x, x + 8), slice(y, y + 6), slice(z, z + 4))
        total[region] += volume[region].mean() * w
        norm[region] += w
    np.testing.assert_allclose(probs, total / norm, rtol=1e-5)
    assert len(list(itertools.product(*starts))) == 2 * 3 * 2


def test_mirroring_averages_the_flipped_predictions():
    ramp = jnp.arange(8, dtype=jnp.float32)[None, :, None, None, None]  # depends on x position

    def position_weighted(state, x):
        return x[..., :1] * ramp

    volume = np.full((8, 4, 4, 1), 0.5, np.float32)
    plain = _predictor(position_weighted, (8, 4, 4)).predict_volume(None, volume)
    mirrored = _predictor(position_weighted, (8, 4, 4), mirror_axes=(0,))
    got = mirrored.predict_volume(None, volume)
    np.testing.assert_allclose(plain[:, 0, 0], 0.5 * np.arange(8), rtol=1e-6)
    np.testing.assert_allclose(got, np.full((8, 4, 4), 0.5 * 3.5), rtol=1e-6)

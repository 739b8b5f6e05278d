"""The pretext losses against hand-computed values and straightforward numpy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lesionjax.pretext import losses


def _nt_xent_reference(z1, z2, tau):
    """NT-Xent written out with loops (SimCLR's definition)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        num = math.exp(z[i] @ z[j] / tau)
        den = sum(math.exp(z[i] @ z[k] / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_info_nce_of_aligned_orthogonal_pairs_is_the_known_minimum():
    n = 6
    z = jnp.eye(n, 16)
    for tau, tol in ((0.5, dict(rel=1e-5)), (0.1, dict(abs=1e-6))):
        expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
        assert float(losses.info_nce(z, z, tau)) == pytest.approx(expected, **tol)
        # scaling an embedding changes nothing (they are normalised)
        assert float(losses.info_nce(3.0 * z, z, tau)) == pytest.approx(expected, **tol)
    tau = 0.1
    # swapping the pairing makes it far worse
    assert float(losses.info_nce(z, jnp.roll(z, 1, axis=0), tau)) > 10.0


def test_info_nce_matches_the_written_out_definition():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    for tau in (0.1, 0.5):
        assert float(losses.info_nce(jnp.asarray(z1), jnp.asarray(z2), tau)) == pytest.approx(
            _nt_xent_reference(z1, z2, tau), rel=1e-4
        )


def test_regions_are_distinct_inside_the_map_and_do_not_overlap():
    shape, size, n = (32, 29), 3, 20
    for seed in range(5):
        cells = np.asarray(losses.sample_regions(jax.random.key(seed), shape, n, size))
        assert len(set(cells.tolist())) == n
        corners = np.asarray(losses.region_corners(jnp.asarray(cells), shape, size))
        assert (corners >= 0).all()
        assert (corners[:, 0] + size <= shape[0]).all() and (corners[:, 1] + size <= shape[1]).all()
        for i in range(n):
            for j in range(i + 1, n):
                (ra, ca), (rb, cb) = corners[i], corners[j]
                assert abs(ra - rb) >= size or abs(ca - cb) >= size
    with pytest.raises(ValueError, match="fewer than"):
        losses.sample_regions(jax.random.key(0), (9, 9), 10, 3)


def test_region_embeddings_are_the_mean_over_each_region():
    rng = np.random.default_rng(1)
    fmap = rng.normal(size=(2, 13, 10, 4)).astype(np.float32)
    cells = losses.sample_regions(jax.random.key(2), (13, 10), 7, 3)
    corners = np.asarray(losses.region_corners(cells, (13, 10), 3))
    out = np.asarray(losses.region_embeddings(jnp.asarray(fmap), cells, 3))
    for r, (y, x) in enumerate(corners):
        np.testing.assert_allclose(out[:, r], fmap[:, y : y + 3, x : x + 3].mean(axis=(1, 2)),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_local_info_nce_is_the_mean_of_per_image_losses():
    rng = np.random.default_rng(2)
    e1, e2 = rng.normal(size=(3, 20, 8)), rng.normal(size=(3, 20, 8))
    expected = np.mean([_nt_xent_reference(e1[b], e2[b], 0.1) for b in range(3)])
    got = float(losses.local_info_nce(jnp.asarray(e1), jnp.asarray(e2), 0.1))
    assert got == pytest.approx(expected, rel=1e-4)


def test_softmax_cross_entropy_by_hand():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([0, 0])
    expected = np.mean([-math.log(math.e**2 / (math.e**2 + 1)), -math.log(1 / (1 + math.e))])
    assert float(losses.softmax_cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_multilabel_targets_put_no_ich_first():
    labels = jnp.array([[0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 0, 1]], jnp.uint8)
    np.testing.assert_array_equal(
        np.asarray(losses.multilabel_targets(labels)),
        [[1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0, 1]],
    )


def test_balanced_weights_and_weighted_bce_by_hand():
    targets = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]], np.float32)
    # class 0: 3 positives, 1 negative; class 1: none (weight 1); class 2: 1 of 4
    np.testing.assert_allclose(losses.balanced_pos_weights(targets), [1 / 3, 1.0, 3.0], rtol=1e-6)
    w = jnp.array([1 / 3, 1.0, 3.0])
    logits = jnp.zeros((4, 3))  # p = 0.5 everywhere: every term is log 2 times its weight
    per_class = [np.mean([w[k] if t else 1.0 for t in targets[:, k]]) for k in range(3)]
    expected = math.log(2) * np.mean(per_class)
    got = float(losses.weighted_bce(logits, jnp.asarray(targets), w))
    assert got == pytest.approx(expected, rel=1e-6)
    # missing a positive of a class weighted 3 costs 3 times missing a negative of it
    miss_pos = float(losses.weighted_bce(jnp.array([[-4.0]]), jnp.array([[1.0]]), jnp.array([3.0])))
    miss_neg = float(losses.weighted_bce(jnp.array([[4.0]]), jnp.array([[0.0]]), jnp.array([3.0])))
    assert miss_pos == pytest.approx(3.0 * miss_neg, rel=1e-6)
    assert miss_neg == pytest.approx(math.log1p(math.exp(4.0)), rel=1e-6)


def test_multilabel_dice_by_hand():
    targets = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    logits = jnp.array([[50.0, -50.0], [50.0, -50.0]])  # exactly the targets
    assert float(losses.multilabel_dice(logits, targets)) == pytest.approx(0.0, abs=1e-6)
    # class 0 all wrong (p = 0): Dice (0 + 1) / (0 + 2 + 1); class 1 empty and empty: 1
    wrong = jnp.array([[-50.0, -50.0], [-50.0, -50.0]])
    assert float(losses.multilabel_dice(wrong, targets)) == pytest.approx(1 - (1 / 3 + 1) / 2)

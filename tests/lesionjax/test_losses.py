"""Losses on hand-made cases: soft Dice, BCE, their sum, weights and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lesionjax import losses


def _normal(seed: int, shape: tuple[int, ...]) -> jnp.ndarray:
    # NumPy draws: jax.random would compile a threefry kernel per shape (seconds on XLA:CPU).
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _mask(batch: int = 2, size: int = 8) -> jnp.ndarray:
    """(B, size, size, 1) masks whose left half is lesion."""
    m = np.zeros((batch, size, size, 1), np.float32)
    m[:, :, : size // 2] = 1.0
    return jnp.asarray(m)


def test_dice_loss_of_confident_correct_prediction_is_near_zero():
    target = _mask()
    logits = 30.0 * (2.0 * target - 1.0)
    assert float(losses.soft_dice_loss(logits, target)) < 1e-6


def test_dice_loss_of_disjoint_prediction_is_near_one():
    target = _mask()
    logits = 30.0 * (1.0 - 2.0 * target)  # predicts lesion exactly where there is none
    # 1 - smooth / (sum p + sum t + smooth) = 1 - 1 / 65
    np.testing.assert_allclose(float(losses.soft_dice_loss(logits, target)), 1 - 1 / 65, rtol=1e-5)


def test_dice_loss_exact_value_on_two_pixels():
    # p = sigmoid([0, ln 3]) = [0.5, 0.75], t = [1, 0]:
    # dice = (2 * 0.5 + 1) / (1.25 + 1 + 1) = 2 / 3.25
    logits = jnp.array([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)
    target = jnp.array([1.0, 0.0]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(
        float(losses.soft_dice_loss(logits, target)), 1 - 2 / 3.25, rtol=1e-6
    )


def test_dice_loss_of_empty_mask_and_empty_prediction_is_zero():
    target = jnp.zeros((1, 4, 4, 1))
    assert float(losses.soft_dice_loss(jnp.full_like(target, -40.0), target)) < 1e-6


def test_zero_weight_sample_does_not_change_loss():
    logits = _normal(0, (3, 8, 8, 1))
    target = (_normal(1, (3, 8, 8, 1)) > 0) * 1.0
    for loss in (losses.soft_dice_loss, losses.bce_loss, losses.dice_bce_loss):
        alone = loss(logits[:2], target[:2])
        padded = loss(logits, target, jnp.array([1.0, 1.0, 0.0]))
        np.testing.assert_allclose(float(padded), float(alone), rtol=1e-6, err_msg=loss.__name__)


def test_weights_give_weighted_mean_of_per_sample_losses():
    logits = _normal(1, (2, 8, 8, 1))
    target = _mask()
    l0 = losses.soft_dice_loss(logits[:1], target[:1])
    l1 = losses.soft_dice_loss(logits[1:], target[1:])
    weighted = losses.soft_dice_loss(logits, target, jnp.array([1.0, 0.2]))
    np.testing.assert_allclose(float(weighted), float((l0 + 0.2 * l1) / 1.2), rtol=1e-6)


def test_all_zero_weights_give_zero_loss_and_finite_gradient():
    target = _mask()
    logits = jnp.zeros_like(target)
    weights = jnp.zeros((2,))
    value, grad = jax.value_and_grad(losses.dice_bce_loss)(logits, target, weights)
    assert float(value) == 0.0
    assert bool(jnp.all(grad == 0.0))


def test_dice_gradient_matches_analytic_formula():
    z = _normal(2, (1, 3, 3, 1))
    t = jnp.array([1, 0, 1, 1, 0, 0, 0, 1, 0], jnp.float32).reshape(1, 3, 3, 1)
    grad = jax.grad(losses.soft_dice_loss)(z, t)
    # loss = 1 - (2I + s) / (D + s), I = sum p t, D = sum p + sum t, dp/dz = p (1 - p).
    p = np.asarray(jax.nn.sigmoid(z), np.float64)
    tn = np.asarray(t, np.float64)
    inter, denom = (p * tn).sum() + 0.0, p.sum() + tn.sum()
    d_dice_dp = (2 * tn * (denom + 1) - (2 * inter + 1)) / (denom + 1) ** 2
    expected = -d_dice_dp * p * (1 - p)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-7)


def test_dice_gradient_matches_finite_differences():
    z = jnp.array([0.3, -1.2, 2.0, 0.1], jnp.float32).reshape(1, 2, 2, 1)
    t = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
    grad = np.asarray(jax.grad(losses.soft_dice_loss)(z, t)).ravel()
    zn, tn = np.asarray(z, np.float64).ravel(), np.asarray(t, np.float64).ravel()

    def loss64(v):
        p = 1 / (1 + np.exp(-v))
        return 1 - (2 * (p * tn).sum() + 1) / (p.sum() + tn.sum() + 1)

    eps = 1e-6
    fd = [(loss64(zn + eps * e) - loss64(zn - eps * e)) / (2 * eps) for e in np.eye(4)]
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7)


def test_bce_matches_formula_and_is_stable_for_large_logits():
    z = jnp.array([-2.0, 0.5, 100.0, -100.0]).reshape(1, 2, 2, 1)
    t = jnp.array([0.0, 1.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    zn = np.asarray(z, np.float64).ravel()
    # -[t log p + (1 - t) log(1 - p)] = softplus(z) - t z, in float64.
    expected = np.mean(np.logaddexp(0, zn) - np.asarray(t).ravel() * zn)
    np.testing.assert_allclose(float(losses.bce_loss(z, t)), expected, rtol=1e-6)


def test_dice_bce_is_the_sum():
    z = _normal(3, (2, 4, 4, 1))
    t = _mask(2, 4)
    w = jnp.array([1.0, 0.2])
    total = losses.dice_bce_loss(z, t, w)
    parts = losses.soft_dice_loss(z, t, w) + losses.bce_loss(z, t, w)
    np.testing.assert_allclose(float(total), float(parts), rtol=1e-6)


def test_get_loss_names():
    assert losses.get_loss("dice") is losses.soft_dice_loss
    assert losses.get_loss("bce") is losses.bce_loss
    assert losses.get_loss("dice_bce") is losses.dice_bce_loss
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("focal")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="target shape"):
        losses.soft_dice_loss(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 2)))


def test_deep_supervision_loss_weighs_the_scales_like_nnunet():
    from lesionjax.losses import (
        deep_supervision_loss,
        deep_supervision_weights,
        downsample_mask,
        soft_dice_loss,
    )

    assert deep_supervision_weights(2) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    target = np.zeros((1, 8, 8, 1), np.float32)
    target[0, 5, 2, 0] = 1.0  # one lesion pixel
    half = np.asarray(downsample_mask(jnp.asarray(target), 2))
    assert half.shape == (1, 4, 4, 1) and half[0, 2, 1, 0] == 1.0 and half.sum() == 1.0
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(1, 8, 8, 1)), jnp.float32)
    aux = [jnp.asarray(rng.normal(size=(1, s, s, 1)), jnp.float32) for s in (4, 2)]
    expected = (
        4 / 7 * soft_dice_loss(logits, target)
        + 2 / 7 * soft_dice_loss(aux[0], downsample_mask(jnp.asarray(target), 2))
        + 1 / 7 * soft_dice_loss(aux[1], downsample_mask(jnp.asarray(target), 4))
    )
    got = deep_supervision_loss(soft_dice_loss, (logits, aux), jnp.asarray(target))
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
    # Plain logits: the loss itself.
    np.testing.assert_allclose(
        float(deep_supervision_loss(soft_dice_loss, logits, jnp.asarray(target))),
        float(soft_dice_loss(logits, target)),
        rtol=1e-6,
    )

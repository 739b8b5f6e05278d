"""Batch soft Dice (one ratio over the batch) and the output-prior initialisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lesionjax.losses import batch_dice_loss, get_loss, soft_dice_loss
from lesionjax.models.registry import build_model, set_output_prior

BIG = 30.0  # sigmoid(30) == 1 in float32


def test_batch_dice_pools_pixels_over_the_batch():
    target = np.zeros((2, 2, 2, 1), np.float32)
    target[0, 0, 0] = 1.0  # one lesion pixel in sample 0; sample 1 empty
    logits = np.full_like(target, -BIG)
    logits[0, 0, 0] = BIG  # the lesion found
    logits[1, 1, 1] = BIG  # one false positive on the empty slice
    # Pooled: TP = 1, sum p = 2, sum t = 1 -> dice = (2 + 1) / (3 + 1).
    np.testing.assert_allclose(
        batch_dice_loss(jnp.asarray(logits), jnp.asarray(target)), 1 - 3 / 4, rtol=1e-6
    )
    # Per sample the empty slice's false positive costs 1 - 1/2 and the lesion slice 0.
    np.testing.assert_allclose(
        soft_dice_loss(jnp.asarray(logits), jnp.asarray(target)), 0.25, rtol=1e-6
    )


def test_batch_dice_weights_scale_each_samples_pixels():
    target = np.zeros((2, 2, 2, 1), np.float32)
    target[0, 0, 0] = 1.0
    logits = np.full_like(target, -BIG)
    logits[0, 0, 0] = BIG
    logits[1, 1, 1] = BIG
    weights = jnp.asarray([1.0, 0.0])  # the false-positive slice does not count
    np.testing.assert_allclose(
        batch_dice_loss(jnp.asarray(logits), jnp.asarray(target), weights), 0.0, atol=1e-6
    )


def test_batch_dice_gradient_reaches_background_of_empty_slices():
    target = jnp.zeros((2, 4, 4, 1)).at[0, 1:3, 1:3].set(1.0)
    logits = jnp.zeros((2, 4, 4, 1))
    grad = jax.grad(batch_dice_loss)(logits, target)
    assert float(grad[1].min()) > 0  # every pixel of the empty slice is pushed down
    assert float(grad[0, 1, 1, 0]) < 0  # lesion pixels are pushed up


def test_named_losses():
    assert get_loss("batch_dice") is batch_dice_loss
    logits = jnp.zeros((1, 4, 4, 1))
    target = jnp.ones((1, 4, 4, 1))
    expected = float(batch_dice_loss(logits, target) + get_loss("bce")(logits, target))
    np.testing.assert_allclose(get_loss("batch_dice_bce")(logits, target), expected, rtol=1e-6)


def test_output_prior_sets_the_initial_probability():
    model = build_model("unet2d", 1, 1, (4, 8), rngs=nnx.Rngs(0))
    set_output_prior(model, 0.01)
    np.testing.assert_allclose(model.head.bias[...], math.log(0.01 / 0.99), rtol=1e-6)
    # With zero-mean features the output starts near the prior instead of 0.5.
    probs = jax.nn.sigmoid(model(jnp.zeros((1, 8, 8, 1)), train=False))
    assert float(probs.mean()) < 0.1

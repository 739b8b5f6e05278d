"""The five pretext tasks as trainer objectives (``lesionjax.train.objective.Objective``),
built from a config's ``pretext`` section (``config_defaults.pretext_config``):

=====================  =========================================  ==========================
``pretext.task``       model (``lesionjax.models.pretext``)       loss
=====================  =========================================  ==========================
context_restoration    the U-Net, restoring the input channels    MSE to the original image
global_contrastive     encoder + MLP (``pretext.head``)           InfoNCE over the 2N views
local_contrastive      frozen encoder + 3 decoder blocks + 1x1s   local InfoNCE, 20 regions
binary                 encoder + MLP to 2 logits                  softmax cross-entropy (any)
multilabel             encoder + MLP to 7 logits                  weighted BCE, or Dice
=====================  =========================================  ==========================

Every model uses ``config.model``'s features, norm and activation, so its encoder (and decoder)
load into that U-Net by path (``train.init_from``). Restoration and classification see the
config's affine augmentation (``augment``); the contrastive tasks their strong views
(``pretext.views``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lesionjax.core.errors import ConfigError
from lesionjax.core.windows import uint8_to_unit
from lesionjax.data import augment as augment_lib
from lesionjax.models import pretext as nets
from lesionjax.pretext import corruption, losses, views
from lesionjax.train.objective import Objective

TASKS = ("context_restoration", "global_contrastive", "local_contrastive", "binary", "multilabel")
MULTILABEL_LOSSES = ("bce", "dice")
# The paper's heads (output widths; the input is the bottleneck or the decoder level).
DEFAULT_HEADS = {
    "global_contrastive": (512, 128),
    "local_contrastive": (128, 32),
    "binary": (1024, 256, 2),
    "multilabel": (1024, 256, 7),
}


def view_config(p, *, flips: bool = True) -> views.ViewConfig:
    v = p.views
    return views.ViewConfig(
        translate=v.translate,
        rotate_deg=v.rotate_deg,
        scale=tuple(v.scale),
        flip_prob=v.flip_prob if flips else 0.0,
        crop=tuple(v.crop),
        brightness=tuple(v.brightness),
        contrast=tuple(v.contrast),
        blur_prob=v.blur_prob,
        blur_sigma=tuple(v.blur_sigma),
    )


def _model_options(config) -> dict:
    m = config.model
    if m.name != "unet2d" or m.get("downsample", "maxpool") != "maxpool":
        raise ConfigError(
            f"model.name={m.name!r}, model.downsample={m.get('downsample', 'maxpool')!r}: the "
            "pretext models are built on the 2D U-Net with max-pooling (unet2d, maxpool)"
        )
    return {"norm": m.get("norm", "batch"), "activation": m.get("activation", "relu")}


def _unit(batch) -> jax.Array:
    return uint8_to_unit(batch["image"])


def _affine(config):
    """The config's affine augmentation of images alone (no mask)."""
    cfg = augment_lib.AugmentConfig(
        translate=config.augment.translate, rotate_deg=config.augment.rotate_deg,
        scale=tuple(config.augment.scale), flip_prob=config.augment.flip_prob,
        enabled=config.augment.enabled,
    )  # fmt: skip

    def apply(key, images):
        if not cfg.enabled:
            return images
        keys = jax.random.split(key, images.shape[0])

        def one(k, x):
            matrix, offset = augment_lib.random_affine(k, x.shape[:2], cfg)
            return augment_lib.warp(x, matrix, offset, order=1)

        return jax.vmap(one)(keys, images)

    return apply


def head_widths(p, task: str) -> tuple[int, ...]:
    widths = tuple(int(w) for w in (p.get("head", ()) or DEFAULT_HEADS[task]))
    if task == "binary" and widths[-1] != 2:
        raise ConfigError(f"pretext.head={widths}: the binary classifier ends in 2 outputs")
    if task == "multilabel" and widths[-1] != 7:
        raise ConfigError(f"pretext.head={widths}: the multi-label classifier ends in 7 outputs")
    return widths


def build_objective(config, *, label_targets: np.ndarray | None = None) -> Objective:
    """The objective of ``config.pretext.task``. ``label_targets``: the training pool's
    multi-label targets (N, 7), for weighted BCE's class weights."""
    p = config.pretext
    task = p.task
    if task not in TASKS:
        raise ConfigError(f"pretext.task={task!r}: expected one of {', '.join(TASKS)}")
    options = _model_options(config)
    features = tuple(config.model.features)
    affine = _affine(config)
    temperature = float(p.temperature)

    if task == "context_restoration":
        n_swaps, patch, reference = int(p.swaps), int(p.patch), int(p.reference_size)

        def model_fn(c_in, rngs, dtype):
            return nets.RestorationNet(c_in, features, rngs=rngs, dtype=dtype, **options)

        def prepare(key, batch):
            k_a, k_s = jax.random.split(key)
            images = affine(k_a, _unit(batch))
            size = corruption.patch_size(images.shape[1], patch, reference)
            keys = jax.random.split(k_s, images.shape[0])
            corrupted = jax.vmap(lambda k, x: corruption.corrupt(k, x, n_swaps, size))(keys, images)
            return {"input": corrupted, "target": images}

        def loss(model, batch, rngs):
            restored = model(batch["input"], train=True, rngs=rngs).astype(jnp.float32)
            return jnp.mean(jnp.square(restored - batch["target"]))

        return Objective(task, model_fn, prepare, loss)

    if task == "global_contrastive":
        cfg = view_config(p)
        widths = head_widths(p, task)

        def model_fn(c_in, rngs, dtype):
            return nets.ContrastiveNet(c_in, features, widths, rngs=rngs, dtype=dtype, **options)

        def prepare(key, batch):
            v1, v2 = views.two_views(key, _unit(batch), cfg, shared_geometry=False)
            return {"views": jnp.concatenate([v1, v2])}  # one forward: BN over all 2N views

        def loss(model, batch, rngs):
            z = model(batch["views"], train=True, rngs=rngs)
            z1, z2 = jnp.split(z, 2)
            return losses.info_nce(z1, z2, temperature)

        return Objective(task, model_fn, prepare, loss)

    if task == "local_contrastive":
        if not str(config.train.get("init_from", "") or ""):
            raise ConfigError(
                "pretext.task='local_contrastive' starts from a global contrastive run: set "
                "--config.train.init_from=<that run's folder> (init_parts 'encoder')"
            )
        cfg = view_config(p, flips=False)
        widths = head_widths(p, task)
        blocks, n_regions, size = int(p.decoder_blocks), int(p.regions), int(p.region_size)
        # The feature map is at 1 / 2**(levels - 1 - blocks) of the input.
        factor = 2 ** (len(features) - 1 - blocks)

        def model_fn(c_in, rngs, dtype):
            return nets.LocalContrastiveNet(
                c_in, features, widths, decoder_blocks=blocks, rngs=rngs, dtype=dtype, **options
            )

        def prepare(key, batch):
            k_v, k_r = jax.random.split(key)
            images = _unit(batch)
            v1, v2 = views.two_views(k_v, images, cfg, shared_geometry=True)
            fmap = (images.shape[1] // factor, images.shape[2] // factor)
            cells = losses.sample_regions(k_r, fmap, n_regions, size)
            return {"views": jnp.concatenate([v1, v2]), "cells": cells}

        def loss(model, batch, rngs):
            f1, f2 = jnp.split(model(batch["views"], train=True, rngs=rngs), 2)
            e1 = losses.region_embeddings(f1, batch["cells"], size)
            e2 = losses.region_embeddings(f2, batch["cells"], size)
            return losses.local_info_nce(e1, e2, temperature)

        return Objective(task, model_fn, prepare, loss, frozen=("encoder",))

    # binary and multi-label classification
    widths = head_widths(p, task)

    def model_fn(c_in, rngs, dtype):
        return nets.ClassifierNet(c_in, features, widths, rngs=rngs, dtype=dtype, **options)

    def prepare(key, batch):
        return {"image": affine(key, _unit(batch)), "labels": batch["labels"]}

    if task == "binary":

        def loss(model, batch, rngs):
            logits = model(batch["image"], train=True, rngs=rngs)
            return losses.softmax_cross_entropy(logits, batch["labels"][:, 0])

        return Objective(task, model_fn, prepare, loss, batch_keys=("image", "labels"))

    kind = p.get("loss", "bce")
    if kind not in MULTILABEL_LOSSES:
        raise ConfigError(f"pretext.loss={kind!r}: expected one of {MULTILABEL_LOSSES}")
    if kind == "bce":
        if label_targets is None:
            raise ValueError("multilabel bce: label_targets (the pool's targets) are needed")
        pos_weight = jnp.asarray(losses.balanced_pos_weights(label_targets))

        def loss(model, batch, rngs):
            logits = model(batch["image"], train=True, rngs=rngs)
            return losses.weighted_bce(logits, losses.multilabel_targets(batch["labels"]),
                                       pos_weight)  # fmt: skip
    else:

        def loss(model, batch, rngs):
            logits = model(batch["image"], train=True, rngs=rngs)
            return losses.multilabel_dice(logits, losses.multilabel_targets(batch["labels"]))

    return Objective(f"multilabel_{kind}", model_fn, prepare, loss, batch_keys=("image", "labels"))

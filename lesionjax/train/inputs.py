"""What the training loop reads and how the step sees it, by data layout.

``train_input(config, shards, split)`` returns the endless grain dataset, the steps per epoch,
the on-device augmentation, the augmentation-free conversion (for precise BN) and a factory for
the whole-volume predictor used by validation and evaluation:

- ``data.layout = "2d"``: slices of the sampling policy (``sampling``, ``pipeline``), 2D affine
  augmentation, slice-by-slice inference (``VolumePredictor``); an epoch is one pass over the
  sampled slices.
- ``data.layout = "3d"``: patches (``patches``: nnU-Net's foreground oversampling), read with a
  margin for rotations and cropped to ``data.patch`` by the 3D augmentation (``augment3d``),
  sliding-window inference (``SlidingWindowPredictor``); an epoch is ``train.steps_per_epoch``
  steps (nnU-Net: 250).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from lesionjax.core.errors import ConfigError
from lesionjax.data import augment as augment_lib
from lesionjax.data import augment3d, patches, pipeline, sampling
from lesionjax.train.step import train_compiler_options

LAYOUTS = ("2d", "3d")


@dataclasses.dataclass
class TrainInput:
    dataset: object  # grain IterDataset of local batches
    steps_per_epoch: int
    augment_fn: Callable
    to_unit: Callable  # uint8 -> [0, 1] at the model's input size, no augmentation
    make_predictor: Callable  # (run, batch_size) -> predict_volume(state, image) object
    what: str  # "slices" | "patches", for messages


def layout_of(config) -> str:
    layout = config.data.get("layout", "2d")
    if layout not in LAYOUTS:
        raise ConfigError(f"data.layout={layout!r}: expected one of {LAYOUTS}")
    return layout


def augment_config(config) -> augment_lib.AugmentConfig:
    a = config.augment
    return augment_lib.AugmentConfig(
        translate=a.translate,
        rotate_deg=a.rotate_deg,
        scale=tuple(a.scale),
        flip_prob=a.flip_prob,
        enabled=a.enabled,
        brightness=tuple(a.brightness),
        contrast=tuple(a.contrast),
        gamma=tuple(a.gamma),
    )


def augment3d_config(config, in_channels: int | None = None) -> augment3d.Augment3DConfig:
    """The config's ``augment3d`` section; ``intensity_channels``: the image channels (a stage-2
    prior channel after them is left alone)."""
    a = config.augment3d
    return augment3d.Augment3DConfig(
        enabled=a.enabled,
        p_rotate=a.p_rotate,
        rotate_deg=a.rotate_deg,
        axial_only=bool(a.axial_only),
        p_scale=a.p_scale,
        scale=tuple(a.scale),
        mirror_axes=tuple(a.mirror_axes),
        p_noise=a.p_noise,
        noise_variance=a.noise_variance,
        p_brightness=a.p_brightness,
        brightness=tuple(a.brightness),
        p_contrast=a.p_contrast,
        contrast=tuple(a.contrast),
        p_gamma=a.p_gamma,
        gamma=tuple(a.gamma),
        intensity_channels=in_channels,
    )


def slice_input(config, shards, split) -> TrainInput:
    from lesionjax.eval.inference import VolumePredictor

    tcfg, dcfg = config.train, config.data
    indices, weights = sampling.sample_training_slices(
        shards,
        split["train"],
        dcfg.policy,
        normal_ratio=dcfg.normal_ratio,
        normal_weight=dcfg.normal_weight,
        seed=config.seed,
    )
    steps_per_epoch = len(indices) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{shards.root / 'manifest.json'}: {len(indices)} training slices (data.policy="
            f"{dcfg.policy!r}, {len(split['train'])} volumes) is less than one batch of "
            f"train.batch_size={tcfg.batch_size}; lower the batch size or add data"
        )
    dataset = pipeline.make_train_dataset(
        shards,
        indices,
        weights,
        global_batch=tcfg.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=dcfg.get("grain_workers", 0),
    )

    def make_predictor(run, batch_size: int):
        return VolumePredictor(
            run.predict_fn(),
            run.mesh,
            run.state_sharding,
            batch_size=batch_size,
            compiler_options=train_compiler_options(),
        )

    return TrainInput(
        dataset=dataset,
        steps_per_epoch=steps_per_epoch,
        augment_fn=augment_lib.make_augment_fn(augment_config(config)),
        to_unit=augment_lib.make_augment_fn(None),
        make_predictor=make_predictor,
        what="slices",
    )


def patch_sizes(config, image_channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(final patch, patch read with the augmentation's margin)."""
    final = tuple(int(n) for n in config.data.patch)
    if len(final) != 3 or min(final) < 1:
        raise ConfigError(f"data.patch={final}: expected three positive sizes (X, Y, Z)")
    return final, augment3d.patch_read_size(final, augment3d_config(config, image_channels))


def patch_input(config, shards, split) -> TrainInput:
    from lesionjax.eval.sliding_window import SlidingWindowPredictor

    tcfg, dcfg = config.train, config.data
    steps_per_epoch = int(tcfg.get("steps_per_epoch", 0))
    if steps_per_epoch < 1:
        raise ConfigError(f"train.steps_per_epoch={steps_per_epoch}: 3D training needs >= 1")
    image_channels = int(next(iter(shards.volumes))["channels"])
    final, read = patch_sizes(config, image_channels)
    dataset = patches.make_patch_dataset(
        shards,
        split["train"],
        read,
        final=final,
        global_batch=tcfg.batch_size,
        seed=config.seed,
        fg_fraction=dcfg.fg_fraction,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=dcfg.get("grain_workers", 0),
    )
    ecfg = config.eval

    def make_predictor(run, batch_size: int, mirror_axes=()):
        return SlidingWindowPredictor(
            run.predict_fn(),
            run.mesh,
            run.state_sharding,
            final,
            batch_size=batch_size,
            step=ecfg.window_step,
            mirror_axes=mirror_axes,
            compiler_options=train_compiler_options(),
        )

    return TrainInput(
        dataset=dataset,
        steps_per_epoch=steps_per_epoch,
        augment_fn=augment3d.make_augment3d_fn(final, augment3d_config(config, image_channels)),
        to_unit=augment3d.make_augment3d_fn(final, None),
        make_predictor=make_predictor,
        what="patches",
    )


def train_input(config, shards, split) -> TrainInput:
    if layout_of(config) == "3d":
        return patch_input(config, shards, split)
    return slice_input(config, shards, split)

"""What a training run optimises, when it is not lesion segmentation: the pretext tasks.

A segmentation run's step is fixed (the U-Net of ``config.model``, the segmentation loss on
``batch["mask"]``, the affine augmentation). An ``Objective`` replaces those three parts and
keeps everything else of the trainer (input pipeline, jitted sharded step, checkpoints,
resume, progress, metrics log):

- ``model_fn(in_channels, rngs, dtype)`` builds the model;
- ``prepare(key, batch)`` runs on the device inside the step, on the global batch of uint8
  slices: it builds the model's inputs and targets (corrupted images, two augmented views, ...);
- ``loss(model, batch, rngs)`` is the scalar loss of the prepared batch, in train mode;
- ``batch_keys``: the host batch's fields sent to the devices (``labels`` are the slices'
  ``SLICE_LABELS``);
- ``frozen``: top-level parameter names (``"encoder"``) the optimizer leaves unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    model_fn: Callable  # (in_channels, rngs, dtype) -> nnx.Module
    prepare: Callable  # (key, batch) -> batch, on device
    loss: Callable  # (model, batch, rngs) -> float32 scalar
    batch_keys: tuple[str, ...] = ("image", "weight")
    frozen: tuple[str, ...] = ()

"""Probabilities of an ensemble of trained models on one prepared volume, with optional
mirroring test-time augmentation (TTA).

Every member predicts the volume's slices (``inference.VolumePredictor``, batched over the
device mesh); with TTA it also predicts the left-right mirrored volume (the only flip the 2D
training augmentation applies, ``augment.flip_prob``: axis 0 of the RAS+ shard grid) and the
mirrored prediction is flipped back. The result is the plain mean over members and mirrors, as
nnU-Net averages its folds and mirrors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Member:
    """An ensemble member from its parts: a predictor and the state it predicts with."""

    predictor: object
    state: object


def ensemble_probabilities(members: Sequence, channels: np.ndarray, *, tta: bool = False):
    """Mean probabilities (X, Y, Z) float32 of ``members`` on ``channels`` (X, Y, Z, C) uint8.

    members: objects with ``predictor`` and ``state`` (``runs.Model``, ``evaluate.Run``).
    """
    if not members:
        raise ValueError("an ensemble needs at least one model")
    channels = np.asarray(channels)
    mirrored = np.ascontiguousarray(channels[::-1]) if tta else None
    total = np.zeros(channels.shape[:3], np.float64)
    n = 0
    for member in members:
        total += member.predictor.predict_volume(member.state, channels)
        n += 1
        if tta:
            total += member.predictor.predict_volume(member.state, mirrored)[::-1]
            n += 1
    return (total / n).astype(np.float32)


class EnsemblePredictor:
    """``predict_volume(state, image)`` of an ensemble: the members' mean probabilities, with
    the left-right mirrors when ``tta`` (``ensemble_probabilities``); ``state`` is unused."""

    def __init__(self, members: Sequence, *, tta: bool = False):
        self.members, self.tta = list(members), tta

    def predict_volume(self, state, image):
        del state
        return ensemble_probabilities(self.members, image, tta=self.tta)

    def on_local_devices(self, state):
        """(the ensemble over this process's devices alone, ``state``), or None when a member's
        predictor cannot move there (evaluation then runs in lock-step)."""
        if not all(hasattr(m.predictor, "on_local_devices") for m in self.members):
            return None
        members = [Member(*m.predictor.on_local_devices(m.state)) for m in self.members]
        return EnsemblePredictor(members, tta=self.tta), state

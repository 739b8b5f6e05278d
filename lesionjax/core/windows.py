"""Intensity windows: HU (or normalized MRI) to uint8 channels and back.

A window ``(lo, hi)`` maps ``lo -> 0`` and ``hi -> 255`` linearly, clipping outside; one uint8
channel per window. Decoding divides by 255, so the model sees ``clip((x - lo) / (hi - lo), 0, 1)``
up to a quantization error of at most ``(hi - lo) / 510`` in input units (half a step).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Named windows used by the three methods (HU).
NAMED_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (0.0, 80.0),  # INSTANCE 2022 channel 1
    "subdural": (-20.0, 180.0),  # INSTANCE 2022 channel 2
    "wide": (-150.0, 230.0),  # INSTANCE 2022 channel 3
    "ich": (-50.0, 150.0),  # label-efficient ICH paper
    "tissue": (0.0, 600.0),  # intracranial-cavity model, tissue window
    "bone": (150.0, 650.0),  # intracranial-cavity model, bone window
    "unit": (0.0, 1.0),  # already-normalized images (MRI)
}


def parse_windows(windows: Sequence) -> list[tuple[float, float]]:
    """Accepts names ("brain") or pairs ((0, 80)); returns validated (lo, hi) float pairs."""
    out = []
    for w in windows:
        if isinstance(w, str):
            if w not in NAMED_WINDOWS:
                raise ValueError(f"unknown window {w!r}; known: {sorted(NAMED_WINDOWS)}")
            lo, hi = NAMED_WINDOWS[w]
        else:
            lo, hi = (float(v) for v in w)
        if not hi > lo:
            raise ValueError(f"window {w!r}: upper bound {hi} must exceed lower bound {lo}")
        out.append((lo, hi))
    if not out:
        raise ValueError("at least one intensity window is required")
    return out


def window_to_uint8(image: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """image: (...,) float HU -> (..., len(windows)) uint8, one channel per window."""
    image = np.asarray(image, dtype=np.float32)
    channels = []
    for lo, hi in windows:
        scaled = (image - lo) * (255.0 / (hi - lo))
        channels.append(np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8))
    return np.stack(channels, axis=-1)


def uint8_to_unit(x):
    """(..., C) uint8 -> float32 in [0, 1], what the model sees: the one conversion, for NumPy
    arrays (host) and JAX arrays (inside the jitted steps) alike."""
    return x.astype(np.float32) * np.float32(1.0 / 255.0)

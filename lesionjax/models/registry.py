"""The model registry: every model by name, with the config options its constructor takes.

``build_model(name, in_channels, out_channels, features, rngs=..., **options)`` builds a model
from explicit arguments; ``model_from_config(config.model, in_channels, rngs=...)`` builds the
one a config names, passing only the options that model declares (``ModelSpec.options``), so the
trainer never special-cases a model. A new model registers a ``ModelSpec`` in ``MODELS``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from lesionjax.core.errors import ConfigError
from lesionjax.models.layers import ACTIVATIONS, DOWNSAMPLING, LEAKY_SLOPE, NORMS
from lesionjax.models.resunet2d import ResUNet2D
from lesionjax.models.unet2d import UNet2D
from lesionjax.models.unet3d import UNet3D


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """cls(in_channels, out_channels, features, *, rngs, **options); options: the names of the
    ``config.model`` keys passed to it."""

    cls: type
    options: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {
    "unet2d": ModelSpec(
        UNet2D, options=("norm", "activation", "leaky_slope", "downsample", "deep_supervision")
    ),
    "resunet2d": ModelSpec(ResUNet2D, options=("dropout",)),
    "unet3d": ModelSpec(
        UNet3D, options=("norm", "activation", "leaky_slope", "deep_supervision", "pools")
    ),
}


# Every model option: its allowed values (None: any) and the default (what a model without the
# option builds).
OPTIONS = {
    "norm": (NORMS, "batch"),
    "activation": (ACTIVATIONS, "relu"),
    "leaky_slope": (None, LEAKY_SLOPE),  # "leaky_relu"'s negative slope
    "downsample": (DOWNSAMPLING, "maxpool"),
    "deep_supervision": ((False, True), False),
    "dropout": (None, 0.5),
    "pools": (None, None),  # 3D: per-level pool strides (from the 3D plan); None: 2, 2, 2
}


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r}: expected one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(
    name: str,
    in_channels: int,
    out_channels: int = 1,
    features: Sequence[int] = (32, 64, 128, 256, 512),
    *,
    rngs: nnx.Rngs,
    **kw,
) -> nnx.Module:
    """The model registered as ``name``; ``kw`` goes to its constructor (dtype, dropout, ...)."""
    return _spec(name).cls(in_channels, out_channels, tuple(features), rngs=rngs, **kw)


def check_model_config(m) -> None:
    """Rejects model settings no loss or model supports, before anything is built."""
    _spec(m.name)
    if m.out_channels != 1:
        raise ConfigError(
            f"model.out_channels={m.out_channels}: the segmentation losses and metrics are "
            "binary (one sigmoid output: lesion vs background); use model.out_channels=1"
        )
    spec = _spec(m.name)
    for key, (allowed, default) in OPTIONS.items():
        if key not in m:
            continue
        if allowed is not None and m[key] not in allowed:
            raise ConfigError(f"model.{key}={m[key]!r}: expected one of {allowed}")
        if key not in spec.options and m[key] != default:
            raise ConfigError(
                f"model.{key}={m[key]!r}: {m.name} has no {key} option (it takes: "
                f"{', '.join(spec.options) or 'none'})"
            )
    prior = m.get("output_prior", 0.0)
    if prior and not 0.0 < prior < 1.0:
        raise ConfigError(f"model.output_prior={prior}: expected a probability in (0, 1), or 0")


def model_from_config(m, in_channels: int, *, rngs: nnx.Rngs, dtype=None) -> nnx.Module:
    """The model of a config's ``model`` section, its output bias at ``model.output_prior``.
    ``dtype``: the compute dtype (default float32); parameters are float32 whatever it is."""
    check_model_config(m)
    spec = _spec(m.name)
    options = {k: m[k] for k in spec.options if k in m}
    if dtype is not None:
        options["dtype"] = dtype
    model = spec.cls(in_channels, m.out_channels, tuple(m.features), rngs=rngs, **options)
    if m.get("output_prior", 0.0):
        set_output_prior(model, m.output_prior)
    return model


def set_output_prior(model: nnx.Module, prior: float) -> None:
    """Starts the output layer's bias at the lesion prior's log-odds, log(pi / (1 - pi)).

    Lesion pixels are ~1% of a slice; with a zero bias the model starts at p = 0.5 everywhere and
    Adam (steps of ~lr per weight) spends hundreds of steps only lowering the background
    probability, while per-sample soft Dice gives lesion-free slices almost no gradient
    (d/dp = 1/(sum p + 1)^2). Starting at the prior removes that phase (Lin et al., RetinaNet).
    Every registered model has its 1x1 output conv at ``model.head``.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"output prior {prior} must be in (0, 1)")
    bias = model.head.bias
    bias[...] = jnp.full_like(bias[...], math.log(prior / (1.0 - prior)))

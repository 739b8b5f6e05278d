"""The pretext models of the label-efficient paper: the 2D U-Net's own encoder (and decoder),
under the U-Net's parameter paths, with a head under a name the U-Net does not have.

Transfer (``lesionjax.train.transfer``) matches parameters by path, so a pretext run's
``encoder/...`` (and ``decoder/...``) load into a U-Net, while its heads (``restore_head``,
``projector``, ``classifier``, ``local_head``) have no place there and are left out. Every
model is built from a ``UNet2D`` with the same arguments and keeps the parts it needs, so the
paths and shapes are the U-Net's by construction.

- ``RestorationNet``: the whole U-Net, its 1x1 head giving back the input channels (context
  restoration);
- ``ContrastiveNet``: encoder -> global average pool -> MLP (SimCLR's projection);
- ``ClassifierNet``: encoder -> global average pool -> MLP to class logits;
- ``LocalContrastiveNet``: encoder -> the first ``decoder_blocks`` decoder levels -> 1x1 convs
  (Chaitanya et al.'s local contrastive model); its encoder can be frozen (eval-mode BatchNorm,
  no gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lesionjax.models.heads import ConvHead, MLPHead, global_average_pool
from lesionjax.models.layers import UNetDecoder, check_input
from lesionjax.models.unet2d import UNet2D, run_encoder


class _EncoderNet(nnx.Module):
    """The U-Net's encoder (maxpool downsampling, the papers' architecture)."""

    def _unet(self, in_channels, out_channels, features, rngs, norm, activation, dtype):
        unet = UNet2D(
            in_channels, out_channels, features, rngs=rngs, norm=norm, activation=activation,
            dtype=dtype,
        )  # fmt: skip
        self.in_channels = in_channels
        self.features = unet.features
        self.encoder = unet.encoder
        return unet

    def encode(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
        check_input(x, self.in_channels, len(self.features))
        return run_encoder(self.encoder, x, train=train)

    def bottleneck_features(self, x: jax.Array) -> jax.Array:
        """Eval-mode bottleneck output (B, h, w, features[-1]), as ``UNet2D``'s."""
        return self.encode(x, train=False)[-1]

    def pooled_head(self, head, x: jax.Array, train: bool) -> jax.Array:
        """``head`` on the global-average-pooled bottleneck, float32 out."""
        pooled = global_average_pool(self.encode(x, train=train)[-1])
        return head(pooled.astype(x.dtype)).astype(jnp.float32)


class RestorationNet(_EncoderNet):
    """The whole U-Net; x (B, H, W, C) -> the restored image (B, H, W, C), linear output."""

    def __init__(
        self, in_channels: int, features: Sequence[int], *, rngs: nnx.Rngs, norm: str = "batch",
        activation: str = "relu", dtype=jnp.float32,
    ):  # fmt: skip
        unet = self._unet(in_channels, in_channels, features, rngs, norm, activation, dtype)
        self.decoder = unet.decoder
        self.restore_head = unet.head

    def __call__(self, x, *, train: bool = False, rngs=None) -> jax.Array:
        del rngs
        skips = self.encode(x, train=train)
        levels = self.decoder(skips.pop(), skips[::-1], train=train)
        return self.restore_head(levels[-1])


class ContrastiveNet(_EncoderNet):
    """Encoder + average pooling + MLP; x -> embeddings (B, widths[-1]) (not normalised)."""

    def __init__(
        self, in_channels: int, features: Sequence[int], widths: Sequence[int] = (512, 128), *,
        rngs: nnx.Rngs, norm: str = "batch", activation: str = "relu", dtype=jnp.float32,
    ):  # fmt: skip
        self._unet(in_channels, 1, features, rngs, norm, activation, dtype)
        self.projector = MLPHead(self.features[-1], widths, rngs=rngs, dtype=dtype)

    def __call__(self, x, *, train: bool = False, rngs=None) -> jax.Array:
        del rngs
        return self.pooled_head(self.projector, x, train)


class ClassifierNet(_EncoderNet):
    """Encoder + average pooling + MLP; x -> class logits (B, widths[-1])."""

    def __init__(
        self, in_channels: int, features: Sequence[int], widths: Sequence[int] = (1024, 256, 2),
        *, rngs: nnx.Rngs, norm: str = "batch", activation: str = "relu", dtype=jnp.float32,
    ):  # fmt: skip
        self._unet(in_channels, 1, features, rngs, norm, activation, dtype)
        self.classifier = MLPHead(self.features[-1], widths, rngs=rngs, dtype=dtype)

    def __call__(self, x, *, train: bool = False, rngs=None) -> jax.Array:
        del rngs
        return self.pooled_head(self.classifier, x, train)


class LocalContrastiveNet(_EncoderNet):
    """Encoder + the first ``decoder_blocks`` decoder levels (the U-Net's paths
    ``decoder/ups/0..``, ``decoder/blocks/0..``) + 1x1 convs; x -> a feature map
    (B, H / 2**(L-1-decoder_blocks), ..., widths[-1]).

    ``frozen_encoder``: the encoder runs in eval mode (its BatchNorm statistics stay those it
    was loaded with) and its outputs carry no gradient; the trainer also freezes its parameters
    (``frozen_params``)."""

    def __init__(
        self, in_channels: int, features: Sequence[int], widths: Sequence[int] = (128, 32), *,
        decoder_blocks: int = 3, frozen_encoder: bool = True, rngs: nnx.Rngs,
        norm: str = "batch", activation: str = "relu", dtype=jnp.float32,
    ):  # fmt: skip
        self._unet(in_channels, 1, features, rngs, norm, activation, dtype)
        levels = len(self.features)
        if not 1 <= decoder_blocks <= levels - 1:
            raise ValueError(
                f"decoder_blocks={decoder_blocks}: expected 1..{levels - 1} for {levels} levels"
            )
        self.decoder_blocks = int(decoder_blocks)
        self.frozen_encoder = bool(frozen_encoder)
        # The deepest decoder_blocks levels of the U-Net's decoder, with its paths and shapes.
        self.decoder = UNetDecoder(
            self.features[levels - 1 - decoder_blocks :], norm=norm, act=activation, rngs=rngs,
            dtype=dtype, param_dtype=jnp.float32,
        )  # fmt: skip
        width = self.features[levels - 1 - decoder_blocks]
        self.local_head = ConvHead(width, widths, rngs=rngs, dtype=dtype)

    def __call__(self, x, *, train: bool = False, rngs=None) -> jax.Array:
        del rngs
        skips = self.encode(x, train=train and not self.frozen_encoder)
        if self.frozen_encoder:
            skips = [jax.lax.stop_gradient(s) for s in skips]
        bottleneck, deep_first = skips[-1], skips[-2::-1][: self.decoder_blocks]
        levels = self.decoder(bottleneck, deep_first, train=train)
        return self.local_head(levels[-1]).astype(jnp.float32)

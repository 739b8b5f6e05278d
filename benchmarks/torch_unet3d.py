"""PyTorch peer of lesionjax's UNet3D, the same architecture layer for layer (benchmark only).

Per level 2 x (conv3x3x3 without bias + InstanceNorm3d (affine, eps 1e-3 as lesionjax's
``IN_EPSILON``) + LeakyReLU(0.01)); max-pool with the level's per-axis stride; transposed conv
with kernel = stride; concatenated skips; 1x1x1 conv head producing logits. Training uses
soft Dice + BCE on the logits and Adam with coupled L2, as lesionjax's step.

Tensors are (B, C, X, Y, Z): torch's (N, C, D, H, W) with D = X, so per-axis strides keep the
(X, Y, Z) order of lesionjax's pools. torch is the ``bench`` extra; lesionjax never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_in_lrelu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.InstanceNorm3d(out_ch, eps=1e-3, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(conv_in_lrelu(in_ch, out_ch), conv_in_lrelu(out_ch, out_ch))


class TorchUNet3D(nn.Module):
    """x: (B, C_in, X, Y, Z) -> logits (B, C_out, X, Y, Z)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int],
        pools: Sequence[Sequence[int]],
    ):
        super().__init__()
        widths = (in_channels, *features)
        self.encoder = nn.ModuleList(
            double_conv(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.pools = nn.ModuleList(nn.MaxPool3d(tuple(p), stride=tuple(p)) for p in pools)
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(features) - 1, 0, -1):
            deep, shallow, s = features[level], features[level - 1], tuple(pools[level - 1])
            self.ups.append(nn.ConvTranspose3d(deep, shallow, s, stride=s))
            self.decoder.append(double_conv(2 * shallow, shallow))
        self.head = nn.Conv3d(features[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pools[level - 1](x)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block, skip in zip(self.ups, self.decoder, skips[::-1], strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0):
    """Per-sample soft Dice + BCE, batch mean (lesionjax.losses.dice_bce_loss)."""
    p = torch.sigmoid(logits)
    axes = tuple(range(1, p.ndim))
    inter = (p * target).sum(axes)
    dice = (2 * inter + smooth) / (p.sum(axes) + target.sum(axes) + smooth)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (1 - dice).mean() + bce.mean(axes).mean()

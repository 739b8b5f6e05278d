"""PyTorch peer of lesionjax's UNet2D, the same architecture layer for layer (benchmark only).

conv3x3 (no bias) + BatchNorm (eps 1e-3, running-average momentum 0.1 = lesionjax's 0.9) + ReLU,
twice per level; 2x2 max-pool; 2x2 stride-2 transposed conv; concatenated skips; 1x1 conv head
producing logits. Training uses the same soft Dice loss on sigmoid(logits) and Adam with the same
coupled L2 (torch's ``Adam(weight_decay=...)`` adds ``wd * w`` to the gradient, like optax's
``add_decayed_weights`` before ``scale_by_adam``).

torch is an optional dependency (the ``bench`` extra); lesionjax itself never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch, eps=1e-3, momentum=0.1),
        nn.ReLU(inplace=True),
    )


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_ch, out_ch), conv_bn_relu(out_ch, out_ch))


class TorchUNet2D(nn.Module):
    """x: (B, C_in, H, W) -> logits (B, C_out, H, W); widths ``features`` per level."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256, 512),
    ):
        super().__init__()
        widths = (in_channels, *features)
        self.encoder = nn.ModuleList(
            double_conv(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(features[:0:-1], features[-2::-1], strict=True):
            self.ups.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            self.decoder.append(double_conv(2 * shallow, shallow))
        self.head = nn.Conv2d(features[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.decoder, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0):
    """Mean over the batch of 1 - soft Dice of sigmoid(logits); same as lesionjax's."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()

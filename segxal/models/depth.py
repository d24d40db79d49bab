"""Small monocular depth network: image -> relative inverse depth in [0, 1] (larger = nearer),
the convention of MiDaS / Depth Anything, so a user-supplied model of either kind is a drop-in
replacement behind the same proximity code (segxal.eem.proximity).

It is the segmentation U-Net body with a one-channel head and a sigmoid; trained on the
synthetic disparity scaled by a fixed `disparity_scale` (disparity / scale, clipped to [0, 1]).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from segxal.models.unet import UNet, UNetConfig


@dataclass
class DepthConfig:
    width: int = 16
    depth: int = 4
    # disparity (pixels at the training resolution) that maps to inverse depth 1.0; nearer is
    # clipped. Set from the data at training time (99.5th percentile of valid disparity).
    disparity_scale: float = 64.0

    def to_dict(self) -> dict:
        return asdict(self)


class DepthNet(nn.Module):
    def __init__(self, cfg: DepthConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DepthConfig()
        self.body = UNet(UNetConfig(width=cfg.width, depth=cfg.depth, num_classes=1))

    @property
    def multiple(self) -> int:
        return self.body.multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] normalised -> relative inverse depth [B, H, W] in [0, 1]."""
        return torch.sigmoid(self.body(x)[:, 0])  # [B, H, W]

"""U-Net for semantic segmentation, shaped for the analytic GradCAM fast path.

The decoder ends at 1/`head_stride` of the input resolution in a feature map A (the GradCAM
target layer), then a 1x1 classifier head and a bilinear upsampling to full size:
    logits = Up(W · A + b)
so the class-agnostic GradCAM weights are analytic (DESIGN.md, segxal.eem.gradcam).
Ronneberger et al., "U-Net", MICCAI 2015.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segxal.labels import NUM_CLASSES


@dataclass
class UNetConfig:
    width: int = 32  # channels of the first level; doubles per level
    depth: int = 4  # number of down-sampling levels below the stem
    num_classes: int = NUM_CLASSES
    in_channels: int = 3
    head_stride: int = 2  # A and the head run at 1/2 resolution: ~4x cheaper than full-res

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or UNetConfig()
        if cfg.head_stride not in (1, 2):
            raise ValueError("head_stride must be 1 or 2")
        w = cfg.width
        stem_stride = cfg.head_stride
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, w, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(w), nn.ReLU(inplace=True), _block(w, w))
        chans = [w * 2 ** i for i in range(cfg.depth + 1)]  # [w, 2w, 4w, ...]
        self.down = nn.ModuleList(_block(chans[i], chans[i + 1]) for i in range(cfg.depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(cfg.depth)))
        self.dec = nn.ModuleList(_block(chans[i] * 2, chans[i]) for i in reversed(range(cfg.depth)))
        self.head = nn.Conv2d(w, cfg.num_classes, 1)

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output is A, the default GradCAM target layer."""
        return self.dec[-1]

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return self.cfg.head_stride * 2 ** self.cfg.depth

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> A [B, width, H/s, W/s]."""
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"input H, W must be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        skips = []
        h = self.stem(x)
        for blk in self.down:
            skips.append(h)
            h = blk(F.max_pool2d(h, 2))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            h = dec(torch.cat([up(h), skip], dim=1))
        return h

    def upsample(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.head_stride == 1:
            return z
        return F.interpolate(z, scale_factor=self.cfg.head_stride, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> logits [B, C, H, W]."""
        return self.upsample(self.head(self.forward_features(x)))

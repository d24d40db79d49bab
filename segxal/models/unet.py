"""U-Net for semantic segmentation, shaped for the analytic GradCAM fast path.

The decoder ends at 1/`head_stride` of the input resolution in a feature map A, then a 1x1
classifier head and a bilinear upsampling to full size:
    logits = Up(W · A + b)
The shipped GradCAM targets the bottleneck (the deepest encoder block); its gradient is written out
through the decoder's layers (segxal.eem.gradcam.bottleneck_weights), so it stays in the exported graph.
Ronneberger et al., "U-Net", MICCAI 2015.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segxal.labels import NUM_CLASSES

# Where UNet.embed (and the exported `embedding` output) pools its features; "dec<i>" is the i-th
# decoder stage (1 = coarsest), "head_input" the last one (A). Measured by bench/embedding_layers.py
# (300 val frames of data/synth-128x256, 60 drive logs; width 16 trained 8 and 16 epochs): the head
# input puts a frame's nearest neighbour in its own drive log most often (0.86 / 0.88; bottleneck
# 0.59 / 0.72) with the best log silhouette (+0.29 / +0.31), scene 1-NN within 0.06 of the best layer.
EMBEDDING_LAYER = "head_input"


@dataclass
class UNetConfig:
    width: int = 32  # channels of the first level; doubles per level
    depth: int = 4  # number of down-sampling levels below the stem
    num_classes: int = NUM_CLASSES
    in_channels: int = 3
    head_stride: int = 2  # A and the head run at 1/2 resolution: ~4x cheaper than full-res
    # Channel dropout on the bottleneck as the decoder reads it (0 = off, the default). Identity in
    # eval mode; the AL benchmark's BALD arm samples it (MC dropout, Gal & Ghahramani 2016).
    dropout: float = 0.0

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
        self.bottleneck_dropout = nn.Dropout2d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    @property
    def target_layer(self) -> nn.Module:
        """The shipped GradCAM target layer: the bottleneck (see bottleneck_layer)."""
        return self.bottleneck_layer

    @property
    def head_input_layer(self) -> nn.Module:
        """The module whose output is A, the head's input (the analytic, head-input GradCAM layer)."""
        return self.dec[-1]

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return self.cfg.head_stride * 2 ** self.cfg.depth

    @property
    def bottleneck_layer(self) -> nn.Module:
        """The deepest encoder block: its output B is the shipped GradCAM target (segxal.eem.gradcam)."""
        return self.down[-1]

    @property
    def embedding_layers(self) -> tuple[str, ...]:
        """Layers embed() can pool: the bottleneck, each decoder stage but the last, the head input."""
        return ("bottleneck", *(f"dec{i}" for i in range(1, self.cfg.depth)), "head_input")

    def embedding_module(self, layer: str | None = None) -> nn.Module:
        """The leaf module whose output embed() pools: the last ReLU of the layer's block, so a forward
        hook on it fires however the block is run (whole, or layer by layer as the written-out VJP of
        segxal.eem.gradcam runs the decoder).

        Raises:
            ValueError: an unknown layer name.
        """
        layer = layer or EMBEDDING_LAYER
        if layer == "bottleneck":
            return self.down[-1][-1]
        if layer == "head_input":
            return self.dec[-1][-1]
        if layer in self.embedding_layers:
            return self.dec[int(layer[3:]) - 1][-1]
        raise ValueError(f"unknown embedding layer {layer!r}; expected one of {self.embedding_layers}")

    @staticmethod
    def pool_embedding(features: torch.Tensor) -> torch.Tensor:
        """Features [B, K, h, w] -> global average pool, L2-normalised: [B, K] (unit rows)."""
        return F.normalize(features.mean(dim=(2, 3)), p=2.0, dim=1)

    def embed(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Frame embeddings: x [B, 3, H, W] (normalised, as forward takes it) -> [B, D], each row
        L2-normalised; the features the exported graph's `embedding` output carries (segxal.export).

        Args:
            x: normalised images.
            layer: one of embedding_layers; None: EMBEDDING_LAYER (what the export ships).

        Raises:
            ValueError: an unknown layer, or H, W not multiples of `multiple`.
        """
        captured: list[torch.Tensor] = []
        handle = self.embedding_module(layer).register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            bottleneck, skips = self.encode(x)
            if not captured:  # a decoder layer: run the decoder (the head is not needed)
                self.decode(bottleneck, skips)
        finally:
            handle.remove()
        return self.pool_embedding(captured[0])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, 3, H, W] -> (bottleneck B [B, width*2^depth, H/(s*2^depth), W/(s*2^depth)], skips,
        shallowest first)."""
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"input H, W must be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        skips = []
        h = self.stem(x)
        for blk in self.down:
            skips.append(h)
            h = blk(F.max_pool2d(h, 2))
        return h, skips

    def decode(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """(B, skips) from encode -> A [B, width, H/s, W/s], the head's input."""
        h = self.bottleneck_dropout(bottleneck)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            h = dec(torch.cat([up(h), skip], dim=1))
        return h

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> A [B, width, H/s, W/s]."""
        return self.decode(*self.encode(x))

    def upsample(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.head_stride == 1:
            return z
        return F.interpolate(z, scale_factor=self.cfg.head_stride, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> logits [B, C, H, W]."""
        return self.upsample(self.head(self.forward_features(x)))

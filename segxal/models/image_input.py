"""The two pieces every ONNX export wraps a model in: uint8 RGB in, normalised in the graph
(ImageInput), and eval mode for the duration of the export (EvalMode). Shared by the project's own
exports (segxal.export) and the export of models from elsewhere (segxal.models.external), which
is why they live below both."""
from __future__ import annotations

import torch
from torch import nn

from segxal.data.cityscapes import MEAN, STD

__all__ = ["EvalMode", "ImageInput"]


class ImageInput(nn.Module):
    """uint8 RGB [B, H, W, 3] -> normalised float [B, 3, H, W] -> the wrapped model.

    Args:
        inner: the model taking normalised float [B, 3, H, W].
        mean, std: per-channel statistics of the normalisation (default: Cityscapes/ImageNet).
    """

    def __init__(self, inner: nn.Module, mean=MEAN, std=STD):
        super().__init__()
        self.inner = inner
        # scale folded into the statistics: (x/255 - m)/s = x * (1/(255 s)) - m/s
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor):
        x = image.permute(0, 3, 1, 2).float()  # [B, 3, H, W]
        return self.inner(x * self.scale - self.shift)


class EvalMode:
    """Put a model in eval mode for the export, restore its mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)

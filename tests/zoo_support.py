"""Shared by the tests of models from elsewhere: the architectures of segxal.models.zoo exported once per
session (logits ONNX as a team would export it, then segxal.graph.add_eem)."""
from __future__ import annotations

import numpy as np
import torch

H, W = 64, 128
NUM_CLASSES = 5
ZOO = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "smp_unet", "smp_fpn",
       "segformer")


def images_nchw(batch: int, seed: int) -> torch.Tensor:
    """Smooth random images [B, 3, H, W] (blocks of 8 x 8), already normalised."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randn(batch, 3, H // 8, W // 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(H, W), mode="nearest")

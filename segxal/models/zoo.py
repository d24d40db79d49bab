"""Architectures no one here wrote, at small sizes with random weights (no download exists here),
each with its import path, arguments and the GradCAM target layer(s) a pytorch-grad-cam user
would name: the input of the final linear classifier. Shared by the tests and bench/any_model.py.

The classifier of each is re-initialised with N(0, 1) weights and zero bias: default inits
predict one class almost everywhere, which makes every CAM comparison trivial.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from segxal.models.external import build_model


@dataclass(frozen=True)
class ZooEntry:
    import_path: str
    kwargs: dict
    classifier: Callable[[nn.Module], list[nn.Conv2d]]  # the final linear classifier conv(s)
    target_layers: Callable[[nn.Module], list[nn.Module]]  # their inputs, as modules to hook
    prepare: Callable[[nn.Module], None] = field(default=lambda m: None)  # expose hook points


def _tap_lraspp(model: nn.Module) -> None:
    """LR-ASPP's classifier inputs are not module outputs: put an Identity in front of each
    classifier conv so pytorch-grad-cam can hook them (the computation is unchanged)."""
    head = model.classifier
    if not isinstance(head.low_classifier, nn.Sequential):
        head.low_classifier = nn.Sequential(nn.Identity(), head.low_classifier)
        head.high_classifier = nn.Sequential(nn.Identity(), head.high_classifier)


def _tv(name: str) -> str:
    return f"torchvision.models.segmentation.{name}"


def entries(num_classes: int) -> dict[str, ZooEntry]:
    """name -> ZooEntry for the architectures teams bring (tested here), with `num_classes` outputs."""
    tv = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    smp = {"encoder_name": "resnet18", "encoder_weights": None, "classes": num_classes}
    return {
        "fcn_resnet50": ZooEntry(_tv("fcn_resnet50"), {**tv, "aux_loss": False},
                                 lambda m: [m.classifier[4]], lambda m: [m.classifier[3]]),
        "deeplabv3_mobilenet_v3_large": ZooEntry(_tv("deeplabv3_mobilenet_v3_large"), {**tv, "aux_loss": False},
                                                 lambda m: [m.classifier[4]], lambda m: [m.classifier[3]]),
        "lraspp_mobilenet_v3_large": ZooEntry(
            _tv("lraspp_mobilenet_v3_large"), tv,
            lambda m: [m.classifier.low_classifier[1], m.classifier.high_classifier[1]],
            lambda m: [m.classifier.low_classifier[0], m.classifier.high_classifier[0]], _tap_lraspp),
        "smp_unet": ZooEntry("segmentation_models_pytorch.Unet", smp,
                             lambda m: [m.segmentation_head[0]], lambda m: [m.decoder]),
        "smp_fpn": ZooEntry("segmentation_models_pytorch.FPN", smp,
                            lambda m: [m.segmentation_head[0]], lambda m: [m.decoder]),
        "segformer": ZooEntry("transformers.SegformerForSemanticSegmentation",
                              {"num_labels": num_classes, "hidden_sizes": [16, 32, 64, 128],
                               "decoder_hidden_size": 64, "depths": [1, 1, 1, 1]},
                              lambda m: [m.decode_head.classifier], lambda m: [m.decode_head.dropout]),
    }


def build(name: str, num_classes: int, seed: int = 0) -> tuple[nn.Module, ZooEntry]:
    """A zoo model in eval mode with a re-initialised classifier (see the module docstring).

    Raises:
        KeyError: unknown name.
    """
    entry = entries(num_classes)[name]
    torch.manual_seed(seed)
    model = build_model(entry.import_path, entry.kwargs)
    entry.prepare(model)
    for conv in entry.classifier(model):
        nn.init.normal_(conv.weight, std=1.0)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return model.eval(), entry


class DepthOutput(nn.Module):
    """A Hugging Face depth model -> predicted_depth [B, H, W] (a plain tensor, for export)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).predicted_depth  # [B, H, W]


def depth_anything_small(seed: int = 0) -> nn.Module:
    """DepthAnythingForDepthEstimation on a 4-layer, 32-wide Dinov2 backbone (patch 14): input
    sides must be multiples of 14; relative inverse depth out."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=518, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32, 32, 32],
                              fusion_hidden_size=32, head_hidden_size=16)
    return DepthOutput(DepthAnythingForDepthEstimation(cfg)).eval()


def dpt_small(seed: int = 0, image_size: int = 64) -> nn.Module:
    """DPTForDepthEstimation with a 4-layer, 32-wide ViT (patch 16) at image_size x image_size."""
    from transformers import DPTConfig, DPTForDepthEstimation
    torch.manual_seed(seed)
    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                    image_size=image_size, patch_size=16, neck_hidden_sizes=[16, 32, 32, 32], fusion_hidden_size=32,
                    backbone_out_indices=[0, 1, 2, 3], head_hidden_size=16)
    return DepthOutput(DPTForDepthEstimation(cfg)).eval()

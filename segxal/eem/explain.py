"""One forward pass that returns what the EEM needs: labels, EBU, GradCAM and p_max.

This module is what the ONNX export (segxal.export) traces and what the in-process active-learning
loop calls, so both see the same outputs in the same order, OUTPUT_NAMES. Full-resolution logits
never leave the graph (docs/design.md, "Services and data flow": model wire format).

References:
    SegXAL, arXiv 2408.04482 (EBU + GradCAM in the EEM); Selvaraju et al., Grad-CAM, ICCV 2017;
    docs/design.md, "The EEM as shipped" (segxal.eem.gradcam.explained_forward: the bottleneck CAM).
"""
from __future__ import annotations

import torch
from torch import nn

from segxal.eem.ebu import prediction_statistics
from segxal.eem.gradcam import (DEFAULT_UNET_CAM_METHOD, DEFAULT_UNET_CAM_TARGET, UNET_CAM_TARGETS, analytic_cam,
                                check_cam_method, check_class_weights, describe_target, explained_forward)
from segxal.errors import InvalidInput
from segxal.models.unet import UNet

INPUT_NAME = "image"
# labels uint8 [B, H, W] (trainIds); ebu, cam, pmax [B, H, W] float32 (float16 with half_outputs)
OUTPUT_NAMES = ("labels", "ebu", "cam", "pmax")
# where the CAM is taken: the bottleneck (shipped; semantic, stays alive as the model trains) or the
# head's input (analytic and cheapest, but a linear function of the logits that collapses to zero)
CAM_LAYERS = ("bottleneck", "head")


class ExplainedSegmenter(nn.Module):
    """A UNet plus in-graph explanations: forward(x) -> (labels, ebu, cam, pmax), see OUTPUT_NAMES.

    The CAM is the GradCAM of `cam_target` at the bottleneck (model.bottleneck_layer), its gradient
    written out through the decoder (segxal.eem.gradcam.explained_forward), so it needs no autograd
    and stays in the exported graph; cam_layer="head" gives the analytic head-input CAM instead. Run
    it under torch.inference_mode() (nothing here needs gradients) and with the model in eval mode.
    """

    def __init__(self, model: UNet, class_weights: torch.Tensor | None = None, half_outputs: bool = False,
                 cam_layer: str = "bottleneck", cam_target: str = DEFAULT_UNET_CAM_TARGET,
                 cam_method: str = DEFAULT_UNET_CAM_METHOD):
        """
        Args:
            model: the segmentation model; its head is a 1x1 conv after forward_features, then upsample.
            class_weights: optional GradCAM class weights w_c [C] (segxal.eem.gradcam.safety_class_weights).
            half_outputs: return ebu, cam and pmax as float16, as the exported ONNX graph carries them.
            cam_layer: one of CAM_LAYERS.
            cam_target: the bottleneck CAM's target, one of segxal.eem.gradcam.UNET_CAM_TARGETS (the
                head-input CAM is class-agnostic).
            cam_method: the bottleneck CAM's channel weighting, one of segxal.eem.gradcam.CAM_METHODS.

        Raises:
            InvalidInput: class_weights has the wrong shape or values, an unknown cam_layer or target.
        """
        super().__init__()
        if cam_layer not in CAM_LAYERS:
            raise InvalidInput(f"cam_layer must be one of {CAM_LAYERS}, got {cam_layer!r}")
        if cam_target not in UNET_CAM_TARGETS:
            raise InvalidInput(f"cam_target must be one of {UNET_CAM_TARGETS}, got {cam_target!r}")
        check_cam_method(cam_method)
        self.cam_layer, self.cam_target, self.cam_method = cam_layer, cam_target, cam_method
        check_class_weights(class_weights, model.head.out_channels)
        self.model = model
        self.half_outputs = half_outputs
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float().clone())

    @property
    def cam_description(self) -> str:
        """The served config's cam_layer: "bottleneck (<target>)" ("bottleneck (<target>, <method>)"
        for a method other than GradCAM), or "head"."""
        if self.cam_layer != "bottleneck":
            return self.cam_layer
        return f"bottleneck ({describe_target(self.cam_target, self.cam_method)})"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, 3, H, W] -> (labels uint8, ebu, cam, pmax), each [B, H, W]; see OUTPUT_NAMES."""
        if self.cam_layer == "bottleneck":
            logits, cam = explained_forward(self.model, x, self.class_weights, self.cam_target,
                                            self.cam_method)  # [B, C, H, W], [B, H, W]
            # classes last: ONNX Runtime's reductions over a strided class axis transpose around themselves
            # (one Transpose instead; 19 x 256 x 512: 12 against 18-25 ms, docs/cam.md, Cost)
            labels, ebu, pmax = prediction_statistics(logits.movedim(1, -1), dim=-1)  # [B, H, W] each, int64
        else:
            features = self.model.forward_features(x)  # [B, K, H/s, W/s]
            logits = self.model.upsample(self.model.head(features))  # [B, C, H, W]
            labels, ebu, pmax = prediction_statistics(logits, dim=1)  # [B, H, W] each, labels int64
            cam = analytic_cam(features, self.model.head.weight, labels, self.class_weights)  # [B, H, W]
        if self.half_outputs:
            ebu, cam, pmax = ebu.half(), cam.half(), pmax.half()
        return labels.to(torch.uint8), ebu, cam, pmax

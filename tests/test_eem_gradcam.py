"""GradCAM (segxal.eem.gradcam): against pytorch-grad-cam 1.5.7, and the analytic fast path
against autograd, on a tiny random U-Net."""
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from segxal.errors import InvalidInput
from segxal.eem.gradcam import (analytic_cam, analytic_weights, autograd_weights, gradcam_autograd,
                                safety_class_weights)
from segxal.labels import NAME_TO_TRAIN_ID, NUM_CLASSES
from segxal.models.unet import UNet, UNetConfig


def _unet(head_stride: int = 2, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(width=8, depth=2, head_stride=head_stride)).eval()
    # default init predicts one class everywhere; a wider head predicts ~6 classes, cars and persons included
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.zeros_(model.head.bias)
    return model


def _images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 128, generator=torch.Generator().manual_seed(seed))  # [B, 3, H, W]


class _AllPredictedClassesTarget:
    """Class-agnostic target for pytorch-grad-cam: sum over predicted classes c of w_c times
    SemanticSegmentationTarget(c, M_c), i.e. sum_c w_c (model_output[c] * mask_c).sum()."""

    def __init__(self, labels: np.ndarray, weights: np.ndarray):
        self.terms = [(float(weights[c]), SemanticSegmentationTarget(int(c), (labels == c).astype(np.float32)))
                      for c in np.unique(labels)]

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return sum(w * term(model_output) for w, term in self.terms)


def _weights(kind: str) -> torch.Tensor | None:
    return None if kind == "uniform" else safety_class_weights(3.0)


@pytest.mark.parametrize("head_stride", [1, 2])
@pytest.mark.parametrize("weights", ["uniform", "safety"])
@pytest.mark.parametrize("layer", ["target_layer", "dec0"])
def test_autograd_agrees_with_pytorch_grad_cam(head_stride, weights, layer):
    model, x = _unet(head_stride), _images()
    target_layer = model.target_layer if layer == "target_layer" else model.dec[0]  # dec0: A at 1/(2s)
    class_weights = _weights(weights)
    ours = gradcam_autograd(model, target_layer, x, class_weights)  # [B, H, W]

    with torch.no_grad():
        labels = model(x).argmax(1).numpy()  # [B, H, W]
    w = np.ones(NUM_CLASSES) if class_weights is None else class_weights.numpy()
    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        reference = cam(input_tensor=x, targets=[_AllPredictedClassesTarget(lab, w) for lab in labels])

    assert ours.shape == reference.shape == (2, 64, 128)
    assert np.abs(ours.numpy() - reference).max() < 1e-4
    assert reference.max() > 0.99  # not vacuous: a real map, scaled to [0, 1]


@pytest.mark.parametrize("head_stride", [1, 2])
@pytest.mark.parametrize("weights", ["uniform", "safety"])
def test_analytic_agrees_with_autograd(head_stride, weights):
    model, x = _unet(head_stride), _images(batch=3)
    class_weights = _weights(weights)
    alpha_ref, features_ref, labels = autograd_weights(model, model.target_layer, x, class_weights)
    cam_ref = gradcam_autograd(model, model.target_layer, x, class_weights)
    with torch.no_grad():
        features = model.forward_features(x)  # [B, K, h, w]
        alpha = analytic_weights(model.head.weight, labels, features.shape[-2:], class_weights)  # [B, K]
        cam = analytic_cam(features, model.head.weight, labels, class_weights)  # [B, H, W]

    assert torch.equal(features, features_ref)
    assert alpha.shape == (3, 8) and alpha.abs().max() > 1e-2
    assert len(labels.unique()) >= 4
    assert (alpha - alpha_ref).abs().max() < 1e-5
    assert (cam - cam_ref).abs().max() < 1e-5
    # the per-image weights differ between images: one backward pass did not mix the batch
    assert (alpha[0] - alpha[1]).abs().max() > 1e-3


def test_class_weights_change_the_map():
    model, x = _unet(), _images()
    with torch.no_grad():
        features = model.forward_features(x)
        labels = model(x).argmax(1)
        plain = analytic_cam(features, model.head.weight, labels)
        weighted = analytic_cam(features, model.head.weight, labels, safety_class_weights(10.0))
        ones = analytic_cam(features, model.head.weight, labels, torch.ones(NUM_CLASSES))
    assert torch.equal(plain, ones)
    assert (plain - weighted).abs().max() > 1e-3


def test_safety_class_weights():
    w = safety_class_weights(2.5)
    assert w.shape == (NUM_CLASSES,)
    assert w[NAME_TO_TRAIN_ID["person"]] == 2.5 and w[NAME_TO_TRAIN_ID["road"]] == 1.0
    with pytest.raises(InvalidInput, match="unknown class names"):
        safety_class_weights(names=("pedestrian",))
    with pytest.raises(InvalidInput, match=">= 0"):
        safety_class_weights(-1.0)


def test_autograd_works_frozen_under_no_grad_and_inference_mode():
    model, x = _unet(), _images()
    expected = gradcam_autograd(model, model.target_layer, x)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # the caller's no_grad must not break the backward pass either
        frozen = gradcam_autograd(model, model.target_layer, x)
    with torch.inference_mode():  # nor inference_mode, with an inference tensor as input
        inferred = gradcam_autograd(model, model.target_layer, x.clone())
    assert not model.training
    assert torch.equal(expected, frozen) and torch.equal(expected, inferred)
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_are_rejected():
    model, x = _unet(), _images()
    with pytest.raises(InvalidInput, match="shape"):
        gradcam_autograd(model, model.target_layer, x, torch.ones(3))
    with pytest.raises(InvalidInput, match="did not run"):
        gradcam_autograd(model, torch.nn.Conv2d(1, 1, 1), x)
    with pytest.raises(InvalidInput, match="finite and >= 0"):
        analytic_weights(model.head.weight, torch.zeros(1, 4, 4, dtype=torch.long), (2, 2),
                         torch.full((NUM_CLASSES,), -1.0))

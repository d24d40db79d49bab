"""GradCAM (segxal.eem.gradcam): against pytorch-grad-cam 1.5.7, the analytic head-input path and the
written-out bottleneck VJP against autograd, on tiny random and briefly trained U-Nets."""
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from segxal.errors import InvalidInput
from segxal.eem.gradcam import (DEFAULT_UNET_CAM_TARGET, UNET_CAM_TARGETS, analytic_cam, analytic_weights,
                                autograd_weights, bilinear_up2_adjoint, bottleneck_weights, explained_forward,
                                gradcam_autograd, safety_class_weights)
from segxal.eem.health import cam_degenerate
from segxal.labels import NAME_TO_TRAIN_ID, NUM_CLASSES
from segxal.models.unet import UNet, UNetConfig


def _unet(head_stride: int = 2, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(width=8, depth=2, head_stride=head_stride)).eval()
    # default init predicts one class everywhere; a wider head predicts ~6 classes, cars and persons included
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.zeros_(model.head.bias)
    # BatchNorm statistics as after training (not 0 / 1), so the written-out BN adjoint is exercised
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model


def _images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 128, generator=torch.Generator().manual_seed(seed))  # [B, 3, H, W]


class _AllPredictedClassesTarget:
    """The U-Net's targets for pytorch-grad-cam: sum over predicted classes c of w_c times
    SemanticSegmentationTarget(c, M_c), i.e. sum_c w_c (model_output[c] * mask_c).sum() (class-agnostic),
    each term divided by n_c = |M_c| (class-balanced)."""

    def __init__(self, labels: np.ndarray, weights: np.ndarray, target: str = "class-agnostic"):
        self.terms = [(float(weights[c]) / (float((labels == c).sum()) if target == "class-balanced" else 1.0),
                       SemanticSegmentationTarget(int(c), (labels == c).astype(np.float32)))
                      for c in np.unique(labels)]

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return sum(w * term(model_output) for w, term in self.terms)


def _weights(kind: str) -> torch.Tensor | None:
    return None if kind == "uniform" else safety_class_weights(3.0)


@pytest.mark.parametrize("head_stride", [1, 2])
@pytest.mark.parametrize("weights", ["uniform", "safety"])
@pytest.mark.parametrize("layer", ["head_input_layer", "dec0"])
@pytest.mark.parametrize("target", UNET_CAM_TARGETS)
def test_autograd_agrees_with_pytorch_grad_cam(head_stride, weights, layer, target):
    model, x = _unet(head_stride), _images()
    target_layer = model.head_input_layer if layer == "head_input_layer" else model.dec[0]  # dec0: 1/(2s)
    class_weights = _weights(weights)
    ours = gradcam_autograd(model, target_layer, x, class_weights, target)  # [B, H, W]

    with torch.no_grad():
        labels = model(x).argmax(1).numpy()  # [B, H, W]
    assert all(len(np.unique(lab)) > 1 for lab in labels)  # the targets differ
    w = np.ones(NUM_CLASSES) if class_weights is None else class_weights.numpy()
    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        reference = cam(input_tensor=x, targets=[_AllPredictedClassesTarget(lab, w, target) for lab in labels])

    assert ours.shape == reference.shape == (2, 64, 128)
    assert np.abs(ours.numpy() - reference).max() < 1e-4
    assert reference.max() > 0.99  # not vacuous: a real map, scaled to [0, 1]


@pytest.mark.parametrize("head_stride", [1, 2])
@pytest.mark.parametrize("weights", ["uniform", "safety"])
def test_analytic_agrees_with_autograd(head_stride, weights):
    model, x = _unet(head_stride), _images(batch=3)
    class_weights = _weights(weights)
    alpha_ref, features_ref, labels = autograd_weights(model, model.head_input_layer, x, class_weights,
                                                       "class-agnostic")  # the analytic path's target
    cam_ref = gradcam_autograd(model, model.head_input_layer, x, class_weights, "class-agnostic")
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


# --- the shipped CAM: class-agnostic GradCAM at the bottleneck, gradient written out in-graph ------

@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 5, 2, 2), (3, 2, 7, 3)])
def test_bilinear_up2_adjoint_is_the_transpose_of_upsampling(shape):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(*shape, dtype=torch.float64, generator=gen)  # [B, K, h, w]
    g = torch.randn(*shape[:2], 2 * shape[2], 2 * shape[3], dtype=torch.float64, generator=gen)
    up = torch.nn.functional.interpolate(u, scale_factor=2, mode="bilinear", align_corners=False)
    assert abs(float((up * g).sum() - (u * bilinear_up2_adjoint(g)).sum())) < 1e-10  # <Up u, g> = <u, Up^T g>


@pytest.mark.parametrize("head_stride", [1, 2])
@pytest.mark.parametrize("weights", ["uniform", "safety"])
@pytest.mark.parametrize("target", UNET_CAM_TARGETS)
def test_bottleneck_weights_equal_autograd(head_stride, weights, target):
    model, x = _unet(head_stride), _images(batch=3)
    class_weights = _weights(weights)
    alpha_ref, features_ref, labels = autograd_weights(model, model.bottleneck_layer, x, class_weights, target)
    with torch.no_grad():
        logits, bottleneck, alpha = bottleneck_weights(model, x, class_weights, target)
        plain = model(x)
    assert torch.equal(logits, plain) and torch.equal(bottleneck, features_ref)
    scale = 1.0 if target == "class-agnostic" else 64 * 128  # class-balanced divides by n_c (pixels)
    assert alpha.shape == alpha_ref.shape == (3, 32) and alpha_ref.abs().max() * scale > 1e-3
    assert (alpha - alpha_ref).abs().max() < 1e-5 * alpha_ref.abs().max()
    assert (alpha[0] - alpha[1]).abs().max() * scale > 1e-4  # per image, the batch is not mixed


def test_bottleneck_rejects_training_mode_batchnorm():
    model, x = _unet(), _images()
    model.train()
    with pytest.raises(InvalidInput, match="eval mode"):
        bottleneck_weights(model, x)


@pytest.fixture(scope="module")
def trained(tiny_dataset):
    """A tiny U-Net trained for a few epochs on the synthetic frames, with the CAM health per epoch."""
    from segxal.data.cityscapes import SegDataset, list_frames
    from segxal.train import TrainConfig, train_segmentation
    train = SegDataset(list_frames(tiny_dataset, "train", True))
    val = SegDataset(list_frames(tiny_dataset, "val", True))
    x = torch.stack([torch.as_tensor(val[i][0]) for i in range(len(val))])  # [8, 3, 64, 128]
    torch.manual_seed(0)
    model = UNet(UNetConfig(width=8, depth=2))
    health = []
    for epoch in range(6):
        train_segmentation(model, train, TrainConfig(epochs=1, seed=epoch, batch_size=4, progress=False))
        model.eval()
        with torch.no_grad():
            head = analytic_cam(model.forward_features(x), model.head.weight, model(x).argmax(1))
            per_target = {t: explained_forward(model, x, target=t)[1] for t in UNET_CAM_TARGETS}
        health.append({"head": cam_degenerate(head).float().mean().item(),
                       **{t: cam_degenerate(cam).float().mean().item() for t, cam in per_target.items()}})
    return model, x, health


def test_bottleneck_cam_agrees_with_pytorch_grad_cam_on_a_trained_model(trained):
    model, x, _ = trained
    with torch.no_grad():
        _, ours = explained_forward(model, x)  # [B, H, W]
        labels = model(x).argmax(1).numpy()
    with GradCAM(model=model, target_layers=[model.bottleneck_layer]) as cam:  # the shipped target
        reference = cam(input_tensor=x, targets=[_AllPredictedClassesTarget(lab, np.ones(NUM_CLASSES),
                                                                            DEFAULT_UNET_CAM_TARGET)
                                                 for lab in labels])
    assert np.abs(ours.numpy() - reference).max() < 1e-4
    assert (reference.reshape(len(x), -1).max(1) > 0.99).mean() >= 0.95  # real maps, not vacuous


def test_bottleneck_hirescam_agrees_with_pytorch_grad_cams_hirescam_on_a_trained_model(trained):
    """The written-out VJP's per-location gradient gives HiResCAM (method "hirescam") as the
    independent reference computes it, and it differs from the GradCAM of the same target."""
    model, x, _ = trained
    with torch.no_grad():
        _, ours = explained_forward(model, x, method="hirescam")  # [B, H, W]
        _, grad_cam = explained_forward(model, x)
        labels = model(x).argmax(1).numpy()
    with HiResCAM(model=model, target_layers=[model.bottleneck_layer]) as cam:
        reference = cam(input_tensor=x, targets=[_AllPredictedClassesTarget(lab, np.ones(NUM_CLASSES),
                                                                            DEFAULT_UNET_CAM_TARGET)
                                                 for lab in labels])
    assert np.abs(ours.numpy() - reference).max() < 1e-4
    assert (reference.reshape(len(x), -1).max(1) > 0.99).mean() >= 0.95  # real maps, not vacuous
    assert float((ours - grad_cam).abs().max()) > 0.1


def test_an_unknown_cam_method_is_a_clear_error():
    model, x = _unet(), _images()
    with pytest.raises(InvalidInput, match="CAM method must be one of"):
        explained_forward(model, x, method="scorecam")


@pytest.mark.slow
@pytest.mark.parametrize("target", [
    "class-agnostic",
    # measured 2026-12-07: dead on 2 of the 8 frames after epoch 2 (0 after the others); the shipped
    # target since the benchmark preferred it (bench/results/cam_targets/); a dead CAM leaves a
    # frame's multiplicative EEM at its EBU. strict: passing means this note is out of date
    pytest.param("class-balanced", marks=pytest.mark.xfail(strict=True, reason="a small class can turn the "
                                                                                "balanced target's CAM off"))])
def test_cam_does_not_degenerate_as_the_model_trains(trained, target):
    """The bottleneck CAM keeps a spatial map on >= 95 % of frames after every epoch."""
    _, _, health = trained
    assert all(h[target] <= 0.05 for h in health), health


def test_cam_degenerate_flags_zero_and_constant_maps():
    maps = torch.zeros(3, 4, 4)
    maps[1] = 0.7  # constant
    maps[2, 1, 1] = 1.0  # a real map
    assert cam_degenerate(maps).tolist() == [True, True, False]
    assert cam_degenerate(maps[2].numpy()) is False and cam_degenerate(maps.numpy()).tolist() == [True, True, False]

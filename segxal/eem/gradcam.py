"""GradCAM over the predicted classes for segmentation: the autograd reference, the analytic
head-input path and the shipped bottleneck CAM with its gradient written out (no autograd, so it
exports to ONNX).

Shipped definition: target layer = the U-Net's bottleneck (deepest encoder block). At the
head's input every GradCAM is a linear function of the logits and the class-agnostic map collapses to
zero as training makes the classifier discriminative; see the section "The shipped definition" below.

Definition: predicted masks M_c = {i : argmax_c z(i) = c}, target
    T = sum_c w_c * sum_{i in M_c} z_c(i)          class-agnostic (the paper's; w_c = 1 unless given)
    T = sum_c (w_c / n_c) * sum_{i in M_c} z_c(i)  class-balanced (n_c = |M_c|; the bottleneck default)
one backward pass for all classes and the whole batch (each image's T only depends on that image,
so the gradient of the batch sum is the per-image gradient), weights
    alpha_k = mean_{h,w} dT/dA_k
for the target layer A [B, K, h, w], and map CAM = ReLU(sum_k alpha_k A_k).

Scaling, exactly as pytorch-grad-cam 1.5.7 (`BaseCAM.compute_cam_per_layer` then
`aggregate_multi_layers`, both through `utils.image.scale_cam_image`), so that both agree:
ReLU -> per image x <- x - min(x); x <- x / (max(x) + 1e-7) -> bilinear resize to H x W
(torch `align_corners=False`, which is cv2 INTER_LINEAR's half-pixel convention) -> the same
min-max again. An all-zero CAM stays all zero.

Fast path (class-agnostic): when A is the input of a 1x1 classifier head followed by a bilinear upsampling,
z = Up(W A + b) as in segxal.models.unet.UNet, every output pixel's interpolation weights sum to 1, so
    alpha_k = (1 / |A|) * sum_c w_c * W_ck * n_c
with n_c the number of full-resolution pixels predicted as c and |A| = h * w. No backward pass:
the CAM is a weighted sum of A and can be an output of the exported ONNX graph.

References:
    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.
    SegXAL, arXiv 2408.04482 (class-agnostic GradCAM in the EEM).
    jacobgil/pytorch-grad-cam: `SemanticSegmentationTarget` is the per-class term of T.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segxal.errors import InvalidInput
from segxal.labels import NAME_TO_TRAIN_ID, NUM_CLASSES, SAFETY_CRITICAL

_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image adds this to the max


def safety_class_weights(critical_weight: float = 2.0, names: Sequence[str] = SAFETY_CRITICAL,
                         num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Per-class GradCAM weights w_c: `critical_weight` for safety-critical classes, 1 elsewhere.

    2.0 is a starting point, not a tuned value; the benchmark decides whether weighting helps.

    Args:
        critical_weight: weight of the classes in `names` (>= 0).
        names: Cityscapes class names to up-weight (default segxal.labels.SAFETY_CRITICAL).
        num_classes: length of the returned vector.

    Returns:
        float32 tensor [num_classes].

    Raises:
        InvalidInput: a negative or non-finite weight, or a name that is not a Cityscapes class.
    """
    if not (critical_weight >= 0 and critical_weight < float("inf")):
        raise InvalidInput(f"critical_weight must be a finite number >= 0, got {critical_weight}")
    unknown = [n for n in names if n not in NAME_TO_TRAIN_ID or NAME_TO_TRAIN_ID[n] >= num_classes]
    if unknown:
        raise InvalidInput(f"unknown class names {unknown}; expected names from segxal.labels.CLASS_NAMES")
    weights = torch.ones(num_classes, dtype=torch.float32)  # [C]
    weights[[NAME_TO_TRAIN_ID[n] for n in names]] = critical_weight
    return weights


def check_class_weights(class_weights: torch.Tensor | None, num_classes: int) -> None:
    """Validate optional GradCAM class weights w_c.

    Skipped while tracing for ONNX (shape checks would become graph constants with warnings): the
    eager call before export, or ExplainedSegmenter's constructor, has checked them.

    Args:
        class_weights: None (all 1) or a tensor [num_classes].
        num_classes: C of the model.

    Raises:
        InvalidInput: wrong shape, or a negative or non-finite weight.
    """
    if class_weights is None or torch.jit.is_tracing():
        return
    if class_weights.shape != (num_classes,):
        raise InvalidInput(f"class_weights must have shape [{num_classes}], got {tuple(class_weights.shape)}")
    if not (torch.isfinite(class_weights).all() and (class_weights >= 0).all()):
        raise InvalidInput("class_weights must be finite and >= 0")


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per image: cam - min, then / (max + 1e-7), as pytorch-grad-cam's scale_cam_image. cam [B, h, w]."""
    cam = cam - cam.flatten(1).amin(1)[:, None, None]  # [B, h, w]
    return cam / (cam.flatten(1).amax(1)[:, None, None] + _EPS)  # [B, h, w]


# How a CAM weighs the layer's channels, A and G = dT/dA [B, K, h, w] -> ReLU(map) [B, h, w]:
#   "gradcam"   sum_k alpha_k A_k, alpha_k = mean_{h,w} G_k (Selvaraju et al. 2017);
#   "hirescam"  sum_k G_k A_k per location, no spatial mean (Draelos & Carin 2020): the first-order
#               contribution of each location's features to T, which GradCAM's mean blurs over the frame.
# Both equal pytorch-grad-cam's GradCAM / HiResCAM; docs/cam.md "Which method" says which ships where.
CAM_METHODS = ("gradcam", "hirescam")
DEFAULT_UNET_CAM_METHOD = "gradcam"  # the U-Net's (the benchmark decides; docs/cam.md "Which method")


def check_cam_method(method: str) -> None:
    if method not in CAM_METHODS:
        raise InvalidInput(f"the CAM method must be one of {CAM_METHODS}, got {method!r}")


def describe_target(target: str, method: str = "gradcam") -> str:
    """A CAM's target and method as served configs name them: "<target>", or "<target>, <method>"
    for a method other than GradCAM (cam_layer "encoder.layer4 (class-balanced, hirescam)")."""
    return target if method == "gradcam" else f"{target}, {method}"


def layer_cam(features: torch.Tensor, grads: torch.Tensor, method: str = "gradcam") -> torch.Tensor:
    """The raw CAM on the layer's grid, ReLU(...) [B, h, w], of `method` (CAM_METHODS) from the
    layer's activation A and dT/dA, both [B, K, h, w]."""
    if method == "hirescam":
        return torch.relu((grads * features).sum(1))
    return torch.relu((grads.mean((2, 3), keepdim=True) * features).sum(1))


def scale_cam(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A raw CAM [B, h, w] (>= 0) min-max scaled, resized to `size` (H, W) and scaled again, as
    pytorch-grad-cam's scale_cam_image: [B, H, W] in [0, 1]."""
    # always resize: at equal size bilinear with align_corners=False is the identity, and no
    # shape-dependent branch ends up frozen in a traced graph
    cam = F.interpolate(_minmax(cam)[:, None], size=(size[0], size[1]), mode="bilinear", align_corners=False)
    return _minmax(cam[:, 0])  # [B, H, W]


def cam_from_weights(features: torch.Tensor, weights: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """CAM = ReLU(sum_k alpha_k A_k), scaled to [0, 1] and resized like pytorch-grad-cam.

    Args:
        features: A [B, K, h, w].
        weights: alpha [B, K].
        size: output (H, W).

    Returns:
        CAM [B, H, W] in [0, 1], same dtype as `features`.

    Raises:
        InvalidInput: shapes do not match.
    """
    if not torch.jit.is_tracing() and (features.dim() != 4 or weights.shape != features.shape[:2]):
        raise InvalidInput(f"expected features [B, K, h, w] and weights [B, K], got "
                           f"{tuple(features.shape)} and {tuple(weights.shape)}")
    # one matmul per image rather than a broadcast product: a single MatMul node in ONNX
    cam = torch.matmul(weights[:, None, :], features.flatten(2))  # [B, 1, h*w]
    return scale_cam(torch.relu(cam.reshape(features.shape[0], *features.shape[2:])), size)


# The U-Net's CAM targets (the written-out VJP's; segxal.graph.traced_cam has the same by name):
# "class-agnostic" T = sum_c w_c sum_{i in M_c} z_c(i), a class weighing by its area; "class-balanced"
# T = sum_c (w_c / n_c) sum_{i in M_c} z_c(i), every predicted class the same. The default is what the
# label-efficiency benchmark decided (bench/results/cam_targets/: class-balanced +0.55 mIoU
# [+0.25, +0.85] over class-agnostic for regions, no difference for frames, 24 seeds).
UNET_CAM_TARGETS = ("class-balanced", "class-agnostic")
DEFAULT_UNET_CAM_TARGET = "class-balanced"


def _check_target(target: str) -> None:
    if target not in UNET_CAM_TARGETS:
        raise InvalidInput(f"the U-Net's CAM target must be one of {UNET_CAM_TARGETS}, got {target!r}")


def target_seed(labels: torch.Tensor, num_classes: int, class_weights: torch.Tensor | None, target: str,
                dtype: torch.dtype) -> torch.Tensor:
    """dT/dz [B, C, H, W] of a target over the predicted classes (labels [B, H, W] or [B, 1, H, W])."""
    labels = labels if labels.dim() == 4 else labels[:, None]
    classes = torch.arange(num_classes, device=labels.device)
    g = (labels == classes[None, :, None, None]).to(dtype)  # [B, C, H, W]
    if target == "class-balanced":
        g = g / g.sum((2, 3), keepdim=True).clamp_min(1.0)  # 1 / n_c per image
    if class_weights is not None:
        g = g * class_weights.to(dtype)[None, :, None, None]
    return g


def _predicted_class_target(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None,
                            target: str) -> torch.Tensor:
    """T of `target` summed over the batch. logits [B, C, H, W], labels [B, H, W]."""
    return (logits * target_seed(labels, logits.shape[1], class_weights, target, logits.dtype)).sum()


def autograd_weights(model: nn.Module, target_layer: nn.Module, x: torch.Tensor,
                     class_weights: torch.Tensor | None = None, target: str = DEFAULT_UNET_CAM_TARGET
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GradCAM weights alpha = mean_{h,w} dT/dA by autograd, for any target layer.

    A forward hook replaces the layer's output by a detached copy that requires grad, so the
    backward pass stops at A (cheaper, and works when the model's parameters are frozen). The
    model's train/eval mode is left as the caller set it (pytorch-grad-cam forces eval()). A layer
    that runs more than once per forward counts with its last call.

    Args:
        model: returns logits [B, C, H, W] for x.
        target_layer: a submodule of `model` whose output is a tensor A [B, K, h, w].
        x: input batch [B, ...].
        class_weights: optional w_c [C] (see safety_class_weights); None means all 1.
        target: one of UNET_CAM_TARGETS.

    Returns:
        (alpha [B, K], A [B, K, h, w] detached, labels [B, H, W] int64 argmax of the logits).

    Raises:
        InvalidInput: the target layer did not run, returned a non-tensor or non-4-D output, or
            class_weights has the wrong shape or values.
    """
    _check_target(target)
    captured: dict[str, torch.Tensor] = {}

    def _capture(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise InvalidInput(f"target layer {type(module).__name__} must output a tensor [B, K, h, w]")
        leaf = output.detach().requires_grad_(True)
        captured["A"] = leaf
        return leaf.clone()  # a non-leaf, so an in-place op after the layer (ReLU(inplace)) stays legal

    handle = target_layer.register_forward_hook(_capture)
    try:
        # the caller may hold no_grad or inference_mode; an inference tensor cannot enter autograd
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(x.clone() if x.is_inference() else x)  # [B, C, H, W]
            if "A" not in captured:
                raise InvalidInput("target_layer did not run during model(x); pass a submodule of the model")
            check_class_weights(class_weights, logits.shape[1])
            labels = logits.detach().argmax(1)  # [B, H, W]
            (grad,) = torch.autograd.grad(_predicted_class_target(logits, labels, class_weights, target),
                                          captured["A"])  # [B, K, h, w]
    finally:
        handle.remove()
    return grad.mean(dim=(2, 3)), captured["A"].detach(), labels


def gradcam_autograd(model: nn.Module, target_layer: nn.Module, x: torch.Tensor,
                     class_weights: torch.Tensor | None = None, target: str = DEFAULT_UNET_CAM_TARGET) -> torch.Tensor:
    """GradCAM over the predicted classes by one backward pass (the reference; any target layer).

    Args:
        model: returns logits [B, C, H, W] for x [B, 3, H, W].
        target_layer: a submodule of `model` whose output is A [B, K, h, w].
        x: input batch [B, 3, H, W].
        class_weights: optional w_c [C]; None means all 1.
        target: one of UNET_CAM_TARGETS.

    Returns:
        CAM [B, H, W] in [0, 1] (scaled as pytorch-grad-cam, see the module docstring), detached.

    Raises:
        InvalidInput: as autograd_weights.
    """
    alpha, features, labels = autograd_weights(model, target_layer, x, class_weights, target)
    return cam_from_weights(features, alpha, labels.shape[-2:])


def analytic_weights(head_weight: torch.Tensor, labels: torch.Tensor, feature_hw: Sequence[int],
                     class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """GradCAM weights at the input of a 1x1 head + bilinear upsampling, without autograd.

    alpha_k = (1/|A|) sum_c w_c W_ck n_c, n_c = number of pixels of `labels` equal to c.
    Pure tensor ops (an equality against arange(C) and a sum, no bincount), traceable to ONNX.

    Args:
        head_weight: W of the 1x1 conv head, [C, K] or [C, K, 1, 1].
        labels: predicted classes at full resolution [B, H, W] (any integer dtype).
        feature_hw: (h, w) of A; |A| = h * w.
        class_weights: optional w_c [C]; None means all 1.

    Returns:
        alpha [B, K], dtype of head_weight.

    Raises:
        InvalidInput: head_weight is not [C, K(, 1, 1)], or class_weights has the wrong shape or values.
    """
    if not torch.jit.is_tracing() and not (
            head_weight.dim() == 2 or (head_weight.dim() == 4 and head_weight.shape[2:] == (1, 1))):
        raise InvalidInput(f"head_weight must be [C, K] or [C, K, 1, 1], got {tuple(head_weight.shape)}")
    head_weight = head_weight.flatten(1)  # [C, K]
    num_classes = head_weight.shape[0]
    check_class_weights(class_weights, num_classes)
    classes = torch.arange(num_classes, device=labels.device, dtype=labels.dtype)  # [C]
    counts = (labels[:, None] == classes[None, :, None, None]).to(head_weight.dtype).sum((2, 3))  # [B, C]
    if class_weights is not None:
        counts = counts * class_weights.to(head_weight.dtype)[None]  # [B, C]
    return counts @ head_weight / (feature_hw[0] * feature_hw[1])  # [B, K]


def analytic_cam(features: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                 class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Class-agnostic GradCAM at the input A of a 1x1 head + bilinear upsampling, no backward pass.

    Equals gradcam_autograd(model, model.target_layer, x) for segxal.models.unet.UNet, where
    features = model.forward_features(x), head_weight = model.head.weight and labels the argmax of
    model(x).

    Args:
        features: A [B, K, h, w].
        head_weight: W [C, K] or [C, K, 1, 1].
        labels: predicted classes [B, H, W].
        class_weights: optional w_c [C]; None means all 1.

    Returns:
        CAM [B, H, W] in [0, 1], dtype of features.

    Raises:
        InvalidInput: as analytic_weights and cam_from_weights.
    """
    alpha = analytic_weights(head_weight, labels, features.shape[-2:], class_weights)  # [B, K]
    return cam_from_weights(features, alpha.to(features.dtype), labels.shape[-2:])


# --- The shipped definition: GradCAM at the U-Net's bottleneck, in-graph -----------------------------
#
# At the head's input every GradCAM is a linear function of the logits (the head is linear), so the
# class-agnostic map is ReLU(sum_c n_c (z_c - b_c)): it cancels and clips to zero as the classifier
# becomes discriminative (docs/design.md, "The EEM as shipped"). The bottleneck is semantic and does not
# collapse, but its gradient crosses the decoder. ONNX has no autograd and torch's exporters do not
# trace torch.autograd.grad, so the decoder's vector-Jacobian product is written out below with the
# same weights: conv -> conv_transpose, BatchNorm (eval) -> per-channel scale, ReLU -> its mask,
# concat -> the up-path slice (skips do not depend on the bottleneck), 2x2/2 transposed conv -> a
# 2x2/2 conv, 2x bilinear upsampling -> its exact adjoint. Checked against autograd and
# pytorch-grad-cam in tests/test_eem_gradcam.py.

def _bilinear_up2_adjoint_axis(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Adjoint of 2x bilinear upsampling (align_corners=False) along `dim` (2 or 3) of g [B, K, ., .].

    Output m collects 1/4, 3/4, 3/4, 1/4 from inputs 2m-1 .. 2m+2; at the two ends PyTorch clamps the
    source index, so the first and last output also collect the 1/4 that would fall outside.
    The taps are two average pools, [1/4] * 4 over 2m-1 .. 2m+2 plus [1/2] * 2 over 2m .. 2m+1: pooling
    runs per channel with no weights, where a convolution with channels folded into the batch ran
    ONNX Runtime's blocked kernels on 1 of 16 channels (bench/cam_cost.py: 16 of the VJP's 132 ms).
    """
    kernel4, stride, pad4 = ((4, 1), (2, 1), (1, 0)) if dim == 2 else ((1, 4), (1, 2), (0, 1))
    kernel2 = (2, 1) if dim == 2 else (1, 2)
    low = F.avg_pool2d(g, kernel4, stride, pad4, count_include_pad=True) + F.avg_pool2d(g, kernel2, stride)
    n = low.shape[dim]
    first = low.narrow(dim, 0, 1) + 0.25 * g.narrow(dim, 0, 1)
    last = low.narrow(dim, n - 1, 1) + 0.25 * g.narrow(dim, g.shape[dim] - 1, 1)
    return torch.cat([first, low.narrow(dim, 1, n - 2), last], dim=dim)


def bilinear_up2_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Adjoint (transpose) of F.interpolate(scale_factor=2, mode="bilinear", align_corners=False).

    Args:
        g: gradient at the upsampled size [B, K, 2h, 2w] (h, w >= 2).

    Returns:
        gradient at the input size [B, K, h, w].
    """
    return _bilinear_up2_adjoint_axis(_bilinear_up2_adjoint_axis(g, 2), 3)


def _block_forward_with_tape(block: nn.Sequential, h: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Run a decoder block, keeping what its VJP needs: (module, output) per layer."""
    tape = []
    for layer in block:
        h = layer(h)
        tape.append((layer, h))
    return h, tape


def _block_vjp(tape: list, g: torch.Tensor, keep: int | None = None,
               then: nn.ConvTranspose2d | None = None) -> torch.Tensor:
    """Gradient at a block's input from the gradient at its output, for Conv2d (stride 1, groups 1,
    no dilation), BatchNorm2d in eval mode, ReLU and eval-mode Dropout/Identity layers; `keep`: only
    the block input's first `keep` channels are asked for (the first conv then computes no others);
    `then`: the transposed conv (kernel = stride, e.g. 2x2/2) that made those channels, whose adjoint
    (a strided conv) is composed with the first conv's: the gradient at ITS input, on the coarse grid."""
    if then is not None and (then.kernel_size != then.stride or any(then.padding) or any(then.output_padding)
                             or then.groups != 1 or then.dilation != (1, 1)
                             or not tape or not isinstance(tape[0][0], nn.Conv2d)):
        raise InvalidInput(f"bottleneck GradCAM: unsupported up-sampling layer {then} before {tape[:1]}")
    for i, (layer, out) in reversed(list(enumerate(tape))):
        if isinstance(layer, nn.ReLU):
            g = g * (out > 0).to(g.dtype)
        elif isinstance(layer, nn.BatchNorm2d):
            if layer.training:
                raise InvalidInput("the bottleneck GradCAM needs BatchNorm in eval mode (call model.eval())")
            g = g * (layer.weight / torch.sqrt(layer.running_var + layer.eps)).to(g.dtype)[None, :, None, None]
        elif isinstance(layer, nn.Conv2d):
            if layer.stride != (1, 1) or layer.groups != 1 or layer.dilation != (1, 1):
                raise InvalidInput(f"bottleneck GradCAM: unsupported decoder conv {layer}")
            # the adjoint of a stride-1 conv is the conv with the kernel flipped and its in/out
            # channels swapped; written as a plain Conv, which ONNX Runtime runs ~2x faster than
            # ConvTranspose (bench/cam_cost.py)
            kh, kw = layer.kernel_size
            flipped = layer.weight.flip(2, 3).transpose(0, 1).to(g.dtype)  # [K_in, K_out, kh, kw]
            if i == 0 and keep is not None:  # the block's input: its other channels are never used
                flipped, keep = flipped[:keep], None
            padding, stride = (kh - 1 - layer.padding[0], kw - 1 - layer.padding[1]), 1
            if i == 0 and then is not None:
                # one 4x4 stride-2 conv with the two kernels convolved (summed over the middle channels):
                # 16 taps every 4 pixels instead of 9 every pixel plus 4 every 4 (for 2x2/2); exact, as
                # the up-sampling's adjoint reads only this grid (kernel = stride, no padding)
                flipped = F.conv_transpose2d(flipped.transpose(0, 1), then.weight.transpose(0, 1).to(g.dtype)
                                             ).transpose(0, 1)  # [K_then_in, K_in, kh + 1, kw + 1]
                stride = then.stride
            g = F.conv2d(g, flipped, padding=padding, stride=stride)
        elif isinstance(layer, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            if layer.training and not isinstance(layer, nn.Identity):
                raise InvalidInput("the bottleneck GradCAM needs dropout in eval mode (call model.eval())")
        else:
            raise InvalidInput(f"bottleneck GradCAM: no VJP for decoder layer {type(layer).__name__}")
    return g if keep is None else g[:, :keep]


def bottleneck_gradient(model: nn.Module, x: torch.Tensor, class_weights: torch.Tensor | None = None,
                        target: str = DEFAULT_UNET_CAM_TARGET) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One U-Net forward pass plus dT/dB at the bottleneck by the decoder's written-out VJP.

    Target T of `target` (UNET_CAM_TARGETS, as gradcam_autograd). Traceable to ONNX (no autograd);
    its spatial mean equals autograd_weights(model, model.bottleneck_layer, x, class_weights, target).

    Args:
        model: segxal.models.unet.UNet in eval mode.
        x: normalised images [B, 3, H, W].
        class_weights: optional w_c [C]; None means all 1.
        target: one of UNET_CAM_TARGETS.

    Returns:
        (logits [B, C, H, W], bottleneck B [B, K_b, h_b, w_b], dT/dB [B, K_b, h_b, w_b]).

    Raises:
        InvalidInput: a layer in training mode or without a VJP here, bad class weights.
    """
    _check_target(target)
    bottleneck, skips = model.encode(x)  # [B, K_b, h_b, w_b]
    h, tapes = bottleneck, []
    for up, dec, skip in zip(model.up, model.dec, reversed(skips)):
        h, tape = _block_forward_with_tape(dec, torch.cat([up(h), skip], dim=1))
        tapes.append((up, tape))
    logits = model.upsample(model.head(h))  # [B, C, H, W]
    # argmax as segxal.eem.explain takes it (classes last, max with indices, keepdim): the exported graph
    # then holds the same Transpose/ReduceMax/ArgMax nodes twice, and ONNX Runtime's common-subexpression
    # pass computes them once
    labels = logits.movedim(1, -1).max(-1, keepdim=True).indices[..., 0][:, None]  # [B, 1, H, W]; ties: first class
    head_w = model.head.weight  # [C, K, 1, 1]
    num_classes = head_w.shape[0]
    check_class_weights(class_weights, num_classes)
    g = target_seed(labels, num_classes, class_weights, target, logits.dtype)  # [B, C, H, W]: dT/dz
    if model.cfg.head_stride == 2:
        g = bilinear_up2_adjoint(g)  # [B, C, H/2, W/2]: through the upsampling (C < K: cheaper first)
    g = F.conv2d(g, head_w.transpose(0, 1).to(g.dtype))  # [B, K, H/s, W/s]: through the 1x1 head, W^T
    for up, tape in reversed(tapes):
        # only the up-path half of the concat: the skips do not depend on the bottleneck, and not
        # computing their half saves a third of the decoder's VJP (bench/cam_cost.py)
        g = _block_vjp(tape, g, keep=up.out_channels, then=up)  # through the block and the 2x2/2 `up`
    return logits, bottleneck, g


def bottleneck_weights(model: nn.Module, x: torch.Tensor, class_weights: torch.Tensor | None = None,
                       target: str = DEFAULT_UNET_CAM_TARGET) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bottleneck_gradient with GradCAM's weights alpha_k = mean over the bottleneck's positions of
    dT/dB_k: (logits, B, alpha [B, K_b]); equals autograd_weights(model, model.bottleneck_layer, ...)."""
    logits, bottleneck, g = bottleneck_gradient(model, x, class_weights, target)
    return logits, bottleneck, g.mean(dim=(2, 3))  # alpha [B, K_b]


def explained_forward(model: nn.Module, x: torch.Tensor, class_weights: torch.Tensor | None = None,
                      target: str = DEFAULT_UNET_CAM_TARGET, method: str = DEFAULT_UNET_CAM_METHOD
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One U-Net forward pass plus the shipped CAM: the `method` CAM (CAM_METHODS; GradCAM:
    ReLU(sum_k alpha_k B_k)) of `target` at the bottleneck, scaled as pytorch-grad-cam. Equals
    gradcam_autograd(model, model.bottleneck_layer, x, class_weights, target) for GradCAM, and
    pytorch-grad-cam's HiResCAM for "hirescam", with no backward pass.

    Args, Raises: as bottleneck_gradient; an unknown method.

    Returns:
        (logits [B, C, H, W], CAM [B, H, W] in [0, 1]).
    """
    check_cam_method(method)
    logits, bottleneck, g = bottleneck_gradient(model, x, class_weights, target)
    if method == "gradcam":  # the weights' matmul form: one MatMul node in ONNX
        return logits, cam_from_weights(bottleneck, g.mean(dim=(2, 3)), logits.shape[-2:])
    return logits, scale_cam(layer_cam(bottleneck, g, method), logits.shape[-2:])

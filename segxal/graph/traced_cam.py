"""A CAM (HiResCAM or GradCAM) at a named layer of ANY torch segmentation model, inside the exported ONNX graph.

ONNX has no autograd, and torch's exporters do not trace `torch.autograd.grad`. So the forward
pass and the backward pass to the CAM layer are traced together into one plain ATen graph with
`make_fx` (autograd runs while tracing, only its ops are recorded), and that graph goes through the
dynamo ONNX exporter. What makes every backward op exportable (../shared/FACTS.md, "GradCAM of
any torch model inside an ONNX graph"):

* torch's core ATen decompositions (batch-norm and threshold backwards become plain arithmetic),
  plus `aten.convolution_backward` written as a convolution (input gradient only: the weights are
  constants of the graph, so their gradient is never asked for): for stride 1 a plain convolution
  with the kernel flipped, else a transposed one;
* every resampling a model does through `F.interpolate` (bilinear, nearest) and
  `F.adaptive_avg_pool2d` (PSPNet's pyramid, mobile nets' squeeze-excite) is traced as two
  MatMuls with constant matrices, `Uh @ x @ Uw^T`: all of them are separable and linear, so this
  is exact (the matrices are the op applied to an identity), and the backward of a MatMul is a
  MatMul. Upsampling by integer factors (nearest; bilinear by even factors, as logits are brought
  to full resolution) is instead one depthwise transposed convolution with the interpolation
  kernel, equally exact and O(taps) per output pixel. That replaces `upsample_bilinear2d_backward`,
  `upsample_nearest2d_backward` and `_adaptive_avg_pool2d_backward`, which have no ONNX translation.
  Only the backward pass uses those forms: the forward pass of a bilinear resize or an integer
  nearest upsampling is the op itself (`segxal::upsample`, exported as ONNX Resize), its backward
  the VJP of the exact form (`_ResampledForward`).

Five things keep the backward pass cheap (docs/cam.md, Cost): the stride-1 adjoints above are
Convs (ONNX Runtime runs ConvTranspose about half as fast); a convolution whose input gradient is
only sliced, as a skip connection's concatenation does, computes only the channels used
(`_prune_channel_slices`); a convolution's adjoint followed by a nearest upsampling's (a sum
pooling) is one convolution on the pooled grid (`_fuse_pooled_convolutions`); resizes run as
Resize forward (above); and each target's gradient with respect to the logits is written out
(`CamTarget.seed`) instead of differentiated through the statistics.

The graph takes uint8 RGB [B, H, W, 3] at a fixed H x W (the model's declared input size; the
inference client resizes frames to it), normalises inside, and gives the outputs our other
exports give (segxal.modelspec roles): `labels` uint8, `ebu`, `pmax`, `cam` float16 [B, H, W],
plus `embedding` float32 [B, D], the L2-normalised global average pool of the CAM layer's
activation (a descriptor for diversity-aware selection, free once the activation is computed).
B is fixed at trace time (the traced ATen graph bakes its shapes in): 1 by default, which is how
the EEM service asks (one frame a call); the config then says max_batch_size 0.

CAM (scaled exactly as pytorch-grad-cam 1.5.7, `BaseCAM` with one target layer): for the target T
(a CamTarget over the logits), the map of the method (segxal.eem.gradcam.layer_cam): HiResCAM, the
default, ReLU(sum_k dT/dA_k * A_k) per location; GradCAM ReLU(sum_k alpha_k A_k) with alpha_k =
mean_{h,w} dT/dA_k; then per image min-max, bilinear resize to H x W (cv2 INTER_LINEAR =
half-pixel), min-max again.

References:
    Selvaraju et al., Grad-CAM, ICCV 2017; Draelos & Carin, HiResCAM, arXiv 2011.08891;
    jacobgil/pytorch-grad-cam 1.5.7 (`BaseCAM`,
    `scale_cam_image`, `SemanticSegmentationTarget`); torch._decomp (core ATen decompositions).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segxal.eem.gradcam import CAM_METHODS, check_cam_method, describe_target, layer_cam, target_seed
from segxal.errors import InvalidInput
from segxal.graph.add_eem import METADATA_UNCERTAINTY_AT, UNCERTAINTY_AT  # one rule for both routes

OUTPUTS = ("labels", "ebu", "cam", "pmax", "embedding")
INPUT_NAME = "image"
METADATA_CAM_LAYER = "segxal.cam_layer"  # the same keys segxal.graph.add_eem writes
METADATA_CAM_TARGET = "segxal.cam_target"
METADATA_CAM_METHOD = "segxal.cam_method"
_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image adds this to the max
# Cityscapes classes with instances (cityscapesscripts hasInstances): what "objects" targets
OBJECT_CLASS_NAMES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


# ---------------------------------------------------------------------------------------------
# CAM targets: what the gradient explains. Each maps logits [B, C, H, W] at the input's size to one
# scalar per image [B]; pytorch-grad-cam calls the same objects per image (see as_grad_cam_target).


class CamTarget:
    """Base of the CAM targets: `__call__(logits [B, C, H, W], ebu=None) -> [B]` is the definition
    (what pytorch-grad-cam differentiates in the tests); `ebu` [B, H, W] is the normalised entropy
    of those logits when the caller has it already. `seed` is its gradient dT/dlogits, which the
    explainer feeds to the backward pass: written out per target in the logits' own layout, it
    costs a few elementwise ops where autograd through the statistics' reductions and transposes
    cost a fifth of a full-resolution model's graph (bench/cam_cost.py)."""
    name = ""

    def __call__(self, logits: torch.Tensor, ebu: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def seed(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """dT/dlogits [B, C, H, W] of the summed target; labels [B, H, W] = argmax of the logits."""
        with torch.enable_grad():
            z = logits.detach().requires_grad_()
            return torch.autograd.grad(self(z).sum(), z)[0]


class ClassAgnostic(CamTarget):
    """T = sum_i z_{y(i)}(i), y = argmax: every predicted pixel's own logit (the shipped target of
    segxal.eem.gradcam; each class weighs by its area)."""
    name = "class-agnostic"

    def __call__(self, logits, ebu=None):
        z = logits.movedim(1, -1)  # [B, H, W, C]: classes last (see EbuGradient)
        return z.gather(-1, z.argmax(-1, keepdim=True)).sum((1, 2, 3))  # [B]

    def seed(self, logits, labels):  # the U-Net VJP's seed of the same target
        return target_seed(labels, logits.shape[1], None, self.name, logits.dtype)


class ClassBalanced(CamTarget):
    """T = sum_c (1 / n_c) sum_{i in M_c} z_c(i): the mean predicted logit of each predicted class,
    so a class on 50 pixels weighs as much as road on 20,000."""
    name = "class-balanced"

    def __call__(self, logits, ebu=None):
        classes = torch.arange(logits.shape[1]).view(1, -1, 1, 1)  # [1, C, 1, 1]
        # a comparison, not F.one_hot: one_hot checks its values, which a traced graph cannot
        onehot = (logits.argmax(1, keepdim=True) == classes).to(logits.dtype)  # [B, C, H, W]
        counts = onehot.sum((2, 3))  # [B, C]
        per_class = (onehot * logits).sum((2, 3))  # [B, C]
        return (per_class / counts.clamp_min(1.0)).sum(1)  # [B]; absent classes add 0

    def seed(self, logits, labels):  # the U-Net VJP's seed of the same target
        return target_seed(labels, logits.shape[1], None, self.name, logits.dtype)


class Objects(CamTarget):
    """T = sum over pixels predicted as an object class of their predicted logit (the
    class-agnostic target restricted to `class_ids`); zero where no object is predicted."""
    name = "objects"

    def __init__(self, class_ids: Sequence[int]):
        if not class_ids:
            raise InvalidInput("the objects target needs at least one object class")
        self.class_ids = tuple(int(c) for c in class_ids)

    def keep(self, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
        """[C]: 1 for the object classes, 0 for the others."""
        keep = torch.zeros(num_classes, dtype=dtype)
        keep[list(self.class_ids)] = 1.0
        return keep

    def __call__(self, logits, ebu=None):
        labels = logits.argmax(1, keepdim=True)  # [B, 1, H, W]
        keep = self.keep(logits.shape[1], logits.dtype)
        return (logits.gather(1, labels) * keep[labels]).sum((1, 2, 3))  # [B]

    def seed(self, logits, labels):  # the class-agnostic seed, the other classes weighted 0
        return target_seed(labels, logits.shape[1], self.keep(logits.shape[1], logits.dtype), "class-agnostic",
                           logits.dtype)


class EbuGradient(CamTarget):
    """T = sum_i EBU(i), the frame's summed normalised entropy: the CAM shows the features whose
    change would change the model's doubt most."""
    name = "ebu-gradient"

    def __call__(self, logits, ebu=None):
        if ebu is not None:
            return ebu.sum((1, 2))
        # classes last: ONNX Runtime's LogSoftmax over a strided axis transposes around itself,
        # which cost a third of a light model's traced graph
        log_p = logits.movedim(1, -1).log_softmax(-1)  # [B, H, W, C]
        entropy = -(log_p.exp() * log_p).sum(-1)  # [B, H, W]
        return (entropy / math.log(logits.shape[1])).sum((1, 2))  # [B]

    def seed(self, logits, labels):
        # dH/dz_c = -p_c (log p_c + H), H = -sum_c p_c log p_c; per class plane (reductions over
        # the leading class axis of [B, C, H*W] need no transpose)
        shifted = logits - logits.amax(1, keepdim=True)  # [B, C, H, W]
        expd = shifted.exp()
        total = expd.sum(1, keepdim=True)  # [B, 1, H, W]
        p = expd / total
        log_p = shifted - total.log()
        entropy = -(p * log_p).sum(1, keepdim=True)
        return -p * (log_p + entropy) / math.log(logits.shape[1])


CAM_TARGETS = ("class-agnostic", "class-balanced", "objects", "ebu-gradient")
# the traced route's grid of EBU, p_max and the target: the model's own. Chosen when it cost 1.35-1.68 x
# the plain forward against 1.66-3.02 x on the input's grid; since the targets' gradients are written
# out (CamTarget.seed) the two grids cost alike (docs/cam.md, Cost), and the CAM's health is the same
# on both; "input" where the logits come at the input's size anyway
DEFAULT_UNCERTAINTY_AT = "model"
# the default CAM of a model from elsewhere: class-balanced HiResCAM, the only variant measured that never
# died and stayed within |corr EBU| <= 0.3 at 40 of 45 checkpoints of three trainings of five architectures
# (ebu-gradient GradCAM, the default before: 29 of 45; bench/cam_health.py --train, docs/cam.md "Which method")
DEFAULT_CAM_TARGET = "class-balanced"
DEFAULT_CAM_METHOD = "hirescam"  # of segxal.eem.gradcam.CAM_METHODS


def make_target(name: str, class_names: Sequence[str] | None = None, num_classes: int | None = None) -> CamTarget:
    """A CamTarget by name (CAM_TARGETS).

    Args:
        name: one of CAM_TARGETS.
        class_names: the model's classes (index = label); "objects" picks OBJECT_CLASS_NAMES among
            them (None: the 19 Cityscapes trainIds).
        num_classes: the model's class count, checked against the class names "objects" uses.

    Raises:
        InvalidInput: an unknown name, or "objects" with no object class among class_names, or
            class names that do not fit num_classes.
    """
    if name == "class-agnostic":
        return ClassAgnostic()
    if name == "class-balanced":
        return ClassBalanced()
    if name == "ebu-gradient":
        return EbuGradient()
    if name == "objects":
        from segxal.labels import CLASS_NAMES
        names = list(class_names or CLASS_NAMES)
        if num_classes is not None and len(names) != num_classes:
            raise InvalidInput(f"the objects target needs the model's {num_classes} class names "
                               f"({'got ' + str(len(names)) if class_names else 'default: the 19 Cityscapes classes'})")
        ids = [i for i, n in enumerate(names) if n in OBJECT_CLASS_NAMES]
        if not ids:
            raise InvalidInput(f"the objects target needs one of {OBJECT_CLASS_NAMES} among the classes {names}")
        return Objects(ids)
    raise InvalidInput(f"unknown CAM target {name!r}; expected one of {CAM_TARGETS}")


def as_grad_cam_target(target: CamTarget) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same target as pytorch-grad-cam calls it: one image's output [C, H, W] -> scalar."""
    return lambda output: target(output[None])[0]


# ---------------------------------------------------------------------------------------------
# The layer


def _stage_owner(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name in ("backbone", "encoder"):  # torchvision segmentation models, smp
        owner = getattr(model, name, None)
        if isinstance(owner, nn.Module):
            return name, owner
    return None


def feature_stages(model: nn.Module, probe_hw: tuple[int, int] = (64, 64)) -> list[tuple[str, int]]:
    """The stages of a model family's feature extractor, in the order they run, with their output
    stride: (layer name, stride). torchvision segmentation models: the direct children of
    `model.backbone`; smp: of `model.encoder`; either kept where the output is a 4-D feature map.
    Hugging Face SegFormer: each encoder block's output as the decode head reads it
    ("decode_head.linear_projections.<i>:input"; linear_c in transformers 4).

    Raises:
        InvalidInput: a model of no known family (name a layer instead).
    """
    head = getattr(model, "decode_head", None)
    owner_name, owner, of_input = None, None, False
    for name in ("linear_projections", "linear_c"):  # HF SegFormer (transformers 5; 4.x)
        if isinstance(getattr(head, name, None), nn.ModuleList):
            owner_name, owner, of_input = f"decode_head.{name}", getattr(head, name), True
    if owner is None:
        found = _stage_owner(model)
        if found is None:
            raise InvalidInput(f"no default CAM layer for a {type(model).__name__} (no backbone or encoder); "
                               f"name one with --layer, e.g. one of {[n for n, _ in model.named_children()]}")
        owner_name, owner = found
    seen: list[tuple[str, int]] = []

    def record(name):
        def hook(m, args, output=None):
            a = args[0] if of_input else output
            if isinstance(a, torch.Tensor) and a.dim() == 4:
                seen.append((f"{owner_name}.{name}" + (":input" if of_input else ""), probe_hw[0] // a.shape[-2]))
        return hook
    handles = [(child.register_forward_pre_hook(record(name)) if of_input else
                child.register_forward_hook(record(name))) for name, child in owner.named_children()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *probe_hw))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise InvalidInput(f"{type(model).__name__}.{owner_name} has no stage with a 4-D output; name a layer")
    return seen


DEFAULT_LAYERS = "default"  # the family's measured default stage (docs/cam.md, "Which layer")


def _segformer_head(model: nn.Module) -> bool:
    head = getattr(model, "decode_head", None)
    return any(isinstance(getattr(head, n, None), nn.ModuleList) for n in ("linear_projections", "linear_c"))


def family_default(model: nn.Module) -> str:
    """The stage rule "default" stands for: "stride8" for Hugging Face SegFormer (its last stage's
    LayerNorm'd tokens gave a confidence map after one epoch on 6 of 9 trainings, corr(CAM, EBU) down
    to -0.76; its stride-8 stage met the health bar at 24 of 27 checkpoints against 19, never worse
    on the same checkpoint: docs/cam.md, "Which layer"), "last" for every other family."""
    return "stride8" if _segformer_head(model) else "last"


def expand_layers(model: nn.Module, spec: str, probe_hw: tuple[int, int] = (64, 64)) -> str:
    """A CAM layer spec with the family's stages by rule -> layer names: "default" (family_default),
    "last" (the last stage of feature_stages), "strideS" (the last stage at output stride <= S), any
    other token kept as a layer name; tokens joined by "+" (a multi-layer CAM), a stage named twice
    kept once.

    Raises:
        InvalidInput: a rule for a model of no known family, or no stage at that stride.
    """
    stages = None
    out: list[str] = []
    for token in split_layers(spec):
        token = family_default(model) if token == "default" else token
        name = token
        if token == "last" or (token.startswith("stride") and token[6:].isdigit()):
            stages = stages or feature_stages(model, probe_hw)
            fine = [n for n, st in stages if token == "last" or st <= int(token[6:])]
            if not fine:
                raise InvalidInput(f"layer rule {token!r}: no stage of {type(model).__name__} is that fine "
                                   f"(stages: {stages})")
            name = fine[-1]
        if name not in out:
            out.append(name)
    return LAYER_SEPARATOR.join(out)


def default_layer(model: nn.Module, probe_hw: tuple[int, int] = (64, 64)) -> str:
    """The default CAM layer(s) of a model family: DEFAULT_LAYERS expanded (expand_layers), e.g.
    smp's "encoder.layer4", torchvision's "backbone.layer4" / "backbone.16", SegFormer's
    "decode_head.linear_projections.1:input" (its stride-8 stage, family_default).

    Raises:
        InvalidInput: a model of no known family (name a layer instead).
    """
    return expand_layers(model, DEFAULT_LAYERS, probe_hw)


LAYER_SEPARATOR = "+"  # "a+b": a multi-layer CAM, as pytorch-grad-cam aggregates target layers


def split_layers(layer: str) -> list[str]:
    """A CAM layer spec -> its layer names: "a" or "a+b+..." (several layers, one CAM).

    Raises:
        InvalidInput: an empty name, or a name given twice.
    """
    names = [n.strip() for n in layer.split(LAYER_SEPARATOR)]
    if not all(names) or len(set(names)) != len(names):
        raise InvalidInput(f"layer {layer!r}: give layer names joined by {LAYER_SEPARATOR!r}, each once")
    return names


def resolve_layer(model: nn.Module, layer: str) -> tuple[nn.Module, bool]:
    """"a.b.c" -> (module, False): its output is the activation; "a.b.c:input" -> (module, True):
    its first input is.

    Raises:
        InvalidInput: no such submodule (the message lists the top-level names).
    """
    name, _, which = layer.partition(":")
    if which not in ("", "input"):
        raise InvalidInput(f"layer {layer!r}: only ':input' may follow the module name")
    try:
        return model.get_submodule(name), which == "input"
    except AttributeError:
        raise InvalidInput(f"the model has no layer {name!r}; its top-level modules are "
                           f"{[n for n, _ in model.named_children()]}") from None


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise InvalidInput(f"the CAM layer gives a {type(value).__name__}, not a tensor")


@contextlib.contextmanager
def capture_activation(module: nn.Module, of_input: bool, store: dict):
    """Record the layer's activation [B, K, h, w] in store["a"] during a forward pass."""
    def hook(m, args, output=None):
        a = _first_tensor(args if of_input else output)
        if a.dim() != 4:
            raise InvalidInput(f"the CAM layer's activation must be a feature map [B, K, h, w], got {list(a.shape)}")
        if torch.is_grad_enabled() and not a.requires_grad:  # a frozen feature extractor: a is a leaf
            a.requires_grad_()
        store["a"] = a
    handle = module.register_forward_pre_hook(hook) if of_input else module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# Resampling as MatMuls (exact; see the module docstring)


def _matrix(op: Callable, n_in: int, **kwargs) -> torch.Tensor:
    """[n_out, n_in]: the 1-D linear map `op` does along the last axis, from an identity."""
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
    with disable_proxy_modes_tracing(), torch.no_grad():  # a constant of the graph, not traced ops
        basis = torch.eye(n_in).view(n_in, 1, 1, n_in)  # n_in images 1 x n_in
        return op(basis, **kwargs)[:, 0, 0, :].T.contiguous()  # [n_out, n_in]


def _separable(x: torch.Tensor, mh: torch.Tensor, mw: torch.Tensor) -> torch.Tensor:
    return torch.matmul(torch.matmul(mh, x), mw.T)  # [B, C, H', W']


def _taps(s: int, mode: str) -> tuple[np.ndarray, int]:
    """1-D kernel and padding of an upsampling by an integer s as a transposed convolution of
    stride s: nearest = s ones; bilinear (half-pixel) = the tent max(0, 1 - |t + 1/2 - s/2| / s)
    over output offsets t, which puts every output pixel's two weights where torch does."""
    if mode == "nearest":
        return np.ones(s, np.float32), 0
    t = np.arange(-s, 2 * s)
    weight = np.maximum(0.0, 1.0 - np.abs(t + 0.5 - s / 2) / s)
    keep = np.nonzero(weight > 0)[0]
    return weight[keep[0]:keep[-1] + 1].astype(np.float32), int(-t[keep[0]])


def _upsample_integer(x: torch.Tensor, sh: int, sw: int, mode: str) -> torch.Tensor | None:
    """Upsampling by integer factors as one depthwise transposed convolution (its backward is a
    convolution): exact like the MatMuls, but O(taps) per output pixel instead of O(input side),
    which matters for the logits brought to full resolution. Bilinear borders: the input is
    edge-extended by one pixel (torch clamps the source index) and the result cropped."""
    if sh == sw == 1:
        return x
    if mode == "bilinear" and (sh % 2 or sw % 2):
        return None  # odd factors: the MatMuls
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
    (kh, ph), (kw, pw) = _taps(sh, mode), _taps(sw, mode)
    c = x.shape[1]
    with disable_proxy_modes_tracing():  # a constant of the graph
        weight = torch.from_numpy(np.ascontiguousarray(
            np.broadcast_to(np.outer(kh, kw), (c, 1, len(kh), len(kw)))))  # [C, 1, kh, kw]
    if mode == "nearest":
        return F.conv_transpose2d(x, weight, stride=(sh, sw), groups=c)
    # edge-extend by one pixel as a MatMul with a 0/1 matrix, and crop through the padding: slicing
    # and concatenating would come back in the backward as ScatterND with Transposes around it
    h, w = x.shape[-2:]
    x = _separable(x, _edge_extension(h), _edge_extension(w))  # [B, C, h+2, w+2]
    return F.conv_transpose2d(x, weight, stride=(sh, sw), padding=(ph + sh, pw + sw), groups=c)  # [B, C, h sh, w sw]


def _edge_extension(n: int) -> torch.Tensor:
    """[n + 2, n]: repeats the first and the last of n values once."""
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
    with disable_proxy_modes_tracing():
        m = torch.zeros(n + 2, n)
        m[torch.arange(n + 2), torch.arange(n + 2).sub(1).clamp(0, n - 1)] = 1.0
    return m


def _output_size(x: torch.Tensor, size, scale_factor) -> tuple[int, int, bool]:
    """F.interpolate's output (H', W') for x [B, C, H, W], and whether H'/H, W'/W are the factors
    torch samples by (always with `size`; with `scale_factor` only when H x factor is whole)."""
    h, w = x.shape[-2:]
    if size is not None:
        oh, ow = (size, size) if isinstance(size, int) else size
        return int(oh), int(ow), True
    sh, sw = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
    oh, ow = int(h * sh), int(w * sw)
    return oh, ow, oh == h * sh and ow == w * sw


@torch.library.custom_op("segxal::upsample", mutates_args=())
def _upsample(x: torch.Tensor, size: list[int], mode: str, align_corners: bool) -> torch.Tensor:
    """F.interpolate as one op that make_fx and torch.export keep whole (torch decomposes its own
    upsample ops into gathers on the way to ONNX), exported as ONNX Resize (onnx_translations)."""
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners if mode == "bilinear" else None)


@_upsample.register_fake
def _(x, size, mode, align_corners):
    return x.new_empty(*x.shape[:2], *size)


def onnx_translations() -> dict:
    """The dynamo exporter's custom_translation_table for the ops this module adds: torchlib's own
    translations of torch's upsampling (ONNX Resize, half-pixel or align-corners; nearest floor)."""
    from onnxscript.function_libs.torch_lib.ops.nn import aten_upsample_bilinear2d, aten_upsample_nearest2d

    def upsample(x, size, mode: str, align_corners: bool):
        if mode == "bilinear":
            return aten_upsample_bilinear2d(x, size, align_corners)
        return aten_upsample_nearest2d(x, size)
    return {torch.ops.segxal.upsample.default: upsample}


class _ResampledForward(torch.autograd.Function):
    """A resampling whose forward is the op itself (ONNX Resize: a few multiply-adds an output pixel)
    and whose backward is the VJP of its exact exportable form (`exportable`: the transposed
    convolution or the two MatMuls of _ResampleAsMatMul), so only the backward pass pays for that
    form, and only where the CAM's gradient flows (not the full-resolution logits of the labels)."""

    @staticmethod
    def forward(ctx, x, size, mode, align_corners, exportable):
        ctx.shape, ctx.exportable = x.shape, exportable
        return _upsample(x, list(size), mode, bool(align_corners))

    @staticmethod
    def backward(ctx, grad):
        with torch.enable_grad():  # linear: the VJP does not depend on x (the zeros' forward is dead code)
            x = grad.new_zeros(ctx.shape).requires_grad_()
            y = ctx.exportable(x)
        return torch.autograd.grad(y, x, grad)[0], None, None, None, None


class _ResampleAsMatMul(torch.overrides.TorchFunctionMode):
    """Inside: F.interpolate (bilinear/nearest, 4-D) and F.adaptive_avg_pool2d run as two MatMuls
    (upsampling by integer factors as a transposed convolution); bilinear resizing and integer
    nearest upsampling keep the op itself in the forward pass (_ResampledForward)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.interpolate and args[0].dim() == 4:
            out = self._native(*args, **kwargs)
            if out is None:
                out = self._interpolate(*args, **kwargs)
            if out is not None:
                return out
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        if func is F.adaptive_avg_pool2d and args[0].dim() == 4:
            x, size = args[0], (args[1] if len(args) > 1 else kwargs["output_size"])
            size = (size, size) if isinstance(size, int) else tuple(size)
            h, w = x.shape[-2:]
            oh, ow = (h if s is None else s for s, h in zip(size, (h, w)))
            mh = _matrix(F.adaptive_avg_pool2d, h, output_size=(1, oh))
            mw = _matrix(F.adaptive_avg_pool2d, w, output_size=(1, ow))
            return _separable(x, mh, mw)
        return func(*args, **kwargs)

    @staticmethod
    def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """Attention as its math (MatMul, Softmax): autograd then records their backwards, which
        export, instead of the fused kernel's (transformers' encoders, e.g. SegFormer's, when the CAM
        layer is before one)."""
        if dropout_p or enable_gqa:
            raise InvalidInput("the traced CAM needs attention without dropout or grouped queries (model.eval())")
        return torch.ops.aten._scaled_dot_product_attention_math(query, key, value, attn_mask, 0.0, is_causal,
                                                                 None, scale=scale)[0]

    @classmethod
    def _native(cls, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
        """The op itself forward, its exact exportable form backward; None where Resize would not
        sample where torch does: a scale factor that is not the sizes' ratio (torch then maps
        coordinates by the factor, Resize by the sizes), nearest by a factor that is not an integer."""
        if mode not in ("bilinear", "nearest") or antialias:
            return None
        h, w = x.shape[-2:]
        oh, ow, by_sizes = _output_size(x, size, scale_factor)
        if not by_sizes or (mode == "nearest" and (oh % h or ow % w)):
            return None
        spec = {"size": (int(oh), int(ow)), "mode": mode, "align_corners": align_corners}
        return _ResampledForward.apply(x, (int(oh), int(ow)), mode, bool(align_corners),
                                       lambda t: cls._interpolate(t, **spec))

    @staticmethod
    def _interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                     recompute_scale_factor=None, antialias=False):
        if mode not in ("bilinear", "nearest", "nearest-exact") or antialias:
            return None
        h, w = x.shape[-2:]
        oh, ow, _ = _output_size(x, size, scale_factor)
        if mode in ("bilinear", "nearest") and not align_corners and oh % h == 0 and ow % w == 0:
            fast = _upsample_integer(x, oh // h, ow // w, mode)
            if fast is not None:
                return fast
        common = {"mode": mode, "align_corners": align_corners, "recompute_scale_factor": recompute_scale_factor}
        if size is not None:
            oh, ow = (size, size) if isinstance(size, int) else size
            mh = _matrix(F.interpolate, h, size=(1, oh), **common)
            mw = _matrix(F.interpolate, w, size=(1, ow), **common)
        else:
            sh, sw = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
            mh = _matrix(F.interpolate, h, scale_factor=(1.0, float(sh)), **common)
            mw = _matrix(F.interpolate, w, scale_factor=(1.0, float(sw)), **common)
        return _separable(x, mh, mw)


def _convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    """aten.convolution_backward, input gradient only (the weights are constants here): the
    adjoint of a convolution is the transposed convolution with the same weights, and vice versa;
    output_padding restores the rows/columns a strided convolution dropped."""
    grad_input = None
    if output_mask[0]:
        if transposed:
            grad_input = torch.ops.aten.convolution(grad_output, weight, None, stride, padding, dilation,
                                                    False, [0] * len(stride), groups)
        elif all(s == 1 for s in stride) and all(p <= d * (k - 1) for p, d, k in zip(padding, dilation,
                                                                                     weight.shape[2:])):
            # stride 1: the adjoint is also a plain convolution, with the kernel flipped and each
            # group's in/out channels swapped; ONNX Runtime runs Conv ~2x faster than ConvTranspose
            grad_input = torch.ops.aten.convolution(
                grad_output, _adjoint_kernel(weight, groups), None, stride,
                [d * (k - 1) - p for p, d, k in zip(padding, dilation, weight.shape[2:])], dilation,
                False, [0] * len(stride), groups)
        else:
            extra = [i - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for i, o, s, p, d, k in zip(
                input.shape[2:], grad_output.shape[2:], stride, padding, dilation, weight.shape[2:])]
            grad_input = torch.ops.aten.convolution(grad_output, weight, None, stride, padding, dilation,
                                                    True, extra, groups)
    if output_mask[1] or output_mask[2]:
        raise InvalidInput("the traced CAM needs no weight gradients; a parameter asked for one")
    return grad_input, None, None


def _adjoint_kernel(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """[K_out, K_in/g, kh, kw] -> [K_in, K_out/g, kh, kw]: per group in/out swapped, spatially flipped."""
    k_out, k_in_g = weight.shape[:2]
    w = weight.reshape(groups, k_out // groups, k_in_g, *weight.shape[2:]).transpose(1, 2)
    return w.reshape(groups * k_in_g, k_out // groups, *weight.shape[2:]).flip(-2, -1)


def _prune_channel_slices(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A convolution whose every use is a slice of its channels computes only those: the backward
    of a concatenation slices the input gradient of the convolution after it, and the half that
    belongs to a skip connection (which does not depend on the CAM layer) is dropped unused."""
    aten = torch.ops.aten
    gm.graph.eliminate_dead_code()  # the unused halves go first, so the used slices are the only users
    for conv in list(gm.graph.nodes):
        if conv.target is not aten.convolution.default or not conv.users:
            continue
        x, weight, bias, stride, padding, dilation, transposed, output_padding, groups = conv.args
        if groups != 1 or bias is not None or not all(
                u.target is aten.slice.Tensor and len(u.args) >= 2 and u.args[1] == 1
                and (len(u.args) < 5 or u.args[4] == 1) for u in conv.users):
            continue
        out_dim = 1 if transposed else 0  # the weight's axis of the output channels
        for use in list(conv.users):
            start, end = (list(use.args[2:4]) + [None, None])[:2]
            with gm.graph.inserting_before(use):
                w = gm.graph.call_function(aten.slice.Tensor, (weight, out_dim, start or 0, end))
                new = gm.graph.call_function(aten.convolution.default, (x, w, *conv.args[2:]))
            new.meta = dict(use.meta)  # the slice's shape: later passes read it
            use.replace_all_uses_with(new)
            gm.graph.erase_node(use)
        gm.graph.erase_node(conv)
    gm.graph.lint()
    gm.recompile()
    return gm


def _is_sum_pool(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    """A depthwise convolution with one constant kernel for every channel, stride = kernel size and
    no padding: a (weighted) sum pooling, as the backward of a nearest upsampling is."""
    aten = torch.ops.aten
    if node.target is not aten.convolution.default:
        return False
    y, k, bias, stride, padding, dilation, transposed, _, groups = node.args
    if bias is not None or transposed or any(padding) or any(d != 1 for d in dilation) or k.op != "get_attr":
        return False
    kv = getattr(gm, k.target)
    shape = y.meta.get("val", None)
    return (shape is not None and groups == kv.shape[0] == shape.shape[1] and kv.shape[1] == 1
            and tuple(kv.shape[2:]) == tuple(stride) and bool((kv == kv[:1]).all())
            and all(n % s == 0 for n, s in zip(shape.shape[2:], stride)))


def _kernel_shape(weight: torch.fx.Node) -> tuple[int, ...] | None:
    """A convolution weight's shape as traced (_prune_channel_slices's sliced weights: the sliced one's)."""
    node = weight.args[0] if weight.target is torch.ops.aten.slice.Tensor else weight
    val = node.meta.get("val")
    return None if val is None else tuple(val.shape)


def _is_fusable_convolution(node: torch.fx.Node) -> bool:
    """A dense stride-1 convolution without bias used once (by a sum pooling or an Add before one)."""
    aten = torch.ops.aten
    if node.target is not aten.convolution.default or len(node.users) != 1:
        return False
    x, weight, bias, stride, _, dilation, transposed, _, groups = node.args
    return (bias is None and not transposed and groups == 1 and all(s == 1 for s in stride)
            and all(d == 1 for d in dilation) and _kernel_shape(weight) is not None
            and "val" in node.meta and "val" in x.meta)


def _fuse_pooled_convolutions(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A stride-1 convolution followed by a sum pooling (the backward of a nearest upsampling after
    a decoder convolution's backward) becomes one convolution on the pooled grid whose kernel is the
    two kernels convolved: (k+s-1)^2 taps every s x s pixels instead of k^2 every pixel, 16/36 of the
    work for 3x3 and 2x2. A pooling of an Add is split into the pooling of each term first, when a
    term is such a convolution (FPN's top-down path adds them). Exact: the pooling reads only the
    convolution's own grid (no padding, sizes multiples of the stride), and the zero padding of the
    fused convolution is the first one's."""
    aten = torch.ops.aten
    graph = gm.graph

    def fused(conv: torch.fx.Node, pool: torch.fx.Node) -> torch.fx.Node:
        x, weight, _, _, padding = conv.args[:5]
        kernel, stride = pool.args[1], pool.args[3]
        kh, kw = _kernel_shape(weight)[2:]
        o, i = conv.meta["val"].shape[1], x.meta["val"].shape[1]
        one = f"_pool_kernel_{len(list(gm.named_buffers()))}"
        gm.register_buffer(one, getattr(gm, kernel.target)[:1].clone())  # [1, 1, s, s]
        sh, sw = stride
        k1 = graph.get_attr(one)
        dense = graph.call_function(aten.clone.default, (weight,), {"memory_format": torch.contiguous_format})
        flat = graph.call_function(aten.view.default, (dense, [o * i, 1, kh, kw]))
        # full 2-D convolution of each kernel with the pooling's: a transposed convolution
        both = graph.call_function(aten.convolution.default, (flat, k1, None, [1, 1], [0, 0], [1, 1], True,
                                                              [0, 0], 1))
        w = graph.call_function(aten.view.default, (both, [o, i, kh + sh - 1, kw + sw - 1]))
        out = graph.call_function(aten.convolution.default, (x, w, None, list(stride), list(padding), [1, 1], False,
                                                             [0, 0], 1))
        out.meta = dict(pool.meta)
        return out

    for pool in list(graph.nodes):
        if not _is_sum_pool(pool, gm):
            continue
        y = pool.args[0]
        with graph.inserting_before(pool):
            if _is_fusable_convolution(y):
                new = fused(y, pool)
            elif (y.target is aten.add.Tensor and len(y.users) == 1 and len(y.args) == 2 and not y.kwargs
                  and all(isinstance(a, torch.fx.Node) and a.meta.get("val") is not None
                          and a.meta["val"].shape == y.meta["val"].shape for a in y.args)
                  and any(_is_fusable_convolution(a) for a in y.args)):
                terms = [fused(a, pool) if _is_fusable_convolution(a) else
                         graph.call_function(aten.convolution.default, (a, *pool.args[1:])) for a in y.args]
                new = graph.call_function(aten.add.Tensor, tuple(terms))
            else:
                continue
        new.meta = dict(pool.meta)
        pool.replace_all_uses_with(new)
        graph.erase_node(pool)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm


def _decompositions() -> dict:
    from torch._decomp import core_aten_decompositions
    table = dict(core_aten_decompositions())
    table[torch.ops.aten.convolution_backward.default] = _convolution_backward
    return table


# ---------------------------------------------------------------------------------------------
# The explained forward pass that is traced


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per image of [B, h, w]: x - min, / (max + 1e-7), as pytorch-grad-cam's scale_cam_image."""
    x = x - x.amin((1, 2), keepdim=True)
    return x / (x.amax((1, 2), keepdim=True) + _EPS)


class _ResizeRecorder(torch.overrides.TorchFunctionMode):
    """Inside: remembers every F.interpolate's output and input, so the explainer can find the
    model's class scores on its own grid when its output is a resize of them (smp's segmentation
    head, torchvision's final F.interpolate). Nested inside _ResampleAsMatMul while tracing: the
    call goes on to that mode, and what is recorded is what the graph computes."""

    def __init__(self):
        super().__init__()
        self.sources: list[tuple[torch.Tensor, torch.Tensor]] = []  # (output, input)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.interpolate and isinstance(out, torch.Tensor):
            self.sources.append((out, args[0]))
        return out

    def source_of(self, z: torch.Tensor) -> torch.Tensor | None:
        """The input of the resize whose output is z (the same tensor), else None."""
        for out, src in reversed(self.sources):
            if out is z and src.dim() == 4 and src.shape[:2] == z.shape[:2]:
                return src
        return None


class TracedExplainer(nn.Module):
    """uint8 RGB [B, H, W, 3] -> (labels uint8, ebu, cam, pmax float16 [B, H, W], embedding float32
    [B, D]) for any segmentation model (segxal.models.external.logits_of reads its output), with
    the GradCAM of `target` at `layer`. Autograd runs inside forward (to be traced by make_fx).

    Where the class statistics are computed (`uncertainty_at`, the rule of segxal.graph.add_eem):
    "input" on the logits at the input's size (the model's output, resized if it is smaller);
    "model" on the model's own grid (the logits before the model's final resize, or SegFormer's 1/4
    logits), EBU and p_max then resized bilinearly to the input's size, the labels still the argmax
    at the input's size. The target is defined on the same logits, and its EBU is the one the
    outputs give (computed once): with "model" the backward never touches the full-resolution
    tensors, which is most of a light model's CAM cost (docs/cam.md, Cost).

    Args:
        model: the segmentation model, eval mode.
        layer: a submodule name (resolve_layer), e.g. "encoder.layer4", or several joined by "+"
            (one CAM: each layer's min-max scaled and resized, their mean scaled again, as
            pytorch-grad-cam aggregates target layers; the embedding pools the first).
        target: the CAM target.
        mean, std: the normalisation statistics applied in the graph.
        uncertainty_at: "input" or "model".
        method: the channel weighting, one of CAM_METHODS (segxal.eem.gradcam.layer_cam).
    """

    def __init__(self, model: nn.Module, layer: str, target: CamTarget, mean, std, uncertainty_at: str = "input",
                 method: str = DEFAULT_CAM_METHOD):
        super().__init__()
        if uncertainty_at not in UNCERTAINTY_AT:
            raise InvalidInput(f"uncertainty_at must be one of {UNCERTAINTY_AT}, got {uncertainty_at!r}")
        check_cam_method(method)
        self.model, self.layer, self.target, self.uncertainty_at = model, layer, target, uncertainty_at
        self.method = method
        self.layers = [(name, *resolve_layer(model, name)) for name in split_layers(layer)]  # (name, module, of_input)
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean, dtype=torch.float32) /
                                       torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1))

    def scores(self, x: torch.Tensor, recorder: _ResizeRecorder) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised x [B, 3, H, W] -> (logits at the input's size [B, C, H, W], the logits the
        statistics and the target use: the same tensor, or the model's own grid [B, C, h, w])."""
        from segxal.models.external import logits_of
        out = logits_of(self.model(x))  # [B, C, h, w]
        native = out if out.shape[-2:] != x.shape[-2:] else recorder.source_of(out)
        full = out if out.shape[-2:] == x.shape[-2:] else \
            F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)  # [B, C, H, W]
        return full, (native if self.uncertainty_at == "model" and native is not None else full)

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised x [B, 3, H, W] -> (labels [B, H, W] int64, ebu, pmax, cam [B, H, W] float32,
        embedding [B, D])."""
        from segxal.eem.ebu import prediction_statistics
        stores: list[dict] = [{} for _ in self.layers]
        with contextlib.ExitStack() as stack:
            for (_, module, of_input), store in zip(self.layers, stores):
                stack.enter_context(capture_activation(module, of_input, store))
            rec = stack.enter_context(_ResizeRecorder())
            stack.enter_context(torch.enable_grad())
            full, z = self.scores(x, rec)
            for (name, _, _), store in zip(self.layers, stores):
                if "a" not in store:
                    raise InvalidInput(f"layer {name!r} did not run in the model's forward pass")
            acts = [store["a"] for store in stores]  # [B, K_l, h_l, w_l] each
            # classes last: ONNX Runtime's reductions over a strided class axis transpose around themselves
            labels, ebu, pmax = prediction_statistics(z.detach().movedim(1, -1), dim=-1)  # [B, h', w'] each
            with torch.no_grad():
                seed = self.target.seed(z.detach(), labels)  # [B, C, h', w']: dT/dz
            grads = torch.autograd.grad(z, acts, seed, allow_unused=True)
        for (name, _, _), grad in zip(self.layers, grads):
            if grad is None:  # the target does not depend on this layer
                raise InvalidInput(f"the CAM target does not depend on layer {name!r}")
        ebu, pmax = ebu.detach(), pmax.detach()
        if z is not full:  # statistics on the model's grid: the maps to the input's size, the labels from it
            labels = full.detach().movedim(1, -1).argmax(-1)
            ebu, pmax = (F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                         for m in (ebu, pmax))
        # per layer min-max scaled and resized; several layers averaged, then scaled again (pytorch-grad-cam)
        cams = [F.interpolate(_minmax(self.cam_map(a.detach(), g.detach()))[:, None], size=x.shape[-2:],
                              mode="bilinear", align_corners=False)[:, 0] for a, g in zip(acts, grads)]
        cam = cams[0] if len(cams) == 1 else torch.stack(cams).mean(0)  # [B, H, W]
        pooled = acts[0].detach().mean((2, 3))  # [B, K] of the first layer
        embedding = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [B, K], unit length
        return labels, ebu, pmax, _minmax(cam), embedding

    def cam_map(self, a: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The CAM on the layer's grid (GradCAM: ReLU(sum_k alpha_k A_k), alpha_k = mean_{h,w} dT/dA_k);
        a, grad [B, K, h, w] -> [B, h, w] (bench/cam_health.py --weighting tries others here)."""
        return layer_cam(a, grad, self.method)

    def forward(self, image: torch.Tensor):
        x = image.permute(0, 3, 1, 2).float() * self.scale - self.shift  # [B, 3, H, W]
        labels, ebu, pmax, cam, embedding = self.explain(x)
        return labels.to(torch.uint8), ebu.half(), cam.half(), pmax.half(), embedding


class ScoresOf(nn.Module):
    """The logits an explainer's target is defined on, as a model: pytorch-grad-cam on this module
    with the same layer and target computes the CAM the explainer computes (the reference of the
    tests and of bench/cam_health.py)."""

    def __init__(self, explainer: TracedExplainer):
        super().__init__()
        self.explainer = explainer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _ResizeRecorder() as rec:
            return self.explainer.scores(x, rec)[1]


def trace_explainer(explainer: TracedExplainer, example: torch.Tensor) -> torch.fx.GraphModule:
    """Forward and backward to the CAM layer as one plain ATen graph (no autograd left)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    with _ResampleAsMatMul(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _fuse_pooled_convolutions(_prune_channel_slices(
            make_fx(explainer, decomposition_table=_decompositions())(example)))


# ---------------------------------------------------------------------------------------------
# Export


@dataclass
class TracedExport:
    """What export_traced wrote."""
    path: Path
    layer: str
    target: str
    num_classes: int
    embedding_dim: int
    batch: int
    input_hw: tuple[int, int]
    uncertainty_at: str = DEFAULT_UNCERTAINTY_AT
    method: str = DEFAULT_CAM_METHOD
    parity: dict = field(default_factory=dict)  # output -> max |ONNX - PyTorch| (labels: disagreement share)


def export_traced(model: nn.Module, path: str | os.PathLike, input_hw: tuple[int, int], layer: str | None = None,
                  target: str = DEFAULT_CAM_TARGET, class_names: Sequence[str] | None = None,
                  mean=None, std=None, batch: int = 1, check: bool = True, seed: int = 0,
                  sample_images: np.ndarray | None = None,
                  uncertainty_at: str = DEFAULT_UNCERTAINTY_AT, method: str = DEFAULT_CAM_METHOD) -> TracedExport:
    """Export `model` with labels, ebu, cam, pmax and embedding (see the module docstring).

    Args:
        model: any segmentation nn.Module (exported in eval mode; its mode is restored).
        path: the model.onnx to write (atomically; one self-contained file).
        input_hw: (H, W) of the graph's uint8 input [batch, H, W, 3].
        layer: the CAM layer (resolve_layer's syntax), several joined by "+", or stage rules
            (expand_layers: "default", "last", "strideS"); None: DEFAULT_LAYERS (the family's default).
        target: one of CAM_TARGETS.
        class_names: the model's classes ("objects" picks its object classes among them).
        mean, std: in-graph normalisation (default ImageNet/Cityscapes statistics).
        batch: the graph's fixed batch size.
        check: run ONNX Runtime against the PyTorch explainer on two random images' worth of input
            and raise when they disagree.
        seed: of the check's images.
        sample_images: uint8 [N, h, w, 3] real frames added to the check.
        uncertainty_at: "input" or "model" (TracedExplainer): the grid of EBU, p_max and the target.
        method: the CAM's channel weighting, one of CAM_METHODS.

    Returns:
        TracedExport (the parity figures filled when check is True).

    Raises:
        InvalidInput: no such layer, target or method, a layer the target does not depend on, or
            fewer than 2 classes.
        segxal.export.ParityError: ONNX Runtime disagrees with PyTorch (check=True).
    """
    import onnx

    from segxal.data.cityscapes import MEAN, STD
    from segxal.imageio import atomic_write_bytes
    path = Path(path)
    h, w = input_hw
    was_training = model.training
    model.eval()
    try:
        layer = expand_layers(model, layer or DEFAULT_LAYERS, (h, w))
        mean, std = MEAN if mean is None else mean, STD if std is None else std
        num_classes = _num_classes(model, (h, w))
        explainer = TracedExplainer(model, layer, make_target(target, class_names, num_classes), mean, std,
                                    uncertainty_at, method).eval()
        example = torch.zeros(batch, h, w, 3, dtype=torch.uint8)
        graph = trace_explainer(explainer, example)
        with torch.no_grad():
            outs = graph(example)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet("onnx_ir", "onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUTS),
                                        dynamo=True, external_data=False, verbose=False,
                                        custom_translation_table=onnx_translations())
            program.save(str(Path(tmp) / "m.onnx"))
            proto = onnx.load(str(Path(tmp) / "m.onnx"))
        onnx.helper.set_model_props(proto, {METADATA_CAM_LAYER: layer, METADATA_CAM_TARGET: target,
                                            METADATA_CAM_METHOD: method, METADATA_UNCERTAINTY_AT: uncertainty_at})
        onnx.checker.check_model(proto)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, proto.SerializeToString())
        result = TracedExport(path=path, layer=layer, target=target, num_classes=num_classes,
                              embedding_dim=int(outs[4].shape[1]), batch=batch, input_hw=(h, w),
                              uncertainty_at=uncertainty_at, method=method)
        if check:
            result.parity = check_traced(explainer, path, batch, (h, w), seed, sample_images)
    finally:
        model.train(was_training)
    return result


@contextlib.contextmanager
def _quiet(*names: str):
    """The exporter's optimisation passes log every initializer they merge at INFO: keep them at WARNING."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _num_classes(model: nn.Module, hw: tuple[int, int]) -> int:
    from segxal.models.external import logits_of
    with torch.no_grad():
        c = int(logits_of(model(torch.zeros(1, 3, *hw))).shape[1])
    if c < 2:
        raise InvalidInput(f"the model gives {c} class(es); segmentation needs >= 2")
    return c


# parity bounds: float16 outputs in [0, 1] have a step of 4.9e-4 below 1; the CAM's min-max scaling
# magnifies float32 rounding where the raw range is small (as segxal.export.ExportConfig says)
MAX_ABS_DIFF = 5e-3
CAM_MAX_ABS_DIFF = 2e-2
MIN_LABEL_AGREEMENT = 0.999


def check_traced(explainer: TracedExplainer, path: str | os.PathLike, batch: int, hw: tuple[int, int],
                 seed: int = 0, sample_images: np.ndarray | None = None) -> dict:
    """ONNX Runtime against the eager explainer (autograd) on smooth random images, and on
    `sample_images` (uint8 [N, h, w, 3] real frames, resized to hw) when given.

    Returns:
        {"labels": share of disagreeing pixels, "<output>": max abs difference}.

    Raises:
        segxal.export.ParityError: beyond the bounds above.
    """
    import onnxruntime as ort

    from segxal.export import ParityError
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (batch, max(1, hw[0] // 8), max(1, hw[1] // 8), 3), dtype=np.uint8)
    images = np.ascontiguousarray(np.kron(small, np.ones((1, 8, 8, 1), np.uint8))[:, :hw[0], :hw[1]])
    images = np.pad(images, ((0, 0), (0, hw[0] - images.shape[1]), (0, hw[1] - images.shape[2]), (0, 0)), mode="edge")
    batches = [images]
    if sample_images is not None and len(sample_images):
        from segxal.resize import resize_image
        frames = np.stack([resize_image(im, hw) for im in sample_images])
        batches += [frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    report: dict = {}
    for x in batches:
        got = session.run(list(OUTPUTS), {INPUT_NAME: x})
        ref = [t.detach().numpy() for t in explainer(torch.from_numpy(x))]
        report["labels"] = max(report.get("labels", 0.0), float(np.mean(got[0] != ref[0])))
        for name, g, r in zip(OUTPUTS[1:], got[1:], ref[1:]):
            report[name] = max(report.get(name, 0.0), float(np.abs(g.astype(np.float32) - r.astype(np.float32)).max()))
    failures = [f"{k} max abs diff {v:.2e}" for k, v in report.items()
                if k != "labels" and not v <= (CAM_MAX_ABS_DIFF if k == "cam" else MAX_ABS_DIFF)]
    if not report["labels"] <= 1 - MIN_LABEL_AGREEMENT:
        failures.append(f"labels disagree on {report['labels']:.2%} of pixels")
    if failures:
        raise ParityError(f"{path}: the traced CAM graph disagrees with PyTorch: {'; '.join(failures)}")
    return report


def describe_cam(layer: str, target: str, method: str = DEFAULT_CAM_METHOD) -> str:
    """The cam_layer parameter of a traced export: "<layer> (<target>)", "<layer> (<target>, <method>)"
    for a method other than GradCAM."""
    return f"{layer} ({describe_target(target, method)})"


def serving_spec(export: TracedExport, class_names: Sequence[str] | None = None, mean=None, std=None):
    """The serving contract (segxal.modelspec.ModelSpec) of a graph export_traced wrote: uint8
    input at the declared size, the four maps, `embedding` FP32 [D], and the fixed batch.

    Raises:
        InvalidInput: class names that do not fit the model's class count.
    """
    from segxal.data.cityscapes import MEAN, STD
    from segxal.modelspec import EMBEDDING, SEGMENTATION, ModelSpec, Preprocessing, TensorSpec
    h, w = export.input_hw
    outputs = (TensorSpec("labels", "UINT8", (h, w)),) + tuple(
        TensorSpec(n, "FP16", (h, w)) for n in ("ebu", "cam", "pmax")) + (
        TensorSpec(EMBEDDING, "FP32", (export.embedding_dim,)),)
    return ModelSpec(kind=SEGMENTATION, inputs=(TensorSpec(INPUT_NAME, "UINT8", (h, w, 3)),), outputs=outputs,
                     preprocessing=Preprocessing(mean=tuple(MEAN if mean is None else mean),
                                                 std=tuple(STD if std is None else std)),
                     num_classes=export.num_classes, input_size=(h, w),
                     cam_layer=describe_cam(export.layer, export.target, export.method),
                     class_names=tuple(class_names) if class_names is not None else None, fixed_batch=export.batch)


def export_for_serving(model: nn.Module, path: str | os.PathLike, cfg, class_names: Sequence[str] | None = None,
                       layer: str | None = None, target: str = DEFAULT_CAM_TARGET,
                       sample_images: np.ndarray | None = None, uncertainty_at: str = DEFAULT_UNCERTAINTY_AT,
                       method: str = DEFAULT_CAM_METHOD):
    """export_traced as segxal.export.export_segmentation is called (the trainer's export of a
    model built by import path): at cfg.trace_hw, with the parity check, returning an ExportResult.

    Args:
        model: a segxal.models.external.ExternalModel (its inner model is exported; layer names are
            the inner model's) or any segmentation nn.Module.
        path: the model.onnx to write.
        cfg: segxal.export.ExportConfig (trace_hw, seed).
        class_names, layer, target, sample_images, uncertainty_at, method: as export_traced.

    Returns:
        segxal.export.ExportResult (spec for config.pbtxt with the fixed batch, parity report).

    Raises:
        segxal.export.ParityError: ONNX Runtime disagrees with PyTorch. InvalidInput: as export_traced.
    """
    from segxal.export import ExportResult, ParityReport
    from segxal.models.external import ExternalModel
    inner = model.inner if isinstance(model, ExternalModel) else model
    export = export_traced(inner, path, tuple(cfg.trace_hw), layer=layer, target=target, class_names=class_names,
                           seed=cfg.seed, sample_images=sample_images, uncertainty_at=uncertainty_at, method=method)
    report = ParityReport(sizes=[(export.batch, *export.input_hw)], label_agreement=1.0 - export.parity["labels"],
                          max_abs_diff={k: v for k, v in export.parity.items() if k != "labels"})
    return ExportResult(path=export.path, spec=serving_spec(export, class_names), parity=report)

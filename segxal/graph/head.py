"""Find the final linear classifier of a segmentation ONNX graph (what segxal.graph.add_eem needs).

A head is recognised when the logits output is produced, walking backwards, by
    [Resize/Upsample] <- Conv k x k                      (torchvision FCN / DeepLabV3, smp FPN / Unet, SegFormer)
    [Resize/Upsample] <- Add(Conv, Conv[, constant])     (summed branches, torchvision LR-ASPP)
with Identity and Dropout nodes skipped, each Conv with constant weights and group 1. The logits
are then linear in the Conv inputs A_b (the GradCAM target layers), which is what makes the
class-agnostic GradCAM analytic there. Anything else is "no linear head": EBU only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

_PASS_THROUGH = ("Identity", "Dropout")
_RESIZE_OPS = ("Resize", "Upsample")


@dataclass
class Branch:
    """One classifier Conv: logits_b = Conv(A, W) (+ bias)."""
    conv: gs.Node
    features: gs.Variable  # A [B, K, h, w], the GradCAM target layer's output
    weight: np.ndarray  # W [C, K, kh, kw]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int] | None  # (top, left, bottom, right); None for auto_pad

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])


@dataclass
class Head:
    """The classifier found in a graph."""
    logits: gs.Variable  # the model's logits output
    head_logits: gs.Variable  # the classifier's output z, before any Resize
    resize: gs.Node | None  # the Resize/Upsample after the classifier, if any
    branches: list[Branch] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.branches[0].weight.shape[0])

    def describe(self) -> str:
        """Human-readable head, e.g. 'Conv 3x3 on /decoder/out' (recorded as the model's cam_layer)."""
        parts = [f"Conv {b.kernel[0]}x{b.kernel[1]} on {b.features.name}" for b in self.branches]
        return " + ".join(parts) + (f" -> {self.resize.op}" if self.resize is not None else "")


class NoLinearHead(Exception):
    """The logits are not produced by a recognisable linear classifier (the reason says where)."""


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) else None


def _skip_pass_through(t: gs.Tensor) -> gs.Tensor:
    node = _producer(t)
    while node is not None and node.op in _PASS_THROUGH:
        t = node.inputs[0]
        node = _producer(t)
    return t


def _ints(node: gs.Node, name: str, default: list[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attrs.get(name, default))


def _branch(conv: gs.Node, num_classes: int | None) -> Branch:
    if conv.op != "Conv":
        raise NoLinearHead(f"{conv.op} node {conv.name!r} where a classifier Conv was expected")
    weight = conv.inputs[1]
    if not isinstance(weight, gs.Constant):
        raise NoLinearHead(f"classifier Conv {conv.name!r} has non-constant weights")
    w = np.asarray(weight.values, dtype=np.float64)
    if w.ndim != 4:
        raise NoLinearHead(f"classifier Conv {conv.name!r} is not 2-D (weight shape {list(w.shape)})")
    if int(conv.attrs.get("group", 1)) != 1:
        raise NoLinearHead(f"classifier Conv {conv.name!r} is grouped")
    if num_classes is not None and w.shape[0] != num_classes:
        raise NoLinearHead(f"summed classifier branches disagree on the class count: {w.shape[0]} vs {num_classes}")
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    pads = _ints(conv, "pads", [0, 0, 0, 0]) if auto_pad == "NOTSET" else None
    if pads is not None:
        pads = (pads[0], pads[1], pads[2], pads[3])
    return Branch(conv=conv, features=conv.inputs[0], weight=w,
                  strides=_ints(conv, "strides", [1, 1])[:2], dilations=_ints(conv, "dilations", [1, 1])[:2],
                  pads=pads)


def find_head(graph: gs.Graph, logits: gs.Variable) -> Head:
    """Walk back from the logits output to the classifier.

    Args:
        graph: the model's graph (onnx_graphsurgeon).
        logits: the output tensor holding the class logits [B, C, H', W'].

    Returns:
        The Head (branches, optional Resize).

    Raises:
        NoLinearHead: the logits do not come from Conv / summed Convs (optionally resized).
    """
    t = _skip_pass_through(logits)
    node = _producer(t)
    resize = None
    if node is not None and node.op in _RESIZE_OPS:
        mode = node.attrs.get("coordinate_transformation_mode", "half_pixel")
        if (mode.decode() if isinstance(mode, bytes) else mode) == "tf_crop_and_resize":
            raise NoLinearHead("Resize with tf_crop_and_resize: its weights do not sum to 1 per pixel")
        resize = node
        t = _skip_pass_through(node.inputs[0])
        node = _producer(t)
    if node is None:
        raise NoLinearHead(f"logits {logits.name!r} are a graph input or constant")
    if node.op == "Conv":
        branches = [_branch(node, None)]
    elif node.op == "Add":
        branches = []
        for inp in node.inputs:
            if isinstance(inp, gs.Constant):
                continue  # a bias added after a bias-free Conv
            producer = _producer(_skip_pass_through(inp))
            if producer is None:
                raise NoLinearHead(f"Add {node.name!r} adds a graph input to the logits")
            branches.append(_branch(producer, branches[0].weight.shape[0] if branches else None))
        if not branches:
            raise NoLinearHead(f"Add {node.name!r} adds only constants")
    else:
        raise NoLinearHead(f"the logits come from a {node.op} node ({node.name!r}), not a Conv classifier "
                           f"(optionally summed branches, optionally resized)")
    return Head(logits=logits, head_logits=t, resize=resize, branches=branches)

"""Add the EEM outputs to any segmentation ONNX graph: `labels` (uint8), `ebu`, `cam`, `pmax`
(float16), all [B, H, W] at the input's size, so a model from elsewhere ranks like our own exports.

The CAM is the class-agnostic GradCAM the project ships (segxal.eem.gradcam): target
T = sum_i z_{y(i)}(i) over full-resolution pixels i, y = argmax, weights alpha_k = mean over A of
dT/dA_k, CAM = ReLU(sum_k alpha_k A_k), scaled as pytorch-grad-cam (min-max, bilinear resize to
H x W, min-max). A is the input of the final linear classifier (segxal.graph.head), the deepest
layer where the gradient is analytic, so the CAM is a few graph nodes and no backward pass:

* logits = Up(Conv(A, W) + b), Up a Resize whose interpolation weights sum to 1 per output pixel
  (or none). Then dT/dz_c summed over the head's positions is n_c, the number of pixels predicted
  as c, and for a k x k kernel every tap t sees that mass, so
      alpha_k = (1/|A|) sum_c sum_t W[c, k, t] * S[c, t],    S[c, t] = n_c away from the borders.
  For a 1x1 kernel this is exact everywhere. For k x k at full resolution (no Resize, stride 1:
  smp Unet's 3x3 head) the borders are exact too: S[c, t] counts the class-c pixels that tap t
  actually reaches (the rows/columns it shifts past the zero padding are left out), from one pass
  over the one-hot labels plus thin edge slices. For k x k followed by a Resize, or a strided
  Conv, the interior value n_c is used at the borders too (an approximation within the border
  taps' share of the mass; recorded as cam_exact = False).
* Summed branches (LR-ASPP: low_classifier(A1) + high_classifier(A2)) give one CAM per branch,
  aggregated as pytorch-grad-cam aggregates several target layers: each ReLU -> min-max -> resize,
  then their mean, then min-max.
* Logits below the input's resolution with no Resize in the graph (SegFormer's 1/4) are upsampled
  bilinearly (align_corners=False) to the input size inside the added outputs; T is defined on
  those upsampled logits.

Where EBU and p_max are computed (`uncertainty_at`): by default ("input") on the logits at the
input's size, exactly segxal.eem.ebu.prediction_statistics of what the model predicts. With
"model", on the grid where the model computes its class scores (before its final Resize, or
SegFormer's 1/4 logits), then resized bilinearly to the input's size: the labels stay the argmax at
the input's size. For a light model the full-resolution softmax over C classes costs as much as a
third of its forward (bench/any_model.py), while a bilinear upsampling of the logits adds no
information to the uncertainty, only smoothness; recorded as `segxal.uncertainty_at` metadata.
Graphs whose logits come at the input's size are the same either way.

The frame embedding (`embedding`, FP32 [B, D]) is the head input's global average pool,
L2-normalised: A as the CAM uses it, so it costs one reduction (summed branches: their pools
concatenated). It feeds diversity selection (docs/design.md, "EEM options and selection").

A graph whose logits do not come from such a head gets labels, ebu and pmax only (cam_layer None):
the EEM service then scores its frames with EBU alone and says so in its response.

References:
    Selvaraju et al., Grad-CAM, ICCV 2017; jacobgil/pytorch-grad-cam 1.5.7 (`BaseCAM`,
    `scale_cam_image`, `aggregate_multi_layers`); docs/design.md, "The EEM as shipped" (GradCAM).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from segxal.errors import InvalidInput
from segxal.graph.head import Head, NoLinearHead, find_head
from segxal.modelspec import TensorSpec

OUTPUTS = ("labels", "ebu", "cam", "pmax")
EMBEDDING_OUTPUT = "embedding"  # FP32 [B, D]: the head input's global average pool, L2-normalised
LOGITS_OUTPUT = "logits"
_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image adds this to the max
METADATA_CAM_LAYER = "segxal.cam_layer"  # ONNX metadata_props keys written with the outputs
METADATA_CAM_EXACT = "segxal.cam_exact"
METADATA_UNCERTAINTY_AT = "segxal.uncertainty_at"
UNCERTAINTY_AT = ("input", "model")


@dataclass
class EEMGraphInfo:
    """What add_eem found and added."""
    num_classes: int
    cam_layer: str | None  # None: no linear head found, EBU only
    cam_exact: bool  # False when border taps use the interior value (see the module docstring)
    reason: str  # why there is no CAM ("" when there is one)
    upsampled: bool  # logits were upsampled to the input size inside the added outputs
    input_layout: str  # "NCHW" | "NHWC" (uint8 [B, H, W, 3] inputs are NHWC)
    outputs: tuple[str, ...]
    uncertainty_at: str = "input"  # where EBU and p_max were computed (the module docstring)
    embedding_dim: int | None = None  # D of the `embedding` output; None: no embedding (no head found)

    def output_specs(self) -> tuple[TensorSpec, ...]:
        """The added outputs as the serving config declares them (batch not included): labels
        UINT8 [H, W], the maps FP16 [H, W], embedding FP32 [D]; a kept `logits` is left out."""
        specs = []
        for name in self.outputs:
            if name == "labels":
                specs.append(TensorSpec(name, "UINT8", (-1, -1)))
            elif name == EMBEDDING_OUTPUT:
                specs.append(TensorSpec(name, "FP32", (int(self.embedding_dim),)))
            elif name != LOGITS_OUTPUT:
                specs.append(TensorSpec(name, "FP16", (-1, -1)))
        return tuple(specs)


class _Builder:
    """Adds nodes to a graph with unique names, opset-aware for the Reduce* axes."""

    def __init__(self, graph: gs.Graph, prefix: str = "segxal_eem"):
        self.graph, self.prefix, self.n = graph, prefix, 0
        self.opset = int(graph.opset)

    def _name(self, op: str) -> str:
        self.n += 1
        return f"/{self.prefix}/{op}_{self.n}"

    def const(self, values, dtype=np.int64) -> gs.Constant:
        return gs.Constant(self._name("c"), np.asarray(values, dtype=dtype))

    def op(self, op: str, inputs: list, attrs: dict | None = None, dtype=None, name: str | None = None) -> gs.Variable:
        out = gs.Variable(name or self._name(op) + "_out", dtype=dtype)
        self.graph.nodes.append(gs.Node(op, self._name(op), attrs=attrs or {}, inputs=inputs, outputs=[out]))
        return out

    def reduce(self, op: str, x, axes: list[int], keepdims: bool) -> gs.Variable:
        # ReduceSum takes axes as an input from opset 13, the other Reduce* ops from opset 18
        if op == "ReduceSum" and self.opset >= 13 or self.opset >= 18:
            return self.op(op, [x, self.const(axes)], {"keepdims": int(keepdims)})
        return self.op(op, [x], {"axes": axes, "keepdims": int(keepdims)})

    def shape_slice(self, x, start: int, end: int) -> gs.Variable:
        return self.op("Slice", [self.op("Shape", [x]), self.const([start]), self.const([end]), self.const([0])])

    def slice(self, x, axis: int, start: int, end: int) -> gs.Variable:
        return self.op("Slice", [x, self.const([start]), self.const([end]), self.const([axis])])

    def resize_to(self, x, hw) -> gs.Variable:
        """Bilinear, half-pixel (torch align_corners=False, cv2 INTER_LINEAR when upsampling)."""
        sizes = self.op("Concat", [self.shape_slice(x, 0, 2), hw], {"axis": 0})
        return self.op("Resize", [x, gs.Variable.empty(), gs.Variable.empty(), sizes],
                       {"mode": "linear", "coordinate_transformation_mode": "half_pixel"})

    def minmax(self, x) -> gs.Variable:
        """Per image of x [B, 1, h, w]: x - min, then / (max + 1e-7), as scale_cam_image."""
        x = self.op("Sub", [x, self.reduce("ReduceMin", x, [1, 2, 3], True)])
        top = self.op("Add", [self.reduce("ReduceMax", x, [1, 2, 3], True), self.const(_EPS, np.float32)])
        return self.op("Div", [x, top])


def _input_layout(x: gs.Variable) -> tuple[str, int]:
    """("NHWC", 1) for uint8 images [B, H, W, 3], else ("NCHW", 2): layout and the H axis."""
    shape = list(x.shape or [])
    if np.dtype(x.dtype) == np.uint8 and len(shape) == 4 and shape[3] == 3:
        return "NHWC", 1
    if len(shape) != 4:
        raise InvalidInput(f"the model's input {x.name!r} must be an image batch [B, 3, H, W] or uint8 "
                           f"[B, H, W, 3], got shape {shape}")
    return "NCHW", 2


def _static_hw(t: gs.Tensor, h_axis: int) -> tuple | None:
    shape = list(t.shape or [])
    if len(shape) != 4:
        return None
    hw = shape[h_axis], shape[h_axis + 1]
    return hw if all(isinstance(v, int) and v > 0 for v in hw) else None


def _at_input_size(model: onnx.ModelProto, logits_name: str, x: gs.Variable, h_axis: int,
                   probe_hw: tuple[int, int] | None) -> bool:
    """True when one ONNX Runtime run proves the logits come out at the input's H x W.

    Exported graphs often declare wrong or symbolic output shapes, so the sizes are measured: at the
    input's static H x W, else at `probe_hw`; with neither, False (the logits get resized, which
    is exact when they already are at the input size, only slower).
    """
    import onnxruntime as ort
    hw = _static_hw(x, h_axis) or probe_hw
    if hw is None:
        return False
    shape = [1, 3, *hw] if h_axis == 2 else [1, *hw, 3]
    dtype = np.uint8 if h_axis == 1 else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
        model.graph.input[0].type.tensor_type.elem_type))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run([logits_name], {x.name: np.zeros(shape, dtype)})
    return out.ndim == 4 and tuple(out.shape[2:]) == tuple(hw)


def _tap_masses(b: _Builder, onehot, branch, counts) -> gs.Variable:
    """S [B, C * kh * kw]: class-c pixel mass that each tap of a stride-1 k x k conv reaches
    (exact at the borders; see the module docstring). onehot [B, C, H, W] float, counts [B, C]."""
    kh, kw = branch.kernel
    dy, dx = branch.dilations
    top, left, bottom, right = branch.pads
    int_max = np.iinfo(np.int64).max

    def window(t: int, k: int, d: int, before: int, after: int) -> tuple[int, int]:
        start = max(0, before - t * d)
        cut = after - d * (k - 1 - t)  # positions lost at the end
        return start, (-cut if cut > 0 else int_max)

    rows = b.reduce("ReduceSum", onehot, [3], False)  # [B, C, H]
    col_cache: dict[tuple[int, int], gs.Variable] = {}
    taps = []
    for ty in range(kh):
        r0, r1 = window(ty, kh, dy, top, bottom)
        for tx in range(kw):
            c0, c1 = window(tx, kw, dx, left, right)
            if (c0, c1) not in col_cache:
                sums = rows
                if c0 > 0:  # columns [0, c0) are out of this tap's reach
                    sums = b.op("Sub", [sums, b.reduce("ReduceSum", b.slice(onehot, 3, 0, c0), [3], False)])
                if c1 != int_max:  # and so are the last -c1 columns
                    sums = b.op("Sub", [sums, b.reduce("ReduceSum", b.slice(onehot, 3, c1, int_max), [3], False)])
                col_cache[(c0, c1)] = sums  # [B, C, H]
            sums = col_cache[(c0, c1)]
            if (r0, r1) == (0, int_max):
                tap = b.reduce("ReduceSum", sums, [2], True)  # [B, C, 1]
            else:
                tap = b.reduce("ReduceSum", b.slice(sums, 2, r0, r1), [2], True)  # [B, C, 1]
            taps.append(tap)
    s = b.op("Concat", taps, {"axis": 2})  # [B, C, kh*kw]
    return b.op("Reshape", [s, b.const([0, -1])])  # [B, C*kh*kw]


def _class_counts(b: _Builder, labels64, num_classes: int) -> gs.Variable:
    """n_c [B, C] float: pixels predicted as each class, by a scatter-add of ones (ONNX has no
    bincount; this reads H x W labels once instead of a C x H x W one-hot). Opset >= 16."""
    flat = b.op("Reshape", [labels64, b.const([0, -1])])  # [B, H*W] int64
    ones = b.op("ConstantOfShape", [b.op("Shape", [flat])],
                {"value": onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])})  # [B, H*W]
    zeros = b.op("ConstantOfShape", [b.op("Concat", [b.shape_slice(flat, 0, 1), b.const([num_classes])], {"axis": 0})],
                 {"value": onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0])})  # [B, C]
    return b.op("ScatterElements", [zeros, flat, ones], {"axis": 1, "reduction": "add"})  # [B, C]


def _branch_cam(b: _Builder, branch, counts, onehot, exact_borders: bool, full_hw) -> gs.Variable:
    """One branch's CAM: ReLU(sum_k alpha_k A_k) -> min-max -> resize to H x W; [B, 1, H, W]."""
    w = branch.weight  # [C, K, kh, kw]
    c, k = w.shape[:2]
    if exact_borders:
        mass = _tap_masses(b, onehot, branch, counts)  # [B, C*kh*kw]
        w_mat = w.transpose(0, 2, 3, 1).reshape(-1, k)  # [C*kh*kw, K], rows in (c, ty, tx) order
    else:
        mass = counts  # [B, C]: every tap sees n_c
        w_mat = w.sum((2, 3))  # [C, K]
    feats = branch.features
    hw = b.shape_slice(feats, 2, 4)
    area = b.op("Cast", [b.reduce("ReduceProd", hw, [0], False)], {"to": onnx.TensorProto.FLOAT})
    alpha = b.op("Div", [b.op("MatMul", [mass, b.const(w_mat, np.float32)]), area])  # [B, K]
    flat = b.op("Reshape", [feats, b.const([0, 0, -1])])  # [B, K, h*w]
    cam = b.op("MatMul", [b.op("Unsqueeze", [alpha, b.const([1])]), flat])  # [B, 1, h*w]
    shape4 = b.op("Concat", [b.shape_slice(feats, 0, 1), b.const([1]), hw], {"axis": 0})
    cam = b.op("Relu", [b.op("Reshape", [cam, shape4])])  # [B, 1, h, w]
    return b.resize_to(b.minmax(cam), full_hw)  # [B, 1, H, W]


def _embedding(b: _Builder, head: Head) -> gs.Variable:
    """The frame embedding [B, D]: each branch's head input A_b [B, K_b, h, w] averaged over its
    positions, concatenated (D = sum K_b), L2-normalised as torch.nn.functional.normalize (eps 1e-12)."""
    pooled = [b.op("Cast", [b.reduce("ReduceMean", br.features, [2, 3], False)], {"to": onnx.TensorProto.FLOAT})
              for br in head.branches]  # [B, K_b] each
    v = pooled[0] if len(pooled) == 1 else b.op("Concat", pooled, {"axis": 1})  # [B, D]
    norm = b.op("Max", [b.reduce("ReduceL2", v, [1], True), b.const(1e-12, np.float32)])  # [B, 1]
    return b.op("Div", [v, norm], dtype=np.float32, name=EMBEDDING_OUTPUT)


def add_eem_outputs(model: onnx.ModelProto, logits_name: str | None = None, keep_logits: bool = False,
                    require_cam: bool = False, probe_hw: tuple[int, int] | None = None,
                    uncertainty_at: str = "input", embedding: bool = True
                    ) -> tuple[onnx.ModelProto, EEMGraphInfo]:
    """Append labels, ebu, cam and pmax to a segmentation graph (see the module docstring).

    Args:
        model: a segmentation model with one image input ([B, 3, H, W] float, or uint8
            [B, H, W, 3]) and a logits output [B, C, H', W'].
        logits_name: the logits output's name; None takes the graph's only output.
        keep_logits: keep the logits as an output named "logits" (large; for debugging).
        require_cam: raise instead of falling back to EBU only when no linear head is found.
        probe_hw: (H, W) to measure the logits' size at when the input's H and W are dynamic.
        uncertainty_at: "input" (default) or "model": the grid EBU and p_max are computed on.
        embedding: add `embedding` FP32 [B, D], the head input's global average pool L2-normalised
            (for diversity selection); a graph without a recognisable head gets none.

    Returns:
        (the new model, what was found and added).

    Raises:
        InvalidInput: not one image input, no such output, fewer than 2 classes, an unknown
            uncertainty_at, or (with require_cam) no recognisable linear classifier.
    """
    if uncertainty_at not in UNCERTAINTY_AT:
        raise InvalidInput(f"uncertainty_at must be one of {UNCERTAINTY_AT}, got {uncertainty_at!r}")
    graph = gs.import_onnx(model)
    if len(graph.inputs) != 1:
        raise InvalidInput(f"the model must take one image input, it takes {[t.name for t in graph.inputs]}")
    x = graph.inputs[0]
    layout, h_axis = _input_layout(x)
    outputs = {t.name: t for t in graph.outputs}
    if logits_name is None:
        if len(outputs) != 1:
            raise InvalidInput(f"the model has outputs {list(outputs)}; name the logits output")
        logits_name = next(iter(outputs))
    if logits_name not in outputs:
        raise InvalidInput(f"the model has no output {logits_name!r}; its outputs are {list(outputs)}")
    if graph.opset < 13:
        raise InvalidInput(f"opset {graph.opset} is too old; re-export with opset >= 13")
    logits = outputs[logits_name]
    try:
        head: Head | None = find_head(graph, logits)
        reason = ""
    except NoLinearHead as e:
        if require_cam:
            raise InvalidInput(f"no recognisable linear classifier: {e}") from None
        head, reason = None, str(e)
    num_classes = head.num_classes if head is not None else _num_classes(logits)
    if num_classes < 2:
        raise InvalidInput(f"the logits need at least 2 classes, got {num_classes}")

    b = _Builder(graph)
    full_hw = b.shape_slice(x, h_axis, h_axis + 2)  # [2]: the input's H, W
    at_size = head is not None and head.resize is not None or _at_input_size(model, logits_name, x, h_axis, probe_hw)
    full = logits if at_size else b.resize_to(logits, full_hw)  # [B, C, H, W]

    # labels, EBU and p_max (the definitions of segxal.eem.ebu.prediction_statistics) with the
    # classes last: ONNX Runtime's reductions and broadcasts along a strided class axis cost ~3x
    # one contiguous pass, so one Transpose then the fused LogSoftmax kernel is cheaper
    last = b.op("Transpose", [full], {"perm": [0, 2, 3, 1]})  # [B, H, W, C]
    labels64 = b.op("ArgMax", [last], {"axis": -1, "keepdims": 0})  # [B, H, W] int64
    native = None  # the class scores on the model's own grid, when it is coarser than the input's
    if uncertainty_at == "model":
        native = head.head_logits if head is not None and head.resize is not None else None if at_size else logits
    scores = last if native is None else b.op("Transpose", [native], {"perm": [0, 2, 3, 1]})  # [B, h, w, C]
    log_p = b.op("LogSoftmax", [scores], {"axis": -1})
    entropy = b.op("Neg", [b.reduce("ReduceSum", b.op("Mul", [b.op("Exp", [log_p]), log_p]), [-1], False)])
    ebu = b.op("Clip", [b.op("Div", [entropy, b.const(math.log(num_classes), np.float32)]),
                        b.const(0.0, np.float32), b.const(1.0, np.float32)])
    pmax = b.op("Exp", [b.reduce("ReduceMax", log_p, [-1], False)])  # [B, h, w]
    if native is not None:  # bilinear to the input's size; ebu stays in [0, 1], pmax in [1/C, 1]
        ebu, pmax = (b.op("Squeeze", [b.resize_to(b.op("Unsqueeze", [m, b.const([1])]), full_hw), b.const([1])])
                     for m in (ebu, pmax))
    new_outputs = [
        b.op("Cast", [labels64], {"to": onnx.TensorProto.UINT8}, dtype=np.uint8, name="labels"),
        b.op("Cast", [ebu], {"to": onnx.TensorProto.FLOAT16}, dtype=np.float16, name="ebu"),
    ]
    cam_exact = False
    if head is not None:
        # exact border taps need the head's own output grid = the labels' grid (no Resize, stride 1)
        same_grid = head.resize is None and at_size
        exact = [branch.kernel != (1, 1) and same_grid and branch.strides == (1, 1) and branch.pads is not None
                 for branch in head.branches]
        onehot = None
        if any(exact) or b.opset < 16:
            classes = b.const(np.arange(num_classes).reshape(1, -1, 1, 1))  # [1, C, 1, 1]
            onehot = b.op("Cast", [b.op("Equal", [b.op("Unsqueeze", [labels64, b.const([1])]), classes])],
                          {"to": onnx.TensorProto.FLOAT})  # [B, C, H, W]
            counts = b.reduce("ReduceSum", onehot, [2, 3], False)  # [B, C]: n_c
        else:
            counts = _class_counts(b, labels64, num_classes)  # [B, C]: n_c, one pass over the labels
        cams, cam_exact = [], True
        for branch, exact_borders in zip(head.branches, exact):
            cam_exact &= branch.kernel == (1, 1) or exact_borders
            cams.append(_branch_cam(b, branch, counts, onehot, exact_borders, full_hw))
        cam = cams[0] if len(cams) == 1 else b.reduce("ReduceMean", b.op("Concat", cams, {"axis": 1}), [1], True)
        cam = b.op("Squeeze", [b.minmax(cam), b.const([1])])  # [B, H, W]
        new_outputs.append(b.op("Cast", [cam], {"to": onnx.TensorProto.FLOAT16}, dtype=np.float16, name="cam"))
    new_outputs.append(b.op("Cast", [pmax], {"to": onnx.TensorProto.FLOAT16}, dtype=np.float16, name="pmax"))
    batch = (x.shape or ["batch"])[0]
    for t in new_outputs:
        t.shape = [batch, "height", "width"]
    embedding_dim = None
    if embedding and head is not None:
        embedding_dim = int(sum(br.weight.shape[1] for br in head.branches))  # K_b from the classifier weights
        emb = _embedding(b, head)
        emb.shape = [batch, embedding_dim]
        new_outputs.append(emb)
    if keep_logits:
        full.name = LOGITS_OUTPUT
        new_outputs.append(full)
    graph.outputs = new_outputs
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    cam_layer = head.describe() if head is not None else None
    grid = "model" if native is not None else "input"
    onnx.helper.set_model_props(out, {METADATA_CAM_LAYER: cam_layer or "", METADATA_CAM_EXACT: str(cam_exact),
                                      METADATA_UNCERTAINTY_AT: grid})
    onnx.checker.check_model(out)
    info = EEMGraphInfo(num_classes=num_classes, cam_layer=cam_layer, cam_exact=cam_exact, reason=reason,
                        upsampled=not at_size, input_layout=layout, outputs=tuple(t.name for t in new_outputs),
                        uncertainty_at=grid, embedding_dim=embedding_dim)
    return out, info


def _num_classes(logits: gs.Variable) -> int:
    shape = list(logits.shape or [])
    if len(shape) != 4 or not isinstance(shape[1], int):
        raise InvalidInput(f"logits {logits.name!r} must be [B, C, H, W] with a static C, got {shape}")
    return int(shape[1])


def add_eem_file(src: str | os.PathLike, dst: str | os.PathLike, **kwargs) -> EEMGraphInfo:
    """add_eem_outputs on files: read `src`, write `dst` (one file, atomically).

    Raises:
        NotFound: `src` is missing. InvalidInput: as add_eem_outputs, or `src` is not ONNX.
    """
    from pathlib import Path

    from segxal.errors import NotFound
    from segxal.imageio import atomic_write_bytes
    if not Path(src).is_file():
        raise NotFound(f"{src}: no such ONNX file")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends
        raise InvalidInput(f"{src}: not an ONNX model ({e})") from None
    out, info = add_eem_outputs(model, **kwargs)
    atomic_write_bytes(Path(dst), out.SerializeToString())
    return info

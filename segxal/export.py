"""Export the segmentation and depth models to ONNX for serving, and check the export against
PyTorch (parity) before anything is published.

Wire format (docs/design.md, "Services and data flow"): the graph takes `image`, uint8 RGB
[B, H, W, 3], and normalises inside (x / 255 - MEAN) / STD, so a client sends 1 byte per channel
instead of 4 and needs no knowledge of the statistics; batch, height and width are dynamic.
Segmentation outputs are compact: `labels` uint8 argmax, `ebu`, `cam` (GradCAM at the bottleneck,
gradient written out in-graph: segxal.eem.gradcam.explained_forward), `pmax`
float16, all [B, H, W]; `logits` [B, C, H, W] only on request. Depth outputs `inverse_depth`
[B, H, W] float32 (float16 on request).

The exporter is the TorchScript-based one (`dynamo=False`, opset 17): no onnxscript needed and
one self-contained model.onnx (the dynamo exporter writes weights to model.onnx.data; the model
repository copies a whole folder, so either works there).

Each export returns the ModelSpec (segxal.modelspec) that the model repository turns into
config.pbtxt, and a ParityReport: ONNX Runtime vs PyTorch on the same uint8 images, argmax
agreement and max abs difference of every output, at the traced size and at a second size and
batch (which proves the dynamic axes). Below the thresholds the export raises ParityError.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segxal.data.cityscapes import MEAN, STD
from segxal.errors import InvalidInput, SegxalError
from segxal.eem.gradcam import DEFAULT_UNET_CAM_METHOD
from segxal.models.external import FullResLogits, export_logits_onnx
from segxal.models.image_input import EvalMode as _EvalMode, ImageInput as _ImageInput
from segxal.resize import resize_image
from segxal.modelspec import DEPTH, EMBEDDING, NO_CAM, SEGMENTATION, ModelSpec, Preprocessing, TensorSpec

INPUT_NAME = "image"
SEGMENTATION_OUTPUTS = ("labels", "ebu", "cam", "pmax")
LOGITS_OUTPUT = "logits"
DEPTH_OUTPUT = "inverse_depth"


class ParityError(SegxalError):
    """The exported graph disagrees with PyTorch beyond the thresholds; do not publish it."""


@dataclass
class ExportConfig:
    opset: int = 17  # the TorchScript exporter's well-trodden opset; Triton's ORT supports it
    trace_hw: tuple[int, int] = (256, 512)  # size traced with; H and W stay dynamic
    # Declare trace_hw as the model's input_size (segxal.modelspec): the inference client then
    # resizes every frame to it and maps come back at the frame's size, so a model trained at
    # 256 x 512 sees 1024 x 2048 frames at its training scale (the trainer's exports do this).
    declare_input_size: bool = False
    half_outputs: bool = True  # segmentation ebu/cam/pmax (and logits) as float16: half the bytes
    with_logits: bool = False  # add `logits` [B, C, H, W]: large, for debugging and user tools
    # add `embedding` FP32 [B, D]: L2-normalised pooled features for diversity selection (
    # the U-Net's UNet.embed, a model from elsewhere's head input)
    with_embedding: bool = True
    # the U-Net layer it pools (UNet.embedding_layers); None: segxal.models.unet.EMBEDDING_LAYER, the
    # head input, measured best on trained models (bench/embedding_layers.py). An untrained net's
    # head input barely tells frames apart; its bottleneck does (the tests' random-weight models).
    embedding_layer: str | None = None
    depth_half: bool = False  # inverse_depth as float16
    cam_method: str = DEFAULT_UNET_CAM_METHOD  # the U-Net's bottleneck CAM method (segxal.eem.gradcam.CAM_METHODS)
    # parity thresholds
    min_label_agreement: float = 0.999  # argmax may flip at exact ties between float paths
    max_abs_diff: float = 5e-3  # float16 outputs in [0, 1] have a step of 4.9e-4 below 1
    # the CAM is min-max scaled per image after a weighted sum over the bottleneck: float32 rounding
    # in the decoder's VJP and argmax flips at exact ties move its raw range, and the scaling
    # magnifies that where the raw range is small (5.9e-3 seen on random weights at 128x256)
    cam_max_abs_diff: float = 2e-2
    parity_batch: int = 2
    seed: int = 0


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch on the same inputs (worst case over the checked sizes)."""
    sizes: list[tuple[int, int, int]]  # (batch, H, W) checked
    label_agreement: float | None  # fraction of pixels whose argmax agrees (segmentation)
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # output -> max |onnx - torch|
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"sizes {self.sizes}"]
        if self.label_agreement is not None:
            parts.append(f"label agreement {self.label_agreement:.6f}")
        parts += [f"max|d {k}| {v:.2e}" for k, v in self.max_abs_diff.items()]
        return ", ".join(parts) + ("" if self.passed else " FAILED: " + "; ".join(self.failures))


@dataclass
class ExportResult:
    path: Path  # the written model.onnx
    spec: ModelSpec  # what config.pbtxt must say (services.common.model_repository.build_config)
    parity: ParityReport


class _WithLogits(nn.Module):
    """ExplainedSegmenter outputs + logits, captured from the head during the same forward pass
    (a hook, not a second network pass in the graph)."""

    def __init__(self, explained: nn.Module, half: bool):
        super().__init__()
        self.explained = explained
        self.half = half

    def forward(self, x: torch.Tensor):
        captured = {}
        handle = self.explained.model.head.register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
        try:
            outputs = self.explained(x)
        finally:
            handle.remove()
        logits = self.explained.model.upsample(captured["z"])  # [B, C, H, W]
        return (*outputs, logits.half() if self.half else logits)


class _WithEmbedding(nn.Module):
    """The wrapped outputs + `embedding` [B, D] (UNet.embed's features), captured by a hook during
    the same forward pass, so the graph pools features it computes anyway."""

    def __init__(self, inner: nn.Module, model: nn.Module, layer: str | None = None):
        super().__init__()
        self.inner, self.model, self.layer = inner, model, layer

    def forward(self, x: torch.Tensor):
        captured = {}
        handle = self.model.embedding_module(self.layer).register_forward_hook(
            lambda m, i, o: captured.setdefault("f", o))
        try:
            outputs = self.inner(x)
        finally:
            handle.remove()
        return (*outputs, self.model.pool_embedding(captured["f"]))


def _export_graph(module: nn.Module, path: Path, output_names: list[str], cfg: ExportConfig) -> None:
    """Trace `module` (uint8 NHWC in) to `path` atomically, with dynamic batch/height/width."""
    import onnx
    h, w = cfg.trace_hw
    example = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    dynamic = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}}
    for name in output_names:
        dynamic[name] = {0: "batch", 2: "height", 3: "width"} if name == LOGITS_OUTPUT else \
            {0: "batch"} if name == EMBEDDING else {0: "batch", 1: "height", 2: "width"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the U-Net's size check and shape arithmetic are constant-folded at the traced size on
            # purpose; the parity check at a second size proves the graph stays dynamic
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, (example,), tmp, input_names=[INPUT_NAME], output_names=output_names,
                              dynamic_axes=dynamic, opset_version=cfg.opset, dynamo=False)
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parity_inputs(cfg: ExportConfig, multiple: int, samples: np.ndarray | None) -> list[np.ndarray]:
    """The traced size with parity_batch images, and a second, smaller size with one image."""
    rng = np.random.default_rng(cfg.seed)
    h, w = cfg.trace_hw
    batches = [rng.integers(0, 256, (cfg.parity_batch, h, w, 3), dtype=np.uint8)]
    h2, w2 = max(multiple, (h // 2) // multiple * multiple), max(multiple, (w // 2) // multiple * multiple)
    if (h2, w2) == (h, w):
        h2, w2 = h + multiple, w + multiple
    batches.append(rng.integers(0, 256, (1, h2, w2, 3), dtype=np.uint8))
    if samples is not None:
        if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[-1] != 3:
            raise InvalidInput(f"sample images must be uint8 [B, H, W, 3], got {samples.dtype} {list(samples.shape)}")
        batches.append(samples)
    return batches


def check_parity(module: nn.Module, onnx_path: str | os.PathLike, output_names: list[str],
                 inputs: list[np.ndarray], cfg: ExportConfig | None = None) -> ParityReport:
    """Compare an exported graph with the PyTorch module it came from.

    Args:
        module: the traced module (uint8 NHWC in), in eval mode.
        onnx_path: the exported graph.
        output_names: the graph's outputs, in the module's output order; "labels" is compared by
            agreement, the others by max abs difference (in float32).
        inputs: uint8 [B, H, W, 3] batches to compare on.
        cfg: thresholds.

    Returns:
        The report (passed False and failures filled when a threshold is missed).
    """
    import onnxruntime as ort
    cfg = cfg or ExportConfig()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    agree = total = 0
    diffs: dict[str, float] = {}
    for images in inputs:
        with torch.inference_mode():
            ref = module(torch.from_numpy(images))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(output_names, {INPUT_NAME: images})
        for name, r, g in zip(output_names, ref, got):
            r = r.numpy()
            if r.shape != g.shape or r.dtype != g.dtype:
                raise ParityError(f"output {name!r}: ONNX gives {g.dtype} {list(g.shape)}, "
                                  f"PyTorch {r.dtype} {list(r.shape)}")
            if name == "labels":
                agree += int((r == g).sum())
                total += r.size
            else:
                d = float(np.abs(r.astype(np.float32) - g.astype(np.float32)).max()) if r.size else 0.0
                diffs[name] = max(diffs.get(name, 0.0), d)
    report = ParityReport(sizes=[tuple(int(s) for s in x.shape[:3]) for x in inputs],
                          label_agreement=agree / total if total else None, max_abs_diff=diffs)
    if report.label_agreement is not None and report.label_agreement < cfg.min_label_agreement:
        report.failures.append(f"label agreement {report.label_agreement:.6f} < {cfg.min_label_agreement}")
    bound = {"cam": cfg.cam_max_abs_diff}
    report.failures += [f"{k}: max abs diff {v:.2e} > {bound.get(k, cfg.max_abs_diff)}"
                        for k, v in diffs.items() if not v <= bound.get(k, cfg.max_abs_diff)]  # NaN fails too
    report.passed = not report.failures
    return report


def _export_checked(module: nn.Module, path: Path, output_names: list[str], spec: ModelSpec,
                    cfg: ExportConfig, multiple: int, samples: np.ndarray | None) -> ExportResult:
    h, w = cfg.trace_hw
    if h % multiple or w % multiple:
        raise InvalidInput(f"trace_hw {cfg.trace_hw} must be multiples of {multiple} for this model")
    _export_graph(module, path, output_names, cfg)
    report = check_parity(module, path, output_names, _parity_inputs(cfg, multiple, samples), cfg)
    if not report.passed:
        raise ParityError(f"{path}: ONNX export disagrees with PyTorch: {report.summary()}")
    return ExportResult(path=path, spec=spec, parity=report)


def export_segmentation(model: nn.Module, path: str | os.PathLike, cfg: ExportConfig | None = None,
                        class_weights: torch.Tensor | None = None,
                        sample_images: np.ndarray | None = None,
                        class_names: tuple[str, ...] | None = None) -> ExportResult:
    """Export a segmentation model with its explanations: the project's U-Net through
    segxal.eem.explain.ExplainedSegmenter (dynamic H, W), any other model through
    export_any_segmentation (fixed H, W = cfg.trace_hw, the EEM outputs added by segxal.graph).

    Args:
        model: segxal.models.unet.UNet (its head is a 1x1 conv then a bilinear upsampling), or any
            segmentation nn.Module (segxal.models.external.logits_of reads its output).
        path: the model.onnx to write (atomically).
        cfg: export options and parity thresholds.
        class_weights: optional GradCAM class weights [C] baked into the graph (U-Net only).
        sample_images: optional uint8 [B, H, W, 3] real frames added to the parity check.
        class_names: the model's classes, index = label value (None: Cityscapes trainIds); go to
            the config's label file.

    Returns:
        ExportResult with the spec for config.pbtxt and the parity report.

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch beyond the thresholds.
        InvalidInput: trace size not a multiple of the model's, bad class weights or samples.
    """
    from segxal.eem.explain import OUTPUT_NAMES, ExplainedSegmenter
    from segxal.models.unet import UNet
    cfg = cfg or ExportConfig()
    if not isinstance(model, UNet):
        if class_weights is not None:
            raise InvalidInput("class_weights are supported for the project's U-Net only")
        return export_any_segmentation(model, path, cfg, sample_images, class_names)
    with _EvalMode(model):
        explained = ExplainedSegmenter(model, class_weights=class_weights, half_outputs=cfg.half_outputs,
                                       cam_method=cfg.cam_method)
        names = list(OUTPUT_NAMES)
        inner: nn.Module = explained
        if cfg.with_logits:
            inner, names = _WithLogits(explained, cfg.half_outputs), names + [LOGITS_OUTPUT]
        if cfg.with_embedding:
            inner, names = _WithEmbedding(inner, model, cfg.embedding_layer), names + [EMBEDDING]
        module = _ImageInput(inner).eval()
        num_classes = model.head.out_channels
        half = "FP16" if cfg.half_outputs else "FP32"
        outputs = [TensorSpec("labels", "UINT8", (-1, -1))] + [
            TensorSpec(n, half, (-1, -1)) for n in OUTPUT_NAMES if n != "labels"]
        if cfg.with_logits:
            outputs.append(TensorSpec(LOGITS_OUTPUT, half, (num_classes, -1, -1)))
        if cfg.with_embedding:
            with torch.no_grad():  # D: the pooled layer's channels
                dim = model.embed(torch.zeros(1, 3, model.multiple, model.multiple), cfg.embedding_layer).shape[1]
            outputs.append(TensorSpec(EMBEDDING, "FP32", (int(dim),)))
        spec = ModelSpec(kind=SEGMENTATION, inputs=(TensorSpec(INPUT_NAME, "UINT8", (-1, -1, 3)),),
                         outputs=tuple(outputs), preprocessing=Preprocessing(mean=MEAN, std=STD),
                         num_classes=num_classes, spatial_multiple=model.multiple,
                         cam_layer=explained.cam_description, class_names=class_names,
                         input_size=tuple(cfg.trace_hw) if cfg.declare_input_size else None)
        return _export_checked(module, Path(path), names, spec, cfg, model.multiple, sample_images)


class _Statistics(nn.Module):
    """Any segmentation model -> (labels uint8, ebu, pmax) at the input size: the PyTorch side of
    the parity check of export_any_segmentation."""

    def __init__(self, model: nn.Module, half: bool):
        super().__init__()
        self.full, self.half = FullResLogits(model), half

    def forward(self, x: torch.Tensor):
        from segxal.eem.ebu import prediction_statistics
        labels, ebu, pmax = prediction_statistics(self.full(x))  # [B, H, W] each
        return labels.to(torch.uint8), ebu.half(), pmax.half()


def export_any_segmentation(model: nn.Module, path: str | os.PathLike, cfg: ExportConfig | None = None,
                            sample_images: np.ndarray | None = None,
                            class_names: tuple[str, ...] | None = None) -> ExportResult:
    """Export any PyTorch segmentation model with the EEM outputs (segxal.graph.add_eem).

    The graph takes uint8 RGB [B, H, W, 3] at H x W = cfg.trace_hw (the declared input size the
    inference client resizes every frame to; batch dynamic) and normalises inside with the
    ImageNet statistics. Parity: labels, EBU and p_max against PyTorch on the same images; the CAM
    is checked against pytorch-grad-cam by the tests (tests/test_graph_add_eem.py).

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch beyond the thresholds.
        InvalidInput: the model's output has no logits, or no class names fit its class count.
    """
    from segxal.graph.add_eem import add_eem_file
    cfg = cfg or ExportConfig()
    path = Path(path)
    h, w = cfg.trace_hw
    with _EvalMode(model), tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        raw = export_logits_onnx(model, Path(tmp) / "logits.onnx", (h, w), uint8_input=True, opset=cfg.opset)
        info = add_eem_file(raw, path, embedding=cfg.with_embedding)
        rng = np.random.default_rng(cfg.seed)
        inputs = [rng.integers(0, 256, (cfg.parity_batch, h, w, 3), dtype=np.uint8)]
        if sample_images is not None:
            inputs.append(np.stack([resize_image(im, (h, w)) for im in sample_images]))
        names = ["labels", "ebu", "pmax"]
        report = check_parity(_ImageInput(_Statistics(model, True)).eval(), path, names, inputs, cfg)
    if not report.passed:
        raise ParityError(f"{path}: ONNX export disagrees with PyTorch: {report.summary()}")
    spec = ModelSpec(kind=SEGMENTATION, inputs=(TensorSpec(INPUT_NAME, "UINT8", (h, w, 3)),),
                     outputs=info.output_specs(), preprocessing=Preprocessing(mean=MEAN, std=STD),
                     num_classes=info.num_classes, input_size=(h, w),
                     cam_layer=info.cam_layer or NO_CAM, class_names=class_names)
    return ExportResult(path=path, spec=spec, parity=report)


class _HalfOutput(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).half()


def export_depth(model: nn.Module, path: str | os.PathLike, cfg: ExportConfig | None = None,
                 sample_images: np.ndarray | None = None) -> ExportResult:
    """Export a depth model (segxal.models.depth.DepthNet: normalised image -> [B, H, W] inverse depth).

    Args:
        model: the depth network.
        path: the model.onnx to write (atomically).
        cfg: export options (depth_half) and parity thresholds.
        sample_images: optional uint8 [B, H, W, 3] real frames added to the parity check.

    Returns:
        ExportResult with the spec for config.pbtxt and the parity report.

    Raises:
        ParityError, InvalidInput: as export_segmentation.
    """
    cfg = cfg or ExportConfig()
    with _EvalMode(model):
        module = _ImageInput(_HalfOutput(model) if cfg.depth_half else model).eval()
        spec = ModelSpec(kind=DEPTH, inputs=(TensorSpec(INPUT_NAME, "UINT8", (-1, -1, 3)),),
                         outputs=(TensorSpec(DEPTH_OUTPUT, "FP16" if cfg.depth_half else "FP32", (-1, -1)),),
                         preprocessing=Preprocessing(mean=MEAN, std=STD), spatial_multiple=model.multiple,
                         input_size=tuple(cfg.trace_hw) if cfg.declare_input_size else None)
        return _export_checked(module, Path(path), [DEPTH_OUTPUT], spec, cfg, model.multiple, sample_images)

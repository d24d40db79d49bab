"""What the in-graph CAM costs: ONNX Runtime time of each model's EEM graph against its plain logits
forward, side by side in alternating rounds on the same weights (CPU, one frame a call, uint8 in).

Per model:
  * "logits"       the plain forward (uint8 in, normalised in the graph, logits out);
  * "EEM traced"   segxal.graph.traced_cam: labels, EBU, p_max, GradCAM at the named layer, embedding;
  * "EEM traced@model" the same with uncertainty_at="model": EBU, p_max and the CAM target on the
                   model's own grid (before its final resize), foreign architectures only;
  * "EEM head"     segxal.graph.add_eem on the logits graph: the analytic head-input CAM (what an
                   ONNX-only model gets), foreign architectures only;
  * "EEM traced@model [T:M]" with --cams T:M: the traced graph with CAM target T and method M (the
    defaults: segxal.graph.traced_cam.DEFAULT_CAM_TARGET / DEFAULT_CAM_METHOD); for the U-Net "EEM VJP
    (M)", its VJP with method M (segxal.eem.gradcam.CAM_METHODS);
  * the project's U-Net also "EEM VJP": its written-out bottleneck VJP (segxal.eem.gradcam), and
    "EEM traced" at the same bottleneck with the same target and grid, to decide whether the U-Net
    keeps its own VJP ("EEM traced@model": the same on the model's grid).

    python bench/cam_cost.py --size 256x512 --rounds 5 --threads 1
    python bench/cam_cost.py --models unet smp_deeplabv3plus --size 128x256
    python bench/cam_cost.py --models smp_fpn --profile     # where the time goes, per ONNX op type
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.cam_health import ARCHITECTURES
from segxal.train import parse_size

# name -> (import path, kwargs): the architectures bench/cam_health.py trains, and "unet", the
# project's own (segxal.models.unet)
MODELS = {"unet": None, **ARCHITECTURES}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _graphs(name: str, hw: tuple[int, int], tmp: Path, layers: tuple[str, ...] = (),
            cams: tuple[tuple[str, str], ...] = ()) -> dict[str, Path]:
    """label -> ONNX file of every graph measured for one model; `layers`: other CAM layer specs of
    the traced route (segxal.graph.traced_cam.expand_layers), each on the model's grid; `cams`: other
    (target, method) pairs of the traced route on the model's grid (the U-Net: its VJP with each
    method but GradCAM)."""
    from segxal.graph.add_eem import add_eem_file
    from segxal.graph.traced_cam import export_traced
    from segxal.models.external import build_model, export_logits_onnx
    torch.manual_seed(0)
    out: dict[str, Path] = {}
    if name == "unet":
        from segxal.export import ExportConfig, export_segmentation
        from segxal.models.unet import UNet, UNetConfig
        model = UNet(UNetConfig(width=32)).eval()
        out["logits"] = export_logits_onnx(model, tmp / "unet_logits.onnx", hw, uint8_input=True)
        export_segmentation(model, tmp / "unet_vjp.onnx", ExportConfig(trace_hw=hw))
        out["EEM VJP"] = tmp / "unet_vjp.onnx"
        for method in dict.fromkeys(m for _, m in cams if m != "gradcam"):
            # random weights predict one class a frame; a per-location CAM then sums gradients that nearly
            # cancel and the min-max scaling magnifies float32 rounding past the default bound (3e-2 seen)
            export_segmentation(model, tmp / f"unet_vjp_{method}.onnx",
                                ExportConfig(trace_hw=hw, cam_method=method, cam_max_abs_diff=0.1))
            out[f"EEM VJP ({method})"] = tmp / f"unet_vjp_{method}.onnx"
        from segxal.eem.gradcam import DEFAULT_UNET_CAM_METHOD, DEFAULT_UNET_CAM_TARGET
        layer = _module_name(model, model.bottleneck_layer)
        # the VJP's layer, target and grid (EBU, p_max and the target on the input's grid); and the
        # traced route's default grid, the model's own (the logits before the 2x head upsampling)
        out["EEM traced"] = export_traced(model, tmp / "unet_traced.onnx", hw, layer=layer, uncertainty_at="input",
                                          target=DEFAULT_UNET_CAM_TARGET, method=DEFAULT_UNET_CAM_METHOD).path
        out["EEM traced@model"] = export_traced(model, tmp / "unet_traced_model.onnx", hw, layer=layer,
                                                uncertainty_at="model", target=DEFAULT_UNET_CAM_TARGET,
                                                method=DEFAULT_UNET_CAM_METHOD).path
        return out
    import_path, kwargs = MODELS[name]
    model = build_model(import_path, kwargs).eval()
    try:
        out["logits"] = export_logits_onnx(model, tmp / f"{name}_logits.onnx", hw, uint8_input=True)
    except Exception as e:  # noqa: BLE001 - PSPNet at 256x512: "adaptive_avg_pool2d, output size that are not factor"
        print(f"{name}: the TorchScript exporter refuses its logits ({str(e).splitlines()[0][:100]}); "
              f"the plain forward is traced the traced CAM's way instead (resampling as MatMuls)", flush=True)
        out["logits"] = _traced_logits(model, hw, tmp / f"{name}_logits.onnx")
    out["EEM traced"] = export_traced(model, tmp / f"{name}_traced.onnx", hw).path
    out["EEM traced@model"] = export_traced(model, tmp / f"{name}_traced_model.onnx", hw, uncertainty_at="model").path
    for i, (target, method) in enumerate(cams):
        out[f"EEM traced@model [{target}:{method}]"] = export_traced(
            model, tmp / f"{name}_traced_model_cam{i}.onnx", hw, uncertainty_at="model", target=target,
            method=method).path
    for i, spec in enumerate(layers):
        out[f"EEM traced@model [{spec}]"] = export_traced(model, tmp / f"{name}_traced_model_{i}.onnx", hw, layer=spec,
                                                          uncertainty_at="model").path
    add_eem_file(out["logits"], tmp / f"{name}_head.onnx")
    out["EEM head"] = tmp / f"{name}_head.onnx"
    return out


def _traced_logits(model: torch.nn.Module, hw: tuple[int, int], path: Path) -> Path:
    """The plain logits forward (uint8 in) through make_fx and the dynamo exporter with the traced
    CAM's resampling (segxal.graph.traced_cam), for a model the TorchScript exporter refuses."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from segxal.graph.traced_cam import _ResampleAsMatMul, onnx_translations
    from segxal.models.external import ImageInput, _RawLogits
    from segxal.data.cityscapes import MEAN, STD
    module = ImageInput(_RawLogits(model), MEAN, STD).eval()
    example = torch.zeros(1, *hw, 3, dtype=torch.uint8)
    with _ResampleAsMatMul(), torch.no_grad():
        graph = make_fx(module)(example)
    torch.onnx.export(graph, (example,), input_names=["image"], output_names=["logits"], dynamo=True,
                      external_data=False, verbose=False, custom_translation_table=onnx_translations()).save(str(path))
    return path


def measure(sessions: dict[str, ort.InferenceSession], image: np.ndarray, rounds: int, calls: int) -> dict:
    """label -> median ms per call over `rounds` alternating rounds of `calls` calls each."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {s.get_inputs()[0].name: image})  # warm-up
    for _ in range(rounds):  # alternate: load drift on a shared machine hits every graph alike
        for k, s in sessions.items():
            feed = {s.get_inputs()[0].name: image}
            t = time.perf_counter()
            for _ in range(calls):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t) / calls * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def profile(sessions_paths: dict[str, Path], image: np.ndarray, threads: int, calls: int = 5) -> dict:
    """label -> {ONNX op type: ms per call}, ONNX Runtime's own kernel timings (its profiler) summed
    per op type: where a graph's time goes, beside the logits graph's."""
    import collections
    import json
    out = {}
    for k, path in sessions_paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.enable_profiling = threads, True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "segxal_cam_cost")
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: image}
        for _ in range(calls):
            s.run(None, feed)
        trace = Path(s.end_profiling())
        by_op: dict = collections.defaultdict(float)
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"]["op_name"]] += event["dur"] / calls / 1e3
        trace.unlink()
        out[k] = dict(by_op)
    return out


def _print_profile(name: str, by_graph: dict) -> None:
    ops = sorted({op for d in by_graph.values() for op in d}, key=lambda op: -max(d.get(op, 0.0) for d in by_graph.values()))
    print(f"{name} profile, ms per call (kernel time per op type)\n  {'op':<24}" + "".join(f"{k[:22]:>24}" for k in by_graph))
    for op in ops[:20] + ["TOTAL"]:
        cells = [sum(d.values()) if op == "TOTAL" else d.get(op, 0.0) for d in by_graph.values()]
        print(f"  {op:<24}" + "".join(f"{c:24.2f}" for c in cells), flush=True)


def _cam(text: str) -> tuple[str, str]:
    from segxal.eem.gradcam import CAM_METHODS
    from segxal.graph.traced_cam import CAM_TARGETS
    target, _, method = text.partition(":")
    if target not in CAM_TARGETS or method not in CAM_METHODS:
        raise argparse.ArgumentTypeError(f"expected TARGET:METHOD with a target of {CAM_TARGETS} and a method of "
                                         f"{CAM_METHODS}, got {text!r}")
    return target, method


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(256, 512))
    p.add_argument("--models", nargs="+", default=["unet", "smp_deeplabv3plus", "smp_fpn", "tv_lraspp",
                                                   "smp_unet", "smp_pspnet"], choices=sorted(MODELS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5, help="calls per graph per round")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (1 on a shared machine)")
    p.add_argument("--layers", nargs="+", default=[],
                   help="also the traced graph with these CAM layer specs (e.g. stride16+stride8), foreign models")
    p.add_argument("--cams", nargs="+", default=[], type=_cam,
                   help="also the traced graphs with these CAMs, TARGET:METHOD (e.g. ebu-gradient:gradcam; the "
                        "U-Net: its VJP with each METHOD)")
    p.add_argument("--profile", action="store_true",
                   help="also print ONNX Runtime's kernel time per op type of every graph (its profiler)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from segxal.graph.traced_cam import DEFAULT_CAM_METHOD, DEFAULT_CAM_TARGET
    print(f"EEM traced: the default CAM, {DEFAULT_CAM_TARGET}:{DEFAULT_CAM_METHOD}")
    image = np.random.default_rng(0).integers(0, 256, (1, *args.size, 3), dtype=np.uint8)
    result = {}
    print(f"{args.size[0]}x{args.size[1]}, {args.threads} ORT thread(s), {args.rounds} rounds x {args.calls} calls")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            try:
                graphs = _graphs(name, args.size, Path(tmp), tuple(args.layers), tuple(args.cams))
            except Exception as e:  # noqa: BLE001 - e.g. PSPNet's logits refuse the TorchScript exporter
                print(f"{name:<18} skipped: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
                continue
            sessions = {k: _session(v, args.threads) for k, v in graphs.items()}
            ms = measure(sessions, image, args.rounds, args.calls)
            base = ms["logits"]
            result[name] = {k: {"ms": v, "ratio": v / base} for k, v in ms.items()}
            print(f"{name:<18} loadavg {open('/proc/loadavg').read().split()[0]:>5}  " + "  ".join(
                f"{k} {v:7.1f} ms x{v / base:.2f}" for k, v in ms.items()), flush=True)
            if args.profile:
                _print_profile(name, profile(graphs, image, args.threads))
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

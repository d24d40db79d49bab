"""In-graph EEM on architectures no one here wrote: cost and faithfulness, side by side per model.

For each architecture of segxal.models.zoo (random weights, classifier re-initialised so the
prediction is not one class), at --size (default 256 x 512, batch 1, float NCHW input):
  * plain: the team's own ONNX export, logits only, on ONNX Runtime;
  * eem:   the same graph after segxal.graph.add_eem (labels, ebu, cam, pmax added);
  * eem@model: the same with uncertainty_at="model" (EBU and p_max on the grid where the model
    computes its class scores, then resized; the same graph as eem for full-resolution logits);
  timed alternately in one loop (median of --repeats), and the ratios eem / plain reported
  (target <= 1.3); and, less sensitive to a loaded machine, the same ratio from ONNX Runtime's
  per-node kernel times within the eem runs themselves ((model nodes + added nodes) / model nodes);
  * CAM agreement: max |served cam - pytorch-grad-cam GradCAM| on --images images, same model,
    same target layer(s), class-agnostic target, same scaling.

    nice -n 10 python bench/any_model.py [--size 256x512] [--repeats 7] [--models smp_fpn,segformer]

Prints one table and, with --json, writes every figure to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from segxal.graph.add_eem import add_eem_file
from segxal.models import zoo
from segxal.models.external import FullResLogits, export_logits_onnx

ARCHITECTURES = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "smp_unet",
                 "smp_fpn", "segformer")
NUM_CLASSES = 19


class _ClassAgnosticTarget:
    """T = sum over predicted classes c of SemanticSegmentationTarget(c, M_c)."""

    def __init__(self, labels: np.ndarray):
        self.terms = [SemanticSegmentationTarget(int(c), (labels == c).astype(np.float32)) for c in np.unique(labels)]

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return sum(t(out) for t in self.terms)


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _images(n: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    small = torch.randn(n, 3, hw[0] // 16, hw[1] // 16, generator=g)
    return torch.nn.functional.interpolate(small, size=hw, mode="bilinear").numpy()  # [n, 3, H, W]


def _kernel_ratio(path: Path, feed: dict, threads: int, runs: int = 3) -> float:
    """(all node kernel time) / (the model's own nodes' kernel time), from ORT's profiler: the added
    nodes are named /segxal_eem/... by segxal.graph.add_eem."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.enable_profiling = threads, 1, True
    opts.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    added = own = 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            if "segxal_eem" in e["name"]:
                added += e["dur"]
            else:
                own += e["dur"]
    return (own + added) / own


def measure(name: str, hw: tuple[int, int], repeats: int, images: int, threads: int, work: Path) -> dict:
    model, entry = zoo.build(name, NUM_CLASSES)
    raw = export_logits_onnx(model, work / f"{name}_logits.onnx", hw)
    info = add_eem_file(raw, work / f"{name}_eem.onnx")
    coarse = add_eem_file(raw, work / f"{name}_eem_model.onnx", uncertainty_at="model")
    plain, eem = _session(raw, threads), _session(work / f"{name}_eem.onnx", threads)
    eem_model = _session(work / f"{name}_eem_model.onnx", threads)
    x = _images(images, hw, seed=1)
    one = {"image": x[:1]}
    sides = (plain, eem, eem_model)
    for s in sides:
        s.run(None, one)  # warm-up
    times: list[list[float]] = [[], [], []]
    for _ in range(repeats):  # alternate, so load changes hit every side alike
        for s, t in zip(sides, times):
            t0 = time.perf_counter()
            s.run(None, one)
            t.append(time.perf_counter() - t0)
    t_plain, t_eem, t_model = (statistics.median(t) for t in times)
    kernel_ratio = _kernel_ratio(work / f"{name}_eem.onnx", one, threads)
    kernel_ratio_model = _kernel_ratio(work / f"{name}_eem_model.onnx", one, threads)
    labels, cam = eem.run(["labels", "cam"], {"image": x})
    xt = torch.from_numpy(x)
    full = FullResLogits(model).eval()
    with GradCAM(model=full, target_layers=entry.target_layers(model)) as gc:
        ref = gc(input_tensor=xt, targets=[_ClassAgnosticTarget(lab) for lab in labels])
    return {"model": name, "cam_layer": info.cam_layer, "cam_exact": info.cam_exact,
            "plain_ms": 1e3 * t_plain, "eem_ms": 1e3 * t_eem, "ratio": t_eem / t_plain, "kernel_ratio": kernel_ratio,
            "uncertainty_at_model": coarse.uncertainty_at, "eem_model_ms": 1e3 * t_model,
            "ratio_model": t_model / t_plain, "kernel_ratio_model": kernel_ratio_model,
            "cam_max_abs_diff": float(np.abs(cam.astype(np.float32) - ref).max()),
            "classes_predicted": int(len(np.unique(labels)))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--images", type=int, default=2, help="images for the CAM agreement")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--models", default=",".join(ARCHITECTURES))
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    hw = tuple(int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(measure(name, hw, args.repeats, args.images, args.threads, Path(tmp)))
            r = rows[-1]
            print(f"{r['model']:<30} plain {r['plain_ms']:8.1f} ms  eem {r['eem_ms']:8.1f} ms  "
                  f"ratio {r['ratio']:5.2f} (kernels {r['kernel_ratio']:4.2f})  eem@model ratio {r['ratio_model']:5.2f} "
                  f"(kernels {r['kernel_ratio_model']:4.2f})  cam vs pytorch-grad-cam {r['cam_max_abs_diff']:.1e}  "
                  f"({r['classes_predicted']} classes predicted; {r['cam_layer']})", flush=True)
    print(f"\n{hw[0]}x{hw[1]}, batch 1, {args.threads} ORT threads, median of {args.repeats}; loadavg "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}")
    print("eem: EBU and p_max at the input's size (default); eem@model: on the model's own grid, resized "
          "(segxal models add-eem --uncertainty-at model; '=' where the logits already are at the input's size)")
    print(f"{'model':<30} {'plain ms':>9} {'eem ms':>9} {'ratio':>6} {'kernels':>8} {'@model ratio':>13} "
          f"{'kernels':>8} {'cam diff':>9}")
    for r in rows:
        same = "=" if r["uncertainty_at_model"] == "input" else " "
        print(f"{r['model']:<30} {r['plain_ms']:9.1f} {r['eem_ms']:9.1f} {r['ratio']:6.2f} {r['kernel_ratio']:8.2f} "
              f"{r['ratio_model']:12.2f}{same} {r['kernel_ratio_model']:8.2f} {r['cam_max_abs_diff']:9.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": hw, "rows": rows, "loadavg": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

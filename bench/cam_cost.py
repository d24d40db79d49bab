"""What the in-graph CAM costs: ONNX Runtime time of the exported U-Net with the bottleneck CAM
(shipped: the decoder's VJP written out in the graph), with the analytic head-input CAM, and of the
plain logits graph, side by side in alternating rounds on the same weights (CPU, one frame a call).

    python bench/cam_cost.py --size 256x512 --width 32 --rounds 5
"""
from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from segxal.eem.explain import ExplainedSegmenter
from segxal.models.unet import UNet, UNetConfig
from segxal.train import parse_size


def _session(module: nn.Module, x: torch.Tensor, outputs: list[str], threads: int) -> ort.InferenceSession:
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=outputs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(256, 512))
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=10, help="calls per graph per round")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = UNet(UNetConfig(width=args.width)).eval()
    x = torch.randn(1, 3, *args.size)
    names = ["labels", "ebu", "cam", "pmax"]
    with torch.no_grad():
        sessions = {"logits only": _session(model, x, ["logits"], args.threads),
                    "EEM, head-input CAM": _session(ExplainedSegmenter(model, half_outputs=True, cam_layer="head"),
                                                    x, names, args.threads),
                    "EEM, bottleneck CAM": _session(ExplainedSegmenter(model, half_outputs=True), x, names,
                                                    args.threads)}
    feed = {"x": x.numpy()}
    times = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feed)  # warm-up
    for _ in range(args.rounds):  # alternate: load drift on a shared machine hits every graph alike
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(args.calls):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t) / args.calls * 1e3)
    base = np.median(times["logits only"])
    print(f"{args.size[0]}x{args.size[1]}, U-Net width {args.width}, {args.threads} threads, "
          f"loadavg {open('/proc/loadavg').read().split()[0]}")
    result = {}
    for k, ms in times.items():
        med = float(np.median(ms))
        result[k] = {"ms": med, "ratio": med / base}
        print(f"  {k:<22} {med:8.1f} ms   x{med / base:.2f} of logits only")
    return result


if __name__ == "__main__":
    main()

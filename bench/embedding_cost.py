"""What the `embedding` output costs: ONNX Runtime time of the served graph with it against the same
graph without it, for the project's U-Net (segxal.export, ExportConfig.with_embedding) and for a
model from elsewhere given its EEM outputs by `segxal models add-eem` (segxal.graph.add_eem,
embedding=True/False). Side by side in one process, same weights, one frame a call, in alternating
rounds whose order flips each round (load drift on a shared machine hits both alike); the ratio is
per round, then its median and range.

    python bench/embedding_cost.py --size 256x512 --rounds 12 --calls 5
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

from segxal.train import parse_size


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _unet_graphs(work: Path, size, width: int) -> tuple[Path, Path]:
    from segxal.export import ExportConfig, export_segmentation
    from segxal.models.unet import UNet, UNetConfig
    torch.manual_seed(0)
    model = UNet(UNetConfig(width=width)).eval()
    paths = []
    for with_embedding in (False, True):
        cfg = ExportConfig(trace_hw=size, with_embedding=with_embedding)
        paths.append(export_segmentation(model, work / f"unet_{with_embedding}" / "model.onnx", cfg).path)
    return paths[0], paths[1]


def _add_eem_graphs(work: Path, size, name: str) -> tuple[Path, Path]:
    from segxal.graph.add_eem import add_eem_file
    from segxal.models import zoo
    from segxal.models.external import export_logits_onnx
    model, _ = zoo.build(name, 19)
    raw = export_logits_onnx(model, work / name / "logits.onnx", size, uint8_input=True)
    plain, with_emb = work / name / "plain.onnx", work / name / "embedding.onnx"
    add_eem_file(raw, plain, embedding=False)
    info = add_eem_file(raw, with_emb, embedding=True)
    print(f"  {name}: embedding D = {info.embedding_dim} ({info.cam_layer})")
    return plain, with_emb


def _time(sessions: dict[str, ort.InferenceSession], feed: dict, rounds: int, calls: int) -> dict[str, list[float]]:
    times = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(2):
            s.run(None, feed)  # warm-up
    for r in range(rounds):
        for k in (list(sessions) if r % 2 == 0 else list(reversed(sessions))):
            t = time.perf_counter()
            for _ in range(calls):
                sessions[k].run(None, feed)
            times[k].append((time.perf_counter() - t) / calls * 1e3)
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(256, 512))
    p.add_argument("--width", type=int, default=16, help="U-Net width (the loop's model: 16)")
    p.add_argument("--add-eem-model", default="deeplabv3_mobilenet_v3_large",
                   help="segxal.models.zoo architecture given its outputs by add-eem")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--calls", type=int, default=5, help="calls per graph per round")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    h, w = args.size
    image = {"image": np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)}
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        graphs = {f"U-Net width {args.width}": _unet_graphs(work, args.size, args.width),
                  f"add-eem {args.add_eem_model}": _add_eem_graphs(work, args.size, args.add_eem_model)}
        print(f"{h}x{w}, {args.threads} thread(s), {args.rounds} rounds x {args.calls} calls, "
              f"loadavg {open('/proc/loadavg').read().split()[0]}")
        for name, (plain, with_emb) in graphs.items():
            sessions = {"without": _session(plain, args.threads), "with": _session(with_emb, args.threads)}
            times = _time(sessions, image, args.rounds, args.calls)
            ratios = np.asarray(times["with"]) / np.asarray(times["without"])
            row = {"without_ms": float(np.median(times["without"])), "with_ms": float(np.median(times["with"])),
                   "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()),
                   "ratio_max": float(ratios.max())}
            result[name] = row
            print(f"  {name:<40} without {row['without_ms']:7.1f} ms  with {row['with_ms']:7.1f} ms  "
                  f"ratio x{row['ratio_median']:.3f} (rounds {row['ratio_min']:.3f}..{row['ratio_max']:.3f})",
                  flush=True)
    print(f"loadavg after {open('/proc/loadavg').read().split()[0]}")
    return result


if __name__ == "__main__":
    main()

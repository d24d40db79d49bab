"""ONNX Runtime session settings for a lone request, A/B in one process: the same exported model
in sessions that differ only in their options, run in alternating order with a short gap between
runs (a request's round trip), so that the machine's drift hits every variant alike.

    .venv/bin/python bench/ort_session_ab.py [--model model.onnx] [--runs 60] [--size 256x512]

Variants: the server's lone session with spinning that stops after each run (its default), the
same without spinning (--no-ort-spinning), and ONNX Runtime's defaults (what the naive server uses).
In one process the sessions' threads do not meet gRPC's wake-ups; bench/infer_overhead.py measures
the setting behind the server.
Without --model, the default U-Net with its EEM outputs is exported to a temporary folder.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _session(path: str, spin: bool | None, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    if spin is not None:  # the server's settings (services.inference.runtime.OnnxModel._load)
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            o.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an exported model.onnx (default: export the default U-Net)")
    p.add_argument("--size", default="256x512")
    p.add_argument("--runs", type=int, default=60, help="runs per variant")
    p.add_argument("--gap-ms", type=float, default=2.0, help="pause after each run")
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    path = a.model
    if not path:
        import torch

        from segxal.export import ExportConfig, export_segmentation
        from segxal.models.unet import UNet
        torch.manual_seed(0)
        path = str(Path(tempfile.mkdtemp(prefix="ort_ab_")) / "model.onnx")
        export_segmentation(UNet(), Path(path), ExportConfig(trace_hw=(h, w), parity_batch=1))
    from services.inference.runtime import available_cores
    threads = available_cores()
    variants = {"server (spinning)": _session(path, True, threads),
                "server --no-ort-spinning": _session(path, False, threads),
                "ORT defaults (naive)": _session(path, None, threads)}
    first = next(iter(variants.values())).get_inputs()[0]
    x = np.random.default_rng(0).integers(0, 255, (1, h, w, 3), dtype=np.uint8) if first.type == "tensor(uint8)" \
        else np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    for s in variants.values():
        s.run(None, {first.name: x})
    times: dict[str, list[float]] = {k: [] for k in variants}
    items = list(variants.items())
    for i in range(a.runs):
        for name, s in (items if i % 2 == 0 else items[::-1]):
            t = time.perf_counter()
            s.run(None, {first.name: x})
            times[name].append(time.perf_counter() - t)
            time.sleep(a.gap_ms / 1e3)
    base = np.mean(times[items[0][0]])
    print(f"{h}x{w}, {threads} intra-op threads, {a.runs} alternating runs per variant")
    for name, v in times.items():
        v = 1e3 * np.array(v)
        print(f"  {name:24s} mean {v.mean():6.1f} ms  median {np.median(v):6.1f}  p90 {np.percentile(v, 90):6.1f}"
              f"  mean / server's {v.mean() / (1e3 * base):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

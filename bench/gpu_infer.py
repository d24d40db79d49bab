"""Frames/s per GPU of the exported U-Net with its EEM outputs (labels, EBU, CAM, p_max) and the
depth net, in PyTorch CUDA: the figure a fleet team plans with (bench/gpu_infer.sh runs it).

    python bench/gpu_infer.py [--seconds 4] [--batch-small 64] [--batch-large 8] [--out DIR]

The module measured is the one segxal/export.py traces into model.onnx: segxal.export._ImageInput
(uint8 NHWC -> normalised NCHW) around ExplainedSegmenter(UNet()) (bottleneck CAM, float16 maps),
plus DepthNet, random weights (speed does not depend on them). fp16 autocast, channels_last, cuDNN
autotuning; CUDA graphs where capture works (else eager, said so). Rows:
- model only: a uint8 batch already on the GPU -> outputs on the GPU;
- + copies: pinned host uint8 batch -> GPU -> outputs back to host (labels uint8, maps float16);
- + decode: encoded frames (PNG 1024x2048 / JPEG) decoded by a pool of CPU threads through the
  project's codec (segxal.imageio.decode_image), stacked, copied, run; decode of the next batch
  overlaps the GPU work of this one. 1024x2048 frames are also ranked at 256x512 (resized on the
  GPU: the ranking path, segxal.modelspec input_size).
Not measured here: ONNX Runtime's CUDA provider (onnxruntime-gpu is not on that machine) and Triton.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _frames(h: int, w: int, n: int, seed: int = 0) -> np.ndarray:
    """Scene-like uint8 frames [n, h, w, 3]: smooth regions, edges and sensor noise (compress like a
    camera frame, unlike white noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        blocks = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3)).astype(np.float32)
        smooth = np.kron(blocks, np.ones((32, 32, 1)))[:h, :w]  # [h, w, 3]
        ramp = np.linspace(0, 60, w, dtype=np.float32)[None, :, None]
        out.append(np.clip(smooth * 0.7 + ramp + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))
    return np.stack(out)


def _encode(frames: np.ndarray, fmt: str) -> list[bytes]:
    import cv2
    flag = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    return [cv2.imencode(".jpg" if fmt == "jpeg" else ".png", f[..., ::-1], flag)[1].tobytes() for f in frames]


class _Runner:
    """One model (seg + EEM outputs, or depth) at one size and batch, eager or CUDA-graphed."""

    def __init__(self, torch, module, batch: int, h: int, w: int, graphs: bool, rank_hw=None):
        self.torch, self.batch, self.rank_hw = torch, batch, rank_hw
        self.module = module
        self.static_in = torch.zeros((batch, h, w, 3), dtype=torch.uint8, device="cuda")
        self.mode = "eager"
        self._forward(self.static_in)  # cuDNN autotune + lazy init
        torch.cuda.synchronize()
        self.graph = None
        if graphs:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._forward(self.static_in)
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    self.static_out = self._forward(self.static_in)
                self.graph, self.mode = g, "cuda-graph"
            except Exception as e:  # noqa: BLE001 - reported; eager still measures
                self.mode = f"eager (graph capture failed: {type(e).__name__}: {str(e)[:80]})"
                torch.cuda.synchronize()

    def _forward(self, x):
        torch = self.torch
        # no autocast weight cache: CUDA graph capture requires it off
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            if self.rank_hw is not None:  # frames at camera size, model at its input size
                x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2).float(), size=self.rank_hw,
                                                    mode="bilinear", align_corners=False)
                x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            out = self.module(x.contiguous(memory_format=torch.contiguous_format))
            return out if isinstance(out, tuple) else (out,)

    def __call__(self, x_gpu):
        if self.graph is not None:
            self.static_in.copy_(x_gpu, non_blocking=True)
            self.graph.replay()
            return self.static_out
        return self._forward(x_gpu)


def _timed(torch, fn, seconds: float, frames_per_call: int) -> float:
    fn()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    torch.cuda.synchronize()
    return n * frames_per_call / (time.perf_counter() - t0)


def _with_decode(torch, runners, encoded: list[bytes], batch: int, seconds: float, workers: int) -> tuple[float, float]:
    """Frames/s when every frame is decoded on the CPU (pool of threads, the project's codec) and
    the GPU runs the models; returns (frames/s, CPU decode ms per frame)."""
    from segxal import imageio
    pool = ThreadPoolExecutor(workers)
    batches: queue.Queue = queue.Queue(maxsize=3)
    stop = threading.Event()
    decode_cpu = [0.0, 0]

    lock = threading.Lock()

    def decode(data: bytes) -> np.ndarray:
        c0 = time.thread_time()  # this worker's CPU only (not the GPU thread's spin-waits)
        image = imageio.decode_image(data)
        with lock:
            decode_cpu[0] += time.thread_time() - c0
            decode_cpu[1] += 1
        return image

    def producer():
        i = 0
        while not stop.is_set():
            chunk = [encoded[(i + k) % len(encoded)] for k in range(batch)]
            i += batch
            images = list(pool.map(decode, chunk))
            host = torch.from_numpy(np.stack(images)).pin_memory()  # [B, H, W, 3]
            batches.put(host)
        batches.put(None)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        host = batches.get()  # decoded while the GPU ran the previous batch
        x = host.to("cuda", non_blocking=True)
        outs = [r(x) for r in runners]
        [[o.to("cpu", non_blocking=True) for o in out] for out in outs]
        torch.cuda.current_stream().synchronize()
        done += batch
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    stop.set()
    while batches.get() is not None:
        pass
    pool.shutdown()
    return done / wall, decode_cpu[0] / max(decode_cpu[1], 1) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per row")
    p.add_argument("--batch-small", type=int, default=64, help="batch at 256x512")
    p.add_argument("--batch-large", type=int, default=8, help="batch at 1024x2048 (activation memory)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="decode threads")
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--budget-s", type=float, default=160.0, help="skip rows that would start after this")
    a = p.parse_args(argv)
    started = time.perf_counter()
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: this bench needs the GPU machine")
        return 2
    from segxal.eem.explain import ExplainedSegmenter
    from segxal.export import _ImageInput
    from segxal.models.depth import DepthNet
    from segxal.models.unet import UNet
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    seg = _ImageInput(ExplainedSegmenter(UNet(), half_outputs=True)).cuda().eval().to(memory_format=torch.channels_last)
    depth = _ImageInput(DepthNet()).cuda().eval().to(memory_format=torch.channels_last)
    name = torch.cuda.get_device_name(0)
    lines = [f"# {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
             f"{os.cpu_count()} CPUs ({a.workers} decode threads); fp16 autocast, channels_last; U-Net width 32 "
             f"depth 4 + EEM outputs (bottleneck CAM), depth net; random weights",
             "", "| frames | model size | batch | models | what | mode | frames/s | decode CPU ms/frame |",
             "|---|---|---|---|---|---|---|---|"]

    def row(*cells):
        line = "| " + " | ".join(str(c) for c in cells) + " |"
        lines.append(line)
        print(line, flush=True)

    configs = [("256x512", (256, 512), a.batch_small, None, "jpeg"),
               ("1024x2048", (1024, 2048), a.batch_large, None, "png"),
               ("1024x2048", (1024, 2048), a.batch_small, (256, 512), "png")]
    for frames_name, (h, w), batch, rank_hw, fmt in configs:
        if time.perf_counter() - started > a.budget_s:
            lines.append(f"(skipped {frames_name} -> {rank_hw or (h, w)}: time budget)")
            continue
        model_hw = rank_hw or (h, w)
        try:
            runners = {n: _Runner(torch, m, batch, h, w, not a.no_graphs, rank_hw) for n, m in
                       (("seg+EEM", seg), ("depth", depth))}
            x = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, device="cuda")
            size = f"{model_hw[0]}x{model_hw[1]}"
            for n, r in runners.items():
                row(frames_name, size, batch, n, "model only", r.mode, f"{_timed(torch, lambda: r(x), a.seconds, batch):.0f}", "")
            both = list(runners.values())
            row(frames_name, size, batch, "seg+EEM, depth", "model only", both[0].mode,
                f"{_timed(torch, lambda: [r(x) for r in both], a.seconds, batch):.0f}", "")
            host = x.cpu().pin_memory()

            def copies():
                xg = host.to("cuda", non_blocking=True)
                return [[o.to("cpu", non_blocking=True) for o in r(xg)] for r in both]
            row(frames_name, size, batch, "seg+EEM, depth", "+ H2D/D2H copies", both[0].mode,
                f"{_timed(torch, copies, a.seconds, batch):.0f}", "")
            encoded = _encode(_frames(h, w, 8), fmt)
            fps, dec_ms = _with_decode(torch, both, encoded, batch, a.seconds, a.workers)
            row(frames_name, size, batch, "seg+EEM, depth", f"+ {fmt} decode ({sum(map(len, encoded)) // len(encoded) // 1024} kB/frame)",
                both[0].mode, f"{fps:.0f}", f"{dec_ms:.1f}")
            del runners, x, host
            torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError as e:
            lines.append(f"({frames_name} batch {batch}: out of memory: {str(e)[:120]})")
            torch.cuda.empty_cache()
    lines += ["", f"total {time.perf_counter() - started:.0f} s; peak GPU memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_infer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-2:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

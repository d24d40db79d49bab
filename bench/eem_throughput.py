"""EEM scoring throughput: in process vs through the three services, and the EEM server's memory.

    .venv/bin/python bench/eem_throughput.py [--frames 200] [--rss-frames 200,5000] [--size 256x512]

Both sides score the same PNG frames with the same default-size models (random weights: speed
does not depend on them) exported to ONNX:
- in process: segxal.storage reads and decodes a frame, ONNX Runtime runs segmentation then depth
  in this process, segxal.eem.frame.score_frame fuses (the AL loop's path, one frame at a time;
  also 2 frames at a time on threads, a stronger in-process baseline);
- services: two inference servers (python -m services.inference.main, one model each) and the
  EEM server (python -m services.eem.main) as separate processes; this process streams frame URIs
  through services.eem.client.EemClient.score_stream.
Then it streams more frames and reads the EEM server's resident memory (psutil RSS) after
each count in --rss-frames (cumulative), to show that a long stream does not grow it.
On a shared 2-core machine the numbers move with other load: both sides are timed after a
warm-up, in interleaved rounds (the servers idle while the in-process side runs).
"""
from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.eem.frame import score_frame
from segxal.export import ExportConfig, export_depth, export_segmentation
from segxal.models.depth import DepthNet
from segxal.models.unet import UNet
from segxal.storage import FrameStorage
from services.common.model_repository import ModelRepository, build_config
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.inference.client import InferenceClient

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_frames(folder: Path, n: int, h: int, w: int, seed: int = 0) -> list[str]:
    """n driving-scene-like frames: a sky-to-road gradient with coloured blobs (PNG)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]  # [H, 1, 1]
    base = (1 - rows) * np.array([120, 160, 220], np.float32) + rows * np.array([70, 70, 70], np.float32)
    paths = []
    for i in range(n):
        img = np.broadcast_to(base, (h, w, 3)).copy()  # [H, W, 3]
        for _ in range(12):
            y, x = rng.integers(h // 3, h), rng.integers(0, w)
            r = rng.integers(4, h // 6)
            yy, xx = np.ogrid[:h, :w]
            img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 256, 3)
        img += rng.normal(0, 6, img.shape)
        p = folder / f"bench_000000_{i:06d}_leftImg8bit.png"
        imageio.write_png(p, np.clip(img, 0, 255).astype(np.uint8))
        paths.append(str(p))
    return paths


def _export(folder: Path, h: int, w: int) -> tuple[Path, Path, ModelRepository, ModelRepository]:
    """Default-size models, exported once; one repository per model (one server per model)."""
    import torch

    torch.manual_seed(0)
    cfg = ExportConfig(trace_hw=(h, w), parity_batch=1)
    seg = export_segmentation(UNet(), folder / "export" / "seg" / "model.onnx", cfg)
    depth = export_depth(DepthNet(), folder / "export" / "depth" / "model.onnx", cfg)
    seg_repo, depth_repo = ModelRepository(folder / "repo_seg"), ModelRepository(folder / "repo_depth")
    seg_repo.publish("segmentation", seg.path, build_config("segmentation", seg.spec))
    depth_repo.publish("depth", depth.path, build_config("depth", depth.spec))
    return seg.path, depth.path, seg_repo, depth_repo


class _InProcess:
    """The in-process pipeline: segxal.storage decodes, ONNX Runtime runs segmentation then depth
    in this process, segxal.eem.frame.score_frame fuses (the AL loop's path)."""

    def __init__(self, seg_path: Path, depth_path: Path, roots: list[str], opts: ScoreOptions, threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.seg = ort.InferenceSession(str(seg_path), so, providers=["CPUExecutionProvider"])
        self.depth = ort.InferenceSession(str(depth_path), so, providers=["CPUExecutionProvider"])
        self.storage = FrameStorage(roots)
        self.opts = opts

    def one(self, uri: str) -> float:
        image = self.storage.read_rgb(uri)[None]  # [1, H, W, 3]
        labels, ebu, cam = self.seg.run(["labels", "ebu", "cam"], {"image": image})
        (inv,) = self.depth.run(["inverse_depth"], {"image": image})
        frame = score_frame(labels[0], ebu[0], cam[0], inv[0], self.opts.eem, with_regions=self.opts.regions)
        if self.opts.labels:
            imageio.encode_png(frame.labels)
        return frame.score

    def seconds(self, uris: list[str], workers: int) -> float:
        """Wall time to score `uris`, `workers` frames at a time (threads sharing the sessions)."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self.one, uris))
        return time.perf_counter() - t0


class _Services:
    """The three services as separate processes, stopped with SIGTERM on exit."""

    def __init__(self, seg_repo: ModelRepository, depth_repo: ModelRepository, roots: list[str],
                 intra_op_threads: int, max_concurrency: int, log_dir: Path):
        self.procs: list[subprocess.Popen] = []
        self.seg_port, self.depth_port, self.eem_port = _free_port(), _free_port(), _free_port()
        py = sys.executable
        self._spawn([py, "-m", "services.inference.main", "--repo", str(seg_repo.root), "--host", "127.0.0.1",
                     "--port", str(self.seg_port), "--poll-interval", "0",
                     "--intra-op-threads", str(intra_op_threads)], log_dir / "seg.log")
        self._spawn([py, "-m", "services.inference.main", "--repo", str(depth_repo.root), "--host", "127.0.0.1",
                     "--port", str(self.depth_port), "--poll-interval", "0",
                     "--intra-op-threads", str(intra_op_threads)], log_dir / "depth.log")
        eem_cmd = [py, "-m", "services.eem.main", "--seg-target", f"127.0.0.1:{self.seg_port}",
                   "--depth-target", f"127.0.0.1:{self.depth_port}", "--host", "127.0.0.1",
                   "--port", str(self.eem_port), "--max-concurrency", str(max_concurrency)]
        for r in roots:
            eem_cmd += ["--storage-root", r]
        self.eem = self._spawn(eem_cmd, log_dir / "eem.log")

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    @property
    def eem_target(self) -> str:
        return f"127.0.0.1:{self.eem_port}"

    def wait_ready(self, timeout_s: float = 120) -> None:
        for port, model in ((self.seg_port, "segmentation"), (self.depth_port, "depth")):
            deadline = time.monotonic() + timeout_s
            with InferenceClient(f"127.0.0.1:{port}", timeout_s=2) as c:
                while True:
                    try:
                        if c.is_ready(model):
                            break
                    except Exception:  # noqa: BLE001 - not listening yet
                        pass
                    if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                        raise RuntimeError(f"inference server on port {port} did not get ready (see logs)")
                    time.sleep(0.2)
        with EemClient(self.eem_target) as c:
            c.wait_until_serving(timeout_s)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _stream(client: EemClient, uris: list[str], opts: ScoreOptions) -> float:
    """Stream `uris` through the EEM service; returns the wall time."""
    t0 = time.perf_counter()
    failed = sum(not r.ok for r in client.score_stream(uris, opts))
    if failed:
        raise RuntimeError(f"{failed} frames failed in the stream")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256x512", help="frame size HxW (models are default-size)")
    p.add_argument("--frames", type=int, default=200, help="frames timed on each side")
    p.add_argument("--rounds", type=int, default=4, help="interleaved in-process / services rounds")
    p.add_argument("--distinct", type=int, default=50, help="distinct PNG frames written (cycled)")
    p.add_argument("--rss-frames", default="200,5000",
                   help="cumulative streamed-frame counts at which the EEM server's RSS is read; "
                        "empty to skip")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = one per core)")
    p.add_argument("--inproc-workers", default="1,2",
                   help="in-process runs with this many frames at a time (comma list; the first is the "
                        "baseline of the ratio: 1 = sequential, as the AL loop)")
    p.add_argument("--max-concurrency", type=int, default=4, help="EEM server --max-concurrency")
    p.add_argument("--regions", action="store_true", help="also extract regions and encode labels (both sides)")
    p.add_argument("--workdir", default=None, help="keep models, frames and server logs here")
    a = p.parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds through the finally below, so the servers stop too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    h, w = (int(v) for v in a.size.lower().split("x"))
    rss_at = [int(v) for v in a.rss_frames.split(",") if v.strip()]
    opts = ScoreOptions(eem=EEMOptions(), regions=a.regions, labels=a.regions)

    work = Path(a.workdir or tempfile.mkdtemp(prefix="eem_bench_"))
    t0 = time.perf_counter()
    frames = _write_frames(work / "frames", a.distinct, h, w)
    seg_path, depth_path, seg_repo, depth_repo = _export(work, h, w)
    roots = [str(work / "frames")]
    uris = list(itertools.islice(itertools.cycle(frames), a.frames))
    print(f"set-up {time.perf_counter() - t0:.0f} s: {a.distinct} frames {h}x{w}, default UNet + DepthNet "
          f"exported to ONNX; {os.cpu_count()} CPUs; workdir {work}", flush=True)

    workers = [int(v) for v in a.inproc_workers.split(",")]
    in_process = _InProcess(seg_path, depth_path, roots, opts, a.threads)
    services = _Services(seg_repo, depth_repo, roots, a.threads, a.max_concurrency, work)
    try:
        services.wait_ready()
        with EemClient(services.eem_target, timeout_s=60) as client:
            warm = uris[:2 * a.max_concurrency]
            in_process.seconds(warm, 1)
            _stream(client, warm, opts)
            # Interleaved rounds: load from other users of a shared machine drifts over minutes,
            # so each side gets slices of every period instead of one side the quiet one.
            chunk = max(1, a.frames // a.rounds)
            inproc_s = {k: 0.0 for k in workers}
            served_s = 0.0
            for r in range(a.rounds):
                part = uris[r * chunk:(r + 1) * chunk] if r < a.rounds - 1 else uris[r * chunk:]
                for k in workers:
                    inproc_s[k] += in_process.seconds(part, k)
                served_s += _stream(client, part, opts)
            rates = {k: a.frames / t for k, t in inproc_s.items()}
            served = a.frames / served_s
            for k, rate in rates.items():
                print(f"in process : {rate:6.2f} frames/s ({a.frames} frames, {k} at a time)", flush=True)
            base = rates[workers[0]]
            print(f"services   : {served:6.2f} frames/s ({a.frames} frames, EEM max-concurrency "
                  f"{a.max_concurrency}, {a.rounds} interleaved rounds)", flush=True)
            print(f"ratio services / in process: {served / base:.2f} vs {workers[0]} at a time (target >= 0.90)"
                  + "".join(f", {served / rates[k]:.2f} vs {k} at a time" for k in workers[1:]), flush=True)
            eem_proc = psutil.Process(services.eem.pid)
            done, rss = len(warm) + a.frames, []  # streamed so far (warm-up + timed)
            for n in rss_at:
                step = max(0, n - done)
                took = _stream(client, list(itertools.islice(itertools.cycle(frames), step)), opts)
                done += step
                rss.append((done, eem_proc.memory_info().rss / 2 ** 20))
                rate = f", {step / took:.2f} frames/s over the last {step}" if step else ""
                print(f"EEM server RSS after {done:5d} streamed frames: {rss[-1][1]:7.1f} MiB{rate}", flush=True)
            if len(rss) > 1:
                print(f"RSS growth {rss[0][0]} -> {rss[-1][0]} frames: {rss[-1][1] - rss[0][1]:+.1f} MiB", flush=True)
            stats = client.stats()
            print(f"EEM server stats: {stats.frames_scored} scored, {stats.frames_failed} failed, latency "
                  f"p50 {stats.latency_ms_p50:.0f} ms, p95 {stats.latency_ms_p95:.0f} ms", flush=True)
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

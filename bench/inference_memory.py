"""Inference server memory: peak RSS per pixel of one request, and RSS across hot reloads.

    nice -n 10 .venv/bin/python bench/inference_memory.py [--sizes 256x512,512x1024,1024x2048]
        [--reloads 30] [--width 32] [--depth 4]

The default U-Net (width 32, depth 4) and depth network (random weights: memory does not depend
on them) are exported and published; `python -m services.inference.main` serves them in its own
process, admission limit off (this script measures what sizes it).

- Peak RSS per pixel: for each size, the server's peak RSS (VmHWM, reset through
  /proc/<pid>/clear_refs before each request) minus its RSS before the request, divided by the
  request's pixels (batch x height x width); segmentation and depth separately, sequentially.
  The largest figure is what services/inference/admission.py's DEFAULT_BYTES_PER_PIXEL is sized from.
- Hot reloads: a new version of both models is published N times (alternating two weight sets),
  each time waiting until the server serves it, while --load-threads threads keep sending
  requests (the reloads happen under load, as in production); RSS after 10, 20, 30...
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def export_pair(folder: Path, width: int, depth: int, seeds=(0, 1)):
    """(segmentation exports, depth exports), one per seed, traced at 128 x 256 (dynamic sides)."""
    import torch

    from segxal.export import ExportConfig, export_depth, export_segmentation
    from segxal.models.depth import DepthConfig, DepthNet
    from segxal.models.unet import UNet, UNetConfig

    cfg = ExportConfig(trace_hw=(128, 256), parity_batch=1)
    seg, dep = [], []
    for s in seeds:
        torch.manual_seed(s)
        seg.append(export_segmentation(UNet(UNetConfig(width=width, depth=depth)).eval(),
                                       folder / f"seg{s}" / "model.onnx", cfg))
        torch.manual_seed(s)
        dep.append(export_depth(DepthNet(DepthConfig()).eval(), folder / f"depth{s}" / "model.onnx", cfg))
    return seg, dep


def start_server(repo: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "services.inference.main", "--repo", str(repo), "--host",
                             "127.0.0.1", "--port", str(port), "--poll-interval", "0.5", *extra],
                            cwd=REPO_ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    return proc, f"127.0.0.1:{port}"


def _ready(client) -> bool:
    from segxal.errors import NotReady

    try:
        return client.is_ready("segmentation") and client.is_ready("depth")
    except NotReady:  # not listening yet
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256x512,512x1024,1024x2048")
    p.add_argument("--reloads", type=int, default=30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--load-threads", type=int, default=2, help="request threads during the reloads")
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from services.common.model_repository import ModelRepository, build_config
    from services.inference.client import InferenceClient

    print(f"loadavg before: {open('/proc/loadavg').read().strip()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="segxal-mem-") as tmp:
        tmp = Path(tmp)
        seg, dep = export_pair(tmp / "export", a.width, a.depth)
        repo = ModelRepository(tmp / "repo")
        seg_cfg, dep_cfg = build_config("segmentation", seg[0].spec), build_config("depth", dep[0].spec)
        repo.publish("segmentation", seg[0].path, seg_cfg)
        repo.publish("depth", dep[0].path, dep_cfg)
        proc, target = start_server(repo.root, tmp / "server.log",
                                    ["--intra-op-threads", str(a.threads), "--memory-budget-mb", "0"])
        try:
            with InferenceClient(target, timeout_s=600) as client:
                deadline = time.monotonic() + 120
                while not _ready(client):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError((tmp / "server.log").read_text()[-2000:])
                    time.sleep(0.5)
                client.infer_segmentation(np.zeros((1, 128, 256, 3), np.uint8))  # warm-up
                client.infer_depth(np.zeros((1, 128, 256, 3), np.uint8))
                print(f"# peak RSS per pixel (U-Net width {a.width} depth {a.depth}; depth net default; "
                      f"{a.threads} ORT threads)")
                print(f"{'model':13s} {'size':>10s} {'Mpx':>6s} {'RSS before MB':>14s} {'peak MB':>8s} {'B/px':>7s}")
                for size in a.sizes.split(","):
                    h, w = map(int, size.split("x"))
                    image = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
                    for kind, call in (("segmentation", client.infer_segmentation), ("depth", client.infer_depth)):
                        call(image)  # first call at a size: ORT plans its arena; measure the second
                        _reset_peak(proc.pid)
                        before = _status_kb(proc.pid, "VmRSS")
                        call(image)
                        peak = _status_kb(proc.pid, "VmHWM")
                        print(f"{kind:13s} {size:>10s} {h * w / 1e6:6.2f} {before / 1024:14.0f} {peak / 1024:8.0f} "
                              f"{(peak - before) * 1024 / (h * w):7.0f}", flush=True)
                print(f"# RSS across hot reloads (both models republished each time, "
                      f"{a.load_threads} threads of requests meanwhile)")
                image = np.zeros((1, 128, 256, 3), np.uint8)
                stop = threading.Event()

                def load():
                    with InferenceClient(target, timeout_s=600) as c:
                        while not stop.is_set():
                            c.infer_segmentation(image)
                            c.infer_depth(image)
                loaders = [threading.Thread(target=load, daemon=True) for _ in range(a.load_threads)]
                for t in loaders:
                    t.start()
                print(f"reloads 0: RSS {_status_kb(proc.pid, 'VmRSS') / 1024:.0f} MB", flush=True)
                for n in range(1, a.reloads + 1):
                    repo.publish("segmentation", seg[n % 2].path, seg_cfg)
                    repo.publish("depth", dep[n % 2].path, dep_cfg)
                    want = str(n + 1)
                    deadline = time.monotonic() + 60
                    while True:
                        if client.infer_segmentation(image)["model_version"] == want and \
                                client.infer_depth(image)[1] == want:
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"version {want} not served after 60 s")
                        time.sleep(0.2)
                    if n % 10 == 0:
                        time.sleep(2.0)  # let the retired versions drain
                        print(f"reloads {n}: RSS {_status_kb(proc.pid, 'VmRSS') / 1024:.0f} MB", flush=True)
                stop.set()
                for t in loaders:
                    t.join(60)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"loadavg after: {open('/proc/loadavg').read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

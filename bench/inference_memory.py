"""Inference server memory: peak RSS per pixel of one request, the admission budget against the
peak RSS of the largest requests it admits, and RSS across hot reloads.

    nice -n 10 .venv/bin/python bench/inference_memory.py [--sections perpixel,admission,reloads]
        [--sizes 256x512,512x1024,1024x2048] [--budget-mb 4096] [--reloads 30] [--width 32] [--depth 4]

The default U-Net (width 32, depth 4) and depth network (random weights: memory does not depend
on them) are exported and published; `python -m services.inference.main` serves them in its own
process.

- perpixel (admission limit off): for each size and model, the first request at that shape
  ("first") and the one after it ("again"): the server's peak RSS (VmHWM, reset through
  /proc/<pid>/clear_refs before each request) minus its RSS before the request, per pixel
  (batch x height x width), and its RSS after the request (a request over the server's
  --arena-keep-pixels gives back what it grew). The largest figure, rounded up, is
  services/inference/admission.py's DEFAULT_BYTES_PER_PIXEL; for your own models, run this with
  your exports' sizes and pass the figure as --bytes-per-pixel.
- admission (the server's default admission, --budget-mb): the largest request it admits at two
  sizes (one 1:2 frame; a batch of two 1:2 frames), each sent twice (first at the shape, again),
  on a server that has served typical requests (256 x 512, batches of 1 and 2) before: peak RSS
  growth over the RSS before the request, side by side with the budget, and RSS after (given
  back); then the next size up, refused.
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


def _measure(pid: int, call) -> tuple[int, int, int]:
    """(RSS before, peak RSS during, RSS after) of the server around one call, in kB."""
    _reset_peak(pid)
    before = _status_kb(pid, "VmRSS")
    call()
    return before, _status_kb(pid, "VmHWM"), _status_kb(pid, "VmRSS")


def _largest_admitted(limit_px: int, batch: int, multiple: int = 32) -> tuple[int, int]:
    """(H, W) of the largest 1:2 frame, sides multiples of `multiple`, with batch x H x W <= limit_px."""
    h = multiple
    while batch * (h + multiple) * 2 * (h + multiple) <= limit_px:
        h += multiple
    return h, 2 * h


def admission(repo: Path, log: Path, a) -> None:
    """The server's default admission: the largest admitted request at two sizes vs the budget."""
    from segxal.errors import ResourceExhausted
    from services.inference.admission import DEFAULT_BYTES_PER_PIXEL
    from services.inference.client import InferenceClient

    budget = a.budget_mb * 2**20
    limit_px = budget // DEFAULT_BYTES_PER_PIXEL
    proc, target = start_server(repo, log, ["--intra-op-threads", str(a.threads),
                                            "--memory-budget-mb", str(a.budget_mb)])
    try:
        with InferenceClient(target, timeout_s=600) as client:
            deadline = time.monotonic() + 120
            while not _ready(client):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(log.read_text()[-2000:])
                time.sleep(0.5)
            # typical traffic first, as on a server in use: its arenas keep what these runs grew
            for shape in ((1, 256, 512), (2, 256, 512), (1, 256, 512)):
                client.infer_segmentation(np.zeros((*shape, 3), np.uint8))
                client.infer_depth(np.zeros((*shape, 3), np.uint8))
            print(f"# admission: budget {a.budget_mb} MiB at {DEFAULT_BYTES_PER_PIXEL} B/px = {limit_px / 1e6:.2f} Mpx "
                  f"per request (U-Net width {a.width} depth {a.depth}, {a.threads} ORT threads)")
            print(f"{'request':>16s} {'Mpx':>6s} {'send':>6s} {'RSS before MB':>14s} {'peak MB':>8s} "
                  f"{'growth MB':>10s} {'budget MB':>10s} {'after MB':>9s}")
            for batch in (1, 2):
                h, w = _largest_admitted(limit_px, batch)
                image = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
                for which in ("first", "again"):
                    before, peak, after = _measure(proc.pid, lambda: client.infer_segmentation(image))
                    print(f"{f'{batch} x {h}x{w}':>16s} {batch * h * w / 1e6:6.2f} {which:>6s} {before / 1024:14.0f} "
                          f"{peak / 1024:8.0f} {(peak - before) / 1024:10.0f} {budget / 2**20:10.0f} "
                          f"{after / 1024:9.0f}", flush=True)
                h, w = h + 32, w + 64
                try:
                    client.infer_segmentation(np.zeros((batch, h, w, 3), np.uint8))
                    print(f"{f'{batch} x {h}x{w}':>16s} {batch * h * w / 1e6:6.2f} ADMITTED (over the limit!)")
                except ResourceExhausted as e:
                    print(f"{f'{batch} x {h}x{w}':>16s} {batch * h * w / 1e6:6.2f} refused: {str(e)[:90]}...")
    finally:
        proc.terminate()
        proc.wait(30)


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
    p.add_argument("--sections", default="perpixel,admission,reloads")
    p.add_argument("--sizes", default="256x512,512x1024,1024x2048")
    p.add_argument("--budget-mb", type=int, default=4096, help="the admission section's memory budget")
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
        seg, dep = export_pair(tmp / "export", a.width, a.depth,
                               (0, 1) if "reloads" in a.sections.split(",") else (0,))
        repo = ModelRepository(tmp / "repo")
        seg_cfg, dep_cfg = build_config("segmentation", seg[0].spec), build_config("depth", dep[0].spec)
        repo.publish("segmentation", seg[0].path, seg_cfg)
        repo.publish("depth", dep[0].path, dep_cfg)
        sections = a.sections.split(",")
        if "admission" in sections:
            admission(repo.root, tmp / "admission.log", a)
        if "perpixel" not in sections and "reloads" not in sections:
            return 0
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
                if "perpixel" in sections:
                    print(f"# peak RSS per pixel (U-Net width {a.width} depth {a.depth}; depth net default; "
                          f"{a.threads} ORT threads)")
                    print(f"{'model':13s} {'size':>10s} {'Mpx':>6s} {'request':>8s} {'RSS before MB':>14s} "
                          f"{'peak MB':>8s} {'after MB':>9s} {'B/px':>7s}")
                    for size in a.sizes.split(","):
                        h, w = map(int, size.split("x"))
                        image = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
                        for kind, call in (("segmentation", client.infer_segmentation),
                                           ("depth", client.infer_depth)):
                            for which in ("first", "again"):
                                before, peak, after = _measure(proc.pid, lambda: call(image))
                                print(f"{kind:13s} {size:>10s} {h * w / 1e6:6.2f} {which:>8s} {before / 1024:14.0f} "
                                      f"{peak / 1024:8.0f} {after / 1024:9.0f} {(peak - before) * 1024 / (h * w):7.0f}",
                                      flush=True)
                if "reloads" not in sections:
                    return 0
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

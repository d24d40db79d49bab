"""Fleet ranking throughput with 1 and 2 EEM replicas, side by side in one run.

    .venv/bin/python bench/fleet.py [--logs 8] [--frames-per-log 8] [--size 128x256] [--width 8] [--repeats 2]

Services as separate processes, as in the cluster: one inference server (python -m
services.inference.main, segmentation and depth), two EEM replicas (python -m services.eem.main);
the coordinator (SQLite) in this process. The drive logs (MCAP, segxal.ingest.write_drive_log) are
ingested once before timing. Then the fleet worker (services.fleet.worker.run_shard, the code each
index of the Indexed Job runs) ranks every frame into a fresh results folder, with its EEM target
set to one replica ("h1:p1") or to both ("h1:p1,h2:p2", round_robin), alternating 1, 2, 1, 2...;
frames/s is the median over --repeats runs of each. Each replica's own frames-scored counter shows
where the frames went.

On a machine of few cores the EEM replicas, the inference server and the worker share them: a
second replica adds scoring capacity only while the CPU is not already saturated.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frame(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A sky-to-road gradient with coloured blobs and noise (distinct frames: no near-duplicates)."""
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]  # [H, 1, 1]
    img = np.broadcast_to((1 - rows) * np.array([120, 160, 220], np.float32)
                          + rows * np.array([70, 70, 70], np.float32), (h, w, 3)).copy()  # [H, W, 3]
    yy, xx = np.ogrid[:h, :w]
    for _ in range(10):
        y, x, r = rng.integers(h // 3, h), rng.integers(0, w), rng.integers(4, max(5, h // 6))
        img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _write_logs(folder: Path, logs: int, per_log: int, h: int, w: int) -> None:
    from segxal.ingest import write_drive_log
    rng = np.random.default_rng(0)
    for i in range(logs):
        write_drive_log(folder / f"drive_{i:03d}.mcap",
                        [(100_000_000 * t, _frame(rng, h, w)) for t in range(per_log)])


def _export(folder: Path, h: int, w: int, width: int):
    import torch

    from segxal.export import ExportConfig, export_depth, export_segmentation
    from segxal.models.depth import DepthConfig, DepthNet
    from segxal.models.unet import UNet, UNetConfig
    from services.common.model_repository import ModelRepository, build_config

    torch.manual_seed(0)
    cfg = ExportConfig(trace_hw=(h, w), parity_batch=1)
    seg = export_segmentation(UNet(UNetConfig(width=width)), folder / "export" / "seg" / "model.onnx", cfg)
    depth = export_depth(DepthNet(DepthConfig(width=width)), folder / "export" / "depth" / "model.onnx", cfg)
    repo = ModelRepository(folder / "repo")
    repo.publish("segmentation", seg.path, build_config("segmentation", seg.spec))
    repo.publish("depth", depth.path, build_config("depth", depth.spec))
    return repo


class _Processes:
    """Inference server + 2 EEM replicas as subprocesses; SIGTERM on exit."""

    def __init__(self, repo_root: Path, storage: Path, intra_op_threads: int, max_concurrency: int, logs: Path):
        py = sys.executable
        self.procs: list[subprocess.Popen] = []
        self.inference_port = _free_port()
        self._spawn([py, "-m", "services.inference.main", "--repo", str(repo_root), "--host", "127.0.0.1",
                     "--port", str(self.inference_port), "--poll-interval", "0",
                     "--intra-op-threads", str(intra_op_threads)], logs / "inference.log")
        self.eem_ports = [_free_port(), _free_port()]
        for i, port in enumerate(self.eem_ports):
            self._spawn([py, "-m", "services.eem.main", "--seg-target", f"127.0.0.1:{self.inference_port}",
                         "--storage-root", str(storage), "--host", "127.0.0.1", "--port", str(port),
                         "--max-concurrency", str(max_concurrency)], logs / f"eem{i}.log")

    def _spawn(self, cmd: list[str], log: Path) -> None:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT))

    @property
    def eem_targets(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.eem_ports]

    def wait_ready(self, timeout_s: float = 180) -> None:
        from services.eem.client import EemClient
        for target in self.eem_targets:  # SERVING = this replica sees both models ready
            with EemClient(target, timeout_s=2) as client:
                deadline = time.monotonic() + timeout_s
                while not client.is_serving():
                    if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                        raise RuntimeError(f"EEM replica {target} did not become SERVING (logs beside the run)")
                    time.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _scored_per_replica(targets: list[str]) -> list[int]:
    from services.eem.client import EemClient
    counts = []
    for t in targets:
        with EemClient(t) as client:
            counts.append(client.stats().frames_scored)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", type=int, default=8)
    p.add_argument("--frames-per-log", type=int, default=8)
    p.add_argument("--size", default="128x256", help="HxW of the frames and the traced models")
    p.add_argument("--width", type=int, default=8, help="U-Net / depth net base width")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each replica count")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime threads per model execution")
    p.add_argument("--eem-concurrency", type=int, default=4, help="frames each EEM replica scores at once")
    p.add_argument("--worker-concurrency", type=int, default=4, help="score_many calls the worker keeps in flight")
    p.add_argument("--chunk", type=int, default=4, help="frames per score_many call")
    args = p.parse_args(argv)
    h, w = (int(x) for x in args.size.split("x"))

    from services.common.server import ServerConfig
    from services.coordinator.client import CoordinatorClient, drive_log_source
    from services.coordinator.config import CoordinatorConfig
    from services.coordinator.ranking import RankingConfig
    from services.coordinator.server import CoordinatorServer
    from services.fleet.worker import WorkerConfig, run_shard

    with tempfile.TemporaryDirectory(prefix="segxal-bench-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        storage, logs_dir = tmp / "storage", tmp / "drive-logs"
        storage.mkdir()
        print(f"exporting models (width {args.width}, {h}x{w}) and writing {args.logs} logs x "
              f"{args.frames_per_log} frames ...", flush=True)
        repo = _export(tmp, h, w, args.width)
        _write_logs(logs_dir, args.logs, args.frames_per_log, h, w)
        procs = _Processes(repo.root, storage, args.intra_op_threads, args.eem_concurrency, tmp)
        coordinator = CoordinatorServer(CoordinatorConfig(db=f"sqlite:///{tmp / 'coordinator.db'}",
                                                          storage=str(storage),
                                                          server=ServerConfig(address="127.0.0.1:0")))
        coordinator.start()
        try:
            procs.wait_ready()
            with CoordinatorClient(coordinator.target, timeout_s=600) as coord:
                pool = coord.create_pool("bench")
                frames = coord.ingest(pool.pool_id, [drive_log_source(str(p))
                                                     for p in sorted(logs_dir.glob("*.mcap"))]).frame_count
            runs: dict[int, list[float]] = {1: [], 2: []}
            spread: dict[int, list[int]] = {}
            for i in range(args.repeats * 2 + 1):
                replicas = 2 if i % 2 == 0 else 1  # a first untimed warm-up run on both, then 1, 2, 1, 2 ...
                before = _scored_per_replica(procs.eem_targets)
                cfg = WorkerConfig(index=0, count=1, logs=[str(logs_dir)], pool="bench",
                                   coordinator_target=coordinator.target,
                                   eem_target=",".join(procs.eem_targets[:replicas]), results=str(tmp / f"run{i}"),
                                   ranking=RankingConfig(concurrency=args.worker_concurrency, chunk_size=args.chunk))
                report = run_shard(cfg)
                if report.scored != frames or report.failed:
                    raise RuntimeError(f"run {i}: scored {report.scored} of {frames}, {report.failed} failed")
                if i == 0:
                    continue
                runs[replicas].append(frames / report.seconds)
                spread[replicas] = [a - b for a, b in zip(_scored_per_replica(procs.eem_targets), before)]
        finally:
            coordinator.stop(1.0)
            procs.stop()
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    print(f"\nfleet ranking, {frames} frames of {h}x{w} from {args.logs} MCAP logs, "
          f"{os.cpu_count()} CPUs (median of {args.repeats} runs each)")
    print(f"{'EEM replicas':>12}  {'frames/s':>9}  {'runs':>20}  frames scored by each replica (last run)")
    for n, value in ((1, one), (2, two)):
        print(f"{n:>12}  {value:>9.1f}  {', '.join(f'{x:.1f}' for x in runs[n]):>20}  {spread[n]}")
    print(f"2 replicas / 1 replica: {two / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

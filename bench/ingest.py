"""Drive-log ingest: frames/s and peak memory of segxal.ingest.extract_drive_log on a generated
log of --large frames against one of --small frames, side by side in one run. The reader streams
(one MCAP chunk and one image at a time), so peak memory must not grow with the log: the RSS ratio
large / small is the figure to watch (<= 1.1).

    .venv/bin/python bench/ingest.py [--small 2000] [--large 20000] [--size 240x320] \
        [--profile ros2|ros1|foxglove] [--encoding jpeg|rgb8|bayer_rggb8] [--min-gap-s 0]

Logs are written with the maintained writers (segxal.ingest.write_camera_log: mcap_ros2 / mcap_ros1
/ mcap_protobuf), every frame distinct (a moving block and the frame number stamped into a scene,
so neither the near-duplicate rule nor content addressing skips any). Each read runs in its own
fresh Python process, so its peak RSS (getrusage ru_maxrss) is its own; the process's RSS after the
imports, before the log is opened, is printed beside it. Extracted frames go to a temporary folder
that is removed afterwards. On a shared machine read frames/s as relative.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: extract one log, report time and memory as JSON.
_CHILD = """
import json, resource, sys, time
from segxal.ingest import IngestCounters, extract_drive_log
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
log, storage, gap = sys.argv[1], sys.argv[2], float(sys.argv[3])
base = rss_mb()
counters = IngestCounters()
t0 = time.perf_counter()
kept = sum(1 for _ in extract_drive_log(log, storage, counters=counters, min_gap_s=gap))
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"read": counters.frames_read, "kept": kept, "seconds": dt, "base_rss_mb": base,
                  "peak_rss_mb": peak}))
"""


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A blocky RGB scene: uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 226, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
    return np.kron(small, np.ones((16, 16, 1), np.uint8))[:h, :w]


def _frames(n: int, h: int, w: int):
    """n distinct frames: a bright block sweeps across the scene (well above the near-duplicate
    threshold between consecutive frames) and the frame number is stamped in the corner."""
    base = _scene(h, w)
    side = max(8, h // 4)
    for k in range(n):
        img = base.copy()
        x = (k * side // 2) % max(1, w - side)
        img[h // 3: h // 3 + side, x: x + side] = 255 - img[h // 3: h // 3 + side, x: x + side]
        img[0, :32, 0] = np.frombuffer(int(k).to_bytes(32, "big"), np.uint8)  # unique bytes per frame
        yield img


def write_log(path: Path, n: int, h: int, w: int, profile: str, encoding: str) -> float:
    """Write the log; returns seconds taken."""
    from segxal import imageio
    from segxal.ingest import CameraMessage, rgb_to_raw, write_camera_log
    t0 = time.perf_counter()

    def messages():
        for k, img in enumerate(_frames(n, h, w)):
            data = imageio.encode_jpeg(img) if encoding == "jpeg" else rgb_to_raw(img, encoding)
            yield CameraMessage("/camera/front/image", 1_700_000_000_000_000_000 + k * 33_333_333, data, encoding)

    write_camera_log(path, messages(), profile)
    return time.perf_counter() - t0


def read_log(path: Path, storage: Path, min_gap_s: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(storage), str(min_gap_s)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--size", default="240x320", help="HxW of the frames")
    p.add_argument("--profile", choices=("ros2", "ros1", "foxglove"), default="ros2")
    p.add_argument("--encoding", default="jpeg", help="jpeg (CompressedImage) or a raw encoding (rgb8, bayer_rggb8...)")
    p.add_argument("--min-gap-s", type=float, default=0.0)
    p.add_argument("--work-dir", default="", help="where logs and extracted frames go (default: a temp folder)")
    args = p.parse_args(argv)
    h, w = (int(x) for x in args.size.lower().split("x"))
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="segxal-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in (args.small, args.large):
            log = work / f"drive-{n}.mcap"
            wrote_s = write_log(log, n, h, w, args.profile, args.encoding)
            r = read_log(log, work / f"storage-{n}", args.min_gap_s)
            r.update(frames=n, log_mb=log.stat().st_size / 2**20, write_s=wrote_s)
            rows.append(r)
            log.unlink()
            shutil.rmtree(work / f"storage-{n}", ignore_errors=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"drive-log ingest: {args.profile} {args.encoding} {h}x{w}, min gap {args.min_gap_s} s "
          f"(loadavg {open('/proc/loadavg').read().split()[:3]})")
    print(f"{'frames':>8} {'log MB':>8} {'kept':>8} {'read s':>8} {'frames/s':>9} {'base RSS MB':>12} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['frames']:>8} {r['log_mb']:>8.1f} {r['kept']:>8} {r['seconds']:>8.1f} "
              f"{r['read'] / r['seconds']:>9.0f} {r['base_rss_mb']:>12.1f} {r['peak_rss_mb']:>12.1f}")
    small, large = rows
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"peak RSS ratio {large['frames']} / {small['frames']} frames: {ratio:.3f} (<= 1.1: memory flat)")
    print(f"throughput ratio: {(large['read'] / large['seconds']) / (small['read'] / small['seconds']):.2f}")
    return 0 if ratio <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())

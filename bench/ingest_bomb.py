"""A drive log with one raw image over the decode limit: peak RSS of segxal.ingest.extract_drive_log
on it, beside the RSS before the log is opened and the size the image claims.

The log: a zstd ROS 2 MCAP of [rgb8 32 x 64, mono8 SIDE x SIDE, rgb8 32 x 64],
a few kB on disk. The big image must be skipped from the size its message states, before any pixel
buffer exists; what is left is the MCAP chunk decompressed once (SIDE^2 bytes here).

    .venv/bin/python bench/ingest_bomb.py [--side 12000] [--profile ros2|ros1|foxglove]

The read runs in a fresh Python process (its own VmHWM, /proc/self/status); the log and the extracted frames go
to a temporary folder that is removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys
from segxal.errors import SegxalError
from segxal.ingest import IngestCounters, extract_drive_log
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))
before = status_mb("VmRSS")
counters, kept, error = IngestCounters(), 0, ""
try:
    for _ in extract_drive_log(sys.argv[1], sys.argv[2], near_duplicate_threshold=0, counters=counters):
        kept += 1
except SegxalError as e:
    error = str(e)
peak = status_mb("VmHWM")  # this process's high-water mark (ru_maxrss would include the parent's at fork)
print(json.dumps({"rss_before_mb": round(before), "peak_rss_mb": round(peak), "frames_kept": kept,
                  "frames_skipped_unreadable": counters.frames_skipped_unreadable, "error": error[-200:]}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=12000, help="the big mono8 image is side x side (default 12000)")
    ap.add_argument("--profile", default="ros2", choices=["ros2", "ros1", "foxglove"])
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from segxal.ingest import CameraMessage, rgb_to_raw, write_camera_log
    small = np.zeros((32, 64, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "bomb.mcap"
        write_camera_log(log, [CameraMessage("/cam", 1, rgb_to_raw(small, "rgb8"), "rgb8"),
                               CameraMessage("/cam", 2, np.zeros((args.side, args.side), np.uint8), "mono8"),
                               CameraMessage("/cam", 3, rgb_to_raw(small + 9, "rgb8"), "rgb8")], args.profile)
        run = subprocess.run([sys.executable, "-c", _CHILD, str(log), str(Path(tmp) / "storage")],
                             capture_output=True, text=True, cwd=REPO_ROOT, check=True)
        result = json.loads(run.stdout)
        result.update(log_bytes=log.stat().st_size, claimed_mb=round(args.side * args.side / 2**20),
                      profile=args.profile, side=args.side)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`segxal ingest log`: drive logs into a pool, through the coordinator, which extracts the frames
to its storage. A log is an MCAP file (ROS 2, ROS 1 or foxglove camera messages), a ROS 1 `.bag`,
a ROS 2 `.db3`, or a ROS 2 bag directory as `ros2 bag record` writes it (metadata.yaml and its
storage files, read in order).

    segxal ingest log drive-0412.mcap rosbag2_2026_11_03-10_00_00/ old.bag \
        --coordinator host:port --pool drive-2026-11 \
        --topic /cam/front/image_raw --topic /cam/left/image_raw/compressed --min-gap-s 0.5 \
        [--create-pool --labels repo/segmentation/labels.txt]

A pool made here (--create-pool) is labelled in the classes of --labels, the segmentation model's
Triton label file (one class name per line, index = class id); without it, the 19 Cityscapes classes.

Each frame keeps its topic (two topics land as two cameras) and timestamp. Sampling per topic: at
most one frame per --min-gap-s of log time, and near-duplicates of the last kept frame are
skipped. Prints one JSON line per log; exits 2 when a log failed (its frames read before the
damage are kept and counted) or had images that could not be read (skipped and named; the rest
are kept). A log this machine can see is checked to be a drive log before anything is sent, so a
wrong path does not leave a new, empty pool behind.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from segxal.ingest import DEFAULT_NEAR_DUPLICATE_THRESHOLD, drive_log_format
from segxal.labels import read_label_file
from services.common.channel import add_channel_args, channel_config_from_args
from services.coordinator.client import CoordinatorClient, drive_log_source, pool_class_names

ENV_PREFIX = "SEGXAL_"


def ingest_logs(args: argparse.Namespace) -> int:
    if args.min_gap_s < 0:
        raise InvalidInput(f"--min-gap-s must be >= 0, got {args.min_gap_s}")
    classes = read_label_file(args.labels) if args.labels else ()
    # A log found here is sent as an absolute path (the coordinator would resolve a relative one
    # against its own folder) once it is known to be a drive log; one not found here is sent as
    # given (the coordinator's own path) and checked there.
    logs = []
    for p in args.logs:
        if Path(p).exists():
            drive_log_format(Path(p).resolve())  # InvalidInput names what it is instead
            logs.append(str(Path(p).resolve()))
        else:
            logs.append(p)
    with CoordinatorClient(args.coordinator, channel_config_from_args(args, "coordinator"),
                           client_id="segxal-ingest") as coord:
        try:
            pool = coord.get_pool(name=args.pool)
        except NotFound:
            if not args.create_pool:
                raise NotFound(f"no pool {args.pool!r} (pass --create-pool to make it)") from None
            pool = coord.create_pool(args.pool, class_names=classes)
        if classes and pool_class_names(pool) != classes:
            raise FailedPrecondition(f"pool {args.pool!r} is labelled in {len(pool.class_names)} classes "
                                     f"({', '.join(pool.class_names)}), not the {len(classes)} of {args.labels}")
        sources = [drive_log_source(p, args.topics, args.near_duplicate_threshold, args.min_gap_s) for p in logs]
        reply = coord.ingest(pool.pool_id, sources)
    for r in reply.results:
        print(json.dumps({"log": r.source, "frames_added": r.frames_added,
                          "frames_already_present": r.frames_already_present,
                          "frames_skipped_min_gap": r.frames_skipped_min_gap,
                          "frames_skipped_near_duplicate": r.frames_skipped_near_duplicate, "error": r.error}))
    print(json.dumps({"pool": args.pool, "frames_added": reply.frames_added, "frame_count": reply.frame_count}))
    return 2 if any(r.error for r in reply.results) else 0


def register_cli(sub) -> None:
    ingest = sub.add_parser("ingest", help="bring data into a pool").add_subparsers(dest="ingest_cmd", required=True)
    p = ingest.add_parser("log", help="drive logs (MCAP, ROS 1/2 bags: camera topics) into a pool, through the coordinator",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help=".mcap, .bag or .db3 files, or ROS 2 bag directories (paths as the "
                                           "coordinator sees them)")
    p.add_argument("--coordinator", required=True, help="coordinator host:port")
    add_channel_args(p, "coordinator", ENV_PREFIX, "the coordinator")
    p.add_argument("--pool", required=True, help="pool name")
    p.add_argument("--create-pool", action="store_true", help="create the pool when it does not exist")
    p.add_argument("--labels", default="",
                   help="the segmentation model's label file (Triton label_filename: one class name per "
                        "line): the classes a created pool is labelled in (default: Cityscapes); an existing "
                        "pool must have them")
    p.add_argument("--topic", dest="topics", action="append", default=[],
                   help="camera topic to read (repeatable; default: every image topic)")
    p.add_argument("--min-gap-s", type=float, default=0.0,
                   help="per topic, the least log time between two kept frames (default 0: every frame)")
    p.add_argument("--near-duplicate-threshold", type=float, default=None,
                   help=f"grey levels; 0 keeps every frame (default {DEFAULT_NEAR_DUPLICATE_THRESHOLD})")
    p.set_defaults(func=ingest_logs)

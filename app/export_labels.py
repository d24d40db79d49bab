"""`segxal export labels`: a pool's accepted annotations as a dataset (Cityscapes layout or COCO
semantic masks, segxal.data.label_export), read through the coordinator's API.

    segxal export labels --coordinator host:port --pool drive-2026-11 --format cityscapes --out ds/

Annotations, frames and cycles (for the model version) come from the coordinator; the frame
images and annotation masks are read by their URIs from shared storage (--storage-root, as the
EEM service and trainer read them). Prints a JSON summary. The export is staged inside --out and
moved into place when complete: a failed export changes nothing there. See docs/drive_logs.md
(label export) for what --force replaces.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

from segxal import imageio
from segxal.data.label_export import FORMATS, AnnotationRecord, LabelDatasetWriter, LabeledFrame, merge_annotations
from segxal.errors import InvalidInput, NotFound
from segxal.storage import FrameStorage
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.common.channel import add_channel_args, channel_config_from_args
from services.coordinator.client import CoordinatorClient

ENV_PREFIX = "SEGXAL_"
_SCOPES = {pb.ANNOTATION_SCOPE_REGIONS: "regions", pb.ANNOTATION_SCOPE_WHOLE_FRAME: "whole_frame"}


def oracle_of(client_id: str) -> str:
    """"machine" for the machine oracle's clients (clients.machine names itself machine@host:pid,
    the services loop machine-oracle), "human" for everyone else (people through Label Studio or
    a labeling client, and the simulated human that stands in for them)."""
    return "machine" if client_id.startswith("machine") else "human"


def export_labels(coord: CoordinatorClient, storage: FrameStorage, pool_name: str, out: str, fmt: str,
                  split: str = "train", force: bool = False) -> dict:
    """Write the pool's accepted annotations as a dataset.

    Returns:
        a summary: frames, annotations, where the manifest is.
    Raises:
        NotFound: no such pool. InvalidInput: the pool holds no accepted annotation, the folder is
        not empty (without force), or a mask / frame is unreadable.
    """
    try:
        pool = coord.get_pool(name=pool_name)
    except NotFound:
        pool = coord.get_pool(pool_id=pool_name)  # a pool id works too; NotFound names it
    by_frame: dict[str, list[pb.Annotation]] = defaultdict(list)
    for a in coord.annotations(pool.pool_id):
        by_frame[a.frame_id].append(a)
    if not by_frame:
        raise InvalidInput(f"pool {pool.name!r} has no accepted annotations to export")
    models: dict[str, tuple[str, int]] = {}
    for anns in by_frame.values():
        for a in anns:
            if a.cycle_id and a.cycle_id not in models:
                model = coord.cycle_report(a.cycle_id).cycle.model
                models[a.cycle_id] = (model.model_name, int(model.version))
    summary = {"pool": pool.name, "format": fmt, "out": out, "frames": 0, "annotations": 0}
    with LabelDatasetWriter(out, fmt, pool.name, split=split, force=force,
                            info={"coordinator": coord.target, "pool_id": pool.pool_id}) as writer:
        for frame in coord.frames(pool.pool_id):  # pool order, so the export is reproducible
            anns = sorted(by_frame.get(frame.frame_id, ()), key=lambda a: (a.created_unix_s, a.annotation_id))
            if not anns:
                continue
            masks = [imageio.decode_image(storage.read_bytes(a.mask_uri), where=a.mask_uri, mode=None) for a in anns]
            records = tuple(AnnotationRecord(
                annotation_id=a.annotation_id, labeled_by=a.client_id, oracle=oracle_of(a.client_id),
                scope=_SCOPES.get(a.scope, "unspecified"), region_ids=tuple(a.region_ids),
                model_name=models.get(a.cycle_id, ("", 0))[0], model_version=models.get(a.cycle_id, ("", 0))[1],
                dice=a.dice if a.has_dice else None, pixels=int(a.pixels_count), cycle_id=a.cycle_id,
                created_unix_s=a.created_unix_s) for a in anns)
            writer.add(LabeledFrame(frame_id=frame.frame_id, image=storage.read_bytes(frame.uri),
                                    train_ids=merge_annotations(masks), source=frame.source,
                                    timestamp_ns=frame.timestamp_ns, frame_uri=frame.uri, annotations=records))
            summary["frames"] += 1
            summary["annotations"] += len(anns)
    summary["manifest"] = str(writer.out / "manifest.json")
    return summary


def _run(args: argparse.Namespace) -> int:
    storage = FrameStorage(args.storage_roots or ["/"])
    with CoordinatorClient(args.coordinator, channel_config_from_args(args, "coordinator"),
                           client_id="segxal-export") as coord:
        summary = export_labels(coord, storage, args.pool, args.out, args.format, args.split, args.force)
    print(json.dumps(summary))
    return 0


def register_cli(sub) -> None:
    export = sub.add_parser("export", help="take data out of the system").add_subparsers(dest="export_cmd",
                                                                                          required=True)
    p = export.add_parser("labels", help="a pool's accepted annotations as a Cityscapes or COCO dataset",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", required=True, help="coordinator host:port")
    add_channel_args(p, "coordinator", ENV_PREFIX, "the coordinator")
    p.add_argument("--pool", required=True, help="pool name (or id)")
    p.add_argument("--format", required=True, choices=FORMATS, help="cityscapes (gtFine PNGs) or coco (RLE JSON)")
    p.add_argument("--out", required=True, help="dataset folder (must be empty unless --force)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder: replaces the files an earlier export wrote there (its "
                        "manifest.json names them), leaves everything else, and refuses to overwrite any other file")
    p.add_argument("--split", default="train", help="Cityscapes split folder (default train)")
    p.add_argument("--storage-root", dest="storage_roots", action="append", default=[],
                   help="read frames and masks only under these roots (repeatable; default: anywhere local)")
    p.set_defaults(func=_run)

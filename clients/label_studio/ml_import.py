"""What a team sets up to use the ML backend (docs/label_studio.md): the coordinator's queue of
tasks (a pool of frames and a ranked EEM cycle, which the backend's webhook submits to), the
project's label config, and the tasks of a folder of frames as Label Studio local files.

    python -m clients.label_studio.ml_import queue --coordinator HOST:PORT --pool NAME \
        --data /shared/ds --split val --batch 8      # [--coordinator-token-file F --coordinator-tls-ca CA]
    python -m clients.label_studio.ml_import label-config [--classes-file labels.txt] > config.xml
    python -m clients.label_studio.ml_import tasks --document-root /shared /shared/frames > tasks.json

`queue` creates the pool when it does not exist yet, ingests the Cityscapes-layout split (frames
already there are kept), opens an EEM cycle of --batch tasks and ranks it with the coordinator's
current segmentation model; it prints each task's score and frame, best first.

Each task is {"image": URL, "overlay": URL}, both the frame's /data/local-files/?d=<path relative
to the document root> URL: Label Studio refuses an import that lacks a key the label config names,
and the ML backend points `overlay` at the EEM heat map when it predicts. Frames are the .png /
.jpg / .jpeg files under the folder, sorted by path.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote

from clients.label_studio import project as lsp
from segxal.errors import InvalidInput, NotFound, SegxalError
from segxal.labels import CLASS_NAMES
from services.common.channel import ChannelConfig, add_channel_args, channel_config_from_args

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
LOCAL_FILES_PREFIX = "/data/local-files/?d="


def local_file_url(path: Path, document_root: Path) -> str:
    """Label Studio's URL of a local file: /data/local-files/?d=<path relative to the root>.

    Raises:
        InvalidInput: the file is not inside the document root.
    """
    path, root = Path(path).resolve(), Path(document_root).resolve()
    if not path.is_relative_to(root) or path == root:
        raise InvalidInput(f"{path} is not inside the document root {root} (Label Studio serves only files under "
                           f"its LOCAL_FILES_DOCUMENT_ROOT)")
    return LOCAL_FILES_PREFIX + quote(path.relative_to(root).as_posix())


def frame_files(folder: Path) -> list[Path]:
    """The frames under `folder`, sorted.

    Raises:
        InvalidInput: not a folder, or no frame in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder")
    frames = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    if not frames:
        raise InvalidInput(f"no {'/'.join(FRAME_SUFFIXES)} files under {folder}")
    return frames


def import_tasks(frames: Iterable[Path], document_root: Path) -> list[dict]:
    """The import body for Label Studio (POST /api/projects/<id>/import, or Import in the UI).

    Raises:
        InvalidInput: a frame outside the document root.
    """
    out = []
    for frame in frames:
        url = local_file_url(frame, document_root)
        out.append({lsp.FRAME_KEY: url, lsp.OVERLAY_KEY: url})
    return out


def read_classes(path: str | None) -> Sequence[str]:
    """Class names, one per line (a Triton label file, as the pool was created with); default Cityscapes.

    Raises:
        InvalidInput: an empty file. OSError: it cannot be read.
    """
    if not path:
        return tuple(CLASS_NAMES)
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise InvalidInput(f"{path} names no class")
    return tuple(names)


def queue(coordinator: str, pool: str, data: str, split: str, batch: int, channel: ChannelConfig | None = None,
          classes: Sequence[str] = ()) -> list:
    """The pool (created with the split's frames when missing) and a ranked EEM cycle of `batch`
    tasks: the coordinator tasks the ML backend's webhook submits annotations to.

    Returns:
        The ranked tasks (services.coordinator's pb.Task), best first.

    Raises:
        SegxalError: the coordinator refused (its message), e.g. no model version to rank with.
    """
    from services.coordinator.client import CoordinatorClient, cityscapes_source
    with CoordinatorClient(coordinator, channel, client_id="ml-import", timeout_s=120) as client:
        try:
            found = client.get_pool(name=pool)
        except NotFound:
            found = client.create_pool(pool, class_names=classes)
        # Every time: frames already in the pool are kept as they are, new ones are added.
        ingested = client.ingest(found.pool_id, [cityscapes_source(str(Path(data).resolve()), split)])
        errors = [r.error for r in ingested.results if r.error]
        if errors:
            raise InvalidInput(f"ingesting {data} ({split}): {'; '.join(errors)}")
        cycle = client.start_cycle(found.pool_id, batch, selection="eem")
        ranked = client.rank_cycle(cycle.cycle_id)
        if ranked.failed:
            raise InvalidInput(f"ranking failed for {len(ranked.failed)} frames: {list(ranked.failed)[:3]}")
        return list(ranked.tasks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.label_studio.ml_import", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    cfg = sub.add_parser("label-config", help="the project's labeling interface (XML)")
    cfg.add_argument("--classes-file", help="class names, one per line (default: the 19 Cityscapes classes)")
    tasks = sub.add_parser("tasks", help="the tasks of a folder of frames (JSON)")
    tasks.add_argument("folder", help="frames (inside the document root)")
    tasks.add_argument("--document-root", required=True, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT")
    q = sub.add_parser("queue", help="a pool of frames and a ranked EEM cycle in the coordinator")
    q.add_argument("--coordinator", required=True, help="coordinator host:port")
    q.add_argument("--pool", required=True, help="the pool (the ML backend's --pool)")
    q.add_argument("--data", required=True, help="Cityscapes-layout folder (inside Label Studio's document root)")
    q.add_argument("--split", default="val")
    q.add_argument("--batch", type=int, default=8, help="tasks in the cycle")
    q.add_argument("--classes-file", help="class names of a new pool, one per line (default: Cityscapes)")
    add_channel_args(q, "coordinator", "SEGXAL_LS_ML_", "the coordinator")
    args = p.parse_args(argv)
    try:
        if args.what == "queue":
            tasks = queue(args.coordinator, args.pool, args.data, args.split, args.batch,
                          channel_config_from_args(args, "coordinator"),
                          read_classes(args.classes_file) if args.classes_file else ())
            for task in tasks:
                print(f"{task.score:.6f} {task.frame_uri}")
            print(f"{len(tasks)} tasks wait in pool {args.pool!r}", file=sys.stderr)
        elif args.what == "label-config":
            print(lsp.label_config(read_classes(args.classes_file)))
        else:
            json.dump(import_tasks(frame_files(Path(args.folder)), Path(args.document_root)), sys.stdout, indent=1)
            print()
    except (SegxalError, OSError) as e:
        print(f"ml_import: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Image folders and Cityscapes-layout folders: frames are referenced in place (they already sit
on shared storage), so nothing is copied and re-ingesting is free."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from segxal.data.cityscapes import list_frames
from segxal.errors import InvalidInput, NotFound
from segxal.ingest.records import IngestCounters, IngestedFrame

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def iter_image_folder(path: str | Path, recursive: bool = False,
                      counters: IngestCounters | None = None) -> Iterator[IngestedFrame]:
    """Every .png / .jpg / .jpeg file of a folder, sorted by path.

    Raises:
        NotFound: the folder does not exist.
        InvalidInput: it holds no image.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise NotFound(f"{root}: image folder does not exist")
    files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir())
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise InvalidInput(f"{root}: no {'/'.join(IMAGE_EXTENSIONS)} images found"
                           f"{'' if recursive else ' (not recursive)'}")
    for p in files:
        if counters is not None:
            counters.frames_read += 1
        yield IngestedFrame(uri=str(p), source=f"folder:{root}")


def iter_cityscapes(root: str | Path, split: str, require_labels: bool = False,
                    counters: IngestCounters | None = None) -> Iterator[IngestedFrame]:
    """Frames of one split of a Cityscapes-layout folder, with their labelIds file when present.

    Raises:
        NotFound / InvalidInput: as segxal.data.cityscapes.list_frames.
    """
    root = Path(root).resolve()
    for f in list_frames(root, split, require_labels=require_labels):
        if counters is not None:
            counters.frames_read += 1
        # one source per drive log (<city>_<seq>), so a selection's log cap counts drive logs
        yield IngestedFrame(uri=str(f.image), source=f"cityscapes:{root}#{split}/{f.sequence}",
                            label_uri=str(f.label) if f.label else "")

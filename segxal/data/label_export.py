"""Accepted annotations as a dataset a team can train on: Cityscapes layout or COCO-style semantic
masks, with a manifest of who or what labeled each frame.

Cityscapes (`--format cityscapes`), loadable by segxal.data.cityscapes and cityscapesscripts (its
stock evaluator, csEvalPixelLevelSemanticLabeling, runs on it as it is):
    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png   the frame (PNG, as Cityscapes)
    gtFine/<split>/<city>/<stem>_gtFine_labelIds.png        labelIds; 0 ("unlabeled") where nobody labeled
    gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png   trainIds; 255 where nobody labeled
    gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png     16-bit; the labelId at every pixel
`<city>` is the pool name reduced to letters and digits (Cityscapes splits names on "_"), `<seq>`
numbers the frame's source (one drive-log topic = one camera = one sequence), `<frame>` its frames.
labelIds cannot hold 255: cityscapesscripts' evaluator refuses ids it does not define, so
"nothing labeled" is written as labelId 0, which every Cityscapes tool maps to trainId 255.
Annotations are semantic (no object instances), so instanceIds holds the labelId everywhere:
Cityscapes' own encoding of a region of an instance class with no single instance (ids >= 1000,
labelId * 1000 + k, are instances). The evaluator then scores IoU as usual and has no instance to
weight iIoU with (it reports iIoU as nan), as for a crowd region of the real data set.

COCO (`--format coco`), the COCO-Stuff convention for semantic masks:
    images/<stem><ext>     the frame's bytes unchanged
    annotations.json       images, categories (id = Cityscapes labelId, with `trainId`, name,
                           colour), and one annotation per (image, class) with a compressed RLE
                           `segmentation` (segxal.annotation's RLE, pycocotools' format), area, bbox.

Both: manifest.json lists each frame with its files, its source and timestamp, and every
annotation that went into it (who labeled it, human or machine oracle, region-level or whole
frame, the model version the task came from, DICE against the model's prediction), and under
"files" every file the export wrote. When a frame was annotated more than once, later annotations
win where they label a pixel and earlier ones fill the rest.

Writing: the files go to a hidden staging folder inside the output folder and are moved into
place when the export is complete, so a failed export leaves the folder as it was. Into a folder
that is not empty only with force, and then force replaces only what the previous export wrote
(the files its manifest names): everything else in the folder is left alone, and a file of the new
export that would land on a file the previous export did not write is refused, naming it, before
anything is replaced.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from cityscapesscripts.helpers.labels import id2label

from segxal import imageio
from segxal.annotation import encode_rle
from segxal.errors import InvalidInput
from segxal.labels import CLASS_COLORS, CLASS_NAMES, IGNORE, NUM_CLASSES, TRAIN_ID_TO_LABEL_ID, train_ids_to_label_ids

FORMATS = ("cityscapes", "coco")
MANIFEST = "manifest.json"
COCO_ANNOTATIONS = "annotations.json"
_STAGING_PREFIX = ".segxal-export-"
_FRAME_FILE_KEYS = ("image", "label_ids", "train_ids", "instance_ids")  # a manifest frame's files


@dataclass(frozen=True)
class AnnotationRecord:
    """One accepted annotation, as the manifest lists it."""
    annotation_id: str
    labeled_by: str  # the labeling client's id (e.g. "label-studio@host:pid", "machine@host:pid")
    oracle: str  # "human" or "machine"
    scope: str  # "regions" or "whole_frame"
    region_ids: tuple[int, ...]
    model_name: str  # the model version the task was ranked with ("" for none)
    model_version: int
    dice: float | None  # macro DICE of prediction vs annotation; None when not computed
    pixels: int  # pixels the annotation counted as labeled
    cycle_id: str
    created_unix_s: float


@dataclass(frozen=True)
class LabeledFrame:
    """A frame and its merged labels, ready to write."""
    frame_id: str
    image: bytes  # the frame as stored (PNG / JPEG bytes)
    train_ids: np.ndarray  # uint8 [H, W], 255 = nobody labeled this pixel
    source: str = ""
    timestamp_ns: int = 0
    frame_uri: str = ""
    annotations: tuple[AnnotationRecord, ...] = ()


def merge_annotations(masks: list[np.ndarray]) -> np.ndarray:
    """Masks of one frame in the order they were accepted -> one trainId mask: later ones win where
    they label a pixel (255 = not labeled there).

    Raises:
        InvalidInput: no masks, or masks of different sizes.
    """
    if not masks:
        raise InvalidInput("merge_annotations: no masks")
    out = masks[0].copy()
    for m in masks[1:]:
        if m.shape != out.shape:
            raise InvalidInput(f"annotations of one frame differ in size: {m.shape} vs {out.shape}")
        labeled = m != IGNORE
        out[labeled] = m[labeled]
    return out  # [H, W]


def _city(name: str) -> str:
    city = re.sub(r"[^A-Za-z0-9]", "", name)
    return city or "segxal"


def _categories() -> list[dict]:
    out = []
    for train_id, name in enumerate(CLASS_NAMES):
        label_id = int(TRAIN_ID_TO_LABEL_ID[train_id])
        out.append({"id": label_id, "name": name, "supercategory": id2label[label_id].category,
                    "trainId": train_id, "color": [int(c) for c in CLASS_COLORS[train_id]]})
    return out


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


class LabelDatasetWriter:
    """Writes frames one at a time (memory does not grow with the pool, except COCO's small RLE
    list), then the manifest (and annotations.json) on close(). A context manager.

    Args:
        out: the dataset folder (created).
        fmt: "cityscapes" or "coco".
        name: the pool name (the Cityscapes city, the manifest's title).
        split: the Cityscapes split folder.
        force: write into a non-empty folder, replacing what an earlier export wrote there.

    Raises:
        InvalidInput: unknown format, or `out` is not empty (names what is there) and not force.
    """

    def __init__(self, out: str | Path, fmt: str, name: str, split: str = "train", force: bool = False,
                 info: dict | None = None):
        if fmt not in FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise InvalidInput(f"split must be a plain folder name, got {split!r}")
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise InvalidInput(f"{self.out}: exists and is not a folder")
        present = sorted(p.name for p in self.out.iterdir()
                         if not p.name.startswith(_STAGING_PREFIX)) if self.out.is_dir() else []
        if present and not force:
            shown = ", ".join(present[:5]) + (" ..." if len(present) > 5 else "")
            raise InvalidInput(f"{self.out}: folder is not empty ({shown}); choose an empty folder, or pass "
                               f"--force to replace an earlier export there")
        self._previous = previous_export_files(self.out) if present else set()
        self.out.mkdir(parents=True, exist_ok=True)
        self._stage = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.out))
        self.fmt, self.name, self.split = fmt, name, split
        self.city = _city(name)
        self.info = dict(info or {})
        self._frames: list[dict] = []
        self._files: list[str] = []
        self._sequences: dict[str, int] = {}
        self._per_sequence: dict[int, int] = {}
        self._coco_images: list[dict] = []
        self._coco_annotations: list[dict] = []

    def __enter__(self) -> "LabelDatasetWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Drop what was written so far; the folder stays as it was."""
        shutil.rmtree(self._stage, ignore_errors=True)

    def _write(self, rel: Path, data: bytes) -> None:
        path = self._stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)  # made durable together when the export is moved into place
        self._files.append(rel.as_posix())

    def _stem(self, source: str) -> str:
        seq = self._sequences.setdefault(source, len(self._sequences))
        n = self._per_sequence.get(seq, 0)
        self._per_sequence[seq] = n + 1
        return f"{self.city}_{seq:06d}_{n:06d}"

    def add(self, frame: LabeledFrame) -> dict:
        """Write one frame's image and labels. Returns its manifest entry.

        Raises:
            InvalidInput: labels that are not uint8 [H, W] of the image's size, or unknown trainIds.
        """
        labels = frame.train_ids
        rgb = imageio.decode_image(frame.image, where=frame.frame_uri or frame.frame_id)  # [H, W, 3]
        if labels.dtype != np.uint8 or labels.shape != rgb.shape[:2]:
            raise InvalidInput(f"frame {frame.frame_id}: labels are {labels.dtype} {labels.shape}, the image is "
                               f"{rgb.shape[0]} x {rgb.shape[1]}")
        bad = (labels >= NUM_CLASSES) & (labels != IGNORE)
        if bad.any():
            raise InvalidInput(f"frame {frame.frame_id}: unknown trainIds {sorted(set(labels[bad].tolist()))[:10]}")
        stem = self._stem(frame.source)
        entry = {"frame_id": frame.frame_id, "frame_uri": frame.frame_uri, "source": frame.source,
                 "timestamp_ns": frame.timestamp_ns, "height": int(labels.shape[0]), "width": int(labels.shape[1]),
                 "labeled_pixels": int((labels != IGNORE).sum()),
                 "annotations": [asdict(a) for a in frame.annotations]}
        if self.fmt == "cityscapes":
            entry.update(self._write_cityscapes(stem, frame, rgb, labels))
        else:
            entry.update(self._write_coco(stem, frame, labels))
        self._frames.append(entry)
        return entry

    def _write_cityscapes(self, stem: str, frame: LabeledFrame, rgb: np.ndarray, labels: np.ndarray) -> dict:
        rel = Path(self.split) / self.city
        image = Path("leftImg8bit") / rel / f"{stem}_leftImg8bit.png"
        label_ids = Path("gtFine") / rel / f"{stem}_gtFine_labelIds.png"
        train_ids = Path("gtFine") / rel / f"{stem}_gtFine_labelTrainIds.png"
        instance_ids = Path("gtFine") / rel / f"{stem}_gtFine_instanceIds.png"
        # Cityscapes images are PNG: a PNG frame is copied, others are re-encoded losslessly.
        png = frame.image if frame.image[:8] == b"\x89PNG\r\n\x1a\n" else imageio.encode_png(rgb)
        ids = train_ids_to_label_ids(labels)  # [H, W] uint8
        self._write(image, png)
        self._write(label_ids, imageio.encode_png(ids))
        self._write(train_ids, imageio.encode_png(labels))
        self._write(instance_ids, imageio.encode_png(ids.astype(np.uint16)))  # no instances: labelId (module doc)
        return {"image": image.as_posix(), "label_ids": label_ids.as_posix(), "train_ids": train_ids.as_posix(),
                "instance_ids": instance_ids.as_posix()}

    def _write_coco(self, stem: str, frame: LabeledFrame, labels: np.ndarray) -> dict:
        ext = ".png" if frame.image[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg" if frame.image[:2] == b"\xff\xd8" else ""
        if not ext:
            ext = Path(frame.frame_uri).suffix.lower() or ".img"
        image = Path("images") / f"{stem}{ext}"
        self._write(image, frame.image)
        image_id = len(self._coco_images) + 1
        h, w = labels.shape
        self._coco_images.append({"id": image_id, "file_name": image.name, "height": int(h), "width": int(w),
                                  "segxal_frame_id": frame.frame_id})
        for train_id in np.unique(labels):
            if train_id == IGNORE:
                continue
            mask = labels == train_id  # [H, W]
            rle = encode_rle(mask)
            self._coco_annotations.append({
                "id": len(self._coco_annotations) + 1, "image_id": image_id,
                "category_id": int(TRAIN_ID_TO_LABEL_ID[train_id]), "iscrowd": 0, "area": int(mask.sum()),
                "bbox": _bbox(mask), "segmentation": {"size": [rle.height, rle.width], "counts": rle.counts}})
        return {"image": image.as_posix(), "coco_image_id": image_id}

    def close(self) -> None:
        """Write manifest.json (and annotations.json for COCO), then move the export into place:
        the previous export's files are removed first, everything else in the folder stays.

        Raises:
            InvalidInput: a file of this export would replace one the previous export did not write
                (named); nothing in the folder was changed.
        """
        try:
            info = {"pool": self.name, "format": self.fmt, "exported_unix_s": time.time(), **self.info}
            if self.fmt == "coco":
                doc = {"info": {"description": f"SegXAL pool {self.name}", **info}, "images": self._coco_images,
                       "annotations": self._coco_annotations, "categories": _categories()}
                self._write(Path(COCO_ANNOTATIONS), json.dumps(doc).encode())
            manifest = {**info, "split": self.split if self.fmt == "cityscapes" else None,
                        "frames": self._frames,
                        "counts": {"frames": len(self._frames),
                                   "annotations": sum(len(f["annotations"]) for f in self._frames)},
                        "files": sorted([*self._files, MANIFEST])}
            self._write(Path(MANIFEST), json.dumps(manifest, indent=1).encode())
            self._move_into_place()
        finally:
            self.abort()

    def _move_into_place(self) -> None:
        taken = [rel for rel in self._files if (self.out / rel).is_dir()
                 or (rel not in self._previous and os.path.lexists(self.out / rel))]
        if taken:
            shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
            raise InvalidInput(f"{self.out}: the export would replace {shown}, which the previous export did not "
                               f"write (its manifest does not name them); move them away or choose another folder. "
                               f"Nothing was changed")
        os.sync()  # the new files are durable before the previous export's are removed
        for rel in sorted(self._previous):
            path = self.out / rel
            if path.is_file() or path.is_symlink():
                path.unlink()
            _remove_empty_parents(path.parent, self.out)
        # The manifest last: a folder with a manifest holds the whole export it names.
        for rel in sorted(self._files, key=lambda r: r == MANIFEST):
            target = self.out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._stage / rel, target)
        imageio.fsync_dir(self.out)


def _remove_empty_parents(folder: Path, root: Path) -> None:
    """Remove `folder` and its parents up to (not including) `root` while they are empty."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): it holds something else
            return
        folder = folder.parent


def previous_export_files(out: Path) -> set[str]:
    """The files (paths relative to `out`) that the export whose manifest.json is in `out` wrote;
    empty when there is none (nothing in the folder may then be replaced).

    Manifests of exports before "files" was recorded name their files per frame.

    Raises:
        InvalidInput: a manifest of this exporter that names a path outside the folder.
    """
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()  # no manifest, or not ours: nothing here was written by an export
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS or \
            not isinstance(manifest.get("frames"), list):
        return set()
    if isinstance(manifest.get("files"), list):
        named = [f for f in manifest["files"] if isinstance(f, str)]
    else:
        named = [MANIFEST] + ([COCO_ANNOTATIONS] if manifest["format"] == "coco" else [])
        for frame in manifest["frames"]:
            if isinstance(frame, dict):
                named += [frame[k] for k in _FRAME_FILE_KEYS if isinstance(frame.get(k), str)]
    files = set()
    for rel in named:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0].startswith(_STAGING_PREFIX):
            raise InvalidInput(f"{out / MANIFEST}: names {rel!r}, outside the export folder; not replacing anything")
        files.add(p.as_posix())
    return files

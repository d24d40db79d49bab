"""Loader for the Cityscapes folder layout, real or synthetic (segxal.data.synth writes it).

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png      (optional: unlabeled pools)
    <root>/disparity/<split>/<city>/<stem>_disparity.png         (optional, 16-bit encoding)
    <root>/camera/<split>/<city>/<stem>_camera.json              (optional)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segxal import imageio
from segxal.errors import InvalidInput, NotFound
from segxal.labels import LABEL_MAP_FILE, LabelMap, label_ids_to_train_ids, load_label_map
from segxal.resize import resize_image, resize_nearest

IMAGE_SUFFIX = "_leftImg8bit.png"
# ImageNet statistics: the normalisation of the default models (also written to config.pbtxt
# of exported models, so user-supplied models can declare their own).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Frame:
    frame_id: str  # "<city>_<seq>_<frame>", unique within a dataset
    split: str
    city: str
    image: Path
    label: Path | None = None
    disparity: Path | None = None
    camera: Path | None = None
    label_map: LabelMap | None = None  # the dataset's own taxonomy (<root>/label_map.json), else Cityscapes

    @property
    def sequence(self) -> str:
        """'<city>_<seq>': the drive log this frame belongs to."""
        return self.frame_id.rsplit("_", 1)[0]


def _companion(root: Path, kind: str, split: str, city: str, stem: str, suffix: str) -> Path | None:
    p = root / kind / split / city / f"{stem}{suffix}"
    return p if p.is_file() else None


def list_frames(root: str | Path, split: str, require_labels: bool = False) -> list[Frame]:
    """All frames of a split, sorted by id.

    Raises:
        NotFound: root or root/leftImg8bit/<split> is missing (the message says which).
        InvalidInput: the split folder holds no *_leftImg8bit.png images, or labels are required
            and some frame has none.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"{root}: dataset folder does not exist")
    img_dir = root / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise NotFound(f"{img_dir}: missing; expected the Cityscapes layout leftImg8bit/<split>/<city>/")
    frames = []
    label_map = load_label_map(Path(root) / LABEL_MAP_FILE) if (Path(root) / LABEL_MAP_FILE).is_file() else None
    for p in sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        city = p.parent.name
        stem = p.name[: -len(IMAGE_SUFFIX)]
        frames.append(Frame(
            frame_id=stem, split=split, city=city, image=p,
            label=_companion(root, "gtFine", split, city, stem, "_gtFine_labelIds.png"),
            disparity=_companion(root, "disparity", split, city, stem, "_disparity.png"),
            camera=_companion(root, "camera", split, city, stem, "_camera.json"),
            label_map=label_map,
        ))
    if not frames:
        raise InvalidInput(f"{img_dir}: no <city>/*{IMAGE_SUFFIX} images found")
    if require_labels:
        missing = [f.frame_id for f in frames if f.label is None]
        if missing:
            raise InvalidInput(
                f"{root / 'gtFine' / split}: {len(missing)} frames have no *_gtFine_labelIds.png "
                f"(first: {missing[0]})")
    return frames


def load_train_ids(frame: Frame, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Ground-truth trainIds uint8 [H, W] of a labeled frame (checked against the image size), in
    the dataset's label map when it has one (segxal.labels.LabelMap: its own class indices)."""
    if frame.label is None:
        raise NotFound(f"{frame.frame_id}: frame has no label file")
    ids = imageio.read_label(frame.label)
    if shape is not None and ids.shape != tuple(shape):
        raise InvalidInput(f"{frame.label}: label size {ids.shape} != image size {tuple(shape)}")
    train_ids = label_ids_to_train_ids(ids, where=str(frame.label))
    return train_ids if frame.label_map is None else frame.label_map.apply(train_ids)


def load_camera(frame: Frame) -> dict:
    if frame.camera is None:
        raise NotFound(f"{frame.frame_id}: frame has no camera file")
    try:
        return json.loads(frame.camera.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{frame.camera}: not valid JSON ({e})") from None


def disparity_to_depth(disparity: np.ndarray, camera: dict) -> np.ndarray:
    """Metric depth (m) = baseline * fx / disparity; 0 where disparity is invalid."""
    fx = float(camera["intrinsic"]["fx"])
    baseline = float(camera["extrinsic"]["baseline"])
    with np.errstate(divide="ignore"):
        return np.where(disparity > 0, baseline * fx / np.maximum(disparity, 1e-6), 0.0).astype(np.float32)


def load_inverse_depth(frame: Frame, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Ground-truth disparity (proportional to inverse depth, larger = nearer), float32 [H, W]."""
    if frame.disparity is None:
        raise NotFound(f"{frame.frame_id}: frame has no disparity file")
    d = imageio.read_disparity(frame.disparity)
    if shape is not None and d.shape != tuple(shape):
        raise InvalidInput(f"{frame.disparity}: disparity size {d.shape} != image size {tuple(shape)}")
    return d


def normalize_image(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] normalised with MEAN/STD."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class SegDataset:
    """Map-style dataset (torch DataLoader compatible) of (image [3,H,W] float32, trainIds [H,W] int64,
    inverse depth [H,W] float32 or empty) at a fixed size. Labels may be overridden per frame
    (active learning: annotations replace ground truth; 255 = not labeled)."""

    def __init__(self, frames: list[Frame], size: tuple[int, int] | None = None,
                 with_labels: bool = True, with_depth: bool = False,
                 label_override: dict[str, np.ndarray] | None = None, cache: bool = True):
        self.frames = list(frames)
        self.size = size
        self.with_labels = with_labels
        self.with_depth = with_depth
        self.label_override = label_override or {}
        self._cache: dict[int, tuple] | None = {} if cache else None
        self._parent: tuple[SegDataset, list[int]] | None = None  # set by subset()

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, i: int) -> tuple:
        """Decoded, resized arrays: rgb uint8 [H,W,3], trainIds uint8 [H,W] | None, disparity | None."""
        f = self.frames[i]
        rgb = imageio.read_rgb(f.image)
        size = self.size or rgb.shape[:2]
        lab = None
        if self.with_labels and f.frame_id not in self.label_override:
            lab = resize_nearest(load_train_ids(f, rgb.shape[:2]), size)
        depth = resize_nearest(load_inverse_depth(f, rgb.shape[:2]), size) if self.with_depth else None
        return resize_image(rgb, size), lab, depth

    def raw(self, i: int) -> tuple:
        """(rgb uint8 [H,W,3], trainIds uint8 [H,W] | None, disparity [H,W] | None), cached (the
        cache keeps uint8, not normalised float32: 4x less memory)."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        item = self._load(i)
        if self._cache is not None:
            self._cache[i] = item
        return item

    def subset(self, indices: list[int], label_override: dict[str, np.ndarray] | None = None) -> "SegDataset":
        """A view on some frames that shares this dataset's decode cache (AL cycles re-train on
        growing subsets without decoding a frame twice)."""
        sub = SegDataset([self.frames[i] for i in indices], self.size, self.with_labels,
                         self.with_depth, label_override, cache=False)
        sub._parent = (self, list(indices))
        return sub

    def __getitem__(self, i: int):
        rgb, lab, depth = self._parent[0].raw(self._parent[1][i]) if self._parent else self.raw(i)
        img = normalize_image(rgb)  # [3, H, W]
        fid = self.frames[i].frame_id
        if fid in self.label_override:
            lab = self.label_override[fid]
        lab = (np.full(img.shape[1:], 255, dtype=np.int64) if lab is None
               else lab.astype(np.int64))  # [H, W]
        if depth is None:
            depth = np.zeros(img.shape[1:], dtype=np.float32)
        return img, lab, depth

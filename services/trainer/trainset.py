"""The training set of a job: the seed frames and the annotated frames, read by URI through the
storage roots (segxal.storage), decoded once, merged per frame, at the training size.

A mask is a trainId map (255 = not annotated, segxal.annotation). The loss ignores 255, so a
region-level annotation trains on the fixed regions plus whatever the labeling policy put
elsewhere (the prediction, or nothing: docs/design.md, "Oracle modes"); the mask carries that choice.

A frame annotated more than once (the seed set, then a region-level fix; or two region-level fixes
in different cycles) keeps one mask: annotations apply in order, each one's annotated pixels
overwriting the earlier ones, except that a pixel a person decided is never overwritten by a pixel
the policy filled in (the in-process loop's rule, segxal.al.loop: "earlier human labels stay").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segxal import imageio
from segxal.annotation import LABEL_IDS, TRAIN_IDS, EncodedMask, decode_mask
from segxal.data.cityscapes import list_frames, load_train_ids, normalize_image
from segxal.resize import resize_image, resize_nearest
from segxal.errors import FailedPrecondition, InvalidInput
from segxal.labels import CLASS_NAMES, IGNORE
from segxal.storage import FrameStorage, local_uri
from services.trainer.api import AnnotationRef


@dataclass
class TrainingFrame:
    key: str  # the frame's canonical location: two URIs of one file are one frame
    rgb: np.ndarray  # uint8 [H, W, 3] at the training size
    labels: np.ndarray  # trainIds uint8 [H, W], 255 = not annotated
    human: np.ndarray  # bool [H, W]: pixels a person (or ground truth) decided
    full_shape: tuple[int, int]  # (H, W) as stored: every mask of the frame must have it


class LabeledFrames:
    """Map-style dataset for segxal.train.train_segmentation: (image float32 [3, H, W], trainIds
    int64 [H, W], an empty depth map float32 [H, W]), like SegDataset's items. Unlike SegDataset it
    holds frames that came by URI through FrameStorage, not from a Cityscapes folder."""

    def __init__(self, frames: list[TrainingFrame]):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        f = self.frames[i]
        img = normalize_image(f.rgb)  # [3, H, W]
        return img, f.labels.astype(np.int64), np.zeros(f.labels.shape, np.float32)

    def sample_images(self, n: int) -> np.ndarray:
        """uint8 [n, H, W, 3]: real frames for the export's parity check."""
        return np.stack([f.rgb for f in self.frames[:n]])


def seed_annotations(data: str, split: str, limit: int = 0) -> list[AnnotationRef]:
    """The seed set: ground-truth frames of a Cityscapes-layout split, as whole-frame annotations
    in labelIds (the gtFine files themselves).

    Args:
        data: Cityscapes-layout folder.
        split: e.g. "train".
        limit: the first `limit` frames by id (0: all).

    Raises:
        NotFound / InvalidInput: as segxal.data.cityscapes.list_frames (missing folder, no labels).
    """
    frames = list_frames(data, split, require_labels=True)
    frames = frames[:limit] if limit else frames
    if frames and frames[0].label_map is not None:
        # the data's own taxonomy (segxal.labels.LabelMap): its class indices, carried inline
        return [AnnotationRef(frame_uri=local_uri(f.image), mask_png=imageio.encode_png(load_train_ids(f)),
                              label_space=TRAIN_IDS, annotation_id=f"seed:{f.frame_id}") for f in frames]
    return [AnnotationRef(frame_uri=local_uri(f.image), mask_uri=local_uri(f.label), label_space=LABEL_IDS,
                          annotation_id=f"seed:{f.frame_id}") for f in frames]


def _read(storage: FrameStorage, uri: str, inline: bytes | None) -> bytes:
    return inline if inline is not None else storage.read_bytes(uri)


def _human_pixels(storage: FrameStorage, ref: AnnotationRef, annotated: np.ndarray, where: str) -> np.ndarray:
    """bool [H, W]: the annotated pixels a person decided."""
    if not ref.region_level or (not ref.human_mask_uri and ref.human_mask_png is None):
        return annotated
    data = _read(storage, ref.human_mask_uri, ref.human_mask_png)
    human = imageio.decode_image(data, where=f"{where}: human mask", mode=None)
    if human.ndim != 2 or human.shape != annotated.shape:
        raise InvalidInput(f"{where}: human mask must be a single-channel image of the frame's size "
                           f"{annotated.shape}, got shape {human.shape}")
    return (human != 0) & annotated


def build_training_set(storage: FrameStorage, refs: list[AnnotationRef], size: tuple[int, int],
                       seed_count: int = 0, classes: Sequence[str] | None = None) -> LabeledFrames:
    """Read, check, decode and merge every annotation.

    Args:
        storage: where frames and masks are read (confined to its roots).
        refs: the seed frames then the annotations, in the order they were accepted.
        size: (H, W) to train at.
        seed_count: how many of `refs` are seed frames (error messages number the rest from 0,
            as the request did).
        classes: the model's classes (index = label value); None: the 19 Cityscapes trainIds.

    Returns:
        One TrainingFrame per distinct frame, in order of first appearance.

    Raises:
        FailedPrecondition: no annotation at all.
        InvalidInput: an unreadable or malformed frame or mask, a mask of another size than its
            frame (the message names the annotation and the file).
        NotFound / PermissionDenied: a missing file, or one outside the storage roots.
    """
    if not refs:
        raise FailedPrecondition("no annotations to train on: the request names none, the pool has none "
                                 "accepted yet and the trainer has no seed set")
    merged: dict[str, TrainingFrame] = {}
    for i, ref in enumerate(refs, start=-seed_count):
        where = ref.validate(i).describe(i)
        key = str(storage.resolve(ref.frame_uri))
        frame = merged.get(key)
        if frame is None:
            rgb = storage.read_rgb(ref.frame_uri)  # [H, W, 3]
            full_shape = rgb.shape[:2]
        else:
            rgb, full_shape = frame.rgb, frame.full_shape  # decoded once per frame
        labels = decode_mask(EncodedMask(ref.label_space, png=_read(storage, ref.mask_uri, ref.mask_png)),
                             shape=full_shape, where=f"{where}: mask {ref.mask_uri or '(inline)'}",
                             classes=CLASS_NAMES if classes is None else classes)
        annotated = labels != IGNORE
        human = _human_pixels(storage, ref, annotated, where)
        labels, annotated, human = (resize_nearest(a, size) for a in (labels, annotated, human))
        if frame is None:
            frame = merged[key] = TrainingFrame(key=key, rgb=resize_image(rgb, size),
                                                labels=np.full(size, IGNORE, np.uint8),
                                                human=np.zeros(size, bool), full_shape=full_shape)
        writable = annotated & (human | ~frame.human)  # a person's earlier pixel beats the policy's
        frame.labels[writable] = labels[writable]
        frame.human |= human
    return LabeledFrames(list(merged.values()))

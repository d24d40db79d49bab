"""Label masks sent by labelers: decoding (PNG or per-class COCO RLE, Cityscapes labelIds or
trainIds), validation against the frame and the class list it is labelled in, and what an
annotation costs: frames, regions and pixels touched (docs/design.md, "Oracle modes").

Every decoded mask is a trainId array uint8 [H, W] with 255 (segxal.labels.IGNORE) where the
labeler did not annotate, so masks from any encoding compare and hash alike. "trainIds" are the
class ids of the class list in use: the 19 Cityscapes trainIds by default, or a pool's own classes
(then 0..C-1; Cityscapes labelIds mean nothing there and are refused).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from segxal import imageio
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES, IGNORE, is_cityscapes, label_ids_to_train_ids
from segxal.rle import Rle
from segxal.rle import decode as decode_rle
from segxal.rle import encode as encode_rle

LABEL_IDS = "label_ids"
TRAIN_IDS = "train_ids"
LABEL_SPACES = (LABEL_IDS, TRAIN_IDS)


@dataclass(frozen=True)
class ClassRle:
    label_id: int  # in the mask's label space
    rle: Rle


@dataclass(frozen=True)
class EncodedMask:
    """A label mask as a client sends it: exactly one of png / rle."""
    label_space: str  # LABEL_IDS or TRAIN_IDS
    png: bytes | None = None
    rle: tuple[ClassRle, ...] | None = None


def encode_class_rles(train_ids: np.ndarray) -> tuple[ClassRle, ...]:
    """A trainId mask (255 = not annotated) -> one RLE per present class, label space trainIds."""
    return tuple(ClassRle(int(c), encode_rle(train_ids == c))
                 for c in np.unique(train_ids) if c != IGNORE)


def _to_train_ids(values: np.ndarray, label_space: str, where: str, classes: Sequence[str]) -> np.ndarray:
    if label_space == LABEL_IDS:
        if not is_cityscapes(classes):
            raise InvalidInput(f"{where}: Cityscapes labelIds only go with the Cityscapes classes; this mask's "
                               f"{len(classes)} classes ({_named(classes)}) take class ids (label space train_ids)")
        return label_ids_to_train_ids(values, where=where)
    if label_space == TRAIN_IDS:
        bad = (values >= len(classes)) & (values != IGNORE)
        if bad.any():
            ids = sorted(set(np.unique(values[bad]).tolist()))
            raise InvalidInput(f"{where}: class ids {ids[:10]} are outside the {len(classes)} classes "
                               f"({_named(classes)}); allowed 0..{len(classes) - 1}, or {IGNORE} for not annotated")
        return values.astype(np.uint8)
    raise InvalidInput(f"{where}: label space must be one of {LABEL_SPACES}, got {label_space!r}")


def _named(classes: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(f"{i} {n}" for i, n in enumerate(classes[:limit]))
    return shown + (f", ... {len(classes) - 1} {classes[-1]}" if len(classes) > limit else "")


def decode_mask(mask: EncodedMask, shape: tuple[int, int] | None, where: str = "mask",
                classes: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """A client's mask -> trainIds uint8 [H, W], 255 = not annotated.

    Args:
        mask: PNG (single-channel 8-bit) or per-class RLE, in labelIds or trainIds.
        shape: (H, W) the frame has; None skips the size check.
        classes: the class list the mask is labelled in (index = class id); default Cityscapes.
    Raises:
        InvalidInput: no or both encodings, unreadable PNG / RLE, wrong size, class ids outside
            `classes` (the message names the allowed range), labelIds with a non-Cityscapes class
            list, overlapping class RLEs.
    """
    if (mask.png is None) == (mask.rle is None):
        raise InvalidInput(f"{where}: give the mask as exactly one of png or rle")
    if mask.label_space not in LABEL_SPACES:
        raise InvalidInput(f"{where}: label space must be one of {LABEL_SPACES}, got {mask.label_space!r}")
    if mask.png is not None:
        values = imageio.decode_image(mask.png, where=where, mode=None)
        if values.ndim != 2 or values.dtype != np.uint8:
            raise InvalidInput(f"{where}: PNG must be single-channel 8-bit, got shape {values.shape} "
                               f"dtype {values.dtype}")
        if shape is not None and values.shape != tuple(shape):
            raise InvalidInput(f"{where}: mask is {values.shape[0]} x {values.shape[1]}, "
                               f"the frame is {shape[0]} x {shape[1]}")
        return _to_train_ids(values, mask.label_space, where, classes)
    if not mask.rle:
        raise InvalidInput(f"{where}: RLE mask has no classes")
    first = mask.rle[0].rle
    h, w = (int(first.height), int(first.width)) if shape is None else (int(shape[0]), int(shape[1]))
    out = np.full((h, w), IGNORE, dtype=np.uint8)
    covered = np.zeros((h, w), dtype=bool)
    for i, cls in enumerate(mask.rle):
        cw = f"{where}: class {i} (label id {cls.label_id})"
        if (cls.rle.height, cls.rle.width) != (h, w):
            raise InvalidInput(f"{cw}: RLE is {cls.rle.height} x {cls.rle.width}, the frame is {h} x {w}")
        if not 0 <= cls.label_id <= 255:
            raise InvalidInput(f"{cw}: label id must be 0..255")
        train_id = int(_to_train_ids(np.array([cls.label_id], np.uint8), mask.label_space, cw, classes)[0])
        m = decode_rle(cls.rle, cw)
        if (covered & m).any():
            raise InvalidInput(f"{cw}: overlaps an earlier class ({int((covered & m).sum())} pixels)")
        covered |= m
        out[m] = train_id
    return out


@dataclass(frozen=True)
class AnnotationCost:
    frames: int
    regions: int
    pixels: int  # annotated (not ignored) pixels


def annotation_cost(train_ids: np.ndarray, regions_fixed: int,
                    touched: np.ndarray | None = None) -> AnnotationCost:
    """What one accepted annotation spends of the budget.

    Args:
        touched: bool [H, W], the pixels a person had to decide (a region-level annotation: the
            fixed regions). Labels outside it came from a policy (the prediction) and cost nothing,
            as in the in-process loop's accounting. None: every annotated pixel counts.
    """
    annotated = train_ids != IGNORE  # [H, W]
    if touched is not None:
        annotated &= touched
    return AnnotationCost(frames=1, regions=int(regions_fixed), pixels=int(annotated.sum()))


def content_sha256(train_ids: np.ndarray, scope: str, region_ids: Sequence[int]) -> str:
    """Hash of what an annotation says, independent of how it was encoded (PNG or RLE, labelIds or
    trainIds), so the same annotation sent twice is recognised."""
    h = hashlib.sha256()
    h.update(f"{train_ids.shape[0]}x{train_ids.shape[1]}|{scope}|{sorted(set(region_ids))}|".encode())
    h.update(np.ascontiguousarray(train_ids, dtype=np.uint8).tobytes())
    return h.hexdigest()

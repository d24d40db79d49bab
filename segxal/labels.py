"""Cityscapes label definitions, taken from cityscapesscripts so real Cityscapes and our
synthetic scenes share one mapping: labelId -> trainId (19 evaluation classes, 255 ignore)."""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from segxal.errors import InvalidInput

IGNORE = 255
_EVAL = sorted((l for l in _CS_LABELS if 0 <= l.trainId < 255), key=lambda l: l.trainId)
NUM_CLASSES = len(_EVAL)  # 19
CLASS_NAMES: list[str] = [l.name for l in _EVAL]
CLASS_COLORS = np.array([l.color for l in _EVAL], dtype=np.uint8)  # [19, 3]
TRAIN_ID_TO_LABEL_ID = np.array([l.id for l in _EVAL], dtype=np.uint8)  # [19]
NAME_TO_LABEL_ID = {l.name: l.id for l in _CS_LABELS if l.id >= 0}
NAME_TO_TRAIN_ID = {n: i for i, n in enumerate(CLASS_NAMES)}

# 256-entry lookup; ids that cityscapes does not define stay marked as unknown (-1).
_LUT = np.full(256, -1, dtype=np.int16)
for _l in _CS_LABELS:
    if 0 <= _l.id < 256:
        _LUT[_l.id] = _l.trainId if 0 <= _l.trainId < 255 else IGNORE
KNOWN_LABEL_IDS = frozenset(int(i) for i in np.nonzero(_LUT >= 0)[0])

# Classes whose mistakes cost most on the road; used by the optional class-weighted GradCAM.
SAFETY_CRITICAL = ("person", "rider", "bicycle", "motorcycle", "car", "truck", "bus")


def label_ids_to_train_ids(label_ids: np.ndarray, where: str = "labels") -> np.ndarray:
    """Map a Cityscapes labelId image to trainIds (uint8, 255 = ignore).

    Raises:
        InvalidInput: the image holds ids that Cityscapes does not define (names them and `where`).
    """
    if label_ids.dtype != np.uint8:
        if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
            raise InvalidInput(f"{where}: label ids must be in 0..255")
        label_ids = label_ids.astype(np.uint8)
    mapped = _LUT[label_ids]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(label_ids[mapped < 0]).tolist()))
        raise InvalidInput(f"{where}: unknown Cityscapes label ids {bad[:10]}")
    return mapped.astype(np.uint8)


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Inverse map for writing predictions/annotations as labelIds (ignore -> 0 'unlabeled')."""
    out = np.zeros(train_ids.shape, dtype=np.uint8)
    valid = train_ids < NUM_CLASSES
    out[valid] = TRAIN_ID_TO_LABEL_ID[train_ids[valid]]
    return out


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """trainId image [H, W] -> RGB [H, W, 3] in the Cityscapes palette (ignore = black)."""
    out = np.zeros(train_ids.shape + (3,), dtype=np.uint8)
    valid = train_ids < NUM_CLASSES
    out[valid] = CLASS_COLORS[train_ids[valid]]
    return out

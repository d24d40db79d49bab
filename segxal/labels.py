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


# ---- label maps: a taxonomy other than the 19 Cityscapes trainIds ---------------------------

LABEL_MAP_FILE = "label_map.json"  # at a Cityscapes-layout dataset's root: its ground truth's taxonomy


class LabelMap:
    """A dataset's own classes, each a group of Cityscapes classes: the ground truth's trainIds are
    mapped to the group's index (Cityscapes classes in no group become ignore, 255).

    The file (`<dataset>/label_map.json`) is a JSON object, class name -> Cityscapes class names,
    in label order:  {"flat": ["road", "sidewalk"], "vehicle": ["car", "truck", "bus"], ...}

    Raises:
        InvalidInput: not such an object, an unknown Cityscapes name, a name in two groups, fewer
            than 2 or more than 254 classes.
    """

    def __init__(self, groups: dict[str, list[str]], where: str = LABEL_MAP_FILE):
        if not isinstance(groups, dict) or not all(
                isinstance(k, str) and k and isinstance(v, list) and all(isinstance(n, str) for n in v)
                for k, v in groups.items()):
            raise InvalidInput(f"{where}: a label map is a JSON object: class name -> list of Cityscapes class names")
        if not 2 <= len(groups) <= 254:
            raise InvalidInput(f"{where}: a label map needs 2 to 254 classes, got {len(groups)}")
        self.names: tuple[str, ...] = tuple(groups)
        self.lut = np.full(256, IGNORE, dtype=np.uint8)  # [256] Cityscapes trainId -> own class index
        seen: dict[str, str] = {}
        for index, (name, members) in enumerate(groups.items()):
            for m in members:
                if m not in NAME_TO_TRAIN_ID:
                    raise InvalidInput(f"{where}: {m!r} (in {name!r}) is not a Cityscapes class; "
                                       f"expected names from {CLASS_NAMES}")
                if m in seen:
                    raise InvalidInput(f"{where}: {m!r} is in both {seen[m]!r} and {name!r}")
                seen[m] = name
                self.lut[NAME_TO_TRAIN_ID[m]] = index

    def apply(self, train_ids: np.ndarray) -> np.ndarray:
        """Cityscapes trainIds uint8 [H, W] (255 ignore) -> own class indices uint8 (255 ignore)."""
        return self.lut[train_ids]


def load_label_map(path) -> LabelMap:
    """Read a label_map.json (see LabelMap).

    Raises:
        InvalidInput: not JSON, or not a valid label map (the message names the file).
    """
    import json
    from pathlib import Path
    p = Path(path)
    try:
        groups = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{p}: not valid JSON ({e})") from None
    return LabelMap(groups, where=str(p))


def read_label_file(path) -> tuple[str, ...]:
    """Class names, one per line (Triton's label file format), index = label value.

    Raises:
        NotFound: no such file. InvalidInput: empty, or blank lines between names.
    """
    from pathlib import Path

    from segxal.errors import NotFound
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"{p}: label file not found")
    lines = p.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or any(not line.strip() for line in lines):
        raise InvalidInput(f"{p}: a label file needs one non-empty class name per line")
    return tuple(line.strip() for line in lines)


# ---- class lists: the classes a model predicts, a pool is labelled in and a labeling tool shows ----

MAX_CLASSES = 255  # class ids are uint8 and 255 (IGNORE) means "not annotated"


def check_class_names(names, where: str = "class names") -> tuple[str, ...]:
    """A class list, index = class id (label value), checked.

    Raises:
        InvalidInput: not strings, blank or repeated names, fewer than 2 or more than 255 classes.
    """
    names = tuple(names)
    if not all(isinstance(n, str) and n.strip() and n == n.strip() for n in names):
        raise InvalidInput(f"{where}: class names must be non-empty strings without surrounding blanks, "
                           f"got {list(names)[:20]}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInput(f"{where}: class names must be unique, {repeated[:10]} repeat")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise InvalidInput(f"{where}: a class list needs 2 to {MAX_CLASSES} classes (uint8 ids, "
                           f"{IGNORE} = not annotated), got {len(names)}")
    return names


def is_cityscapes(names) -> bool:
    """True for the 19 Cityscapes trainIds in their order (the default class list)."""
    return tuple(names) == tuple(CLASS_NAMES)


def class_colors(names) -> np.ndarray:
    """One distinct RGB colour per class, uint8 [C, 3]: the Cityscapes colour for a Cityscapes name,
    otherwise a golden-ratio walk round the hue circle (deterministic, neighbours far apart), skipping
    colours already taken."""
    import colorsys
    out = np.zeros((len(names), 3), dtype=np.uint8)
    taken = {tuple(int(v) for v in CLASS_COLORS[NAME_TO_TRAIN_ID[n]]) for n in names if n in NAME_TO_TRAIN_ID}
    step = 0
    for i, name in enumerate(names):
        if name in NAME_TO_TRAIN_ID:
            out[i] = CLASS_COLORS[NAME_TO_TRAIN_ID[name]]
            continue
        while True:
            hue = (step * 0.6180339887) % 1.0
            value = 0.95 if (step // 7) % 2 == 0 else 0.7  # a second brightness once hues crowd
            colour = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.75, value))
            step += 1
            if colour not in taken:
                break
        taken.add(colour)
        out[i] = colour
    return out

"""COCO run-length encoding of binary masks: the one RLE module (EEM regions, labelers' masks, the
coordinator's stored masks, label export), over pycocotools.

A mask [H, W] is flattened column-major (Fortran order) into counts of alternating runs starting
with background (0 when the first pixel is set). Two forms of the same counts: COCO's compressed
string (`Rle.counts`, what pycocotools writes and labelers send) and the counts themselves
(`Rle.uncompressed_counts`, what EEM regions carry). Label Studio's brush format is a different
encoding and lives in clients/label_studio/brush.py.

Reference: COCO data format, cocodataset/cocoapi PythonAPI/pycocotools/mask.py and maskApi.c.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycocotools.mask as coco_mask

from segxal.errors import InvalidInput


@dataclass(frozen=True)
class Rle:
    """COCO run-length encoding of one binary mask: column-major counts, as pycocotools writes."""
    height: int
    width: int
    counts: str = ""  # COCO's compressed string form
    uncompressed_counts: tuple[int, ...] = ()


def run_lengths(flat: np.ndarray) -> list[int]:
    """Runs of a 1-D bool array, starting with a (possibly empty) background run."""
    if flat.size == 0:
        return []
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # [n_changes]
    counts = np.diff(np.concatenate(([0], starts, [flat.size])))  # [n_runs]
    if flat[0]:
        counts = np.concatenate(([0], counts))  # [n_runs + 1]
    return counts.tolist()


def encode(mask: np.ndarray) -> Rle:
    """bool/uint8 [H, W] -> compressed COCO RLE (pycocotools' encoder)."""
    _check_2d(mask)
    enc = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    h, w = enc["size"]
    return Rle(height=int(h), width=int(w), counts=enc["counts"].decode("ascii"))


def encode_uncompressed(mask: np.ndarray) -> Rle:
    """bool/uint8 [H, W] -> COCO RLE with the run lengths themselves (uncompressed_counts)."""
    _check_2d(mask)
    h, w = mask.shape
    return Rle(int(h), int(w), uncompressed_counts=tuple(run_lengths(mask.astype(bool).ravel(order="F"))))


def decode(rle: Rle, where: str = "rle") -> np.ndarray:
    """One COCO RLE (either form) -> bool [H, W], through pycocotools.

    Raises:
        InvalidInput: bad size, both or neither form given, counts that do not cover exactly
            H * W pixels, an unreadable string (the message starts with `where`).
    """
    h, w = int(rle.height), int(rle.width)
    if h <= 0 or w <= 0:
        raise InvalidInput(f"{where}: RLE size must be positive, got {h} x {w}")
    if rle.counts and rle.uncompressed_counts:
        raise InvalidInput(f"{where}: give either counts (compressed) or uncompressed_counts, not both")
    if rle.uncompressed_counts:
        counts = [int(c) for c in rle.uncompressed_counts]
    elif rle.counts:
        counts = compressed_counts(rle.counts, where)
    else:
        raise InvalidInput(f"{where}: RLE has no counts")
    # pycocotools decodes whatever it is given; a mask whose runs do not cover the image exactly
    # is a client bug we must not store as a shifted or truncated label map.
    if min(counts) < 0 or sum(counts) != h * w:
        raise InvalidInput(f"{where}: not a valid COCO RLE of size {h} x {w}: the runs must be "
                           f"non-negative and cover {h * w} pixels, they cover {sum(counts)}")
    mask = coco_mask.decode(coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w))  # [H, W]
    return np.ascontiguousarray(mask, dtype=bool)


def compressed_counts(text: str, where: str = "rle") -> list[int]:
    """COCO's compressed RLE string -> run lengths: the inverse of rleToString in cocoapi's
    maskApi.c (6-bit groups offset by 48, 5 value bits + a continuation bit, sign-extended, and
    every count after the second stored as a difference to the one two back). pycocotools has no
    public function for it, and its decoder accepts counts that do not cover the image.

    Raises:
        InvalidInput: a character outside the alphabet, or a string that ends inside a number.
    """
    counts: list[int] = []
    value = shift = 0
    for ch in text:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            raise InvalidInput(f"{where}: not a valid COCO RLE string (character {ch!r})")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift  # sign bit set: negative
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    if shift:
        raise InvalidInput(f"{where}: not a valid COCO RLE string (it ends inside a number)")
    return counts


def _check_2d(mask: np.ndarray) -> None:
    if mask.ndim != 2:
        raise InvalidInput(f"mask must be [H, W], got shape {mask.shape}")

"""The one image codec: every PNG/JPEG read or write in the project goes through here.

Writes are atomic (temp file in the same folder, then rename) so a crash never leaves a
half-written image behind.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segxal.errors import InvalidInput, NotFound


def decode_image(data: bytes, where: str = "image", mode: str | None = "RGB") -> np.ndarray:
    """Decode PNG/JPEG bytes. mode='RGB' -> uint8 [H, W, 3]; mode=None keeps the stored mode
    (8-bit -> uint8 [H, W], 16-bit -> uint16/int32 [H, W])."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if mode is not None:
                im = im.convert(mode)
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"{where}: not a readable image ({e})") from None
    return arr


def read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InvalidInput(f"{p}: is a directory, expected an image file") from None
    except PermissionError:
        raise InvalidInput(f"{p}: not readable (permission denied)") from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W, 3]."""
    return decode_image(read_bytes(path), where=str(path), mode="RGB")


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A single-channel 8-bit label PNG -> uint8 [H, W]."""
    arr = decode_image(read_bytes(path), where=str(path), mode=None)
    if arr.ndim != 2:
        raise InvalidInput(f"{path}: label image must be single-channel, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.max() > 255:
            raise InvalidInput(f"{path}: label image must be 8-bit")
        arr = arr.astype(np.uint8)
    return arr


def encode_png(arr: np.ndarray) -> bytes:
    """uint8 [H, W] / [H, W, 3] or uint16 [H, W] -> PNG bytes."""
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise InvalidInput("16-bit PNG must be single-channel")
        im = Image.fromarray(arr)  # Pillow picks "I;16" itself; its `mode=` argument is gone in Pillow 13
    elif arr.dtype == np.uint8:
        im = Image.fromarray(arr)
    else:
        raise InvalidInput(f"PNG encoding needs uint8 or uint16, got {arr.dtype}")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)  # speed over size: maps are transient
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so a rename into it survives a power cut (not only a killed process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, rename over it, fsync the folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        fsync_dir(p.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    atomic_write_bytes(path, encode_png(arr))


# Cityscapes stores disparity as uint16 PNG: p = d * 256 + 1 for valid pixels, 0 = invalid.
def encode_disparity(disparity: np.ndarray) -> np.ndarray:
    """float disparity [H, W] (<= 0 or non-finite = invalid) -> Cityscapes uint16 encoding."""
    d = np.where(np.isfinite(disparity) & (disparity > 0), disparity, 0.0)
    p = np.where(d > 0, np.clip(np.round(d * 256.0 + 1.0), 1, 65535), 0)
    return p.astype(np.uint16)


def decode_disparity(p: np.ndarray) -> np.ndarray:
    """Cityscapes uint16 disparity -> float32 disparity in pixels, 0 where invalid."""
    p = p.astype(np.float32)
    return np.where(p > 0, (p - 1.0) / 256.0, 0.0).astype(np.float32)


def read_disparity(path: str | os.PathLike) -> np.ndarray:
    arr = decode_image(read_bytes(path), where=str(path), mode=None)
    if arr.ndim != 2:
        raise InvalidInput(f"{path}: disparity must be a single-channel 16-bit PNG")
    return decode_disparity(arr)


def write_disparity(path: str | os.PathLike, disparity: np.ndarray) -> None:
    write_png(path, encode_disparity(disparity))

"""The one image codec: every PNG/JPEG read or write in the project goes through here.

Writes are atomic (temp file in the same folder, then rename) so a crash never leaves a
half-written image behind.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from segxal.errors import InvalidInput, NotFound, ResourceExhausted

# Largest image decoded, in pixels (height x width). A 1024 x 2048 frame is 2.1 Mpx; 64 Mpx
# (8192 x 8192) leaves room for any camera while refusing decompression bombs (a 254 kB PNG can
# claim 16384 x 16384 = 268 Mpx, 805 MB as RGB) before a single pixel is decoded. Pillow's own
# guard only errs above 2 x its MAX_IMAGE_PIXELS (179 Mpx), so this one acts first.
MAX_DECODE_PIXELS = 8192 * 8192
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _refuse_large(where: str, size: tuple[int, int] | None, max_pixels: int) -> None:
    detail = f"{size[0]} x {size[1]} = {size[0] * size[1]} pixels" if size else "too many pixels"
    raise ResourceExhausted(f"{where}: image of {detail} is over the decode limit of {max_pixels} pixels "
                            f"(a decompression bomb, or a frame far larger than any camera's)")


def _to_8bit(im: Image.Image, mode: str) -> np.ndarray:
    """A 16-bit grayscale image as 8 bits, scaled (v * 255 / 65535, rounded), not clipped."""
    wide = np.asarray(im).astype(np.uint32)  # [H, W]
    gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "L":
        return gray
    return np.asarray(Image.fromarray(gray, mode="L").convert(mode))


def _decode_rgb_fast(data: bytes, fmt: str | None) -> np.ndarray | None:
    """8-bit RGB JPEG with simplejpeg and PNG with OpenCV: measured (bench/rank_throughput.py, CPU
    ms per frame) JPEG 1920x1080 7.1 simplejpeg / 11.1 OpenCV / 24.9 Pillow, PNG 1024x2048 54.5
    OpenCV / 72.4 Pillow, with pixels identical to Pillow's. EXIF orientation is ignored, as Pillow
    does here. None: let Pillow decode (a decoder refused the bytes: Pillow's error, or its
    tolerance of a missing PNG end chunk, then decides).

    Returns:
        uint8 [H, W, 3] RGB, or None.
    """
    import cv2
    try:
        import simplejpeg  # pinned in requirements.txt; OpenCV decodes JPEG where it is missing
    except ImportError:
        simplejpeg = None
    try:
        if fmt == "JPEG" and simplejpeg is not None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        if fmt in ("PNG", "JPEG"):
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # [H, W, 3]
    except (ValueError, cv2.error):
        return None
    return None


def decode_image(data: bytes, where: str = "image", mode: str | None = "RGB",
                 max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG bytes: the one decode path, and the one place that maps decode failures
    to our errors.

    Args:
        data: the encoded bytes.
        where: what the bytes are (a frame URI, "annotation mask"...): every message names it.
        mode: "RGB" -> uint8 [H, W, 3]; "L" -> uint8 [H, W]; None keeps the stored mode
            (8-bit -> uint8 [H, W], 16-bit -> uint16/int32 [H, W]). 16-bit images converted to an
            8-bit mode are scaled to 0..255, not clipped.
        max_pixels: refuse images with more pixels than this, before decoding them.

    Returns:
        The pixels as a numpy array.

    Raises:
        InvalidInput: not a readable image.
        ResourceExhausted: more than max_pixels pixels (decompression bombs included).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.width * im.height > max_pixels:
                _refuse_large(where, im.size, max_pixels)
            if mode == "RGB" and im.mode == "RGB":
                fast = _decode_rgb_fast(data, im.format)
                if fast is not None:
                    return fast
            im.load()
            if mode is not None and mode != im.mode and im.mode in _SIXTEEN_BIT_MODES:
                arr = _to_8bit(im, mode)
            else:
                if mode is not None:
                    im = im.convert(mode)
                arr = np.asarray(im)
    except Image.DecompressionBombError:  # Pillow's guard fired in open(), before we saw the size
        _refuse_large(where, None, max_pixels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"{where}: not a readable image ({e})") from None
    return arr


def read_file(path: str | os.PathLike, where: str | None = None, max_bytes: int | None = None,
              no_follow: bool = False) -> bytes:
    """The bytes of a regular file: the one place that decides what a readable image file is.

    The file type is checked before any read, and the open itself cannot block: a FIFO, socket
    or device in a frame folder is refused at once rather than stalling the reader forever.

    Args:
        path: a local path.
        where: the name used in messages (default: the path).
        max_bytes: refuse larger files (ResourceExhausted) without reading them.
        no_follow: refuse a symlink at the last component (for paths already resolved).

    Returns:
        The file's bytes.

    Raises:
        NotFound: no such file.
        InvalidInput: a folder, not a regular file, or not readable.
        ResourceExhausted: larger than max_bytes.
    """
    where = where or str(path)
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0)
    if no_follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFound(f"{where}: no such file") from None
    except PermissionError:
        raise InvalidInput(f"{where}: not readable (permission denied by the filesystem)") from None
    except OSError as e:  # ELOOP from O_NOFOLLOW, EIO...
        raise InvalidInput(f"{where}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)  # of what was opened, so a file swapped in after a path check is caught
        if stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"{where}: is a folder, expected an image file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{where}: not a regular file ({_file_kind(st.st_mode)}), expected an image file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ResourceExhausted(f"{where}: {st.st_size} bytes, larger than the {max_bytes}-byte frame limit")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            return f.read()
        except OSError as e:
            raise InvalidInput(f"{where}: read failed ({e.strerror})") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (read_file without limits)."""
    return read_file(path)


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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temp file beside it, renamed over it when the block
    ends without an error (never half-written), removed when it raises.

    fsync=False skips the file's and the folder's fsync (the rename still makes the write atomic):
    for callers that write many files and make them durable together with one os.sync() (two fsyncs
    cost ~10 ms a file on this machine's disk; drive-log extraction writes thousands)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
        if fsync:
            fsync_dir(p.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` atomically (atomic_output)."""
    with atomic_output(path, fsync) as f:
        f.write(data)


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

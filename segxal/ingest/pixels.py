"""Raw camera buffers (ROS `sensor_msgs/Image`, foxglove `RawImage`) as images: rgb8, bgr8, rgba8,
bgra8, mono8 and the 8-bit Bayer mosaics, debayered with OpenCV.

OpenCV names a Bayer pattern by the second row's first two pixels, ROS by the first row's, so
ROS `bayer_rggb8` is OpenCV's `BayerBG` (cv_bridge makes the same mapping in its
getConversionCode; a flat colour checks it in tests/test_ingest_drivelog.py).
"""
from __future__ import annotations

import cv2
import numpy as np

from segxal import imageio
from segxal.errors import InvalidInput, ResourceExhausted

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}
_BAYER_TO_RGB = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
SUPPORTED_ENCODINGS = tuple(sorted(set(_CHANNELS) | set(_BAYER_TO_RGB)))


def check_pixel_count(height: int, width: int, where: str, max_pixels: int = imageio.MAX_DECODE_PIXELS) -> None:
    """Refuse a raw image larger than every decode allows (segxal.imageio.MAX_DECODE_PIXELS), from
    the sizes its message states, before any pixel buffer is made.

    Raises:
        ResourceExhausted: height x width over max_pixels (named with `where`).
    """
    if int(height) * int(width) > max_pixels:
        raise ResourceExhausted(f"{where}: raw image of {width} x {height} = {int(height) * int(width)} pixels is "
                                f"over the decode limit of {max_pixels} pixels (skipped)")


def raw_to_image(data: bytes, height: int, width: int, encoding: str, step: int, where: str) -> np.ndarray:
    """A raw camera buffer as uint8 RGB [H, W, 3], or grey [H, W] for mono8.

    Args:
        data: the message's pixel bytes, `step` bytes per row (rows may be padded).
        encoding: the ROS / foxglove encoding name (case-insensitive).
        where: names the message in errors (log, topic, time).

    Raises:
        InvalidInput: an encoding not in SUPPORTED_ENCODINGS (named with `where`), or a buffer that
            does not hold height x step bytes.
        ResourceExhausted: more pixels than segxal.imageio.MAX_DECODE_PIXELS.
    """
    check_pixel_count(height, width, where)
    enc = encoding.lower()
    channels = 1 if enc in _BAYER_TO_RGB else _CHANNELS.get(enc)
    if channels is None:
        raise InvalidInput(f"{where}: image encoding {encoding!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    if height <= 0 or width <= 0:
        raise InvalidInput(f"{where}: image size must be positive, got {height} x {width}")
    row = width * channels
    step = step or row
    if step < row or len(data) < step * (height - 1) + row:
        raise InvalidInput(f"{where}: {encoding} image of {height} x {width} (step {step}) needs "
                           f"{step * (height - 1) + row} bytes, the message has {len(data)}")
    buf = np.frombuffer(data, dtype=np.uint8)
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row), strides=(step, 1))  # [H, W * C]
    pixels = rows.reshape(height, width, channels) if channels > 1 else rows.reshape(height, width)
    if enc in _BAYER_TO_RGB:
        return cv2.cvtColor(np.ascontiguousarray(pixels), _BAYER_TO_RGB[enc])  # [H, W, 3]
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[..., 2::-1])  # [H, W, 3] RGB
    if channels == 4:
        return np.ascontiguousarray(pixels[..., :3])
    return np.ascontiguousarray(pixels)


_BAYER_PATTERN = {"bayer_rggb8": "RGGB", "bayer_bggr8": "BGGR", "bayer_gbrg8": "GBRG", "bayer_grbg8": "GRBG"}


def rgb_to_raw(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What a camera driver would publish for an RGB image (to write test and benchmark logs):
    uint8 [H, W, C] for rgb8 / bgr8 / rgba8 / bgra8, [H, W] for mono8 (luma) and the Bayer mosaics
    (each pixel keeps the one colour its filter passes).

    Raises:
        InvalidInput: an encoding not in SUPPORTED_ENCODINGS, or not uint8 RGB [H, W, 3].
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidInput(f"rgb_to_raw needs uint8 RGB [H, W, 3], got {rgb.dtype} {rgb.shape}")
    enc = encoding.lower()
    if enc in ("rgb8", "8uc3"):
        return rgb.copy()
    if enc == "bgr8":
        return np.ascontiguousarray(rgb[..., ::-1])
    if enc in ("rgba8", "bgra8"):
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        return np.concatenate((rgb if enc == "rgba8" else rgb[..., ::-1], alpha), axis=-1)
    if enc in ("mono8", "8uc1"):
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if enc in _BAYER_PATTERN:
        out = np.empty(rgb.shape[:2], np.uint8)  # [H, W]
        pattern = _BAYER_PATTERN[enc]
        for k, colour in enumerate(pattern):
            dy, dx = divmod(k, 2)
            out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(colour)]
        return out
    raise InvalidInput(f"image encoding {encoding!r} is not supported (supported: {', '.join(SUPPORTED_ENCODINGS)})")

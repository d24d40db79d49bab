"""The one way the project resizes arrays, so that a label map, a mask and an image resized to the
same size stay aligned pixel for pixel: every function samples at pixel centres (the convention
of Pillow and of OpenCV's INTER_NEAREST_EXACT). Images and continuous maps are bilinear (Pillow,
as the trainer, the exporter's parity frames and the inference client always did); label maps,
masks and anything else with values that must not mix are nearest-neighbour.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 image [H, W, 3] (or [H, W]) to `size` = (H, W); the same array
    when it already has that size."""
    if rgb.shape[:2] == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a continuous map [H, W] (computed in float32, returned in its dtype)."""
    if values.shape[:2] == tuple(size):
        return values
    out = np.asarray(Image.fromarray(values.astype(np.float32)).resize((size[1], size[0]), Image.BILINEAR))
    return out.astype(values.dtype, copy=False)


def resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map, mask or disparity [H, W] (or [H, W, C]) to (H, W),
    sampling at pixel centres (equal to Pillow's NEAREST and OpenCV's INTER_NEAREST_EXACT)."""
    if values.shape[:2] == tuple(size):
        return values
    src = values.view(np.uint8) if values.dtype == bool else values
    out = cv2.resize(src, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.view(bool) if values.dtype == bool else out

"""What the labeler looks at: the EEM heat map blended over the frame, with the regions to fix
outlined, so one image says where the model is unsure and what to paint.

The colour map is matplotlib's "inferno" (dark = sure, bright = unsure), sampled at five anchors
and interpolated linearly; the same anchors make the legend's CSS gradient in the label config,
so the legend and the image agree. A pixel's blend weight grows with its EEM (`max_alpha * eem`),
so where the model is sure the frame shows through unchanged. Region outlines are drawn white
over a dark edge, 2 px, so they read on bright and dark scenes alike.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from segxal import imageio

# Anchors of matplotlib's "inferno" colour map at 0, 0.25, 0.5, 0.75, 1 (RGB).
INFERNO = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
OUTLINE = (255, 255, 255)
OUTLINE_EDGE = (0, 0, 0)
DEFAULT_MAX_ALPHA = 0.7


def colour_map(eem: np.ndarray) -> np.ndarray:
    """EEM [H, W] in [0, 1] -> inferno RGB float32 [H, W, 3]."""
    x = np.clip(np.asarray(eem, dtype=np.float32), 0.0, 1.0)  # [H, W]
    stops = np.linspace(0.0, 1.0, len(INFERNO))
    return np.stack([np.interp(x, stops, INFERNO[:, k]) for k in range(3)], axis=-1)  # [H, W, 3]


def legend_css_gradient() -> str:
    """The colour map as a CSS linear-gradient (left = 0 = sure, right = 1 = unsure)."""
    stops = ", ".join(f"#{int(r):02x}{int(g):02x}{int(b):02x} {100 * i // (len(INFERNO) - 1)}%"
                      for i, (r, g, b) in enumerate(INFERNO))
    return f"linear-gradient(to right, {stops})"


def outline_mask(masks: Sequence[np.ndarray], shape: tuple[int, int], width: int = 2) -> np.ndarray:
    """Bool [H, W]: the inner boundary band (`width` px) of each region mask."""
    out = np.zeros(shape, dtype=bool)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    for m in masks:
        m8 = m.astype(np.uint8)
        out |= (m8 > 0) & (cv2.erode(m8, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) == 0)
    return out


def eem_overlay(frame: np.ndarray, eem: np.ndarray, region_masks: Sequence[np.ndarray] = (),
                max_alpha: float = DEFAULT_MAX_ALPHA) -> np.ndarray:
    """The frame with the EEM heat map blended over it and the regions outlined.

    Args:
        frame: uint8 RGB [H, W, 3].
        eem: [H, W] in [0, 1] (values outside are clipped).
        region_masks: bool [H, W] per region to fix.
        max_alpha: the heat map's weight where EEM = 1 (0 shows the plain frame).

    Returns:
        uint8 RGB [H, W, 3].
    """
    x = np.clip(np.asarray(eem, dtype=np.float32), 0.0, 1.0)[..., None]  # [H, W, 1]
    alpha = max_alpha * x
    out = (1.0 - alpha) * frame.astype(np.float32) + alpha * colour_map(x[..., 0])  # [H, W, 3]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if len(region_masks):
        edge = outline_mask(region_masks, frame.shape[:2], width=2)
        inner = outline_mask(region_masks, frame.shape[:2], width=1)
        out[edge] = OUTLINE_EDGE
        out[inner] = OUTLINE
    return out


def eem_overlay_png(frame: np.ndarray, eem: np.ndarray, region_masks: Sequence[np.ndarray] = (),
                    max_alpha: float = DEFAULT_MAX_ALPHA) -> bytes:
    """eem_overlay as PNG bytes (what Label Studio serves)."""
    return imageio.encode_png(eem_overlay(frame, eem, region_masks, max_alpha))

"""Proximity pi in [0, 1] from monocular depth: near pixels matter more (docs/design.md, "The EEM as shipped").

Two inputs, one meaning (1 = as near as this image gets, 0 = far, sky or no depth):
- relative inverse depth (MiDaS / Depth Anything style, larger = nearer, unknown scale and shift):
  scaled per image to [0, 1] between robust bounds, the `low_pct` and `high_pct` percentiles of the
  valid non-sky pixels, then clipped (a few extreme pixels do not squash the rest of the range).
- metric depth D in metres: pi = exp(-D / tau).
Sky (a boolean mask, or the predicted sky class of a trainId map) and invalid depth (<= 0 or
non-finite) get 0 in both.

References:
    SegXAL, arXiv 2408.04482 (proximity-aware explainability, PAE).
    Ranftl et al., "Towards Robust Monocular Depth Estimation" (MiDaS), TPAMI 2020: relative
    inverse depth up to scale and shift.
"""
from __future__ import annotations

import numpy as np

from segxal.errors import InvalidInput
from segxal.labels import NAME_TO_TRAIN_ID

SKY_TRAIN_ID = NAME_TO_TRAIN_ID["sky"]


def _excluded(depth: np.ndarray, sky_mask: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
    """Pixels that get proximity 0: invalid depth (<= 0, NaN, inf), sky mask, predicted sky."""
    if depth.ndim not in (2, 3):
        raise InvalidInput(f"depth must be [H, W] or [B, H, W], got shape {depth.shape}")
    for name, arr in (("sky_mask", sky_mask), ("labels", labels)):
        if arr is not None and arr.shape != depth.shape:
            raise InvalidInput(f"{name} must have the depth's shape {depth.shape}, got {arr.shape}")
    out = ~np.isfinite(depth) | (depth <= 0)  # depth shape, bool
    if sky_mask is not None:
        out |= sky_mask.astype(bool)
    if labels is not None:
        out |= labels == SKY_TRAIN_ID
    return out


def proximity_from_inverse_depth(inv_depth: np.ndarray, sky_mask: np.ndarray | None = None,
                                 labels: np.ndarray | None = None, low_pct: float = 2.0,
                                 high_pct: float = 98.0) -> np.ndarray:
    """Relative inverse depth (larger = nearer) -> proximity in [0, 1], per image.

    pi = clip((d - P_low) / (P_high - P_low), 0, 1), with P the percentiles of the image's valid,
    non-sky pixels. An image whose valid pixels all share one value gets 1 there (nothing is known
    to be farther); an image without valid pixels is all 0. Monotone non-decreasing in inv_depth.

    Args:
        inv_depth: [H, W] or [B, H, W], any float dtype.
        sky_mask: optional boolean sky mask, same shape.
        labels: optional predicted trainIds, same shape; the sky class counts as sky.
        low_pct: lower percentile, in [0, high_pct).
        high_pct: upper percentile, in (low_pct, 100].

    Returns:
        float32 proximity, same shape as inv_depth.

    Raises:
        InvalidInput: bad shapes or percentiles.
    """
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise InvalidInput(f"need 0 <= low_pct < high_pct <= 100, got low_pct={low_pct}, high_pct={high_pct}")
    inv_depth = np.asarray(inv_depth, dtype=np.float32)
    excluded = _excluded(inv_depth, sky_mask, labels)
    out = np.zeros(inv_depth.shape, dtype=np.float32)  # [H, W] or [B, H, W]
    for img, exc, res in zip(inv_depth.reshape((-1,) + inv_depth.shape[-2:]),
                             excluded.reshape((-1,) + inv_depth.shape[-2:]),
                             out.reshape((-1,) + inv_depth.shape[-2:])):
        valid = img[~exc]  # [n_valid]
        if valid.size == 0:
            continue
        lo, hi = np.percentile(valid, [low_pct, high_pct])
        if hi > lo:
            res[...] = np.clip((img - lo) / (hi - lo), 0.0, 1.0)  # [H, W]
        else:
            res[...] = 1.0
        res[exc] = 0.0
    return out


def proximity_from_metric_depth(depth: np.ndarray, tau: float = 20.0, sky_mask: np.ndarray | None = None,
                                labels: np.ndarray | None = None) -> np.ndarray:
    """Metric depth D (metres) -> proximity exp(-D / tau).

    tau = 20 m (a default, not tuned): 5 m -> 0.78, 20 m -> 0.37, 50 m -> 0.08.

    Args:
        depth: [H, W] or [B, H, W] metres.
        tau: decay length in metres, > 0.
        sky_mask: optional boolean sky mask, same shape.
        labels: optional predicted trainIds, same shape; the sky class counts as sky.

    Returns:
        float32 proximity in [0, 1], same shape as depth.

    Raises:
        InvalidInput: bad shapes or tau <= 0.
    """
    if not (tau > 0 and np.isfinite(tau)):
        raise InvalidInput(f"tau must be a finite number of metres > 0, got {tau}")
    depth = np.asarray(depth, dtype=np.float32)
    excluded = _excluded(depth, sky_mask, labels)
    with np.errstate(invalid="ignore", over="ignore"):
        prox = np.exp(-depth / np.float32(tau))  # depth shape
    prox[excluded] = 0.0
    return prox.astype(np.float32, copy=False)

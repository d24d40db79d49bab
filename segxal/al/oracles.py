"""Oracles: who returns labels for a queried frame (DESIGN.md, "Oracle modes").

- machine: pseudo-labels, the model's own confident predictions (p_max >= tau), ignore elsewhere;
  costs no human pixels.
- simulated human (experiments): ground truth inside the requested regions, the prediction kept
  elsewhere (region-level annotation), or ground truth for the whole frame.

Every oracle returns an `Annotation`: a trainId mask (255 = not labeled) plus what it cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segxal.errors import InvalidInput
from segxal.labels import IGNORE


@dataclass
class Cost:
    """Annotation cost, counted the way a labeling team pays for it."""
    frames: int = 0
    regions: int = 0
    pixels: int = 0  # pixels a human had to decide on (0 for the machine oracle)

    def __iadd__(self, other: "Cost") -> "Cost":
        self.frames += other.frames
        self.regions += other.regions
        self.pixels += other.pixels
        return self

    def to_dict(self) -> dict:
        return {"frames": self.frames, "regions": self.regions, "pixels": self.pixels}


@dataclass
class Annotation:
    mask: np.ndarray  # trainIds uint8 [H, W], 255 = not labeled
    human: np.ndarray  # bool [H, W]: pixels whose label came from a person (or ground truth)
    cost: Cost


def machine_oracle(labels: np.ndarray, pmax: np.ndarray, tau: float = 0.9) -> Annotation:
    """Pseudo-labels: predicted trainIds where p_max >= tau, 255 elsewhere."""
    if not 0.0 <= tau <= 1.0:
        raise InvalidInput(f"machine oracle tau must be in [0, 1], got {tau}")
    if labels.shape != pmax.shape:
        raise InvalidInput(f"labels {labels.shape} and pmax {pmax.shape} differ in shape")
    # compare in pmax's own dtype: tau = 0.9 must keep a float16 pmax of 0.9 (0.89990234)
    thr = np.asarray(tau).astype(pmax.dtype) if np.issubdtype(pmax.dtype, np.floating) else tau
    mask = np.where(pmax >= thr, labels, IGNORE).astype(np.uint8)  # [H, W]
    return Annotation(mask, np.zeros(mask.shape, bool), Cost(frames=1))


def simulated_human(gt: np.ndarray, pred: np.ndarray, region_masks: list[np.ndarray] | None,
                    outside: str = "prediction") -> Annotation:
    """A person fixing the requested regions: ground truth inside them, and outside either the
    model's prediction (DESIGN.md) or nothing ("ignore"). `region_masks=None` = whole frame.

    Pixels touched = region pixels (whole frame: all pixels).
    """
    if gt.shape != pred.shape:
        raise InvalidInput(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if outside not in ("prediction", "ignore"):
        raise InvalidInput(f"outside must be 'prediction' or 'ignore', got {outside!r}")
    if region_masks is None:
        touched = np.ones(gt.shape, bool)
        n_regions = 0
    else:
        touched = np.zeros(gt.shape, bool)
        for m in region_masks:
            if m.shape != gt.shape:
                raise InvalidInput(f"region mask {m.shape} does not match the frame {gt.shape}")
            touched |= m.astype(bool)
        n_regions = len(region_masks)
    rest = pred if outside == "prediction" else np.full_like(gt, IGNORE)
    mask = np.where(touched, gt, rest).astype(np.uint8)  # [H, W]
    return Annotation(mask, touched, Cost(frames=1, regions=n_regions, pixels=int(touched.sum())))

"""Oracles: who returns labels for a queried frame (docs/design.md, "Oracle modes").

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
    """Pseudo-labels: predicted trainIds where p_max >= tau, 255 elsewhere (tau = inf: none)."""
    if not (0.0 <= tau <= 1.0 or tau == float("inf")):
        raise InvalidInput(f"machine oracle tau must be in [0, 1], got {tau}")
    if labels.shape != pmax.shape:
        raise InvalidInput(f"labels {labels.shape} and pmax {pmax.shape} differ in shape")
    # compare in pmax's own dtype: tau = 0.9 must keep a float16 pmax of 0.9 (0.89990234)
    thr = np.asarray(tau).astype(pmax.dtype) if np.issubdtype(pmax.dtype, np.floating) else tau
    mask = np.where(pmax >= thr, labels, IGNORE).astype(np.uint8)  # [H, W]
    return Annotation(mask, np.zeros(mask.shape, bool), Cost(frames=1))


def calibrate_tau(pmax: np.ndarray, pred: np.ndarray, gt: np.ndarray, precision: float = 0.9) -> float:
    """The lowest p_max threshold whose pseudo-labels reach `precision` on frames that have labels.

    A fixed tau assumes a calibrated model; a weak one trained with class weights may never reach
    p_max 0.9 (measured: the benchmark's seed models peak at 0.88), so a machine oracle with a
    fixed tau returns empty masks. Choosing the threshold by the precision it gives on already
    labeled frames keeps the meaning ("pseudo-labels right 90 % of the time") across models. Related:
    Zou et al., "Unsupervised Domain Adaptation for Semantic Segmentation via Class-Balanced
    Self-Training", ECCV 2018 (thresholds chosen from the confidence distribution, not fixed).
    The labeled frames were usually trained on, so the estimate is optimistic.

    Args:
        pmax: max softmax probability on the labeled frames, any shape.
        pred: predicted trainIds, same shape.
        gt: ground-truth trainIds, same shape (255 = not labeled, not counted).
        precision: wanted share of pseudo-labeled pixels that are right, in (0, 1].

    Returns:
        tau in [0, 1], or inf when no threshold reaches the precision (no pseudo-labels).

    Raises:
        InvalidInput: shapes differ, precision outside (0, 1], or no labeled pixel.
    """
    if not 0.0 < precision <= 1.0:
        raise InvalidInput(f"precision must be in (0, 1], got {precision}")
    if not (np.shape(pmax) == np.shape(pred) == np.shape(gt)):
        raise InvalidInput(f"pmax {np.shape(pmax)}, pred {np.shape(pred)} and gt {np.shape(gt)} differ in shape")
    keep = np.asarray(gt) != IGNORE
    if not keep.any():
        raise InvalidInput("calibrate_tau needs labeled pixels")
    conf = np.asarray(pmax, dtype=np.float32)[keep]  # [P]
    right = (np.asarray(pred)[keep] == np.asarray(gt)[keep])  # [P]
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    prec = np.cumsum(right) / np.arange(1, conf.size + 1)  # precision of the top n pixels, [P]
    last = conf.size - np.searchsorted(conf[::-1], conf, side="left")  # [P] end of each tie group
    ok = np.flatnonzero(prec[last - 1] >= precision)  # thresholds at tie boundaries that reach it
    return float(conf[ok[-1]]) if ok.size else float("inf")


def simulated_human(gt: np.ndarray, pred: np.ndarray, region_masks: list[np.ndarray] | None,
                    outside: str = "prediction") -> Annotation:
    """A person fixing the requested regions: ground truth inside them, and outside either the
    model's prediction (the default) or nothing ("ignore"). `region_masks=None` = whole frame.

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

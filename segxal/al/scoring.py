"""EEM of one frame from the model outputs, shared by the in-process loop and the EEM service, so
both rank frames with exactly the same maths:

    proximity = prox(inverse depth), sky = 0       (segxal.eem.proximity)
    PAE = norm(CAM ⊙ proximity);  EEM = α·EBU + β·PAE   (segxal.eem.fuse)
    score = mean | top-q mean of EEM;  regions = components of EEM > threshold (segxal.eem.regions)

Acquisition strategies for the benchmark reuse the same maps: `entropy` ranks by EBU alone,
`pae` by PAE alone, `eem` / `eem-topq` by the fused map.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segxal.eem.fuse import eem as fuse_eem
from segxal.eem.fuse import frame_score, pae as fuse_pae
from segxal.eem.proximity import proximity_from_inverse_depth
from segxal.eem.regions import Region, extract_regions
from segxal.errors import InvalidInput

STRATEGIES = ("random", "entropy", "pae", "eem", "eem-topq")


@dataclass
class EEMOptions:
    alpha: float = 0.5
    beta: float = 0.5
    score_mode: str = "mean"  # "mean" | "topq"
    q: float = 0.05  # fraction of pixels averaged by "topq"
    threshold_mode: str = "otsu"  # "otsu" | "fixed"
    threshold: float = 0.5  # used when threshold_mode == "fixed"
    min_region_area: int = 16  # pixels; smaller components are noise, not work for a labeler

    def validate(self) -> "EEMOptions":
        if abs(self.alpha + self.beta - 1.0) > 1e-6 or self.alpha < 0 or self.beta < 0:
            raise InvalidInput(f"alpha + beta must be 1 with both >= 0, got alpha={self.alpha}, beta={self.beta}")
        if self.score_mode not in ("mean", "topq"):
            raise InvalidInput(f"score_mode must be 'mean' or 'topq', got {self.score_mode!r}")
        if not 0.0 < self.q <= 1.0:
            raise InvalidInput(f"q must be in (0, 1], got {self.q}")
        if self.threshold_mode not in ("otsu", "fixed"):
            raise InvalidInput(f"threshold_mode must be 'otsu' or 'fixed', got {self.threshold_mode!r}")
        if self.threshold < 0:
            raise InvalidInput(f"threshold must be >= 0, got {self.threshold}")
        if self.min_region_area < 0:
            raise InvalidInput(f"min_region_area must be >= 0, got {self.min_region_area}")
        return self


@dataclass
class FrameEEM:
    score: float
    labels: np.ndarray  # uint8 [H, W] predicted trainIds
    ebu: np.ndarray  # float32 [H, W]
    cam: np.ndarray
    proximity: np.ndarray
    pae: np.ndarray
    eem: np.ndarray
    regions: list[Region] = field(default_factory=list)


def score_frame(labels: np.ndarray, ebu: np.ndarray, cam: np.ndarray, inverse_depth: np.ndarray,
                opts: EEMOptions, with_regions: bool = True) -> FrameEEM:
    """Fuse one frame's maps (any float dtype, float16 from the wire included) into its EEM.

    Raises:
        InvalidInput: maps of different shapes or invalid options.
    """
    shapes = {m.shape for m in (labels, ebu, cam, inverse_depth)}
    if len(shapes) != 1:
        raise InvalidInput(f"labels, ebu, cam and inverse depth must share one shape, got {shapes}")
    ebu = ebu.astype(np.float32)
    cam = cam.astype(np.float32)
    prox = proximity_from_inverse_depth(inverse_depth.astype(np.float32), labels=labels)  # sky -> 0
    p = fuse_pae(cam, prox)  # [H, W]
    e = fuse_eem(ebu, p, opts.alpha, opts.beta)  # [H, W]
    score = frame_score(e, mode=opts.score_mode, q=opts.q)
    regions = []
    if with_regions:
        thr = opts.threshold if opts.threshold_mode == "fixed" else None
        regions = extract_regions(e, labels, threshold=thr, mode=opts.threshold_mode,
                                  min_area=opts.min_region_area)
    return FrameEEM(float(score), labels, ebu, cam, prox, p, e, regions)


def strategy_score(strategy: str, frame: FrameEEM, q: float = 0.05) -> float:
    """The acquisition score a strategy ranks by (higher = query first)."""
    if strategy == "entropy":
        return float(frame.ebu.mean())
    if strategy == "pae":
        return float(frame.pae.mean())
    if strategy == "eem":
        return float(frame.eem.mean())
    if strategy == "eem-topq":
        return frame_score(frame.eem, mode="topq", q=q)
    raise InvalidInput(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")

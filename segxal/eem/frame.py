"""The EEM of one frame from the model outputs, shared by the in-process loop, the benchmark and the
EEM service, so all rank frames with exactly the same maths (docs/design.md, "The EEM as shipped"):

    proximity = prox(inverse depth), sky = 0       (segxal.eem.proximity)
    PAE = norm(CAM * proximity)                     (segxal.eem.fuse.pae)
    EEM = alpha EBU + beta PAE, or EBU (alpha + beta PAE)   (segxal.eem.fuse.eem, by options.fusion)
    score = mean | top-q mean of EEM;  regions = components of EEM > threshold (segxal.eem.regions)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segxal.eem.fuse import eem as fuse_eem
from segxal.eem.fuse import frame_score, pae as fuse_pae
from segxal.eem.options import EEMOptions
from segxal.eem.proximity import proximity_from_inverse_depth, proximity_from_metric_depth
from segxal.eem.regions import DEFAULT_MAX_REGIONS, Region, extract_regions, scaled_min_area
from segxal.errors import InvalidInput


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


def _proximity(labels: np.ndarray, depth: np.ndarray, convention: str, tau: float,
               class_names: tuple[str, ...] | None) -> np.ndarray:
    """Proximity by the depth model's declared convention; the predicted sky gets 0 (Cityscapes
    trainIds by default, else the class named "sky" of the model's own list, if it has one)."""
    depth = depth.astype(np.float32)
    if class_names is None:
        sky = {"labels": labels}
    else:
        sky = {"sky_mask": labels == class_names.index("sky") if "sky" in class_names else None}
    if convention == "metric":
        return proximity_from_metric_depth(depth, tau=tau, **sky)
    if convention == "inverse":
        return proximity_from_inverse_depth(depth, **sky)
    raise InvalidInput(f"unknown depth convention {convention!r}; expected 'inverse' or 'metric'")


def score_frame(labels: np.ndarray, ebu: np.ndarray, cam: np.ndarray | None, inverse_depth: np.ndarray,
                opts: EEMOptions, with_regions: bool = True, *, depth_convention: str = "inverse",
                depth_tau: float = 20.0, class_names: tuple[str, ...] | None = None,
                max_regions: int = DEFAULT_MAX_REGIONS, frame_hw: tuple[int, int] | None = None,
                gate_proximity: bool = False) -> FrameEEM:
    """Fuse one frame's maps (any float dtype, float16 from the wire included) into its EEM.

    Args:
        labels, ebu: the segmentation model's maps [H, W].
        cam: its CAM [H, W]; None for a model without one: the frame is scored with EBU alone
            (PAE = 0, EEM = EBU whatever alpha and beta say).
        inverse_depth: the depth model's map [H, W], in `depth_convention`.
        opts: the EEM maths, validated (EEMOptions.validate).
        with_regions: extract regions.
        depth_convention: "inverse" (larger = nearer) or "metric" (metres, exp(-D / depth_tau)).
        depth_tau: metres, metric depth only.
        class_names: the segmentation model's classes (None: Cityscapes trainIds).
        max_regions: cap on the regions kept (most EEM mass first); 0 keeps all. The region
            floor opts.min_region_area is a share of the scene (regions.scaled_min_area at the
            maps' size).
        frame_hw: the frame's (H, W) when the maps are at the model's size (the EEM service): the
            maths runs on the maps as given, and only the regions are brought to frame
            coordinates (segxal.eem.regions.extract_regions); None: the maps' own size.
        gate_proximity: PAE = norm(CAM * proximity * EBU) (segxal.eem.fuse.pae's gate): proximity
            counts only where the model is unsure. Off by default (the paper's PAE); the benchmark's
            `eem-gated` arms measure it.

    Raises:
        InvalidInput: maps of different shapes, invalid options or an unknown depth convention.
    """
    shapes = {m.shape for m in (labels, ebu, inverse_depth) + (() if cam is None else (cam,))}
    if len(shapes) != 1:
        raise InvalidInput(f"labels, ebu, cam and inverse depth must share one shape, got {shapes}")
    ebu = ebu.astype(np.float32)
    prox = _proximity(labels, inverse_depth, depth_convention, depth_tau, class_names)  # sky -> 0
    if cam is None:
        cam = np.zeros_like(ebu)
        p = np.zeros_like(ebu)
        e = ebu  # EBU alone
    else:
        cam = cam.astype(np.float32)
        p = fuse_pae(cam, prox, gate=ebu if gate_proximity else None)  # [H, W]
        e = fuse_eem(ebu, p, opts.alpha, opts.beta, fusion=opts.fusion)  # [H, W]
    score = frame_score(e, mode=opts.score_mode, q=opts.q)
    regions = []
    if with_regions:
        thr = opts.threshold if opts.threshold_mode == "fixed" else None
        regions = extract_regions(e, labels, threshold=thr, mode=opts.threshold_mode,
                                  min_area=scaled_min_area(opts.min_region_area, *e.shape),
                                  class_names=class_names, max_regions=max_regions, frame_hw=frame_hw)
    return FrameEEM(float(score), labels, ebu, cam, prox, p, e, regions)

"""Health of the explanation maps: is a CAM alive, and is it an explanation?

The class-agnostic GradCAM at a linear head's input collapses to all zero as a classifier becomes
discriminative; the EEM service counts such frames (Stats.frames_cam_degenerate) and the
loop reports their share per cycle, so a dead proximity term is seen, not guessed. numpy or torch in.
A CAM that anti-correlates with EBU is the model's confidence in disguise: inside
EEM = alpha EBU + beta PAE it fights the uncertainty term. CamHealthMonitor keeps both, per model
version, for the EEM service's stats.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

DEGENERATE_SPREAD = 1e-3  # max - min at or below this is constant (float16 steps 4.9e-4 below 1)


def cam_degenerate(cam, tol: float = DEGENERATE_SPREAD):
    """Per image: True when the CAM carries no spatial information (all zero or constant).

    Args:
        cam: [B, H, W] or [H, W] maps, numpy or torch.
        tol: a spread (max - min) at or below this counts as constant.

    Returns:
        bool per image ([B] array/tensor), or one bool for a single [H, W] map.
    """
    flat = cam.reshape(cam.shape[0], -1) if cam.ndim == 3 else cam.reshape(1, -1)
    # amax/amin: the same call on numpy arrays and torch tensors
    out = (flat.amax(1) - flat.amin(1) if hasattr(flat, "amax") else flat.max(1) - flat.min(1)) <= tol
    return out if cam.ndim == 3 else bool(out[0])


# A served model's CAM is flagged once it has scored MIN_FRAMES frames and
DEAD_SHARE_LIMIT = 0.05  # more than this share of its CAMs were dead (all zero or constant), or
CONFIDENCE_CORRELATION_LIMIT = -0.3  # its CAM's correlation with EBU fell below this: a confidence map
MIN_FRAMES = 20


@dataclass(frozen=True)
class CamHealth:
    """One model version's CAM over the frames scored with it, and the verdict of whoever counted
    them (CamHealthMonitor's thresholds)."""
    model_version: str
    cam_layer: str
    frames: int  # frames scored with a CAM
    frames_dead: int  # of them, CAMs all zero or constant (cam_degenerate)
    cam_ebu_correlation: float | None  # Pearson over all their pixels; None when undefined
    cam_dead: bool = False  # dead on more than the allowed share of at least the minimum frames
    cam_confidence_map: bool = False  # corr(CAM, EBU) below the limit over at least the minimum frames

    @property
    def dead_share(self) -> float:
        return self.frames_dead / self.frames if self.frames else 0.0

    def problems(self) -> dict[str, str]:
        """What is wrong, in words, by flag ("dead", "confidence_map"); empty when healthy."""
        out = {}
        if self.cam_dead:
            out["dead"] = f"CAM dead on {self.frames_dead} of {self.frames} frames ({self.dead_share:.1%})"
        if self.cam_confidence_map:
            out["confidence_map"] = (f"CAM correlates {self.cam_ebu_correlation:+.2f} with EBU over {self.frames} "
                                     f"frames: a confidence map, not an explanation")
        return out


class _Sums:
    """Running sums for a pooled Pearson correlation (float64) and the dead-frame count."""

    def __init__(self, cam_layer: str):
        self.cam_layer = cam_layer
        self.frames = self.dead = 0
        self.n = self.sc = self.se = self.scc = self.see = self.sce = 0.0
        self.flagged: set[str] = set()

    def correlation(self) -> float | None:
        if self.n < 2:
            return None
        cov = self.sce / self.n - (self.sc / self.n) * (self.se / self.n)
        var_c = self.scc / self.n - (self.sc / self.n) ** 2
        var_e = self.see / self.n - (self.se / self.n) ** 2
        if var_c <= 1e-12 or var_e <= 1e-12:
            return None
        return float(max(-1.0, min(1.0, cov / math.sqrt(var_c * var_e))))


class CamHealthMonitor:
    """Running CAM health per model version (thread-safe; bounded: the `max_versions` most recently
    used versions are kept). The correlation is pooled over all pixels of all frames, as
    bench/cam_health.py computes it, from running sums, so memory stays flat.

    Args:
        min_frames, dead_share_limit, correlation_limit: when a version is flagged (CamHealth).
        max_versions: versions kept.
    """

    def __init__(self, min_frames: int = MIN_FRAMES, dead_share_limit: float = DEAD_SHARE_LIMIT,
                 correlation_limit: float = CONFIDENCE_CORRELATION_LIMIT, max_versions: int = 64):
        self.min_frames, self.dead_share_limit, self.correlation_limit = min_frames, dead_share_limit, correlation_limit
        self.max_versions = max_versions
        self._versions: OrderedDict[str, _Sums] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, model_version: str, cam, ebu, cam_layer: str = "") -> tuple[CamHealth, list[str]]:
        """Count one frame's CAM.

        Args:
            model_version: "<model>:<version>" that produced the CAM.
            cam, ebu: the frame's maps [H, W] (numpy, any float dtype), on the same grid.
            cam_layer: where the CAM comes from (reported as is).

        Returns:
            (the version's health after this frame, problems that appeared with this frame: each
            is reported once per version, for the caller to log).

        Raises:
            ValueError: cam and ebu differ in shape.
        """
        c = np.asarray(cam, dtype=np.float64).ravel()
        e = np.asarray(ebu, dtype=np.float64).ravel()
        if c.shape != e.shape:
            raise ValueError(f"CAM and EBU must be on the same grid, got {np.shape(cam)} and {np.shape(ebu)}")
        dead = bool(cam_degenerate(np.asarray(cam)))
        sums = (c.sum(), e.sum(), c @ c, e @ e, c @ e)  # outside the lock: the costly part
        with self._lock:
            s = self._versions.pop(model_version, None) or _Sums(cam_layer)
            self._versions[model_version] = s  # most recently used last
            while len(self._versions) > self.max_versions:
                self._versions.popitem(last=False)
            s.frames += 1
            s.dead += int(dead)
            s.n += c.size
            s.sc, s.se, s.scc, s.see, s.sce = (a + b for a, b in zip((s.sc, s.se, s.scc, s.see, s.sce), sums))
            health = self._health(model_version, s)
            new = {k: text for k, text in health.problems().items() if k not in s.flagged}
            s.flagged.update(new)
        return health, list(new.values())

    def _health(self, version: str, s: _Sums) -> CamHealth:
        corr = s.correlation()
        enough = s.frames >= self.min_frames
        return CamHealth(version, s.cam_layer, s.frames, s.dead, corr,
                         cam_dead=enough and s.dead / s.frames > self.dead_share_limit,
                         cam_confidence_map=enough and corr is not None and corr < self.correlation_limit)

    def snapshot(self) -> list[CamHealth]:
        """Every kept version's health, most recently used last."""
        with self._lock:
            return [self._health(v, s) for v, s in self._versions.items()]

"""The pinhole camera (Cityscapes' calibration scaled to the image), its per-pixel rays and the projection."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# ------------------------------------------------------------------------------------------ camera
# Cityscapes calibration (aachen) for 2048 x 1024 images, scaled to the output size.
_CS_FX, _CS_FY, _CS_U0, _CS_V0 = 2262.52, 2265.30, 1096.98, 513.137
_CS_BASELINE, _CS_HEIGHT, _CS_PITCH, _CS_MOUNT_X = 0.209313, 1.22, 0.038, 1.7
_NEAR = 0.3  # m: near clipping distance of object polygons


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    u0: float
    v0: float
    baseline: float  # m, stereo baseline that defines the disparity
    mount_height: float  # m above the ground plane (Cityscapes extrinsic z)
    pitch: float  # rad, positive = looking down

    @classmethod
    def cityscapes_like(cls, height: int, width: int) -> "Camera":
        """Cityscapes' camera scaled to height x width (a resized Cityscapes image)."""
        sx, sy = width / 2048.0, height / 1024.0
        return cls(width, height, _CS_FX * sx, _CS_FY * sy, _CS_U0 * sx, _CS_V0 * sy,
                   _CS_BASELINE, _CS_HEIGHT, _CS_PITCH)

    def to_json(self) -> dict:
        """Cityscapes camera JSON (extrinsic / intrinsic)."""
        return {
            "extrinsic": {"baseline": self.baseline, "pitch": self.pitch, "roll": 0.0, "yaw": 0.0,
                          "x": _CS_MOUNT_X, "y": 0.0, "z": self.mount_height},
            "intrinsic": {"fx": self.fx, "fy": self.fy, "u0": self.u0, "v0": self.v0},
        }


class _Rays:
    """Per-pixel ray offsets for unit camera depth (see the module docstring)."""

    def __init__(self, cam: Camera):
        r = (np.arange(cam.height, dtype=np.float64) - cam.v0) / cam.fy
        cp, sp = math.cos(cam.pitch), math.sin(cam.pitch)
        self.xd = ((np.arange(cam.width, dtype=np.float64) - cam.u0) / cam.fx)  # [W] lateral
        self.fwd = cp - r * sp  # [H] forward
        self.down = r * cp + sp  # [H] downward
        self.ground_row0 = int(np.argmax(self.down > 1e-4))  # first row below the horizon
        self.split_col = int(math.ceil(cam.u0))  # columns left of it look left (xd < 0)
        self.xd32 = self.xd.astype(np.float32)
        self.fwd32 = self.fwd.astype(np.float32)
        self.down32 = self.down.astype(np.float32)


def _project(cam: Camera, x: np.ndarray, up: np.ndarray, z: np.ndarray):
    """Camera-relative world points (x right, up above ground, z forward) -> (u, v, camera depth)."""
    cp, sp = math.cos(cam.pitch), math.sin(cam.pitch)
    down = cam.mount_height - up
    zc = z * cp + down * sp
    yc = down * cp - z * sp
    zs = np.maximum(zc, 1e-6)
    return cam.u0 + cam.fx * x / zs, cam.v0 + cam.fy * yc / zs, zc

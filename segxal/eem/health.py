"""Health of the explanation maps: is a CAM alive?

The class-agnostic GradCAM at a linear head's input collapses to all zero as a classifier becomes
discriminative (issue 15); the EEM service counts such frames (Stats.frames_cam_degenerate) and the
loop reports their share per cycle, so a dead proximity term is seen, not guessed. numpy or torch in.
"""
from __future__ import annotations

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

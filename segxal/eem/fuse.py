"""Fusing the maps: PAE = norm(CAM * proximity), the EEM from EBU and PAE, and the frame score.

docs/design.md, "The EEM as shipped": PAE, the fusions (segxal.eem.options: alpha + beta = 1) and
the frame score (mean EEM by default, top-q mean with q = 5 % as an option). Maps may arrive as float16 (the
exported graph's outputs); everything is computed in float32.

References:
    SegXAL: Explainable Active Learning for Semantic Segmentation in Driving Scene Scenarios,
    arXiv 2408.04482 (EEM = EBU + proximity-aware GradCAM).
"""
from __future__ import annotations

import math

import numpy as np

from segxal.errors import InvalidInput

FRAME_SCORE_MODES = ("mean", "topq")
GATE_TOLERANCE = 1e-3  # a float16 EBU may round a hair past 1


def _as_maps(name: str, arr: np.ndarray) -> np.ndarray:
    """float32 [H, W] or [B, H, W], finite."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise InvalidInput(f"{name} must be [H, W] or [B, H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{name} holds NaN or infinite values")
    return arr


def _same_shape(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InvalidInput(f"{a_name} shape {a.shape} != {b_name} shape {b.shape}")


def pae(cam: np.ndarray, proximity: np.ndarray, gate: np.ndarray | None = None) -> np.ndarray:
    """Proximity-aware explainability: per-image min-max of CAM * proximity, in [0, 1].

    A constant product (e.g. all sky) gives 0 everywhere.

    With a `gate` (the model's own uncertainty, e.g. EBU, in [0, 1]) the product is CAM * proximity *
    gate: a near pixel the model is sure of gets no proximity weight. Measured reason: ungated PAE is
    highest on the near road, which the model already gets right (bench/results/steps40: EEM's
    regions held 1.1 % vulnerable-class pixels, entropy's 3.9 %). Per-image scaling of the gate
    does not matter: the min-max below removes it.

    Args:
        cam: GradCAM [H, W] or [B, H, W] (float16 or float32).
        proximity: same shape, in [0, 1].
        gate: None (the shipped PAE) or an uncertainty map of the same shape in [0, 1].

    Returns:
        float32 PAE, same shape.

    Raises:
        InvalidInput: shapes differ, wrong rank, or non-finite values.
    """
    cam, proximity = _as_maps("cam", cam), _as_maps("proximity", proximity)
    _same_shape("cam", cam, "proximity", proximity)
    prod = cam * proximity  # [(B,) H, W]
    if gate is not None:
        gate = _as_maps("gate", gate)
        _same_shape("cam", cam, "gate", gate)
        if gate.min() < -GATE_TOLERANCE or gate.max() > 1 + GATE_TOLERANCE:
            raise InvalidInput(f"gate must lie in [0, 1] (an uncertainty such as EBU), got [{gate.min()}, {gate.max()}]")
        prod = prod * np.clip(gate, 0.0, 1.0)  # [(B,) H, W]
    lo = prod.min(axis=(-2, -1), keepdims=True)  # [(B,) 1, 1]
    span = prod.max(axis=(-2, -1), keepdims=True) - lo  # [(B,) 1, 1]
    return np.where(span > 0, (prod - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def eem(ebu: np.ndarray, pae_map: np.ndarray, alpha: float = 0.5, beta: float = 0.5,
        fusion: str = "additive") -> np.ndarray:
    """Explainable Error Map from EBU and PAE.

    additive:        EEM = alpha * EBU + beta * PAE (the paper's).
    multiplicative:  EEM = EBU * (alpha + beta * PAE): PAE re-weights the pixels the model is unsure
                     of and cannot raise a confident one. Measured reason: PAE is min-max scaled per
                     image while EBU rarely nears 1, so at equal additive weights PAE decides the top
                     pixels and moves them off the model's errors (bench/eem_diagnostics.py).

    The weights come validated (segxal.eem.options.EEMOptions.validate: in [0, 1], summing to 1):
    this is the maths, not an entry point.

    Args:
        ebu: entropy uncertainty [H, W] or [B, H, W] in [0, 1].
        pae_map: PAE, same shape, in [0, 1].
        alpha: weight of EBU.
        beta: weight of PAE.
        fusion: "additive" | "multiplicative".

    Returns:
        float32 EEM, same shape, in [0, 1] for inputs in [0, 1].

    Raises:
        InvalidInput: an unknown fusion, shapes differ, non-finite values.
    """
    ebu, pae_map = _as_maps("ebu", ebu), _as_maps("pae", pae_map)
    _same_shape("ebu", ebu, "pae", pae_map)
    a, b = np.float32(alpha), np.float32(beta)
    if fusion == "additive":
        return (a * ebu + b * pae_map).astype(np.float32, copy=False)
    if fusion == "multiplicative":
        return (ebu * (a + b * pae_map)).astype(np.float32, copy=False)
    raise InvalidInput(f"fusion must be 'additive' or 'multiplicative', got {fusion!r}")


def frame_score(eem_map: np.ndarray, mode: str = "mean", q: float = 0.05) -> float | np.ndarray:
    """One number per frame for ranking: the mean EEM, or the mean of its top q fraction of pixels.

    topq averages the ceil(q * H * W) largest values (at least one pixel).

    Args:
        eem_map: [H, W] for one frame or [B, H, W] for a batch.
        mode: "mean" or "topq".
        q: fraction of pixels for "topq", in (0, 1].

    Returns:
        a float for [H, W]; float64 [B] for [B, H, W].

    Raises:
        InvalidInput: unknown mode, q outside (0, 1], wrong rank or non-finite values.
    """
    if mode not in FRAME_SCORE_MODES:
        raise InvalidInput(f"frame score mode must be one of {FRAME_SCORE_MODES}, got {mode!r}")
    if not 0.0 < q <= 1.0:
        raise InvalidInput(f"q must be in (0, 1], got {q}")
    maps = _as_maps("eem", eem_map)
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1]).astype(np.float64)  # [B, H*W]
    if mode == "mean":
        scores = flat.mean(axis=1)  # [B]
    else:
        k = max(1, math.ceil(q * flat.shape[1] - 1e-9))  # - 1e-9: 0.07 * 100 is 7.000000000000001
        scores = np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)  # [B]
    return float(scores[0]) if maps.ndim == 2 else scores

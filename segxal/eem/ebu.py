"""Entropy-based uncertainty (EBU), the first term of the EEM, with the other per-pixel statistics
of the prediction (argmax labels, p_max) that come from the same pass over the logits.

Per pixel i, with p = softmax(z) over C classes (docs/design.md, "The EEM as shipped"):
    u(i) = -sum_c p_c(i) * log p_c(i) / log C,  in [0, 1]
0 for a one-hot prediction, 1 for a uniform one.

Computed max-shifted rather than through log_softmax: with d = z - max_c z <= 0, e = exp(d) in
(0, 1] and s = sum_c e in [1, C],
    -sum p log p = log s - sum_c e * d / s,     p_max = 1 / s
which is finite for every finite logit (exp(d) underflows to 0, and 0 * d = 0), as safe as
log_softmax, and the max pass yields the argmax labels for free. Measured at 19 x 256 x 512 on 2 CPU
threads: 3x faster in torch and 5x faster in ONNX Runtime than log_softmax + exp + amax + argmax
(ONNX Runtime's LogSoftmax on axis 1 transposes; torch's argmax over dim 1 is slower than max).
All torch ops, traceable into the exported ONNX graph.

References:
    SegXAL: Explainable Active Learning for Semantic Segmentation in Driving Scene Scenarios,
    arXiv 2408.04482 (EBU). Shannon entropy normalised by its maximum log C.
"""
from __future__ import annotations

import math

import torch

from segxal.errors import InvalidInput


def prediction_statistics(logits: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Argmax labels, normalised entropy u and top-class probability p_max, from one max-shifted exp.

    p_max is the confidence the machine oracle thresholds (docs/design.md, "Oracle modes").

    Args:
        logits: raw scores, e.g. [B, C, H, W]; float32, float64 or float16 (computed in that dtype).
        dim: the class dimension.

    Returns:
        (labels int64, u in [0, 1], p_max in [1/C, 1]), each with the class dimension removed,
        e.g. [B, H, W]. Ties go to the lowest class index, as argmax.

    Raises:
        InvalidInput: fewer than 2 classes along `dim`.
    """
    num_classes = logits.shape[dim]
    if not torch.jit.is_tracing() and num_classes < 2:
        raise InvalidInput(f"entropy needs at least 2 classes along dim {dim}, got shape {tuple(logits.shape)}")
    z_max, labels = logits.max(dim, keepdim=True)  # [B, 1, H, W] each (for dim=1)
    shifted = logits - z_max  # [B, C, H, W], <= 0
    expd = shifted.exp()  # [B, C, H, W], in (0, 1]
    total = expd.sum(dim)  # [B, H, W], in [1, C]
    entropy = total.log() - (expd * shifted).sum(dim) / total  # [B, H, W], in [0, log C]
    u = (entropy / math.log(num_classes)).clamp(0.0, 1.0)  # clamp: rounding at the uniform end
    return labels.squeeze(dim), u, total.reciprocal()


def entropy_uncertainty(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Normalised entropy of softmax(logits) along the class dimension (EBU).

    Args:
        logits: raw scores, e.g. [B, C, H, W].
        dim: the class dimension.

    Returns:
        u with the class dimension removed, e.g. [B, H, W], in [0, 1].

    Raises:
        InvalidInput: fewer than 2 classes along `dim`.
    """
    return prediction_statistics(logits, dim)[1]

"""The publish gate's finiteness check: an exported graph whose weights or outputs are not all
finite is never published (a diverged model passes the parity check, since ONNX Runtime and
PyTorch agree on inf and NaN)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segxal.errors import FailedPrecondition


def check_finite_export(onnx_path: Path, images: np.ndarray) -> str:
    """Check every float weight of an exported graph and every float output on some frames.

    Args:
        onnx_path: the exported model.onnx (its one input takes uint8 [B, H, W, 3]).
        images: uint8 [B, H, W, 3] frames to run it on.

    Returns:
        A one-line summary of what was checked.

    Raises:
        FailedPrecondition: a weight (initializer or constant) or an output value is NaN or
            infinite; the message counts them and names the first tensor.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    tensors = [(t.name, t) for t in graph.initializer]
    tensors += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    bad_weights, first, total = 0, "", 0
    for name, t in tensors:
        w = numpy_helper.to_array(t)
        if not np.issubdtype(w.dtype, np.floating):
            continue
        total += w.size
        n = int(w.size - np.count_nonzero(np.isfinite(w)))
        if n and not first:
            first = name
        bad_weights += n
    if bad_weights:
        raise FailedPrecondition(f"{onnx_path}: {bad_weights} of {total} weights are non-finite (NaN or inf; "
                                 f"first in {first!r}); a diverged model is never published")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    x = session.get_inputs()[0]
    step = x.shape[0] if isinstance(x.shape[0], int) and x.shape[0] > 0 else len(images)  # a fixed-batch graph
    values = [np.concatenate(v) for v in zip(*(session.run(outputs, {x.name: images[i:i + step]})
                                               for i in range(0, len(images) - step + 1, step)))]
    for name, v in zip(outputs, values):
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            n = int(v.size - np.count_nonzero(np.isfinite(v)))
            raise FailedPrecondition(f"{onnx_path}: output {name!r} has {n} of {v.size} non-finite values "
                                     f"(NaN or inf) on {len(images)} held-out frames; a diverged model is "
                                     f"never published")
    return f"{total} weights and outputs {outputs} on {len(images)} frames finite"

"""ExplainedSegmenter (segxal.eem.explain): one forward pass gives the same labels, EBU and CAM as the
separate functions, and the ONNX export (legacy exporter, opset 17, dynamic batch) matches ONNX Runtime."""
import io
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segxal.eem.explain import INPUT_NAME, OUTPUT_NAMES, ExplainedSegmenter
from segxal.eem.gradcam import gradcam_autograd, safety_class_weights
from segxal.errors import InvalidInput
from segxal.models.unet import UNet, UNetConfig

FP16_STEP_NEAR_ONE = 2.0 ** -11  # spacing of float16 just below 1.0


def _unet() -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(width=8, depth=2)).eval()
    # default init predicts one class everywhere; a wider head predicts ~6 classes, cars and persons included
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.zeros_(model.head.bias)
    return model


def _images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 128, generator=torch.Generator().manual_seed(seed))  # [B, 3, H, W]


def _export(module: torch.nn.Module) -> ort.InferenceSession:
    buf = io.BytesIO()
    torch.onnx.export(module, (_images(1),), buf, dynamo=False, opset_version=17,
                      input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                      dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("class_weights", [None, safety_class_weights()])
def test_outputs_equal_the_separate_functions(class_weights):
    model, x = _unet(), _images(2)
    with torch.inference_mode():
        labels, ebu, cam, pmax = ExplainedSegmenter(model, class_weights)(x)
        logits = model(x)  # [B, C, H, W]
    probs = torch.softmax(logits, 1)  # [B, C, H, W]
    ebu_ref = -(probs * probs.log()).sum(1) / math.log(probs.shape[1])  # [B, H, W]
    pmax_ref = probs.amax(1)  # [B, H, W]
    cam_ref = gradcam_autograd(model, model.target_layer, x, class_weights)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), logits.argmax(1))
    assert len(labels.unique()) >= 4
    torch.testing.assert_close(ebu, ebu_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(pmax, pmax_ref, atol=1e-6, rtol=0)
    assert (cam - cam_ref).abs().max() < 1e-5


@pytest.mark.parametrize("half_outputs", [True, False])
def test_onnx_export_matches_onnxruntime(half_outputs):
    module = ExplainedSegmenter(_unet(), safety_class_weights(), half_outputs=half_outputs).eval()
    session = _export(module)
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)

    x = _images(3, seed=2)  # exported at batch 1, run at batch 3
    with torch.inference_mode():
        expected = module(x)
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
    want_dtype = np.float16 if half_outputs else np.float32
    assert got[0].dtype == np.uint8 and all(g.dtype == want_dtype for g in got[1:])
    np.testing.assert_array_equal(got[0], expected[0].numpy())
    tol = FP16_STEP_NEAR_ONE if half_outputs else 1e-5
    for name, g, e in zip(OUTPUT_NAMES[1:], got[1:], expected[1:]):
        assert g.shape == (3, 64, 128)
        diff = np.abs(g.astype(np.float32) - e.float().numpy()).max()
        assert diff <= tol, f"{name}: max abs diff {diff} > {tol}"


def test_bad_class_weights_are_rejected():
    with pytest.raises(InvalidInput, match="shape"):
        ExplainedSegmenter(_unet(), torch.ones(5))

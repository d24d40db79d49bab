"""segxal.graph.add_eem on architectures no one here wrote (torchvision, smp, Hugging Face), with
random weights: the added `cam` against pytorch-grad-cam's GradCAM on the same PyTorch model and
target layer(s) (class-agnostic target, same scaling), and labels / EBU / p_max against PyTorch.
Exported models are cached per session (segxal_zoo_exports)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from segxal.eem.ebu import prediction_statistics
from segxal.errors import InvalidInput
from segxal.graph.add_eem import METADATA_CAM_LAYER, METADATA_UNCERTAINTY_AT, add_eem_file, add_eem_outputs
from segxal.models.external import FullResLogits
from tests.zoo_support import H, W, NUM_CLASSES, ZOO, images_nchw

CAM_TOL = 1e-3  # the agreement add-eem promises; float16 on the wire is 4.9e-4 per step just below 1


class _ClassAgnosticTarget:
    """T = sum_c sum_{i in M_c} z_c(i): SemanticSegmentationTarget summed over predicted classes."""

    def __init__(self, labels: np.ndarray):
        self.terms = [SemanticSegmentationTarget(int(c), (labels == c).astype(np.float32)) for c in np.unique(labels)]

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return sum(term(model_output) for term in self.terms)


def _reference(model, entry, x: torch.Tensor):
    full = FullResLogits(model).eval()
    with torch.no_grad():
        logits = full(x)  # [B, C, H, W]
    labels, ebu, pmax = prediction_statistics(logits)
    with GradCAM(model=full, target_layers=entry.target_layers(model)) as cam:
        ref = cam(input_tensor=x, targets=[_ClassAgnosticTarget(lab) for lab in labels.numpy()])
    return labels.numpy(), ebu.numpy(), pmax.numpy(), ref  # [B, H, W] each


@pytest.mark.parametrize("name", ZOO)
def test_added_cam_agrees_with_pytorch_grad_cam(name, zoo_exports):
    model, entry, eem_path, info = zoo_exports(name)
    x = images_nchw(2, seed=3)
    session = ort.InferenceSession(str(eem_path), providers=["CPUExecutionProvider"])
    labels, ebu, cam, pmax = session.run(["labels", "ebu", "cam", "pmax"], {"image": x.numpy()})
    ref_labels, ref_ebu, ref_pmax, ref_cam = _reference(model, entry, x)
    assert info.cam_layer and info.cam_exact, info
    assert labels.dtype == np.uint8 and cam.dtype == ebu.dtype == pmax.dtype == np.float16
    assert labels.shape == cam.shape == (2, H, W)
    assert np.mean(labels == ref_labels) > 0.999
    assert len(np.unique(labels)) > 1  # a non-trivial prediction, else the CAM check is weak
    np.testing.assert_allclose(ebu.astype(np.float32), ref_ebu, atol=2e-3)
    np.testing.assert_allclose(pmax.astype(np.float32), ref_pmax, atol=2e-3)
    assert ref_cam.max() > 0.99 and ref_cam.std() > 0.05  # not a degenerate CAM
    assert np.abs(cam.astype(np.float32) - ref_cam).max() < CAM_TOL


def _native_logits(logits_onnx, x: np.ndarray) -> np.ndarray:
    """The class scores before the model's final Resize (or its only, coarse output), read from the
    team's own graph with one extra output: [B, C, h, w]."""
    import onnx_graphsurgeon as gs

    from segxal.graph.head import find_head
    graph = gs.import_onnx(onnx.load(str(logits_onnx)))
    head = find_head(graph, graph.outputs[0])
    native = head.head_logits if head.resize is not None else graph.outputs[0]
    native.dtype = np.float32
    graph.outputs = [native]
    session = ort.InferenceSession(gs.export_onnx(graph.cleanup()).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "segformer", "smp_unet"])
def test_uncertainty_on_the_models_grid(name, zoo_exports, tmp_path):
    """uncertainty_at="model": EBU and p_max are prediction_statistics of the class scores on the
    grid the model computes them, resized bilinearly (torch, align_corners=False); labels and CAM
    are those of the default graph. A model with full-resolution logits is unchanged."""
    _, _, eem_path, _ = zoo_exports(name)
    info = add_eem_file(eem_path.parent / "logits.onnx", tmp_path / "model.onnx", uncertainty_at="model")
    x = images_nchw(2, seed=5).numpy()
    names = ["labels", "ebu", "cam", "pmax"]
    default = dict(zip(names, ort.InferenceSession(str(eem_path), providers=["CPUExecutionProvider"]).run(names, {"image": x})))
    coarse = dict(zip(names, ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(names, {"image": x})))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    np.testing.assert_array_equal(coarse["labels"], default["labels"])
    np.testing.assert_array_equal(coarse["cam"], default["cam"])
    if name == "smp_unet":
        assert info.uncertainty_at == props[METADATA_UNCERTAINTY_AT] == "input"
        np.testing.assert_array_equal(coarse["ebu"], default["ebu"])
        return
    assert info.uncertainty_at == props[METADATA_UNCERTAINTY_AT] == "model"
    native = torch.from_numpy(_native_logits(eem_path.parent / "logits.onnx", x))
    assert native.shape[-1] < W  # really a coarser grid
    _, ebu, pmax = prediction_statistics(native)
    up = lambda m: torch.nn.functional.interpolate(m[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(coarse["ebu"].astype(np.float32), up(ebu), atol=2e-3)
    np.testing.assert_allclose(coarse["pmax"].astype(np.float32), up(pmax), atol=2e-3)


def test_unknown_uncertainty_grid_is_refused(zoo_exports, tmp_path):
    _, _, eem_path, _ = zoo_exports("smp_unet")
    with pytest.raises(InvalidInput, match="uncertainty_at"):
        add_eem_file(eem_path.parent / "logits.onnx", tmp_path / "m.onnx", uncertainty_at="half")


def test_cam_layer_recorded_in_metadata(zoo_exports):
    _, _, eem_path, info = zoo_exports("lraspp_mobilenet_v3_large")
    props = {p.key: p.value for p in onnx.load(str(eem_path)).metadata_props}
    assert props[METADATA_CAM_LAYER] == info.cam_layer
    assert info.cam_layer.count("Conv 1x1") == 2  # both summed branches


def test_segformer_logits_upsampled_in_graph(zoo_exports):
    _, _, _, info = zoo_exports("segformer")
    assert info.upsampled  # 1/4-resolution logits, no Resize in the user's graph


def test_graph_without_linear_head_is_ebu_only():
    """logits = Softmax(Conv(x)) * 3: not linear in the conv's input -> labels, ebu, pmax, no cam."""
    class Squashed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.tanh(self.conv(x)) * 3.0

    import io
    buf = io.BytesIO()
    torch.onnx.export(Squashed(), (torch.zeros(1, 3, 16, 16),), buf, input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    model, info = add_eem_outputs(onnx.load_from_string(buf.getvalue()))
    assert info.cam_layer is None and "Mul node" in info.reason
    assert [o.name for o in model.graph.output] == ["labels", "ebu", "pmax"]  # no head: no embedding either
    assert info.embedding_dim is None
    with pytest.raises(InvalidInput, match="no recognisable linear classifier"):
        add_eem_outputs(onnx.load_from_string(buf.getvalue()), require_cam=True)


def test_unknown_logits_output_is_a_clear_error(zoo_exports):
    _, _, eem_path, _ = zoo_exports("smp_fpn")
    with pytest.raises(InvalidInput, match="has no output 'nope'"):
        add_eem_outputs(onnx.load(str(eem_path)), logits_name="nope")


@pytest.mark.parametrize("name", ZOO)
def test_added_embedding_is_the_normalised_pool_of_the_head_input(name, zoo_exports):
    """`embedding` FP32 [B, D]: the classifier input(s) averaged over positions, concatenated over
    summed branches (in the graph's order), L2-normalised; D is declared in the serving spec."""
    import itertools
    model, entry, eem_path, info = zoo_exports(name)
    x = images_nchw(2, seed=4)
    session = ort.InferenceSession(str(eem_path), providers=["CPUExecutionProvider"])
    (emb,) = session.run(["embedding"], {"image": x.numpy()})
    pooled, handles = [], [layer.register_forward_hook(lambda m, i, o: pooled.append(o.mean((2, 3))))
                           for layer in entry.target_layers(model)]
    try:
        with torch.no_grad():
            FullResLogits(model).eval()(x)
    finally:
        for h in handles:
            h.remove()
    assert emb.dtype == np.float32 and emb.shape == (2, info.embedding_dim)
    assert info.embedding_dim == sum(p.shape[1] for p in pooled)
    assert [s for s in info.output_specs() if s.name == "embedding"][0].dims == (info.embedding_dim,)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    refs = [torch.nn.functional.normalize(torch.cat(order, 1), dim=1).numpy()
            for order in itertools.permutations(pooled)]
    assert min(np.abs(emb - ref).max() for ref in refs) < 1e-4
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # two images, two embeddings


def test_embedding_can_be_left_out(zoo_exports, tmp_path):
    _, _, eem_path, _ = zoo_exports("smp_fpn")
    info = add_eem_file(eem_path.parent / "logits.onnx", tmp_path / "m.onnx", embedding=False)
    assert "embedding" not in info.outputs and info.embedding_dim is None
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == ["labels", "ebu", "cam", "pmax"]

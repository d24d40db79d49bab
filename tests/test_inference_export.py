"""Export parity (ONNX Runtime vs PyTorch) and the Triton-layout model repository: every written
config.pbtxt parses with Triton's own ModelConfig, publishing is atomic and numbered, version
policies select as Triton documents."""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.inference_support import TRACE, images, tiny_depth, tiny_unet
from segxal.data.cityscapes import normalize_image
from segxal.eem.explain import ExplainedSegmenter
from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from segxal.export import ExportConfig, ParityError, export_depth, export_segmentation
from services.common.model_repository import (
    CONFIG_FILE, BatchingConfig, ModelRepository, build_config, candidate_versions, spec_from_config)


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory):
    return export_segmentation(tiny_unet(), tmp_path_factory.mktemp("seg") / "model.onnx", TRACE)


def test_segmentation_export_parity_and_compact_outputs(seg_export):
    r = seg_export
    assert r.parity.passed and r.parity.label_agreement >= 0.999
    assert set(r.parity.max_abs_diff) == {"ebu", "cam", "pmax", "embedding"}
    assert max(r.parity.max_abs_diff.values()) <= 5e-3
    assert (1, 32, 64) in r.parity.sizes  # a second size: height/width are dynamic
    session = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert (inp.name, inp.type) == ("image", "tensor(uint8)")
    types = {o.name: o.type for o in session.get_outputs()}
    assert types == {"labels": "tensor(uint8)", "ebu": "tensor(float16)", "cam": "tensor(float16)",
                     "pmax": "tensor(float16)", "embedding": "tensor(float)"}
    spec = r.spec
    assert spec.kind == "segmentation" and spec.num_classes == 19 and spec.spatial_multiple == 8


def test_the_graph_computes_the_argmax_once_after_onnx_runtimes_optimisation(seg_export, tmp_path):
    """labels (EBU's pass) and the CAM's class mask share one ArgMax once ONNX Runtime has merged
    common subexpressions: the exporter writes them as the same node (segxal/eem/gradcam.py)."""
    import onnx
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(seg_export.path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops.count("ArgMax") == 1


def test_in_graph_normalisation_matches_the_training_loader(seg_export):
    """The uint8 graph equals ExplainedSegmenter on the loader's normalize_image (MEAN/STD)."""
    x = images(1, seed=3)
    session = ort.InferenceSession(str(seg_export.path), providers=["CPUExecutionProvider"])
    labels, ebu, cam, pmax = session.run(["labels", "ebu", "cam", "pmax"], {"image": x})
    explained = ExplainedSegmenter(tiny_unet().eval(), half_outputs=True)
    with torch.inference_mode():
        ref = explained(torch.from_numpy(normalize_image(x[0]))[None])
    assert (ref[0].numpy() == labels).mean() >= 0.999
    np.testing.assert_allclose(ref[1].float().numpy(), ebu.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(ref[3].float().numpy(), pmax.astype(np.float32), atol=2e-3)


def test_exported_embedding_is_unet_embed_of_the_same_frames(seg_export):
    """`embedding` FP32 [B, D]: UNet.embed on the loader's normalisation (what the benchmark's
    diversity arms call), one unit vector per image, D as the serving spec declares it."""
    x = np.concatenate([images(1, seed=5), images(1, seed=6) // 4])  # a bright and a dark frame
    session = ort.InferenceSession(str(seg_export.path), providers=["CPUExecutionProvider"])
    (emb,) = session.run(["embedding"], {"image": x})
    model = tiny_unet().eval()
    with torch.inference_mode():
        ref = model.embed(torch.stack([torch.from_numpy(normalize_image(im)) for im in x]))
    [spec] = [t for t in seg_export.spec.outputs if t.name == "embedding"]
    assert (spec.datatype, spec.dims) == ("FP32", (model.embed(torch.zeros(1, 3, 8, 8)).shape[1],))
    assert emb.dtype == np.float32 and emb.shape == (2, spec.dims[0])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, ref.numpy(), atol=1e-5)
    assert seg_export.parity.max_abs_diff["embedding"] < 1e-5
    assert np.abs(emb[0] - emb[1]).max() > 1e-3


def test_export_without_embedding_still_serves_the_maps(tmp_path):
    r = export_segmentation(tiny_unet(), tmp_path / "n" / "model.onnx",
                            ExportConfig(trace_hw=TRACE.trace_hw, with_embedding=False))
    assert r.spec.output_name("embedding") is None and r.spec.embedding_dim is None
    assert [o.name for o in ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).get_outputs()] == [
        "labels", "ebu", "cam", "pmax"]


def test_the_unets_export_carries_the_cam_method_it_is_given(tmp_path):
    """ExportConfig.cam_method: the graph serves that CAM (ONNX Runtime = the PyTorch VJP, the parity
    check), its config says so, and it differs from the GradCAM graph's."""
    model = tiny_unet()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # several classes a frame: the methods differ
    hires = export_segmentation(model, tmp_path / "h" / "model.onnx",
                                ExportConfig(trace_hw=TRACE.trace_hw, cam_method="hirescam"))
    plain = export_segmentation(model, tmp_path / "g" / "model.onnx", TRACE)
    assert hires.parity.passed and hires.spec.cam_layer == "bottleneck (class-balanced, hirescam)"
    assert plain.spec.cam_layer == "bottleneck (class-balanced)"
    x = images(batch=1, seed=3)
    cams = [ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).run(["cam"], {"image": x})[0]
            for r in (hires, plain)]
    with torch.inference_mode():
        ref = ExplainedSegmenter(model.eval(), cam_method="hirescam")(torch.from_numpy(normalize_image(x[0]))[None])[2].numpy()
    assert np.abs(cams[0].astype(np.float32) - ref).max() < 2e-2 and ref.std() > 0.05
    assert np.abs(cams[0].astype(np.float32) - cams[1].astype(np.float32)).max() > 0.1


def test_logits_output_on_request_and_depth_export(tmp_path):
    r = export_segmentation(tiny_unet(), tmp_path / "l" / "model.onnx",
                            ExportConfig(trace_hw=TRACE.trace_hw, with_logits=True))
    assert r.parity.passed and "logits" in r.parity.max_abs_diff
    logits = [t for t in r.spec.outputs if t.name == "logits"][0]
    assert logits.dims == (19, -1, -1) and logits.datatype == "FP16"
    d = export_depth(tiny_depth(), tmp_path / "d" / "model.onnx", TRACE)
    assert d.parity.passed and d.parity.max_abs_diff["inverse_depth"] < 1e-5
    assert [(t.name, t.datatype) for t in d.spec.outputs] == [("inverse_depth", "FP32")]
    out = ort.InferenceSession(str(d.path), providers=["CPUExecutionProvider"]).run(None, {"image": images(3)})[0]
    assert out.shape == (3, 64, 128) and 0 <= out.min() and out.max() <= 1


def test_parity_below_threshold_fails_loudly(tmp_path):
    with pytest.raises(ParityError, match="max abs diff"):
        export_depth(tiny_depth(), tmp_path / "model.onnx",
                     ExportConfig(trace_hw=TRACE.trace_hw, max_abs_diff=-1.0))
    with pytest.raises(InvalidInput, match="multiples of 8"):
        export_depth(tiny_depth(), tmp_path / "model.onnx", ExportConfig(trace_hw=(60, 128)))


def test_every_config_parses_with_triton_model_config(tmp_path, seg_export):
    repo = ModelRepository(tmp_path)
    repo.publish("segmentation", seg_export.path, build_config("segmentation", seg_export.spec,
                                                               BatchingConfig(max_batch_size=4, num_versions=2)))
    configs = list(tmp_path.glob(f"*/{CONFIG_FILE}"))
    assert configs
    for path in configs:
        config = text_format.Parse(path.read_text(), mc.ModelConfig())  # Triton's own message
        assert config.platform == "onnxruntime_onnx" and config.name == path.parent.name
        assert config.max_batch_size == 4 and config.version_policy.latest.num_versions == 2
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == \
            [("image", "TYPE_UINT8", [-1, -1, 3])]
        assert {o.name: mc.DataType.Name(o.data_type) for o in config.output} == {
            "labels": "TYPE_UINT8", "ebu": "TYPE_FP16", "cam": "TYPE_FP16", "pmax": "TYPE_FP16",
            "embedding": "TYPE_FP32"}
        assert [list(o.dims) for o in config.output if o.name == "embedding"] == [[seg_export.spec.embedding_dim]]
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["model_kind"] == "segmentation" and params["num_classes"] == "19"
        assert params["input_layout"] == "NHWC" and params["normalization"] == "in_graph"
        assert [float(v) for v in params["mean"].split(",")] == [0.485, 0.456, 0.406]
        assert spec_from_config(config) == seg_export.spec  # the round trip loses nothing


def test_publish_is_atomic_numbered_and_concurrent_safe(tmp_path, seg_export):
    repo = ModelRepository(tmp_path)
    config = build_config("m", seg_export.spec)
    with pytest.raises(FailedPrecondition, match="no config.pbtxt"):
        repo.publish("m", seg_export.path)
    with pytest.raises(NotFound):
        repo.publish("m", tmp_path / "missing.onnx", config)
    versions = []
    threads = [threading.Thread(target=lambda: versions.append(repo.publish("m", seg_export.path, config)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4] == repo.list_versions("m")
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temp left behind
    assert repo.model_file("m", 3).read_bytes() == seg_export.path.read_bytes()
    # rollback = publishing an older version's folder again
    assert repo.publish("m", repo.version_dir("m", 1)) == 5
    assert repo.list_models() == ["m"]
    with pytest.raises(InvalidInput):
        repo.read_config("../m")


def test_version_policies_follow_triton():
    def cfg(text):
        return text_format.Parse(text, mc.ModelConfig())
    assert candidate_versions(cfg(""), [1, 2, 3]) == ([3, 2, 1], 1)
    assert candidate_versions(cfg("version_policy { latest { num_versions: 2 } }"), [1, 3, 2]) == ([3, 2, 1], 2)
    assert candidate_versions(cfg("version_policy { all {} }"), [1, 2]) == ([2, 1], 2)
    assert candidate_versions(cfg("version_policy { specific { versions: [1, 5] } }"), [1, 2, 3]) == ([1], 2)


def test_config_errors_name_the_file(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    repo = ModelRepository(tmp_path)
    with pytest.raises(NotFound, match="config.pbtxt"):
        repo.read_config("m")
    (tmp_path / "m" / CONFIG_FILE).write_text("name: 'm' max_batch_size: oops")
    with pytest.raises(InvalidInput, match="not a valid Triton ModelConfig"):
        repo.read_config("m")
    (tmp_path / "m" / CONFIG_FILE).write_text("name: 'other'")
    with pytest.raises(InvalidInput, match="differs from its folder"):
        repo.read_config("m")
    (tmp_path / "m" / CONFIG_FILE).write_text("name: 'm' platform: 'tensorrt_plan'")
    with pytest.raises(InvalidInput, match="onnxruntime_onnx"):
        repo.read_config("m")


def test_depth_export_declares_its_input_size_when_asked(tmp_path):
    """One scale for depth too: a declared input size reaches the spec (and so config.pbtxt)."""
    from segxal.export import ExportConfig, export_depth
    from segxal.models.depth import DepthConfig, DepthNet
    torch.manual_seed(0)
    model = DepthNet(DepthConfig(width=4))
    declared = export_depth(model, tmp_path / "a" / "model.onnx",
                            ExportConfig(trace_hw=(64, 128), declare_input_size=True, parity_batch=1))
    plain = export_depth(model, tmp_path / "b" / "model.onnx", ExportConfig(trace_hw=(64, 128), parity_batch=1))
    assert declared.spec.input_size == (64, 128) and plain.spec.input_size is None

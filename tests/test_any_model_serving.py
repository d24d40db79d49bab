"""Architectures no one here wrote, served: each zoo model (tests/zoo_support.py) exported as a
team would (float NCHW logits, fixed 64 x 128), given the EEM outputs by segxal.graph.add_eem,
published with a five-class label file, served by the project's inference server and scored
through the real EEM service. The served `cam` agrees with pytorch-grad-cam's GradCAM on the same
PyTorch model and target layer(s) (class-agnostic target, same scaling) within 1e-3."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

from segxal import imageio
from segxal.data.cityscapes import MEAN, STD
from segxal.errors import InvalidInput
from segxal.export import ExportConfig, export_depth
from segxal.graph.add_eem import add_eem_outputs
from segxal.modelspec import NO_CAM, SEGMENTATION, ModelSpec, Preprocessing, TensorSpec
from segxal.models.depth import DepthConfig, DepthNet
from services.common.model_repository import ModelRepository, build_config
from services.common.server import ServerConfig
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer
from tests.test_graph_add_eem import _reference
from tests.zoo_support import H, NUM_CLASSES, W, ZOO

CLASS_NAMES = ("road", "car", "person", "tree", "sky")  # a non-Cityscapes taxonomy
CAM_TOL = 1e-3


def user_spec(info, h: int = H, w: int = W) -> ModelSpec:
    """The config a user writes for a float NCHW model with the EEM outputs."""
    outputs = info.output_specs()  # labels UINT8, maps FP16, embedding FP32 [D]
    return ModelSpec(kind=SEGMENTATION, inputs=(TensorSpec("image", "FP32", (3, h, w)),), outputs=outputs,
                     preprocessing=Preprocessing(layout="NCHW", normalization="client", mean=MEAN, std=STD),
                     num_classes=info.num_classes, cam_layer=info.cam_layer or NO_CAM, class_names=CLASS_NAMES)


def _ebu_only_model(path):
    class Squashed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1)

        def forward(self, x):
            return torch.tanh(self.conv(x)) * 3.0

    buf = io.BytesIO()
    torch.onnx.export(Squashed(), (torch.zeros(1, 3, H, W),), buf, input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    model, info = add_eem_outputs(onnx.load_from_string(buf.getvalue()))
    onnx.save(model, str(path))
    return info


@pytest.fixture(scope="module")
def served(zoo_exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("any_model")
    repo = ModelRepository(root / "repo")
    infos = {}
    for name in ZOO:
        _, _, path, info = zoo_exports(name)
        repo.publish(name, path, build_config(name, user_spec(info)))
        infos[name] = info
    info = _ebu_only_model(root / "ebu_only.onnx")
    repo.publish("ebu_only", root / "ebu_only.onnx", build_config("ebu_only", user_spec(info)))
    infos["ebu_only"] = info
    torch.manual_seed(1)
    depth = export_depth(DepthNet(DepthConfig(width=4, depth=2)), root / "depth" / "model.onnx",
                         ExportConfig(trace_hw=(H, W)))
    repo.publish("depth", depth.path, build_config("depth", depth.spec))
    frames = root / "frames"
    rng = np.random.default_rng(5)
    for size in ((H, W), (96, 160)):
        small = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        imageio.write_png(frames / f"frame_{size[0]}x{size[1]}.png", np.kron(small, np.ones((8, 8, 1), np.uint8)))
    server = InferenceServer(InferenceServerConfig(
        repository=str(repo.root), server=ServerConfig(address="127.0.0.1:0", max_workers=16, grace_s=2.0),
        runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0))
    server.start()
    yield {"server": server, "infos": infos, "frames": frames, "repo": repo}
    server.stop(2.0)


def _eem(served, seg_model: str) -> EemServer:
    cfg = EemServiceConfig(seg_target=served["server"].target, depth_target=served["server"].target,
                           storage_roots=[str(served["frames"])], seg_model=seg_model,
                           server=ServerConfig(address="127.0.0.1:0", grace_s=2.0), health_poll_s=0.1, pipeline=PipelineConfig(max_concurrency=1))
    server = EemServer(cfg)
    server.start()
    return server


def _score(served, seg_model: str, frame: str):
    server = _eem(served, seg_model)
    try:
        with EemClient(server.target, timeout_s=60) as client:
            client.wait_until_serving(30)
            return client.score(str(served["frames"] / frame), ScoreOptions(
                maps=("ebu", "cam", "eem"), map_bits=16, regions=True, labels=True))
    finally:
        server.stop(2.0)


@pytest.mark.parametrize("name", ZOO)
def test_served_cam_agrees_with_pytorch_grad_cam(name, served, zoo_exports):
    result = _score(served, name, f"frame_{H}x{W}.png").raise_for_error()
    model, entry, _, info = zoo_exports(name)
    image = imageio.read_rgb(served["frames"] / f"frame_{H}x{W}.png")
    x = torch.from_numpy(user_spec(info).preprocessing.apply(image[None]))  # what the client sent
    ref_labels, ref_ebu, _, ref_cam = _reference(model, entry, x)
    assert result.cam_layer == info.cam_layer and not result.ebu_only
    assert np.mean(result.labels() == ref_labels[0]) > 0.999
    assert np.abs(result.map("cam") - ref_cam[0]).max() < CAM_TOL
    assert np.abs(result.map("ebu") - ref_ebu[0]).max() < 2e-3
    assert result.regions and {r.class_name for r in result.regions} <= set(CLASS_NAMES)


def test_frame_of_another_size_is_resized_and_maps_come_back_at_its_size(served):
    result = _score(served, "smp_fpn", "frame_96x160.png").raise_for_error()
    assert (result.height, result.width) == (96, 160)
    assert result.map("cam").shape == result.labels().shape == (96, 160)


def test_model_without_linear_head_is_ranked_by_ebu_alone(served):
    result = _score(served, "ebu_only", f"frame_{H}x{W}.png").raise_for_error()
    assert result.ebu_only and result.cam_layer == NO_CAM
    ebu = result.map("ebu")
    np.testing.assert_allclose(result.map("eem"), ebu, atol=2e-5)
    assert result.score == pytest.approx(float(ebu.mean()), abs=1e-3)
    assert result.map("cam").max() == 0.0


def test_label_file_disagreeing_with_class_count_is_a_clear_error(served, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    info = served["infos"]["smp_fpn"]
    spec = user_spec(info)
    repo.publish("seg", served["repo"].model_file("smp_fpn", 1), build_config("seg", spec))
    assert (repo.root / "seg" / "labels.txt").read_text().splitlines() == list(CLASS_NAMES)
    assert repo.read_config("seg").parameters["class_names"].string_value  # names reach clients
    (repo.root / "seg" / "labels.txt").write_text("road\ncar\nperson\n")
    with pytest.raises(InvalidInput, match="label file lists 3 classes but num_classes is 5"):
        repo.read_config("seg")
    with pytest.raises(InvalidInput, match="label file lists 3 classes but the model has 5"):
        ModelSpec(**{**spec.__dict__, "class_names": ("a", "b", "c")})

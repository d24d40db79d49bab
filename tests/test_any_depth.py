"""Off-the-shelf depth models served: Hugging Face DepthAnything (ViT patch 14) and DPT from
small configs, exported with a fixed batch (config max_batch_size 0, dims with the batch) and a
dynamic one; frames letterboxed (aspect kept, padded to the model's size) and the depth mapped back
to the frame; the declared convention (inverse / metric with tau) applied by the EEM service."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segxal import imageio
from segxal.data.cityscapes import MEAN, STD
from segxal.eem.proximity import proximity_from_inverse_depth, proximity_from_metric_depth
from segxal.errors import InvalidInput
from segxal.export import ExportConfig, export_segmentation
from segxal.modelspec import DEPTH, ModelSpec, Preprocessing, TensorSpec, plan_resize
from segxal.models import zoo
from segxal.models.external import export_logits_onnx
from segxal.models.unet import UNet, UNetConfig
from services.common.model_repository import BatchingConfig, ModelRepository, build_config, spec_from_config
from services.common.server import ServerConfig
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.inference.client import InferenceClient
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer

FRAME_HW = (64, 128)
DA_HW = (70, 126)  # multiples of 14 (ViT patches); a 64 x 128 frame fits as 63 x 126 + 7 rows of padding
DPT_HW = (64, 64)


def depth_spec(hw, convention: str, tau: float = 20.0, fixed_batch: bool = False, multiple: int = 14) -> ModelSpec:
    dims = (1, 3, *hw) if fixed_batch else (3, *hw)
    return ModelSpec(kind=DEPTH, inputs=(TensorSpec("image", "FP32", dims),),
                     outputs=(TensorSpec("predicted_depth", "FP32", ((1,) if fixed_batch else ()) + hw),),
                     preprocessing=Preprocessing(layout="NCHW", normalization="client", mean=MEAN, std=STD),
                     output_names={"inverse_depth": "predicted_depth"}, resize_mode="letterbox",
                     spatial_multiple=multiple, depth_convention=convention, depth_tau=tau)


def _publish(repo, name, path, spec, fixed_batch: bool):
    config = build_config(name, spec, BatchingConfig(max_batch_size=0 if fixed_batch else 8))
    if fixed_batch:
        config.ClearField("dynamic_batching")
    repo.publish(name, path, config)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth")
    repo = ModelRepository(root / "repo")
    da, dpt = zoo.depth_anything_small(), zoo.dpt_small(image_size=DPT_HW[0])
    for fixed in (True, False):
        path = export_logits_onnx(da, root / f"da_{fixed}.onnx", DA_HW, dynamic_batch=not fixed,
                                  output_name="predicted_depth")
        _publish(repo, f"da_{'fixed' if fixed else 'dynamic'}", path, depth_spec(DA_HW, "inverse", fixed_batch=fixed),
                 fixed)
    path = export_logits_onnx(dpt, root / "dpt.onnx", DPT_HW, dynamic_batch=True, output_name="predicted_depth")
    _publish(repo, "dpt_metric", path, depth_spec(DPT_HW, "metric", tau=0.5, multiple=16), False)
    torch.manual_seed(0)
    seg = export_segmentation(UNet(UNetConfig(width=4, depth=2)), root / "seg" / "model.onnx",
                              ExportConfig(trace_hw=FRAME_HW))
    repo.publish("segmentation", seg.path, build_config("segmentation", seg.spec))
    frames = root / "frames"
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (FRAME_HW[0] // 8, FRAME_HW[1] // 8, 3), dtype=np.uint8)
    imageio.write_png(frames / "f.png", np.kron(small, np.ones((8, 8, 1), np.uint8)))
    server = InferenceServer(InferenceServerConfig(
        repository=str(repo.root), server=ServerConfig(address="127.0.0.1:0", max_workers=16, grace_s=2.0),
        runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0))
    server.start()
    yield {"server": server, "repo": repo, "frames": frames, "da": da, "dpt": dpt}
    server.stop(2.0)


def _letterboxed_torch_depth(model, image: np.ndarray, model_hw) -> np.ndarray:
    """The reference: PIL resize keeping the aspect, zero padding, the PyTorch model, crop, resize back."""
    s = min(model_hw[0] / image.shape[0], model_hw[1] / image.shape[1])
    ch, cw = round(image.shape[0] * s), round(image.shape[1] * s)
    padded = np.zeros((*model_hw, 3), np.uint8)
    padded[:ch, :cw] = np.asarray(Image.fromarray(image).resize((cw, ch), Image.BILINEAR))
    x = (padded.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)  # [h, w, 3]
    with torch.no_grad():
        d = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))[0].numpy()  # [h, w]
    return np.asarray(Image.fromarray(d[:ch, :cw]).resize((image.shape[1], image.shape[0]), Image.BILINEAR))


def test_fixed_batch_config_dims_are_read_without_the_batch(served):
    config = served["repo"].read_config("da_fixed")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, *DA_HW]
    spec = spec_from_config(config)
    assert spec.fixed_batch == 1 and spec.image_input.dims == (3, *DA_HW)
    plan = plan_resize(spec, FRAME_HW)
    assert plan.input_hw == DA_HW and plan.content_hw == (63, 126)  # aspect kept, 7 rows of padding


@pytest.mark.parametrize("model", ["da_fixed", "da_dynamic"])
def test_letterboxed_depth_comes_back_at_frame_size(served, model):
    image = imageio.read_rgb(served["frames"] / "f.png")
    with InferenceClient(served["server"].target, depth_model=model, timeout_s=60) as client:
        depth, version = client.infer_depth(image[None])
        assert depth.shape == (1, *FRAME_HW) and version == "1"
        if model == "da_dynamic":
            two, _ = client.infer_depth(np.stack([image, image[::-1]]))  # a batch of 2 in one request
            np.testing.assert_allclose(two[0], depth[0], rtol=1e-4, atol=1e-4)
        else:
            with pytest.raises(InvalidInput, match="batches of exactly 1"):
                client.infer_depth(np.stack([image, image]))
    ref = _letterboxed_torch_depth(served["da"], image, DA_HW)
    np.testing.assert_allclose(depth[0], ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def _proximity_from_service(served, depth_model: str) -> np.ndarray:
    cfg = EemServiceConfig(seg_target=served["server"].target, depth_target=served["server"].target,
                           storage_roots=[str(served["frames"])], depth_model=depth_model,
                           server=ServerConfig(address="127.0.0.1:0", grace_s=2.0), health_poll_s=0.1, pipeline=PipelineConfig(max_concurrency=1))
    server = EemServer(cfg)
    server.start()
    try:
        with EemClient(server.target, timeout_s=60) as client:
            client.wait_until_serving(30)
            r = client.score(str(served["frames"] / "f.png"), ScoreOptions(maps=("proximity",), map_bits=16,
                                                                         labels=True)).raise_for_error()
            return r.map("proximity"), r.labels()
    finally:
        server.stop(2.0)


@pytest.mark.parametrize("model,convention", [("dpt_metric", "metric"), ("da_dynamic", "inverse")])
def test_declared_depth_convention_is_applied(served, model, convention):
    prox, labels = _proximity_from_service(served, model)
    image = imageio.read_rgb(served["frames"] / "f.png")
    with InferenceClient(served["server"].target, depth_model=model, timeout_s=60) as client:
        depth, _ = client.infer_depth(image[None])
    if convention == "metric":
        want = proximity_from_metric_depth(depth[0], tau=0.5, labels=labels)  # exp(-D / tau)
        wrong = proximity_from_inverse_depth(depth[0], labels=labels)
        assert np.abs(want - wrong).max() > 0.1  # the convention matters for this map
    else:
        want = proximity_from_inverse_depth(depth[0], labels=labels)
    np.testing.assert_allclose(prox, want, atol=2e-5)


def test_unknown_depth_convention_is_a_clear_error(served):
    config = served["repo"].read_config("dpt_metric")
    config.parameters["depth_convention"].string_value = "disparity"
    with pytest.raises(InvalidInput, match="depth_convention must be one of .*'inverse', 'metric'.*'disparity'"):
        spec_from_config(config)

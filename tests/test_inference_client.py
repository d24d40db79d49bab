"""The project's inference client (services.inference.client) against the real server: our
exports, user-style models described only by config.pbtxt (float NCHW input, own mean/std, fixed
input size, logits or [B, 1, H, W] depth), error mapping to segxal.errors, channel options."""
from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.inference_support import export_models, images, make_repository, running_server, tiny_unet
from segxal.eem.ebu import prediction_statistics
from segxal.errors import InvalidInput, NotFound, NotReady, ResourceExhausted
from services.common.channel import ChannelConfig
from services.inference.client import AsyncInferenceClient, InferenceClient

USER_MEAN, USER_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return export_models(tmp_path_factory.mktemp("exports"), seeds=(0,))


def _user_config(name: str, kind: str, extra: str) -> str:
    """A hand-written config.pbtxt, as a user would write it: no tensors listed (the server
    completes them from the graph), our parameters describe the pre-processing."""
    params = {"model_kind": kind, "input_layout": "NCHW", "normalization": "client",
              "mean": ",".join(map(str, USER_MEAN)), "std": ",".join(map(str, USER_STD))}
    text = "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())
    return f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n{text}{extra}'


def _add_user_models(repo, tmp_path):
    """A Cityscapes-style U-Net (float NCHW 'input' -> 'out' logits, fixed 64x128) and a
    MiDaS-style depth net ('pixel_values' fixed 64x64 -> 'predicted_depth' [B, 1, H, W])."""
    unet = tiny_unet(5).eval()
    d = repo.root / "user_seg" / "1"
    d.mkdir(parents=True)
    torch.onnx.export(unet, (torch.zeros(1, 3, 64, 128),), str(d / "model.onnx"), input_names=["input"],
                      output_names=["out"], dynamic_axes={"input": {0: "b"}, "out": {0: "b"}},
                      opset_version=17, dynamo=False)
    (repo.root / "user_seg" / "config.pbtxt").write_text(_user_config(
        "user_seg", "segmentation", 'parameters { key: "output_logits" value { string_value: "out" } }\n'))

    class Midas(torch.nn.Module):
        def forward(self, pixel_values):
            return pixel_values.mean(1, keepdim=True) * 2.0 + 1.0  # [B, 1, H, W]
    d = repo.root / "user_depth" / "1"
    d.mkdir(parents=True)
    torch.onnx.export(Midas(), (torch.zeros(1, 3, 64, 64),), str(d / "model.onnx"),
                      input_names=["pixel_values"], output_names=["predicted_depth"],
                      dynamic_axes={"pixel_values": {0: "b"}, "predicted_depth": {0: "b"}},
                      opset_version=17, dynamo=False)
    mapping = 'parameters { key: "output_inverse_depth" value { string_value: "predicted_depth" } }\n'
    (repo.root / "user_depth" / "config.pbtxt").write_text(_user_config("user_depth", "depth", mapping))
    return unet


def test_segmentation_and_depth_equal_in_process(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    x = images(2, seed=4)
    seg_ref = ort.InferenceSession(str(exports["segmentation"][0].path), providers=["CPUExecutionProvider"])
    ref = dict(zip(["labels", "ebu", "cam", "pmax"], seg_ref.run(None, {"image": x})))
    depth_ref = ort.InferenceSession(str(exports["depth"][0].path), providers=["CPUExecutionProvider"])
    with running_server(repo) as server, InferenceClient(server.target, timeout_s=30) as client:
        assert client.is_ready() and client.is_ready("segmentation")
        seg = client.infer_segmentation(x)
        assert seg["model_version"] == "1"
        for name, want in ref.items():
            np.testing.assert_array_equal(seg[name], want, err_msg=name)
        inverse_depth, version = client.infer_depth(x)
        np.testing.assert_array_equal(inverse_depth, depth_ref.run(None, {"image": x})[0])
        assert version == "1"
        raw = client.infer("depth", {"image": x}, version="1")
        assert raw.model_version == "1" and list(raw.tensors) == ["inverse_depth"]

        async def aio():
            async with AsyncInferenceClient(server.target) as aclient:
                return await aclient.infer_segmentation(x), await aclient.infer_depth(x)
        aseg, (adepth, aversion) = asyncio.run(aio())
        np.testing.assert_array_equal(aseg["cam"], ref["cam"])
        np.testing.assert_array_equal(adepth, inverse_depth)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_user_models_get_their_preprocessing_from_config(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    unet = _add_user_models(repo, tmp_path)
    x = images(2, seed=6)  # 64 x 128, the user U-Net's fixed size
    with running_server(repo) as server, InferenceClient(server.target, segmentation_model="user_seg",
                                                         depth_model="user_depth") as client:
        seg = client.infer_segmentation(x, with_logits=True)
        # reference: the user's own normalisation, in PyTorch
        t = (torch.from_numpy(x).float() / 255 - torch.tensor(USER_MEAN)) / torch.tensor(USER_STD)
        with torch.inference_mode():
            logits = unet(t.permute(0, 3, 1, 2))
        _, ebu, pmax = prediction_statistics(logits)
        assert (seg["labels"] == logits.argmax(1).numpy()).mean() > 0.999
        np.testing.assert_allclose(seg["ebu"].astype(np.float32), ebu.numpy(), atol=2e-3)
        np.testing.assert_allclose(seg["pmax"].astype(np.float32), pmax.numpy(), atol=2e-3)
        assert seg["cam"] is None and seg["logits"].shape == (2, 19, 64, 128)
        # another image size: resized to the model's 64 x 128 and the maps back to the image size
        other = client.infer_segmentation(images(1, h=96, w=160))
        assert other["labels"].shape == other["ebu"].shape == (1, 96, 160)

        inverse_depth, version = client.infer_depth(x)  # 64 x 128 -> 64 x 64 -> back to 64 x 128
        assert inverse_depth.shape == (2, 64, 128) and version == "1"
        gray = ((x.astype(np.float32) / 255 - 0.5) / 0.25).mean(-1) * 2 + 1  # Midas() on the user's input
        assert abs(float(inverse_depth.mean()) - float(gray.mean())) < 0.05


def test_errors_arrive_as_our_exceptions_and_channel_options_apply(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    x = images(1)
    with running_server(repo) as server:
        with InferenceClient(server.target, segmentation_model="nope") as client:
            with pytest.raises(NotFound, match="nope"):
                client.infer_segmentation(x)
            with pytest.raises(InvalidInput, match=r"uint8 RGB \[B, H, W, 3\]"):
                client.infer_depth(x[0])
            with pytest.raises(InvalidInput, match="multiples of 8"):
                client.infer_depth(images(1, h=60))
            with pytest.raises(NotFound, match="version 9"):
                client.infer_depth(x, version="9")
            with pytest.raises(InvalidInput, match="datatype FP32"):
                client.infer("depth", {"image": x.astype(np.float32)})
        with InferenceClient(server.target, depth_model="segmentation") as client:
            with pytest.raises(InvalidInput, match="not depth"):
                client.infer_depth(x)
        # the channel's receive limit comes from ChannelConfig: a ~100 kB response exceeds 10 kB
        with InferenceClient(server.target, ChannelConfig(max_message_bytes=10_000)) as client:
            with pytest.raises(ResourceExhausted):
                client.infer_segmentation(x)


def test_tls_and_mutual_tls_through_the_channel_config(tmp_path, exports):
    from tests.tls_support import TestCA
    ca = TestCA(tmp_path / "pki")
    server_cert, client_cert = ca.issue("localhost", server=True), ca.issue("eem", server=False)
    repo = make_repository(tmp_path / "repo", exports)
    with running_server(repo, tls_cert=server_cert.cert, tls_key=server_cert.key, tls_client_ca=ca.ca_path) as server:
        target = f"localhost:{server.grpc.port}"
        mtls = ChannelConfig(tls_ca=ca.ca_path, tls_cert=client_cert.cert, tls_key=client_cert.key)
        with InferenceClient(target, mtls, timeout_s=10) as client:
            assert client.infer_depth(images(1))[1] == "1"
        with InferenceClient(target, ChannelConfig(tls_ca=ca.ca_path), timeout_s=5) as no_client_cert:
            with pytest.raises(NotReady):
                no_client_cert.infer_depth(images(1))
        with InferenceClient(target, timeout_s=5) as plaintext, pytest.raises(NotReady):
            plaintext.infer_depth(images(1))

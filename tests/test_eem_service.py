"""EEM scoring service end to end: real inference server (services.inference) serving tiny
exported models from a temp model repository, the real EEM server and its client, all on
ephemeral ports. The reference is the in-process EEM: segxal.eem.frame.score_frame (the same
segxal.eem functions) on in-process ONNX Runtime outputs of the same graphs, and on PyTorch
outputs of the same weights."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from pycocotools import mask as coco_mask

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.eem.frame import score_frame
from segxal.data.cityscapes import MEAN, STD
from segxal.eem.explain import ExplainedSegmenter
from segxal.eem.health import cam_degenerate
from segxal.eem.regions import rle_to_mask
from segxal.errors import InvalidInput, NotFound, NotReady, PermissionDenied
from segxal.export import ExportConfig, export_depth, export_segmentation
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from segxalpb.eem.v1 import eem_pb2, eem_pb2_grpc
from services.common.channel import make_channel
from services.common.model_repository import ModelRepository, build_config
from services.common.server import ServerConfig
from segxal.storage import FrameStorage
from services.eem.api import FrameRequest, ScoreOptions
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig, ScoringPipeline
from services.eem.server import EemServer, EemServiceConfig
from services.inference.client import InferenceClient
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer

H, W = 64, 128
FP16_TOL = 2e-3  # a few float16 steps (4.9e-4 just below 1) of the wire's EBU / CAM
REPO_ROOT = Path(__file__).resolve().parents[1]


def _tiny_models() -> tuple[UNet, DepthNet]:
    torch.manual_seed(0)
    seg = UNet(UNetConfig(width=4, depth=2)).eval()
    torch.manual_seed(1)
    depth = DepthNet(DepthConfig(width=4, depth=2)).eval()
    return seg, depth


def _smooth_frame(rng: np.random.Generator) -> np.ndarray:
    """A frame with structure (blobs of colour), so the EEM has regions worth finding."""
    small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))  # [H, W, 3]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random-weight models, exported to ONNX and published in a model repository."""
    root = tmp_path_factory.mktemp("models")
    seg, depth = _tiny_models()
    cfg = ExportConfig(trace_hw=(H, W))
    seg_export = export_segmentation(seg, root / "export" / "seg" / "model.onnx", cfg)
    depth_export = export_depth(depth, root / "export" / "depth" / "model.onnx", cfg)
    repo = ModelRepository(root / "repo")
    repo.publish("segmentation", seg_export.path, build_config("segmentation", seg_export.spec))
    repo.publish("depth", depth_export.path, build_config("depth", depth_export.spec))
    return {"seg": seg, "depth": depth, "seg_onnx": seg_export.path, "depth_onnx": depth_export.path,
            "repo": repo}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """50 PNG frames under a storage root, one corrupt in the middle, and a secret outside it."""
    base = tmp_path_factory.mktemp("storage")
    root = base / "frames"
    root.mkdir()
    rng = np.random.default_rng(7)
    paths = []
    for i in range(50):
        p = root / f"city_000000_{i:06d}_leftImg8bit.png"
        if i == 25:
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        else:
            imageio.write_png(p, _smooth_frame(rng))
        paths.append(p)
    imageio.write_png(base / "secret.png", _smooth_frame(rng))
    imageio.write_png(root / "odd_size.png", rng.integers(0, 256, (60, 128, 3), dtype=np.uint8))
    return {"root": root, "paths": paths, "corrupt": paths[25], "secret": base / "secret.png"}


@pytest.fixture(scope="module")
def inference(models):
    cfg = InferenceServerConfig(
        repository=str(models["repo"].root),
        server=ServerConfig(address="127.0.0.1:0", max_workers=32, grace_s=2.0),
        runtime=RuntimeConfig(intra_op_threads=1),  # 2 shared cores: keep the test light
        poll_interval_s=0.0)
    server = InferenceServer(cfg)
    server.start()
    yield server
    server.stop(2.0)


def _eem_config(seg_target: str, depth_target: str, roots: list[str], **pipeline) -> EemServiceConfig:
    return EemServiceConfig(seg_target=seg_target, depth_target=depth_target, storage_roots=roots,
                            server=ServerConfig(address="127.0.0.1:0", grace_s=2.0), health_poll_s=0.1,
                            pipeline=PipelineConfig(**{"max_concurrency": 2, **pipeline}))


@pytest.fixture(scope="module")
def eem(inference, frames):
    server = EemServer(_eem_config(inference.target, inference.target, [str(frames["root"])]))
    server.start()
    with EemClient(server.target, timeout_s=30) as client:
        client.wait_until_serving(30)
        yield client
    server.stop(2.0)


# -- the in-process reference -------------------------------------------------------------------

def _onnx_outputs(models, image: np.ndarray):
    seg = ort.InferenceSession(str(models["seg_onnx"]), providers=["CPUExecutionProvider"])
    depth = ort.InferenceSession(str(models["depth_onnx"]), providers=["CPUExecutionProvider"])
    labels, ebu, cam, _ = seg.run(["labels", "ebu", "cam", "pmax"], {"image": image[None]})
    (inv,) = depth.run(["inverse_depth"], {"image": image[None]})
    return labels[0], ebu[0], cam[0], inv[0]


@torch.no_grad()
def _torch_outputs(models, image: np.ndarray):
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0  # [1, 3, H, W]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    labels, ebu, cam, _ = ExplainedSegmenter(models["seg"])(x)
    inv = models["depth"](x)
    return labels[0].numpy(), ebu[0].numpy(), cam[0].numpy(), inv[0].numpy()


# -- equality with the in-process EEM -----------------------------------------------------------

@pytest.mark.parametrize("eem_opts", [
    EEMOptions(),
    EEMOptions(alpha=0.3, beta=0.7, score_mode="topq", q=0.1, threshold_mode="fixed", threshold=0.4,
               min_region_area=4),
], ids=["defaults", "topq-fixed"])
def test_score_and_regions_equal_in_process(eem, models, frames, eem_opts):
    path = frames["paths"][3]
    image = imageio.read_rgb(path)
    result = eem.score(str(path), ScoreOptions(eem=eem_opts, regions=True, labels=True, maps=("eem",),
                                               map_bits=16), frame_id="f3")
    assert result.ok and result.frame_id == "f3" and result.uri == str(path)
    assert (result.height, result.width) == (H, W)
    assert result.model_versions.segmentation == "segmentation:1"
    assert result.model_versions.depth == "depth:1"

    # same graphs in process (ONNX Runtime): same numbers, same regions
    ref = score_frame(*_onnx_outputs(models, image), eem_opts)
    assert result.score == pytest.approx(ref.score, abs=1e-5)
    np.testing.assert_array_equal(result.labels(), ref.labels)
    assert len(result.regions) == len(ref.regions) > 0
    for got, want in zip(result.regions, ref.regions):
        assert (got.bbox, got.area, got.class_id, got.class_name) == (want.bbox, want.area, want.class_id,
                                                                      want.class_name)
        assert got.polygon == want.polygon and got.rle == want.rle
        assert got.mean_eem == pytest.approx(want.mean_eem, abs=1e-5)
    np.testing.assert_allclose(result.map("eem"), ref.eem, atol=1.0 / 65535 + 1e-6)

    # same weights in PyTorch (float32 maps): within float16 tolerance
    ref_torch = score_frame(*_torch_outputs(models, image), eem_opts)
    assert result.score == pytest.approx(ref_torch.score, abs=FP16_TOL)
    assert np.mean(result.labels() == ref_torch.labels) > 0.999
    assert np.abs(result.map("eem") - ref_torch.eem).max() < 4 * FP16_TOL  # edge pixels of a threshold move most


def test_regions_rle_decodes_with_pycocotools(eem, frames):
    result = eem.score(str(frames["paths"][4]), ScoreOptions(regions=True))
    assert result.regions
    for r in result.regions:
        h, w = r.rle["size"]
        coco = coco_mask.frPyObjects({"size": [h, w], "counts": r.rle["counts"]}, h, w)
        mask = coco_mask.decode(coco)  # [H, W] uint8, pycocotools' own decoder
        np.testing.assert_array_equal(mask, rle_to_mask(r.rle))
        assert int(mask.sum()) == r.area
        x, y, bw, bh = r.bbox
        assert mask[y:y + bh, x:x + bw].sum() == r.area


@pytest.mark.parametrize("bits", [8, 16])
def test_maps_are_pngs_of_the_frame_size(eem, frames, bits):
    result = eem.score(str(frames["paths"][5]), ScoreOptions(maps=("ebu", "cam", "proximity", "eem"),
                                                             map_bits=bits, labels=True))
    assert set(result.maps_png) == {"ebu", "cam", "proximity", "eem"}
    for kind, png in result.maps_png.items():
        assert png.startswith(b"\x89PNG")
        raw = imageio.decode_image(png, mode=None)
        assert raw.shape == (H, W)
        assert raw.dtype == (np.uint8 if bits == 8 else np.uint16)
        m = result.map(kind)
        assert 0.0 <= m.min() and m.max() <= 1.0
    labels = result.labels()
    assert labels.shape == (H, W) and labels.dtype == np.uint8
    # sky from the predicted labels gets proximity 0
    sky = labels == 10
    if sky.any():
        assert result.map("proximity")[sky].max() == 0.0


def test_no_maps_by_default(eem, frames):
    result = eem.score(str(frames["paths"][6]))
    assert result.maps_png == {} and result.labels_png == b"" and result.regions == []
    with pytest.raises(InvalidInput, match="not returned"):
        result.map("eem")


# -- streams ------------------------------------------------------------------------------------

def test_stream_of_50_with_a_corrupt_frame_fails_alone(eem, frames):
    paths = frames["paths"]
    refs = [(f"id{i}", str(p)) for i, p in enumerate(paths)]
    results = list(eem.score_stream(refs, ScoreOptions(regions=True)))
    assert len(results) == 50
    by_id = {r.frame_id: r for r in results}
    assert set(by_id) == {fid for fid, _ in refs}
    bad = by_id["id25"]
    assert isinstance(bad.error, InvalidInput)
    assert str(frames["corrupt"]) in str(bad.error) and "not a readable image" in str(bad.error)
    for fid, uri in refs:
        if fid != "id25":
            r = by_id[fid]
            assert r.ok and r.uri == uri and (r.height, r.width) == (H, W) and 0.0 <= r.score <= 1.0
    # streamed equals one at a time
    single = eem.score(str(paths[10]), ScoreOptions(regions=True))
    assert by_id["id10"].score == pytest.approx(single.score, abs=1e-9)
    assert [r.bbox for r in by_id["id10"].regions] == [r.bbox for r in single.regions]


def test_stream_per_frame_errors_of_every_kind(eem, frames):
    root = frames["root"]
    items = [("ok", str(frames["paths"][0])),
             ("missing", str(root / "nope.png")),
             ("outside", str(frames["secret"])),
             ("dotdot", str(root / ".." / "secret.png")),
             ("odd", str(root / "odd_size.png")),
             ("ok2", str(frames["paths"][1]))]
    results = {r.frame_id: r for r in eem.score_stream(items)}
    assert results["ok"].ok and results["ok2"].ok
    assert isinstance(results["missing"].error, NotFound)
    assert isinstance(results["outside"].error, PermissionDenied)
    assert isinstance(results["dotdot"].error, PermissionDenied)
    assert isinstance(results["odd"].error, InvalidInput)
    assert "odd_size.png" in str(results["odd"].error) and "multiple" in str(results["odd"].error)


def test_stream_bad_options_fail_each_frame_not_the_stream(eem, frames):
    stub = eem_pb2_grpc.EemScoringStub(make_channel(eem.target))
    good = eem_pb2.ScoreOptions()
    reqs = [eem_pb2.ScoreRequest(frame_id="a", uri=str(frames["paths"][0]), options=good),
            eem_pb2.ScoreRequest(frame_id="b", uri=str(frames["paths"][1]),
                                 options=eem_pb2.ScoreOptions(eem=eem_pb2.EemOptions(alpha=0.7, beta=0.7))),
            eem_pb2.ScoreRequest(frame_id="c", uri=str(frames["paths"][2]),
                                 options=eem_pb2.ScoreOptions(eem=eem_pb2.EemOptions(
                                     threshold_mode=eem_pb2.THRESHOLD_MODE_FIXED, threshold=-0.1))),
            eem_pb2.ScoreRequest(frame_id="d", uri=str(frames["paths"][3]),
                                 options=eem_pb2.ScoreOptions(eem=eem_pb2.EemOptions(score_mode=42))),
            eem_pb2.ScoreRequest(frame_id="e", uri=str(frames["paths"][4]), options=good)]
    out = {r.frame_id: r for r in stub.ScoreStream(iter(reqs), timeout=30)}
    assert not out["a"].HasField("error") and not out["e"].HasField("error")
    for fid in "bcd":
        assert out[fid].error.code == "INVALID_ARGUMENT"
        assert reqs["abcde".index(fid)].uri in out[fid].error.message


def test_stream_stops_when_the_caller_stops(eem, frames):
    uris = [str(p) for i, p in enumerate(frames["paths"]) if i != 25]
    before = eem.stats()
    stream = eem.score_stream(uris)
    assert next(stream).ok
    stream.close()  # cancels the call
    time.sleep(1.0)
    after = eem.stats()
    assert after.in_flight == 0
    # only what was read ahead (window + in flight) was scored, not the 49 frames
    assert after.frames_scored - before.frames_scored < 20
    assert eem.score(uris[0]).ok  # the server is fine afterwards


def test_stream_reads_a_bounded_window_ahead(inference, frames):
    """Memory stays flat on long streams: requests are pulled only as results go out."""
    storage = FrameStorage([str(frames["root"])])
    with InferenceClient(inference.target, timeout_s=30) as backend:
        pipeline = ScoringPipeline(storage, backend, backend, PipelineConfig(max_concurrency=2, stream_window=3))
        pulled = []

        def requests():
            for i in range(40):
                pulled.append(i)
                yield FrameRequest(uri=str(frames["paths"][i if i != 25 else 0]), frame_id=str(i))

        try:
            seen = []
            for result in pipeline.score_many(requests()):
                # results out so far + the window (+ the one request the feeder holds while it waits)
                assert len(pulled) <= len(seen) + 1 + 3 + 1
                seen.append(result.frame_id)
            assert sorted(seen, key=int) == [str(i) for i in range(40)]
        finally:
            pipeline.close()


# -- single-call errors -------------------------------------------------------------------------

def test_single_call_bad_input_is_invalid_argument_naming_the_frame(eem, frames):
    stub = eem_pb2_grpc.EemScoringStub(make_channel(eem.target))
    corrupt = str(frames["corrupt"])
    cases = [
        (eem_pb2.ScoreRequest(uri=corrupt), grpc.StatusCode.INVALID_ARGUMENT, corrupt),
        (eem_pb2.ScoreRequest(uri=str(frames["root"] / "odd_size.png")), grpc.StatusCode.INVALID_ARGUMENT,
         "odd_size.png"),
        (eem_pb2.ScoreRequest(uri=str(frames["paths"][0]), options=eem_pb2.ScoreOptions(eem=eem_pb2.EemOptions(alpha=0.6, beta=0.6))),
         grpc.StatusCode.INVALID_ARGUMENT, "alpha"),
        (eem_pb2.ScoreRequest(uri=str(frames["paths"][0]), options=eem_pb2.ScoreOptions(eem=eem_pb2.EemOptions(
            threshold_mode=eem_pb2.THRESHOLD_MODE_FIXED, threshold=-1))), grpc.StatusCode.INVALID_ARGUMENT,
         "threshold"),
        (eem_pb2.ScoreRequest(uri=str(frames["root"] / "nope.png")), grpc.StatusCode.NOT_FOUND, "nope.png"),
        (eem_pb2.ScoreRequest(uri=""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ]
    for request, code, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreFrame(request, timeout=30)
        assert info.value.code() == code, request
        assert needle in info.value.details()
        if request.uri:
            assert request.uri in info.value.details()
    # the client raises our exceptions
    with pytest.raises(InvalidInput, match="alpha"):
        eem.score(str(frames["paths"][0]), ScoreOptions(eem=EEMOptions(alpha=0.2, beta=0.2)))


@pytest.mark.parametrize("how", ["dotdot", "absolute_elsewhere", "symlink_out", "file_uri_elsewhere"])
def test_path_traversal_is_permission_denied(eem, frames, how):
    root, secret = frames["root"], frames["secret"]
    if how == "dotdot":
        uri = str(root / ".." / secret.name)
    elif how == "absolute_elsewhere":
        uri = str(secret)
    elif how == "file_uri_elsewhere":
        uri = secret.as_uri()
    else:
        link = root / "escape.png"
        if not link.is_symlink():
            os.symlink(secret, link)
        uri = str(link)
    with pytest.raises(PermissionDenied, match="outside the storage roots"):
        eem.score(uri)


def test_stats_count_frames(eem, frames):
    before = eem.stats()
    eem.score(str(frames["paths"][7]))
    list(eem.score_stream([str(frames["corrupt"])]))
    after = eem.stats()
    assert after.frames_scored == before.frames_scored + 1
    assert after.frames_failed == before.frames_failed + 1
    assert after.latency_ms_p50 > 0 and after.in_flight == 0


def test_stats_count_frames_with_a_degenerate_cam(eem, models, frames):
    """The CAM health figure: each result says whether its CAM was dead, the stats count them."""
    before = eem.stats()
    paths = frames["paths"][:4]
    results = [eem.score(str(p)) for p in paths]
    expected = [cam_degenerate(_onnx_outputs(models, imageio.read_rgb(p))[2]) for p in paths]
    assert [r.cam_degenerate for r in results] == expected
    assert eem.stats().frames_cam_degenerate - before.frames_cam_degenerate == sum(expected)


# -- down backends ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_down_inference_server_is_unavailable_quickly(inference, frames):
    dead = f"127.0.0.1:{_free_port()}"
    for seg, depth in [(dead, inference.target), (inference.target, dead)]:
        server = EemServer(_eem_config(seg, depth, [str(frames["root"])], inference_timeout_s=5.0))
        server.start()
        try:
            with EemClient(server.target, timeout_s=30) as client:
                time.sleep(0.3)
                assert not client.is_serving()
                t0 = time.monotonic()
                with pytest.raises(NotReady) as info:
                    client.score(str(frames["paths"][0]))
                assert time.monotonic() - t0 < 3.0
                assert getattr(info.value, "code", None) == grpc.StatusCode.UNAVAILABLE
                results = list(client.score_stream([str(frames["paths"][0]), str(frames["paths"][1])]))
                assert all(isinstance(r.error, NotReady) for r in results)
        finally:
            server.stop(1.0)


def test_hung_inference_server_hits_the_deadline(inference, frames):
    """A backend that accepts connections and never answers: UNAVAILABLE at the deadline, no hang."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        target = f"127.0.0.1:{hung.getsockname()[1]}"
        server = EemServer(_eem_config(inference.target, target, [str(frames["root"])], inference_timeout_s=1.0))
        server.start()
        try:
            with EemClient(server.target, timeout_s=30) as client:
                t0 = time.monotonic()
                with pytest.raises(NotReady):
                    client.score(str(frames["paths"][0]))
                assert time.monotonic() - t0 < 5.0
        finally:
            server.stop(1.0)


def test_health_turns_serving_when_backends_come_up(models, frames):
    port = _free_port()
    target = f"127.0.0.1:{port}"
    server = EemServer(_eem_config(target, target, [str(frames["root"])], inference_timeout_s=2.0))
    server.start()
    try:
        with EemClient(server.target, timeout_s=10) as client:
            time.sleep(0.3)
            assert not client.is_serving()
            cfg = InferenceServerConfig(repository=str(models["repo"].root),
                                        server=ServerConfig(address=target, max_workers=8, grace_s=1.0),
                                        runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0)
            backend = InferenceServer(cfg)
            backend.start()
            try:
                client.wait_until_serving(20)
                assert client.score(str(frames["paths"][0])).ok
            finally:
                backend.stop(1.0)
            deadline = time.monotonic() + 10
            while client.is_serving() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not client.is_serving()
    finally:
        server.stop(1.0)


def test_stop_drains_a_stream_in_flight(inference, frames):
    """Graceful shutdown: a stream under way when stop() is called still gets every result."""
    server = EemServer(_eem_config(inference.target, inference.target, [str(frames["root"])]))
    server.start()
    uris = [str(p) for i, p in enumerate(frames["paths"]) if i != 25]
    with EemClient(server.target, timeout_s=30) as client:
        client.wait_until_serving(20)
        stream = client.score_stream(uris)
        results = [next(stream)]
        stopper = threading.Thread(target=server.stop, args=(20.0,))
        stopper.start()
        results += list(stream)
        stopper.join(30)
        assert not stopper.is_alive()
        assert len(results) == len(uris) and all(r.ok for r in results)
        with pytest.raises(NotReady):
            client.score(uris[0], timeout_s=5)


# -- the entry point ----------------------------------------------------------------------------

def test_main_serves_and_stops_on_sigterm(inference, frames):
    port = _free_port()
    env = {**os.environ, "SEGXAL_EEM_DEPTH_TARGET": inference.target}  # flags and env together
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.eem.main", "--seg-target", inference.target,
         "--storage-root", str(frames["root"]), "--host", "127.0.0.1", "--port", str(port),
         "--grace-s", "2"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert f"listening on port {port}" in line, line
        with EemClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            client.wait_until_serving(20)
            assert client.score(str(frames["paths"][0])).ok
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_main_refuses_missing_settings(capsys):
    from services.eem.main import main

    assert main(["--storage-root", "/tmp"]) == 2
    assert "--seg-target" in capsys.readouterr().err

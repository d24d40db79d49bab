"""What an outside probe of the services found, one test per defect, each named for the behaviour
it guarantees. Real servers on 127.0.0.1 ephemeral ports, tritonclient's protocol messages for
inference, the project's own protos and clients for the EEM service and the coordinator."""
from __future__ import annotations

import concurrent.futures
import io
import json
import dataclasses
import math
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.annotation import TRAIN_IDS, EncodedMask
from segxal.errors import FailedPrecondition, InvalidInput, PermissionDenied, ResourceExhausted
from segxalpb.eem.v1 import eem_pb2, eem_pb2_grpc
from services.common.auth import token_digest
from services.common.channel import ChannelConfig, make_channel
from services.common.server import ServerConfig
from services.coordinator.client import CoordinatorClient
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.inference.admission import PixelAdmission
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer
from tests.coordinator_support import coordinator_config, labels_for, lapse_lease, pool_with_tasks, running_coordinator
from tests.inference_support import H, W, export_models, images, make_repository, running_server

TOKENS = {"labeler-1": "token-of-labeler-1", "labeler-2": "token-of-labeler-2"}


# ---------------------------------------------------------------- shared servers

@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return export_models(tmp_path_factory.mktemp("exports"), seeds=(0, 1))


@pytest.fixture(scope="module")
def inference(exports, tmp_path_factory):
    repo = make_repository(tmp_path_factory.mktemp("repo") / "repo", exports)
    with running_server(repo) as server:
        yield server


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    imageio.write_png(root / "good.png", images(1, seed=3)[0])
    return root


def _eem_server(seg: str, depth: str, root: Path, **pipeline) -> EemServer:
    cfg = EemServiceConfig(seg_target=seg, depth_target=depth, storage_roots=[str(root)],
                           server=ServerConfig(address="127.0.0.1:0", grace_s=1.0), health_poll_s=0.1,
                           pipeline=PipelineConfig(**{"max_concurrency": 2, **pipeline}))
    server = EemServer(cfg)
    server.start()
    return server


@pytest.fixture(scope="module")
def eem(inference, frames):
    server = _eem_server(inference.target, inference.target, frames)
    with EemClient(server.target, timeout_s=30) as client:
        client.wait_until_serving(30)
        yield client
    server.stop(1.0)


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height RGB pixels (a decompression bomb: a few kB
    that would decode to gigabytes); only a few rows of data follow."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- 1. FIFO in a storage root

def test_fifo_in_storage_root_does_not_stall_the_eem_service(inference, tmp_path):
    """Four FIFOs (more than the pipeline's workers) then a good frame: each FIFO is refused at
    once as not a regular file, and the good frame is still scored (before: every worker blocked
    in open() forever and the good frame timed out)."""
    root = tmp_path / "root"
    root.mkdir()
    imageio.write_png(root / "good.png", images(1, seed=3)[0])
    fifos = [root / f"fifo{i}.png" for i in range(4)]
    for f in fifos:
        os.mkfifo(f)
    server = _eem_server(inference.target, inference.target, root)
    try:
        with EemClient(server.target, timeout_s=10) as client:
            client.wait_until_serving(30)
            t0 = time.monotonic()
            for f in fifos:
                with pytest.raises(InvalidInput, match=rf"{f.name}: not a regular file \(a FIFO\)"):
                    client.score(str(f))
            assert client.score(str(root / "good.png")).height == H
            assert time.monotonic() - t0 < 8.0
    finally:
        for f in fifos:  # had a reader blocked in open(): a writer that opens and closes frees it
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader waiting: nothing to free
        server.stop(1.0)


# ---------------------------------------------------------------- 2. decompression bombs

def test_decompression_bomb_frame_is_resource_exhausted_naming_the_frame_and_the_limit(eem, frames):
    bomb = frames / "bomb.png"
    bomb.write_bytes(_png_claiming(16384, 16384))
    assert bomb.stat().st_size < 300_000
    with pytest.raises(ResourceExhausted, match=rf"bomb\.png.*decode limit of {imageio.MAX_DECODE_PIXELS} pixels"):
        eem.score(str(bomb))
    # under Pillow's own guard (89 Mpx) but over ours: refused from the header, not decoded
    big = frames / "big.png"
    big.write_bytes(_png_claiming(9000, 9000))
    with pytest.raises(ResourceExhausted, match=r"big\.png: image of 9000 x 9000 = 81000000 pixels"):
        eem.score(str(big))


def test_decompression_bomb_mask_is_resource_exhausted_naming_the_mask(tmp_path):
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage")
    with running_coordinator(cfg) as (_server, client):
        pool, _ = pool_with_tasks(client, tmp_path / "frames", 1)
        (task,) = client.lease(pool.pool_id, lease_seconds=60)
        with pytest.raises(ResourceExhausted, match=rf"annotation mask.*decode limit of {imageio.MAX_DECODE_PIXELS}"):
            client.submit(task, EncodedMask(TRAIN_IDS, png=_png_claiming(16384, 16384)))
        assert client.submit(task, labels_for(task)).annotation.task_id == task.task_id  # still leased


# ---------------------------------------------------------------- 3. lease ownership

def _auth_coordinator(tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({who: token_digest(tok) for who, tok in TOKENS.items()}))
    return coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage", auth_tokens_file=str(tokens))


def _client(target: str, who: str) -> CoordinatorClient:
    return CoordinatorClient(target, ChannelConfig(bearer_token=TOKENS[who]), client_id=who, timeout_s=30)


def test_heartbeat_and_release_with_another_clients_token_are_permission_denied(tmp_path):
    with running_coordinator(_auth_coordinator(tmp_path)) as (server, _anon):
        with _client(server.target, "labeler-1") as one, _client(server.target, "labeler-2") as two:
            pool, _ = pool_with_tasks(one, tmp_path / "frames", 1)
            (task,) = one.lease(pool.pool_id, lease_seconds=60)
            with pytest.raises(PermissionDenied, match="leased to client 'labeler-1', not to 'labeler-2'"):
                two.heartbeat(task, lease_seconds=600)  # labeler-1's task and token, labeler-2's identity
            with pytest.raises(PermissionDenied, match="leased to client 'labeler-1', not to 'labeler-2'"):
                two.release(task)
            assert two.lease(pool.pool_id) == []  # still labeler-1's: nothing was released
            assert one.heartbeat(task, lease_seconds=30) > 0
            one.release(task)


def test_replay_with_a_junk_token_onto_a_finished_task_returns_no_record(tmp_path):
    with running_coordinator(_auth_coordinator(tmp_path)) as (server, _anon):
        with _client(server.target, "labeler-1") as one, _client(server.target, "labeler-2") as two:
            pool, _ = pool_with_tasks(one, tmp_path / "frames", 1)
            (task,) = one.lease(pool.pool_id, lease_seconds=60)
            first = one.submit(task, labels_for(task, 1))
            junk = type(task)()
            junk.CopyFrom(task)
            junk.lease_token = "0" * 32
            for who in (two, one):  # neither another client nor the holder with a wrong token
                with pytest.raises(FailedPrecondition, match="already annotated, under another lease") as e:
                    who.submit(junk, labels_for(task, 1))
                assert first.annotation.annotation_id not in str(e.value)
            with pytest.raises(PermissionDenied, match="leased to client 'labeler-1', not to 'labeler-2'"):
                two.submit(task, labels_for(task, 1))  # the right token, in the wrong hands
            again = one.submit(task, labels_for(task, 1))  # the holder's own repeat is still a replay
            assert again.replayed and again.annotation.annotation_id == first.annotation.annotation_id


def test_wrong_token_message_says_taken_over_only_when_it_was(tmp_path):
    url = f"sqlite://{tmp_path / 'c.db'}"
    with running_coordinator(coordinator_config(url, tmp_path / "storage")) as (server, client):
        with CoordinatorClient(server.target, client_id="other", timeout_s=30) as other:
            pool, _ = pool_with_tasks(client, tmp_path / "frames", 1)
            (stale,) = client.lease(pool.pool_id, lease_seconds=30)
            lapse_lease(url, stale.task_id)
            (fresh,) = other.lease(pool.pool_id, lease_seconds=60)
            with pytest.raises(FailedPrecondition, match="taken over by client 'other'.*after yours ended"):
                client.heartbeat(stale)  # true: it was this client's lease, and it expired
            junk = type(fresh)()
            junk.CopyFrom(fresh)
            junk.lease_token = "f" * 32
            for call in (lambda: client.heartbeat(junk), lambda: client.release(junk),
                         lambda: client.submit(junk, labels_for(fresh))):
                with pytest.raises(FailedPrecondition, match="does not hold the lease") as e:
                    call()  # never this task's lease: no story of a takeover
                assert "taken over" not in str(e.value) and "'other'" not in str(e.value)


# ---------------------------------------------------------------- 4. typed contents

def _infer_stub(target: str):
    channel = grpc.insecure_channel(target)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _image_input_name(target: str) -> str:
    meta = tritongrpc.InferenceServerClient(target).get_model_metadata("segmentation")
    return meta.inputs[0].name


def test_typed_contents_out_of_range_are_invalid_argument_naming_the_tensor(inference):
    name = _image_input_name(inference.target)
    channel, stub = _infer_stub(inference.target)
    with channel:
        request = service_pb2.ModelInferRequest(model_name="segmentation")
        tensor = request.inputs.add(name=name, datatype="UINT8", shape=[1, H, W, 3])
        values = [7] * (H * W * 3)
        values[5] = 300  # not a UINT8
        tensor.contents.uint_contents.extend(values)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"input {name!r}: value 300 in contents.uint_contents is out of range for UINT8" in e.value.details()
        tensor.contents.uint_contents[5] = 255  # in range: served
        assert stub.ModelInfer(request, timeout=30).outputs


def test_raw_and_typed_contents_together_are_invalid_argument(inference):
    name = _image_input_name(inference.target)
    channel, stub = _infer_stub(inference.target)
    with channel:
        request = service_pb2.ModelInferRequest(model_name="segmentation")
        tensor = request.inputs.add(name=name, datatype="UINT8", shape=[1, H, W, 3])
        tensor.contents.uint_contents.extend([1] * (H * W * 3))
        request.raw_input_contents.append(images(1).tobytes())
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"input {name!r}: both raw_input_contents and typed contents" in e.value.details()


def test_unsupported_datatype_message_names_the_tensor(inference):
    name = _image_input_name(inference.target)
    channel, stub = _infer_stub(inference.target)
    with channel:
        request = service_pb2.ModelInferRequest(model_name="segmentation")
        request.inputs.add(name=name, datatype="BF16", shape=[1, H, W, 3])
        request.raw_input_contents.append(b"\x00" * (H * W * 3 * 2))
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(f"input {name!r}: unsupported datatype 'BF16'")


# ---------------------------------------------------------------- 5. memory bounded by work

def test_request_over_the_pixel_limit_is_resource_exhausted_naming_the_limit(exports, tmp_path):
    """Bytes would admit it (well under max_tensor_bytes); pixels do not."""
    repo = make_repository(tmp_path / "repo", exports)
    limit = H * W * 2  # two 64 x 128 frames
    cfg = InferenceServerConfig(repository=str(repo.root),
                                server=ServerConfig(address="127.0.0.1:0", max_workers=8, grace_s=1.0),
                                runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0,
                                memory_budget_bytes=limit * 1000, bytes_per_pixel=1000)
    server = InferenceServer(cfg)
    server.start()
    try:
        client = tritongrpc.InferenceServerClient(server.target)
        name = client.get_model_metadata("segmentation").inputs[0].name

        def infer(batch: np.ndarray):
            x = tritongrpc.InferInput(name, list(batch.shape), "UINT8")
            x.set_data_from_numpy(batch)
            return client.infer("segmentation", [x])

        assert infer(images(2)).as_numpy("labels").shape[0] == 2  # at the limit: served
        with pytest.raises(tritongrpc.InferenceServerException) as e:
            infer(images(1, h=2 * H, w=2 * W))  # 4 frames' pixels in one uint8 image of 96 kB
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert f"32768 pixels, over the limit of {limit} pixels per request" in e.value.message()
        assert "1000 bytes per pixel" in e.value.message()
    finally:
        server.stop(1.0)


def test_pixel_admission_holds_requests_until_the_pixels_in_flight_fit():
    admission = PixelAdmission(max_request_pixels=100, max_inflight_pixels=150)
    entered, leave = threading.Event(), threading.Event()

    def second_request():
        with admission.admit("m", 100, None):
            entered.set()
            leave.wait(10)

    with admission.admit("m", 100, None):
        waiter = threading.Thread(target=second_request)
        waiter.start()
        assert not entered.wait(0.3)  # 200 pixels would not fit: it waits
        assert admission.inflight_pixels == 100
    assert entered.wait(10) and admission.inflight_pixels == 100  # admitted once the first left
    with pytest.raises(Exception, match="deadline passed waiting for memory"):
        with admission.admit("m", 100, time.monotonic() + 0.1):
            pass
    leave.set()
    waiter.join(10)
    assert admission.inflight_pixels == 0


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_rss_does_not_grow_across_hot_reloads_under_load(tmp_path):
    """The real ModelManager (in this process, to read its RSS) reloads a U-Net four times, each
    time after four threads of 256 x 512 requests. Before: glibc kept what each retired session
    freed (RSS after a reload ratcheted ~60 MB up per reload here: 983, 1045, 1108, 1111 MB); now
    the poll after a retirement hands it back to the OS."""
    torch = pytest.importorskip("torch")
    from segxal.export import ExportConfig, export_segmentation
    from segxal.models.unet import UNet, UNetConfig
    from services.common.model_repository import ModelRepository, build_config
    from services.inference.api import InferRequest
    from services.inference.model_manager import ModelManager

    torch.manual_seed(0)
    export = export_segmentation(UNet(UNetConfig(width=16, depth=4)).eval(), tmp_path / "ex" / "model.onnx",
                                 ExportConfig(trace_hw=(128, 256), parity_batch=1))
    repo = ModelRepository(tmp_path / "repo")
    config = build_config("segmentation", export.spec)
    repo.publish("segmentation", export.path, config)
    manager = ModelManager(repo, InferenceServerConfig(repository=str(repo.root), poll_interval_s=0,
                                                       runtime=RuntimeConfig(intra_op_threads=1)))
    manager.start()
    try:
        name = manager.describe("segmentation").inputs[0].name
        x = images(1, h=256, w=512)

        def requests():
            for _ in range(3):
                manager.infer(InferRequest(model="segmentation", version=None, inputs={name: x}, outputs=None,
                                           deadline=None, request_id=""))

        returned, after = [], []
        for _ in range(4):
            load = [threading.Thread(target=requests) for _ in range(4)]
            for t in load:
                t.start()
            for t in load:
                t.join()
            repo.publish("segmentation", export.path, config)  # a new version: the old one retires
            manager.poll()
            for t in list(manager._retiring):
                t.join(30)
            retired = _rss_mb()
            manager.poll()  # the poll after a retirement hands the freed memory back
            after.append(_rss_mb())
            returned.append(retired - after[-1])
    finally:
        manager.stop(10)
    assert min(returned) > 30, f"MB returned by the poll after each reload: {returned}"
    assert after[-1] < after[0] * 1.10, f"RSS after each reload (MB): {after}"


# ---------------------------------------------------------------- 6. deadlines

def _stats(target: str):
    with make_channel(target) as ch:
        return eem_pb2_grpc.EemScoringStub(ch).GetStats(eem_pb2.GetStatsRequest(), timeout=10)


def test_eem_stops_work_for_callers_that_gave_up(inference, frames):
    """100 callers with a 100 ms deadline against a backend that never answers: every frame
    stops at the caller's deadline (before: each held a worker for the 30 s backend timeout)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(128)
        server = _eem_server(inference.target, f"127.0.0.1:{hung.getsockname()[1]}", frames,
                             inference_timeout_s=30.0)
        try:
            with make_channel(server.target) as ch:
                stub = eem_pb2_grpc.EemScoringStub(ch)
                request = eem_pb2.ScoreRequest(uri=str(frames / "good.png"))
                calls = [stub.ScoreFrame.future(request, timeout=0.1) for _ in range(100)]
                codes = [c.exception().code() if c.exception() else grpc.StatusCode.OK for c in calls]
            assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
            deadline = time.monotonic() + 5.0
            while (stats := _stats(server.target)).in_flight and time.monotonic() < deadline:
                time.sleep(0.1)
            assert stats.in_flight == 0 and stats.frames_scored == 0
        finally:
            server.stop(1.0)


def test_eem_scores_no_frame_for_a_caller_that_gave_up(inference, frames):
    """With a working backend, frames whose callers left while they queued are not scored: only
    those that answered in time, plus at most the ones already past their last check."""
    server = _eem_server(inference.target, inference.target, frames, max_concurrency=1)
    try:
        with make_channel(server.target) as ch:
            EemClient(server.target).wait_until_serving(30)
            stub = eem_pb2_grpc.EemScoringStub(ch)
            request = eem_pb2.ScoreRequest(uri=str(frames / "good.png"))
            calls = [stub.ScoreFrame.future(request, timeout=0.1) for _ in range(60)]
            ok = sum(c.exception() is None for c in calls)
        deadline = time.monotonic() + 30.0
        while (stats := _stats(server.target)).in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        # (calls already past their deadline when they arrive never reach the servicer)
        assert stats.in_flight == 0 and stats.frames_scored + stats.frames_failed <= 60
        assert stats.frames_scored <= ok + 2, (ok, stats)
    finally:
        server.stop(1.0)


# ---------------------------------------------------------------- 7. smaller ones

def test_16bit_png_frame_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(4, 16) * 1040).astype(np.uint16)  # 0..65520
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    rgb = imageio.decode_image(buf.getvalue(), where="frame16.png", mode="RGB")
    expect = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 16, 3)
    np.testing.assert_array_equal(rgb[..., 0], expect)
    np.testing.assert_array_equal(rgb[..., 1], expect)
    assert len(np.unique(rgb)) > 32  # before: everything above 255 clipped to 255
    np.testing.assert_array_equal(imageio.decode_image(buf.getvalue(), mode=None), ramp)  # stored values kept


def test_repository_index_shows_a_newer_version_that_failed_to_load(exports, tmp_path):
    repo = make_repository(tmp_path / "repo", exports)
    with running_server(repo) as server:
        client = tritongrpc.InferenceServerClient(server.target)
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"not an onnx graph")
        config = repo.read_config("segmentation")
        repo.publish("segmentation", broken, config)  # version 2
        with pytest.raises(tritongrpc.InferenceServerException):
            client.load_model("segmentation")  # explicit load: fails, version 1 keeps serving
        rows = {(m.name, m.version): m for m in client.get_model_repository_index().models}
        assert rows[("segmentation", "1")].state == "READY"
        assert rows[("segmentation", "2")].state == "UNAVAILABLE"
        assert "failed to load" in rows[("segmentation", "2")].reason
        assert "cannot load ONNX graph" in rows[("segmentation", "2")].reason
        channel, stub = _infer_stub(server.target)
        with channel:
            ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10).models
        assert [m.version for m in ready if m.name == "segmentation"] == ["1"]


def test_lease_of_a_nanosecond_is_refused_with_the_minimum(tmp_path):
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage")
    with running_coordinator(cfg) as (_server, client):
        pool, _ = pool_with_tasks(client, tmp_path / "frames", 1)
        with pytest.raises(InvalidInput, match=r"lease_seconds 1e-09 is below the minimum of 0.25 s"):
            client.lease(pool.pool_id, lease_seconds=1e-9)
        (task,) = client.lease(pool.pool_id, lease_seconds=60)
        with pytest.raises(InvalidInput, match="below the minimum"):
            client.heartbeat(task, lease_seconds=1e-9)


def _inference_count(target: str) -> int:
    stats = tritongrpc.InferenceServerClient(target).get_inference_statistics("segmentation")
    return sum(m.inference_count for m in stats.model_stats)


@pytest.mark.parametrize("field", ["alpha", "beta", "threshold", "q"])
def test_nan_options_are_refused_before_inference(eem, inference, frames, field):
    bad = {"alpha": math.nan, "beta": 0.5} if field == "alpha" else (
        {"alpha": 0.5, "beta": math.nan} if field == "beta" else {field: math.nan})
    opts = dataclasses.replace(EEMOptions(threshold_mode="fixed", threshold=0.5), **bad)
    before = _inference_count(inference.target)
    with pytest.raises(InvalidInput, match=f"options must be finite numbers, got {{'{'top_q' if field == 'q' else field}'"):
        eem.score(str(frames / "good.png"), ScoreOptions(eem=opts))
    assert _inference_count(inference.target) == before  # refused before the frame reached the model


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("name, message", [
    ("cam\x00front", r"create pool: pool name may not contain control characters; U\+0000 at position 3"),
    ("line\nbreak", r"pool name may not contain control characters; U\+000A at position 4"),
    ("x" * 2**20, r"create pool: pool name has 1048576 characters, over the limit of 200"),
    ("  ", r"create pool: pool name is required"),
])
def test_pool_names_follow_one_rule_on_every_backend(backend, name, message, tmp_path):
    from tests.coordinator_support import database_url
    with database_url(backend, tmp_path) as url, \
            running_coordinator(coordinator_config(url, tmp_path / "storage")) as (_server, client):
        with pytest.raises(InvalidInput, match=message):
            client.create_pool(name)
        if name.strip():
            with pytest.raises(InvalidInput, match=message.replace("create pool", "get pool")):
                client.get_pool(name=name)
        assert client.list_pools() == []  # nothing was stored
        ok = client.create_pool(" " + "é" * 200 + " ")  # the longest name, stripped like before
        assert client.get_pool(name="é" * 200).pool_id == ok.pool_id

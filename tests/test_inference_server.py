"""The inference server through the real protocol: tritonclient (sync and aio), the raw generated
stub for malformed requests, grpc.health.v1. Every bad request is followed by a valid one."""
from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.inference_support import export_models, images, make_repository, running_server
from tests.net_support import free_port
from services.common.model_repository import BatchingConfig


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return export_models(tmp_path_factory.mktemp("exports"))


def _in_process(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x})))


def _infer_input(x):
    inp = tg.InferInput("image", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x)
    return inp


def _raw_request(x, model="depth", version="", name="image", datatype="UINT8", shape=None, raw=None):
    """A ModelInferRequest built by hand, so that it can be malformed on purpose."""
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name=name, datatype=datatype, shape=list(x.shape if shape is None else shape))
    req.raw_input_contents.append(x.tobytes() if raw is None else raw)
    return req


def _health(channel, service):
    stub = health_pb2_grpc.HealthStub(channel)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(
        stub.Check(health_pb2.HealthCheckRequest(service=service)).status)


def test_metadata_config_index_and_health(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    with running_server(repo) as server, tg.InferenceServerClient(server.target) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("segmentation") and client.is_model_ready("depth", "1")
        assert not client.is_model_ready("depth", "2")
        assert client.get_server_metadata().name == "segxal-inference"
        meta = client.get_model_metadata("segmentation")
        assert meta.versions == ["1"] and meta.platform == "onnxruntime_onnx"
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "UINT8", [-1, -1, -1, 3])]
        assert {t.name: t.datatype for t in meta.outputs} == {
            "labels": "UINT8", "ebu": "FP16", "cam": "FP16", "pmax": "FP16", "embedding": "FP32"}
        config = client.get_model_config("segmentation").config
        assert config.max_batch_size == 8 and config.parameters["model_kind"].string_value == "segmentation"
        index = client.get_model_repository_index()
        assert {(m.name, m.version, m.state) for m in index.models} == {
            ("depth", "1", "READY"), ("segmentation", "1", "READY")}
        with grpc.insecure_channel(server.target) as channel:
            for service in ("", "inference.GRPCInferenceService", "segmentation", "depth"):
                assert _health(channel, service) == "SERVING"
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("missing")
        assert e.value.status() == "StatusCode.NOT_FOUND"


def test_inference_equals_in_process_onnx_runtime_sync_and_aio(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    xs = [images(b, seed=b) for b in (1, 2, 3, 1)]
    seg_path = exports["segmentation"][0].path
    expected = [_in_process(seg_path, x) for x in xs]
    with running_server(repo) as server:
        with tg.InferenceServerClient(server.target) as client:
            for x, ref in zip(xs, expected):
                result = client.infer("segmentation", [_infer_input(x)])
                assert result.get_response().model_version == "1"
                for name, want in ref.items():
                    got = result.as_numpy(name)
                    assert got.dtype == want.dtype and got.shape == want.shape
                    np.testing.assert_array_equal(got, want, err_msg=name)
            only = client.infer("segmentation", [_infer_input(xs[0])], outputs=[tg.InferRequestedOutput("cam")])
            assert [o.name for o in only.get_response().outputs] == ["cam"]

        async def concurrent():  # concurrent requests get batched together on the server
            async with tga.InferenceServerClient(server.target) as aclient:
                inputs = []
                for x in xs:
                    inp = tga.InferInput("image", list(x.shape), "UINT8")
                    inp.set_data_from_numpy(x)
                    inputs.append(inp)
                return await asyncio.gather(*(aclient.infer("segmentation", [i]) for i in inputs))
        for result, ref in zip(asyncio.run(concurrent()), expected):
            for name, want in ref.items():
                np.testing.assert_array_equal(result.as_numpy(name), want, err_msg=name)
        with tg.InferenceServerClient(server.target) as client:  # Triton's statistics extension
            [stats] = client.get_inference_statistics("segmentation").model_stats
        assert (stats.name, stats.version, stats.inference_count) == ("segmentation", "1", 15)  # rows
        assert stats.inference_stats.success.count == 9 and stats.execution_count <= 9
        assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == 15


def test_typed_contents_equal_raw_contents(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    x = images(1, seed=5)
    with running_server(repo) as server, grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        typed = pb.ModelInferRequest(model_name="depth")
        tensor = typed.inputs.add(name="image", datatype="UINT8", shape=list(x.shape))
        tensor.contents.uint_contents.extend(x.ravel().tolist())
        a = stub.ModelInfer(typed)
        b = stub.ModelInfer(_raw_request(x))
        assert a.raw_output_contents[0] == b.raw_output_contents[0]
        want = _in_process(exports["depth"][0].path, x)["inverse_depth"]
        np.testing.assert_array_equal(np.frombuffer(a.raw_output_contents[0], np.float32).reshape(want.shape), want)


def test_every_bad_request_is_refused_and_the_server_keeps_serving(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    x = images(1)
    big = images(8)  # 196608 bytes: over the 100 kB limit below
    typed_fp16 = pb.ModelInferRequest(model_name="depth")
    typed_fp16.inputs.add(name="image", datatype="FP16", shape=[1, 64, 128, 3])
    typed_short = pb.ModelInferRequest(model_name="depth")
    typed_short.inputs.add(name="image", datatype="UINT8", shape=[1, 64, 128, 3]).contents.uint_contents.extend([1, 2])
    two_raw = _raw_request(x)
    two_raw.raw_input_contents.append(b"extra")
    unknown_output = _raw_request(x)
    unknown_output.outputs.add(name="depth_map")
    cases = [  # (request, expected status, words the message must contain)
        (_raw_request(x, model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (_raw_request(x, version="7"), grpc.StatusCode.NOT_FOUND, "version 7"),
        (_raw_request(x, version="latest"), grpc.StatusCode.INVALID_ARGUMENT, "model version"),
        (_raw_request(x.astype(np.float32), datatype="FP32"), grpc.StatusCode.INVALID_ARGUMENT, "'image'"),
        (_raw_request(x[..., :2].copy()), grpc.StatusCode.INVALID_ARGUMENT, "'image': shape"),
        (_raw_request(x[0]), grpc.StatusCode.INVALID_ARGUMENT, "'image': shape"),
        (_raw_request(images(1, h=60)), grpc.StatusCode.INVALID_ARGUMENT, "multiples of 8"),
        (_raw_request(x, raw=x.tobytes()[:-1]), grpc.StatusCode.INVALID_ARGUMENT, "'image': 24575 bytes"),
        (_raw_request(x, name="img"), grpc.StatusCode.INVALID_ARGUMENT, "unknown ['img']"),
        (_raw_request(x, datatype="BYTES"), grpc.StatusCode.INVALID_ARGUMENT, "BYTES"),
        (_raw_request(big), grpc.StatusCode.RESOURCE_EXHAUSTED, "'image'"),
        (_raw_request(x, shape=[1, 6400, 12800, 3]), grpc.StatusCode.RESOURCE_EXHAUSTED, "'image'"),
        (_raw_request(images(9, h=8, w=8), shape=[9, 8, 8, 3]), grpc.StatusCode.INVALID_ARGUMENT, "batch size 9"),
        (_raw_request(x, shape=[1, -64, 128, 3]), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
        (typed_fp16, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
        (typed_short, grpc.StatusCode.INVALID_ARGUMENT, "2 values"),
        (two_raw, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
        (unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "depth_map"),
    ]
    with running_server(repo, max_tensor_bytes=100_000) as server, grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request, code, words in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request)
            assert e.value.code() == code, (words, e.value.details())
            assert words in e.value.details(), e.value.details()
            ok = stub.ModelInfer(_raw_request(x))  # the server survived
            assert ok.model_version == "1"


def test_pinned_versions_and_latest(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports, BatchingConfig(num_versions=2), versions=3)
    x = images(1, seed=7)
    with running_server(repo) as server, tg.InferenceServerClient(server.target) as client:
        assert client.get_model_metadata("depth").versions == ["2", "3"]
        for version, export in (("", exports["depth"][2]), ("3", exports["depth"][2]), ("2", exports["depth"][1])):
            result = client.infer("depth", [_infer_input(x)], model_version=version)
            assert result.get_response().model_version == (version or "3")
            np.testing.assert_array_equal(result.as_numpy("inverse_depth"),
                                          _in_process(export.path, x)["inverse_depth"])
        with pytest.raises(InferenceServerException) as e:
            client.infer("depth", [_infer_input(x)], model_version="1")  # on disk, outside the policy
        assert e.value.status() == "StatusCode.NOT_FOUND" and "serving versions [2, 3]" in e.value.message()


def test_corrupt_or_missing_model_file_keeps_the_old_version_serving(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    x = images(1)
    with running_server(repo) as server, tg.InferenceServerClient(server.target) as client:
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(b"\x08\x07not an onnx graph" * 100)
        assert repo.publish("depth", garbage) == 2
        with pytest.raises(InferenceServerException) as e:
            client.load_model("depth")
        assert e.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "version 2" in e.value.message() and "serving versions [1]" in e.value.message()
        assert client.infer("depth", [_infer_input(x)]).get_response().model_version == "1"
        (repo.version_dir("depth", 3) / "notes.txt").parent.mkdir()
        (repo.version_dir("depth", 3) / "notes.txt").write_text("model.onnx forgotten")
        with pytest.raises(InferenceServerException) as e:
            client.load_model("depth")
        assert "model.onnx is missing" in e.value.message()
        assert client.infer("depth", [_infer_input(x)]).get_response().model_version == "1"
        assert client.is_model_ready("depth") and client.is_server_ready()
        with pytest.raises(InferenceServerException) as e:
            client.load_model("not-there")
        assert e.value.status() == "StatusCode.NOT_FOUND"
        # a good version published afterwards loads and serves
        assert repo.publish("depth", exports["depth"][1].path) == 4
        client.load_model("depth")
        assert client.infer("depth", [_infer_input(x)]).get_response().model_version == "4"


def test_unload_then_load_switches_readiness_and_health(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    with running_server(repo, poll_interval_s=0.05) as server, \
            tg.InferenceServerClient(server.target) as client, grpc.insecure_channel(server.target) as channel:
        client.unload_model("depth")
        time.sleep(0.2)  # polls must not bring an explicitly unloaded model back
        assert not client.is_model_ready("depth")
        assert _health(channel, "depth") == "NOT_SERVING" and _health(channel, "segmentation") == "SERVING"
        # as Triton: a model unloaded on purpose does not make the server unready
        assert client.is_server_ready() and _health(channel, "") == "SERVING"
        with pytest.raises(InferenceServerException) as e:
            client.infer("depth", [_infer_input(images(1))])
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["depth"].state == "UNAVAILABLE" and index["depth"].reason == "unloaded"
        client.load_model("depth")
        assert client.is_model_ready("depth") and _health(channel, "depth") == "SERVING"


def test_bounded_queue_and_deadlines(tmp_path, exports):
    # a 1 s batching window holds requests in the queue: deterministic queue-full and deadline cases
    repo = make_repository(tmp_path / "repo", exports,
                           BatchingConfig(max_queue_delay_us=1_000_000, max_queue_size=2))
    x = images(1)
    with running_server(repo) as server, tg.InferenceServerClient(server.target) as client:
        # deadlines first: until a batch has run, the batcher holds a request for a full batch
        # (after one, only for as many rows as that batch had: a lone caller is not held)
        with pytest.raises(InferenceServerException) as e:
            client.infer("depth", [_infer_input(x)], client_timeout=0.2)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        # Triton's per-request "timeout" parameter (microseconds) is honoured the same way
        with pytest.raises(InferenceServerException) as e:
            client.infer("depth", [_infer_input(x)], timeout=200_000)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in e.value.message()
        outcomes = []

        def one():
            try:
                outcomes.append(client.infer("depth", [_infer_input(x)]).get_response().model_version)
            except InferenceServerException as e:
                outcomes.append(e.status())
        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["1", "1"] + ["StatusCode.RESOURCE_EXHAUSTED"] * 3
        assert client.infer("depth", [_infer_input(x)]).get_response().model_version == "1"


def test_graceful_shutdown_completes_in_flight_requests(tmp_path, exports):
    # a 30 s batching window: the requests are surely still queued when stop() begins
    repo = make_repository(tmp_path / "repo", exports, BatchingConfig(max_queue_delay_us=30_000_000))
    x = images(1)
    with running_server(repo) as server:
        target = server.target
        results, errors = [], []

        def one():
            try:
                with tg.InferenceServerClient(target) as c:
                    results.append(c.infer("depth", [_infer_input(x)]).as_numpy("inverse_depth"))
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        waited = time.monotonic()
        while server.models.pending_requests("depth") < 4:  # all four queued in the batching window
            assert time.monotonic() - waited < 20, "requests never reached the queue"
            time.sleep(0.01)
        started = time.monotonic()
        server.stop(grace=5.0)
        stopped_in = time.monotonic() - started
        for t in threads:
            t.join()
        assert not errors and len(results) == 4, [str(e) for e in errors]
        assert stopped_in < 5.0
        with pytest.raises(InferenceServerException):
            with tg.InferenceServerClient(target) as c:
                c.infer("depth", [_infer_input(x)], client_timeout=2)


def test_cuda_request_falls_back_to_cpu_cleanly(tmp_path, exports):
    from services.inference.config import RuntimeConfig
    from services.inference.runtime import OnnxModel
    repo = make_repository(tmp_path / "repo", exports)
    model = OnnxModel(repo.model_file("depth", 1), repo.read_config("depth"), RuntimeConfig(device="cuda"))
    assert model.providers[-1] == "CPUExecutionProvider"  # CUDA first where it loads, CPU always last
    x = images(1)
    out = model.run({"image": x}, ["inverse_depth"])["inverse_depth"]
    np.testing.assert_allclose(out, _in_process(exports["depth"][0].path, x)["inverse_depth"], atol=1e-5)


def test_overlapping_cpu_runs_take_a_one_thread_session_and_agree_with_a_lone_run(tmp_path, exports):
    """On CPU with two parallel runs, a run that starts while another executes uses the one-thread
    copy of the session (a lone run keeps every core); the outputs do not depend on which ran."""
    import threading

    from services.inference.config import RuntimeConfig
    from services.inference.runtime import OnnxModel
    repo = make_repository(tmp_path / "repo", exports)
    model = OnnxModel(repo.model_file("segmentation", 1), repo.read_config("segmentation"),
                      RuntimeConfig(intra_op_threads=2, cpu_parallel_runs=2))
    assert model.parallel_runs == 2
    x = images(1, h=256, w=512)  # big enough that four callers' runs overlap
    lone = model.run({"image": x}, model.output_names)
    assert model.overlapped_runs == 0
    gate, outs = threading.Barrier(4), []

    def caller():
        gate.wait()
        outs.extend(model.run({"image": x}, model.output_names) for _ in range(2))
    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 8 and model.overlapped_runs >= 1
    for out in outs:
        np.testing.assert_array_equal(out["labels"], lone["labels"])
        for name in ("ebu", "cam", "pmax"):
            np.testing.assert_allclose(out[name].astype(np.float32), lone[name].astype(np.float32), atol=2e-3)


def test_a_lone_run_spins_only_until_it_returns_and_the_one_thread_copy_never(tmp_path, exports):
    """What made concurrency 1 faster (bench/infer_overhead.py): the wide session's workers spin
    between the operators of a run instead of sleeping, and stop when it returns; the one-thread
    copy has no workers; --no-ort-spinning turns it off."""
    from services.inference.config import RuntimeConfig
    from services.inference.runtime import OnnxModel
    repo = make_repository(tmp_path / "repo", exports)

    def entries(session):
        opts = session.get_session_options()
        spin = opts.get_session_config_entry("session.intra_op.allow_spinning")
        return spin, opts.get_session_config_entry("session.force_spinning_stop") if spin == "1" else None
    model = OnnxModel(repo.model_file("segmentation", 1), repo.read_config("segmentation"),
                      RuntimeConfig(intra_op_threads=2, cpu_parallel_runs=2))
    assert entries(model.session) == ("1", "1")
    assert entries(model._narrow) == ("0", None)
    off = OnnxModel(repo.model_file("segmentation", 1), repo.read_config("segmentation"),
                    RuntimeConfig(intra_op_threads=2, cpu_parallel_runs=2, spinning=False))
    assert entries(off.session) == ("0", None)


def test_parallel_runs_follow_cores_on_cpu_and_the_config_elsewhere(tmp_path, exports):
    from services.inference.config import RuntimeConfig
    from services.inference.runtime import available_cores, parallel_runs
    config = make_repository(tmp_path / "repo", exports).read_config("segmentation")
    assert parallel_runs(RuntimeConfig(), config) == max(1, available_cores())
    assert parallel_runs(RuntimeConfig(cpu_parallel_runs=1), config) == 1
    config.instance_group[0].count = 3  # the config's count is the floor
    assert parallel_runs(RuntimeConfig(cpu_parallel_runs=1), config) == 3
    assert parallel_runs(RuntimeConfig(device="cuda"), config) == 3


def test_entry_point_from_flags_and_env_stops_gracefully_on_sigterm(tmp_path, exports):
    import os
    import signal
    import subprocess
    import sys

    from services.inference.main import build_config
    cfg = build_config(["--repo", "R", "--port", "9", "--device", "cuda", "--poll-interval", "0.5"])
    assert (cfg.repository, cfg.server.address, cfg.runtime.device, cfg.poll_interval_s) == \
        ("R", "0.0.0.0:9", "cuda", 0.5)
    repo = make_repository(tmp_path / "repo", exports)
    port = free_port()
    env = dict(os.environ, SEGXAL_INFERENCE_HOST="127.0.0.1", SEGXAL_INFERENCE_INTRA_OP_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "services.inference.main", "--repo", str(repo.root),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with tg.InferenceServerClient(f"127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.is_server_ready():
                        break
                except InferenceServerException:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read().decode()[-2000:]
                time.sleep(0.1)
            assert client.infer("depth", [_infer_input(images(1))]).get_response().model_version == "1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_weights_in_external_data_publish_and_serve(tmp_path, exports):
    """The dynamo exporter's layout (model.onnx + model.onnx.data): the repository copies the folder,
    ONNX Runtime finds the data beside the graph."""
    import onnx
    folder = tmp_path / "external"
    folder.mkdir()
    graph = onnx.load(str(exports["depth"][1].path))
    onnx.save_model(graph, str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert (folder / "model.onnx.data").stat().st_size > (folder / "model.onnx").stat().st_size
    repo = make_repository(tmp_path / "repo", exports)
    assert repo.publish("depth", folder) == 2
    x = images(1)
    with running_server(repo) as server, tg.InferenceServerClient(server.target) as client:
        result = client.infer("depth", [_infer_input(x)])
        assert result.get_response().model_version == "2"
        np.testing.assert_array_equal(result.as_numpy("inverse_depth"),
                                      _in_process(exports["depth"][1].path, x)["inverse_depth"])


# ---- memory admission: the default U-Net (width 32, depth 4) in a server process of its own ----

def _rss_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


@pytest.fixture(scope="module")
def unet32_server(tmp_path_factory):
    """`python -m services.inference.main` serving the default U-Net, memory budget 512 MiB, the
    default bytes per pixel and arena settings; yields (process, tritonclient)."""
    import os
    import subprocess
    import sys

    import torch

    from segxal.export import ExportConfig, export_segmentation
    from segxal.models.unet import UNet, UNetConfig
    from services.common.model_repository import ModelRepository, build_config

    root = tmp_path_factory.mktemp("unet32")
    torch.manual_seed(0)
    result = export_segmentation(UNet(UNetConfig(width=32, depth=4)).eval(), root / "export" / "model.onnx",
                                 ExportConfig(trace_hw=(128, 256), parity_batch=1))
    repo = ModelRepository(root / "repo")
    repo.publish("segmentation", result.path, build_config("segmentation", result.spec))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.inference.main", "--repo", str(repo.root),
                             "--host", "127.0.0.1", "--port", str(port), "--intra-op-threads", "1",
                             "--memory-budget-mb", "512"],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with tg.InferenceServerClient(f"127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.is_model_ready("segmentation"):
                        break
                except InferenceServerException:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "inference server did not start"
                time.sleep(0.2)
            for batch in (1, 2, 1):  # typical traffic first: the arena keeps what these runs grew
                client.infer("segmentation", [_infer_input(np.zeros((batch, 256, 512, 3), np.uint8))])
            yield proc, client
    finally:
        proc.terminate()
        proc.wait(30)


def _largest_admitted_frame(client) -> tuple[int, int]:
    """(H, W) of the largest 1:2 frame (sides multiples of 32) under the limit the server states
    when it refuses a request over it."""
    with pytest.raises(InferenceServerException, match="over the limit of") as refused:
        client.infer("segmentation", [_infer_input(np.zeros((1, 2048, 4096, 3), np.uint8))])
    limit = int(str(refused.value).split("over the limit of ")[1].split()[0])
    h = 32
    while (h + 32) * 2 * (h + 32) <= limit:
        h += 32
    return h, 2 * h


def test_the_largest_admitted_request_stays_within_the_memory_budget(unet32_server):
    proc, client = unet32_server
    h, w = _largest_admitted_frame(client)
    x = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    for attempt in ("first at this shape", "again"):  # the second run also allocates ORT's memory pattern
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = _rss_kb(proc.pid, "VmRSS")
        client.infer("segmentation", [_infer_input(x)])
        growth_mb = (_rss_kb(proc.pid, "VmHWM") - before) / 1024
        assert growth_mb <= 512, f"{h}x{w} {attempt}: peak RSS grew {growth_mb:.0f} MB, budget 512 MiB"


def test_an_outsize_request_gives_its_memory_back(unet32_server):
    proc, client = unet32_server
    h, w = _largest_admitted_frame(client)  # over the default arena_keep_pixels (2 x 256 x 512)
    assert h * w > 2 * 256 * 512
    idle = _rss_kb(proc.pid, "VmRSS")
    with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
        f.write("5")
    client.infer("segmentation", [_infer_input(np.zeros((1, h, w, 3), np.uint8))])
    grown = _rss_kb(proc.pid, "VmHWM") - idle
    kept = _rss_kb(proc.pid, "VmRSS") - idle
    assert grown > 100 * 1024  # the request did need memory ...
    # ... and gave it back
    assert kept < 0.2 * grown, f"kept {kept / 1024:.0f} of the {grown / 1024:.0f} MB the request grew"
    client.infer("segmentation", [_infer_input(np.zeros((1, 256, 512, 3), np.uint8))])  # and serves on


def test_a_models_own_bytes_per_pixel_sets_its_pixel_limit(tmp_path, exports):
    from services.common.model_repository import ModelRepository, build_config
    from services.common.server import ServerConfig
    from services.inference.config import InferenceServerConfig, RuntimeConfig
    from services.inference.server import InferenceServer
    from tests.inference_support import H, W

    repo = ModelRepository(tmp_path / "repo")
    for name, figure in (("segmentation", ""), ("depth", "100"), ("broken", "-5")):
        config = build_config(name, exports["depth" if name == "broken" else name][0].spec)
        if figure:
            config.parameters["bytes_per_pixel"].string_value = figure
        repo.publish(name, exports["depth" if name == "broken" else name][0].path, config)
    # the server's figure 1000 B/px: two frames per request; the depth model's own 100 B/px: twenty
    server = InferenceServer(InferenceServerConfig(
        repository=str(repo.root), server=ServerConfig(address="127.0.0.1:0", max_workers=8, grace_s=1.0),
        runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0,
        memory_budget_bytes=2 * H * W * 1000, bytes_per_pixel=1000))
    server.start()
    try:
        with tg.InferenceServerClient(server.target) as client:
            eight_frames = images(1, h=2 * H, w=4 * W)
            assert client.infer("depth", [_infer_input(eight_frames)]).as_numpy("inverse_depth").shape[0] == 1
            with pytest.raises(InferenceServerException, match=r"over the limit of 16384 pixels per request "
                                                               r"\(memory budget / 1000 bytes per pixel"):
                client.infer("segmentation", [_infer_input(eight_frames)])
            with pytest.raises(InferenceServerException, match=r"over the limit of 163840 pixels per request "
                                                               r"\(memory budget / 100 bytes per pixel"):
                client.infer("depth", [_infer_input(images(1, h=8 * H, w=4 * W))])
            assert not client.is_model_ready("broken")
            (broken,) = [m for m in client.get_model_repository_index().models if m.name == "broken"]
            assert "config parameter 'bytes_per_pixel' must be a positive integer, got '-5'" in broken.reason
    finally:
        server.stop(1.0)

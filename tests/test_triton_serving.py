"""A real Triton Inference Server (tritonserver 2.51.0 from the PyPI wheel nvidia-pytriton) beside
the project's own server, on the same model repository and the same model.onnx files, through the
project's own clients: metadata and config, inference (sync and aio), bad input, the EEM service
and the coordinator's ranking; and every config.pbtxt the project writes, checked by Triton itself.

Triton here runs ONNX Runtime through its Python backend (services/triton/segxal_onnxruntime),
because the wheel has no native ONNX Runtime backend; the native config is checked up to that
missing backend."""
from __future__ import annotations

import asyncio
import dataclasses
import threading

import numpy as np
import pytest
import tritonclient.grpc as tg

from segxal.errors import InvalidInput, NotFound, SegxalError
from segxal.export import export_depth, export_segmentation
from services.common.model_repository import BatchingConfig, ModelRepository, build_config, with_flavour
from services.coordinator.client import CoordinatorClient, cityscapes_source
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.inference.client import AsyncInferenceClient, InferenceClient
from services.trainer.config import TrainerConfig
from services.triton.server import TESTED_VERSION, TritonConfig, TritonServer, TritonStartError
from segxal.data.cityscapes import list_frames
from segxal.storage import local_uri
from tests.inference_support import TRACE, export_models, images, make_repository, running_server, tiny_depth, \
    tiny_unet
from tests.triton_support import eem_and_coordinator, python_flavour, running_triton, triton_install  # noqa: F401

MODELS = ("segmentation", "depth")
FP16_TOL = 2e-3  # a few float16 steps: EBU / CAM / depth travel as float16


@pytest.fixture(scope="module")
def served(triton_install, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """One repository (Python-backend flavour, which the project's server also serves), the
    project's server and Triton on it."""
    root = tmp_path_factory.mktemp("triton_serving")
    repo = python_flavour(make_repository(root / "repo", export_models(root / "exports", seeds=(0,))))
    with running_server(repo) as ours, \
            running_triton(triton_install, repo, root / "triton", control_mode="none") as triton:
        yield dict(root=root, repo=repo, ours=ours.target, triton=triton.target, triton_server=triton)


def _metadata(target: str, model: str) -> dict:
    with tg.InferenceServerClient(target) as c:
        m = c.get_model_metadata(model)
    tensors = lambda ts: [(t.name, t.datatype, list(t.shape)) for t in ts]  # noqa: E731
    return dict(name=m.name, versions=list(m.versions), platform=m.platform,
                inputs=tensors(m.inputs), outputs=sorted(tensors(m.outputs)))


def test_triton_is_the_tested_version_and_serves_both_models(served):
    with tg.InferenceServerClient(served["triton"]) as c:
        meta = c.get_server_metadata()
        assert (meta.name, meta.version) == ("triton", TESTED_VERSION)
        assert all(c.is_model_ready(m) for m in MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_metadata_and_spec_equal_the_project_servers(served, model):
    ours, triton = _metadata(served["ours"], model), _metadata(served["triton"], model)
    assert triton == ours
    assert triton["platform"] == "segxal_onnxruntime" and triton["versions"] == ["1"]
    with InferenceClient(served["ours"]) as a, InferenceClient(served["triton"]) as b:
        assert b.model_spec(model) == a.model_spec(model)  # pre-processing parameters survive Triton


def _assert_same(a: dict, b: dict, exact: bool = True) -> None:
    """Equal outputs: bit for bit when both ran the same batch (same file, same ONNX Runtime build
    and threads); otherwise labels equal and float16 maps within one float16 step (ONNX Runtime's
    kernels may block a batch of 4 differently from a batch of 1)."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            if exact or a[k].dtype != np.float16:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            else:
                step = np.spacing(np.abs(a[k]).astype(np.float16)).astype(np.float32)
                assert np.all(np.abs(a[k].astype(np.float32) - b[k].astype(np.float32)) <= step), k
        else:
            assert a[k] == b[k], k


def test_sync_inference_equals_the_project_servers(served):
    x = images(3, seed=5)
    with InferenceClient(served["ours"]) as a, InferenceClient(served["triton"]) as b:
        _assert_same(b.infer_segmentation(x), a.infer_segmentation(x))
        (depth_b, vb), (depth_a, va) = b.infer_depth(x), a.infer_depth(x)
        np.testing.assert_array_equal(depth_b, depth_a)
        assert vb == va == "1"


def test_aio_inference_equals_the_project_servers(served):
    x = images(2, seed=6)

    async def both():
        async with AsyncInferenceClient(served["ours"]) as a, AsyncInferenceClient(served["triton"]) as b:
            return await asyncio.gather(a.infer_segmentation(x), b.infer_segmentation(x),
                                        a.infer_depth(x), b.infer_depth(x))
    seg_a, seg_b, (depth_a, _), (depth_b, _) = asyncio.run(both())
    _assert_same(seg_b, seg_a)
    np.testing.assert_array_equal(depth_b, depth_a)


def test_concurrent_requests_batched_by_triton_answer_each_its_own(served):
    """Triton's dynamic batcher hands the backend several requests in one execute; each caller
    must get its own rows (compared with the project's server answering one request at a time)."""
    frames = [images(1, seed=100 + i) for i in range(8)]
    with InferenceClient(served["ours"]) as a:
        expected = [a.infer_segmentation(f) for f in frames]
    got: list = [None] * len(frames)
    with InferenceClient(served["triton"]) as b:
        def one(i):
            got[i] = b.infer_segmentation(frames[i])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(frames))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for g, e in zip(got, expected):
        _assert_same(g, e, exact=False)


def test_bad_requests_raise_the_same_errors_on_both(served):
    wrong_dtype = {"image": np.zeros((1, 64, 128, 3), np.float32)}
    for target in (served["ours"], served["triton"]):
        with InferenceClient(target) as c:
            with pytest.raises(InvalidInput):
                c.infer("segmentation", wrong_dtype)
            with pytest.raises(InvalidInput):
                c.infer("segmentation", {"image": images(9)})  # over max_batch_size 8
            with pytest.raises(NotFound):
                c.infer("no-such-model", {"image": images(1)})


# ---------------------------------------------------------------- EEM service and ranking

@pytest.fixture(scope="module")
def rankings(served, tiny_dataset):
    root = served["root"]
    with eem_and_coordinator(served["ours"], tiny_dataset, root / "with-ours") as ours, \
            eem_and_coordinator(served["triton"], tiny_dataset, root / "with-triton") as triton:
        yield dict(ours=ours, triton=triton, data=tiny_dataset)


def _same_regions(a, b) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert (ra.bbox, ra.area, ra.class_id) == (rb.bbox, rb.area, rb.class_id)
        assert ra.mean_eem == pytest.approx(rb.mean_eem, abs=FP16_TOL)


def test_eem_scores_and_regions_with_triton_equal_the_project_servers(rankings):
    uris = [local_uri(f.image) for f in list_frames(rankings["data"], "val")[:4]]
    options = ScoreOptions(regions=True, labels=True, maps=("eem",))
    with EemClient(rankings["ours"].eem) as a, EemClient(rankings["triton"].eem) as b:
        for uri in uris:
            sa, sb = a.score(uri, options), b.score(uri, options)
            assert sa.ok and sb.ok, (sa.error, sb.error)
            assert sb.score == pytest.approx(sa.score, abs=FP16_TOL)
            assert sb.threshold == pytest.approx(sa.threshold, abs=FP16_TOL)
            assert sb.labels_png == sa.labels_png
            np.testing.assert_allclose(sb.map("eem"), sa.map("eem"), atol=2 / 255)  # 8-bit PNG maps
            _same_regions(sa.regions, sb.regions)
            assert sb.regions, "the frame should have regions worth comparing"


def test_coordinator_ranking_with_triton_equals_the_project_servers(rankings):
    tasks = {}
    for side in ("ours", "triton"):
        with CoordinatorClient(rankings[side].coordinator, client_id="test", timeout_s=120) as c:
            pool = c.create_pool(f"pool-{side}")
            c.ingest(pool.pool_id, [cityscapes_source(str(rankings["data"]), "val", require_labels=True)])
            c.register_model_version("segmentation", uri="repo/segmentation/1", version=1)
            cycle = c.start_cycle(pool.pool_id, 4, selection="eem")
            ranked = c.rank_cycle(cycle.cycle_id)
            assert not ranked.failed, ranked.failed
            tasks[side] = list(ranked.tasks)
    a, b = tasks["ours"], tasks["triton"]
    assert [t.frame_uri for t in b] == [t.frame_uri for t in a]  # the same frames, in the same order
    for ta, tb in zip(a, b):
        assert tb.score == pytest.approx(ta.score, abs=FP16_TOL)
        assert len(tb.regions) == len(ta.regions)
        for ra, rb in zip(ta.regions, tb.regions):  # the coordinator's wire regions
            assert (rb.bbox, rb.area, rb.dominant_train_id, rb.rle) == (ra.bbox, ra.area, ra.dominant_train_id, ra.rle)
            assert rb.mean_eem == pytest.approx(ra.mean_eem, abs=FP16_TOL)


# ---------------------------------------------------------------- every config the project writes

def _trainer_batching() -> BatchingConfig:
    return {f.name: f for f in dataclasses.fields(TrainerConfig)}["batching"].default_factory()


def _configs_the_project_writes(root) -> dict:
    """name -> (config, model.onnx): the export's config with the default batching and with the
    trainer's, for a segmentation and a depth model."""
    seg = export_segmentation(tiny_unet(0), root / "seg" / "model.onnx", TRACE)
    depth = export_depth(tiny_depth(0), root / "depth" / "model.onnx", TRACE)
    out = {}
    for kind, result in (("seg", seg), ("depth", depth)):
        for batching_name, batching in (("default", None), ("trainer", _trainer_batching()),
                                        ("two-instances-two-versions",
                                         BatchingConfig(instance_count=2, num_versions=2))):
            name = f"{kind}-{batching_name}"
            out[name] = (build_config(name, result.spec, batching), result.path)
    return out


def test_every_config_the_project_writes_is_accepted_by_triton(triton_install, tmp_path):  # noqa: F811
    configs = _configs_the_project_writes(tmp_path / "exports")
    native, python = ModelRepository(tmp_path / "native"), ModelRepository(tmp_path / "python")
    for name, (config, onnx) in configs.items():
        native.publish(name, onnx, config)
        python.publish(name, onnx, with_flavour(config, "python"))  # only platform -> backend differs
    with running_triton(triton_install, native, tmp_path / "t-native", control_mode="explicit",
                        load_models=[]) as triton, InferenceClient(triton.target) as c:
        for name in configs:
            with pytest.raises(SegxalError) as e:
                c.load_model(name)
            # Triton parsed the config, set up the model and stopped only at the missing backend
            assert "unable to find backend library for backend 'onnxruntime'" in str(e.value), str(e.value)
    with running_triton(triton_install, python, tmp_path / "t-python", control_mode="explicit",
                        load_models=[]) as triton, InferenceClient(triton.target) as c:
        for name in configs:
            c.load_model(name)
            assert c.is_ready(name)
            out = c.infer(name, {"image": images(2)})
            assert out.model_version == "1" and len(out.tensors) == len(configs[name][0].output)
            c.unload_model(name)  # keep the stubs (one process per instance) few on 2 cores


# ---------------------------------------------------------------- start failures

def test_a_failed_start_names_the_log(triton_install, tmp_path):  # noqa: F811
    repo = ModelRepository(tmp_path / "repo")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx graph")
    spec = export_segmentation(tiny_unet(0), tmp_path / "seg" / "model.onnx", TRACE).spec
    repo.publish("segmentation", garbage, build_config("segmentation", spec, flavour="python"))
    for exit_on_error in (False, True):  # Triton keeps running without the model / Triton exits
        workdir = tmp_path / f"t-{exit_on_error}"
        server = TritonServer(TritonConfig(repository=str(repo.root), workdir=str(workdir), control_mode="none",
                                           exit_on_error=exit_on_error, startup_timeout_s=60), triton_install)
        with pytest.raises(TritonStartError) as e:
            server.start()
        server.stop()
        log = workdir / "tritonserver.log"
        assert str(log) in str(e.value) and "segmentation" in str(e.value)
        assert "failed to load" in log.read_text()  # the log is kept for the reader
        assert server.proc is None

    with pytest.raises(TritonStartError, match="no-such-repo is not a folder"):
        TritonServer(TritonConfig(repository=str(tmp_path / "no-such-repo")), triton_install).start()


# ---------------------------------------------------------------- the GPU overlay's Triton

def test_the_gpu_overlays_image_and_flags_are_the_tested_triton(triton_install, served, tmp_path):  # noqa: F811
    """deploy/overlays/gpu runs the NGC release of the tritonserver tested here, and that binary
    accepts the overlay's flags as written (paths and ports swapped for local ones) and serves."""
    import subprocess
    import time

    import yaml

    from services.triton.server import TESTED_NGC_TAG, _compose_backends, _free_port
    from tests.coordinator_support import REPO_ROOT

    gpu = REPO_ROOT / "deploy" / "overlays" / "gpu"
    [container] = yaml.safe_load((gpu / "inference-triton.yaml").read_text())["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"nvcr.io/nvidia/tritonserver:{TESTED_NGC_TAG}"
    tags = {i["name"]: i["newTag"] for i in yaml.safe_load((gpu / "kustomization.yaml").read_text())["images"]}
    assert tags["nvcr.io/nvidia/tritonserver"] == TESTED_NGC_TAG
    flags = dict(a.split("=", 1) for a in container["args"])
    local = {"--model-repository": str(served["repo"].root), "--grpc-port": str(_free_port("127.0.0.1")),
             "--http-port": str(_free_port("127.0.0.1")), "--metrics-port": str(_free_port("127.0.0.1"))}
    argv = [str(triton_install.tritonserver), *(f"{k}={local.get(k, v)}" for k, v in flags.items()),
            f"--backend-directory={_compose_backends(triton_install, tmp_path)}", "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1", "--metrics-address=127.0.0.1", "--allow-gpu-metrics=false"]
    env = {"SEGXAL_TRITON_SITE_PACKAGES": str(triton_install.site_packages), "PATH": "/usr/bin:/bin",
           "SEGXAL_TRITON_INTRA_OP_THREADS": "1"}
    log = tmp_path / "tritonserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        with tg.InferenceServerClient(f"127.0.0.1:{local['--grpc-port']}") as c:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    if c.is_server_ready():
                        break
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
            assert all(c.is_model_ready(m) for m in MODELS)
    finally:
        proc.terminate()
        proc.wait(30)

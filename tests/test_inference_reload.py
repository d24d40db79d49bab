"""Hot reload under load: new versions published while clients keep sending requests are loaded
beside the old one and swapped in with zero failed requests; every response names its version and
carries exactly that version's outputs."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg

from tests.inference_support import export_models, images, make_repository, running_server
from services.inference.client import AsyncInferenceClient


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return export_models(tmp_path_factory.mktemp("exports"))


def _reference(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def _wait_for(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_polled_version_swap_under_concurrent_load_fails_nothing(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    x = images(1, seed=11)
    want = {str(v + 1): _reference(e.path, x) for v, e in enumerate(exports["depth"])}
    seen: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def sender(target):
        inp = tg.InferInput("image", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        with tg.InferenceServerClient(target) as client:
            while not stop.is_set():
                try:
                    result = client.infer("depth", [inp])
                except Exception as e:  # noqa: BLE001 - every failure is a test failure
                    errors.append(str(e))
                    continue
                version = result.get_response().model_version
                if not np.array_equal(result.as_numpy("inverse_depth"), want[version]):
                    errors.append(f"version {version} answered with other weights")
                seen.append(version)

    with running_server(repo, poll_interval_s=0.05) as server:
        threads = [threading.Thread(target=sender, args=(server.target,)) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: len(seen) >= 20, "traffic on version 1")
            for version, export in ((2, exports["depth"][1]), (3, exports["depth"][2])):
                assert repo.publish("depth", export.path) == version
                _wait_for(lambda: seen[-8:].count(str(version)) == 8, f"version {version} to serve")
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert errors == []
    assert {"1", "2", "3"} <= set(seen)
    assert seen[-1] == "3"


def test_explicit_load_swap_with_the_async_client_fails_nothing(tmp_path, exports):
    repo = make_repository(tmp_path / "repo", exports)
    x = images(2, seed=12)

    async def run(target):
        seen, errors = [], []
        stop = asyncio.Event()
        async with AsyncInferenceClient(target) as client:
            async def sender():
                while not stop.is_set():
                    try:
                        seg = await client.infer_segmentation(x)
                        seen.append(seg["model_version"])
                    except Exception as e:  # noqa: BLE001 - every failure is a test failure
                        errors.append(str(e))

            tasks = [asyncio.create_task(sender()) for _ in range(6)]
            while len(seen) < 10:
                await asyncio.sleep(0.01)
            assert repo.publish("segmentation", exports["segmentation"][1].path) == 2
            await client.load_model("segmentation")  # loads beside version 1, then swaps
            count = len(seen)
            while len(seen) < count + 10:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*tasks)
        return seen, errors

    with running_server(repo, poll_interval_s=0.0) as server:
        seen, errors = asyncio.run(run(server.target))
    assert errors == []
    assert set(seen) == {"1", "2"} and seen[-1] == "2"

"""The ML backend's HTTP edge: every malformed request (bad JSON, wrong types at each level, bad
brush RLE, paths outside the document root, oversized bodies, wrong methods) gets a 4xx with a
message, never a 500. No service is reached: these requests are refused before the EEM service,
the coordinator or the trainer would be called (they are absent here)."""
from __future__ import annotations


import numpy as np
import pytest

from clients.label_studio import brush
from clients.label_studio import project as lsp
from clients.label_studio.ml_backend import MLBackendServer
from clients.label_studio.ml_model import MLBackendConfig, SegxalMLModel
from tests.labeling_support import json_call


@pytest.fixture(scope="module")
def backend(tiny_dataset):
    root = tiny_dataset.parent
    frame = next((tiny_dataset / "leftImg8bit" / "val").rglob("*.png"))
    cfg = MLBackendConfig(port=0, forward="trainer", trainer="127.0.0.1:1", ls_document_root=str(root))
    with MLBackendServer(cfg, model=SegxalMLModel(cfg, eem=None, trainer=None)) as server:
        yield server, f"/data/local-files/?d={frame.relative_to(root).as_posix()}"




def _brush(rle, label="road", h=64, w=128, **extra) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": w,
            "original_height": h, "value": {"format": "rle", "rle": rle, "brushlabels": [label]}, **extra}


def test_every_malformed_request_gets_a_4xx_with_a_message(backend):
    server, frame_url = backend
    good_rle = brush.encode_mask(np.ones((64, 128), bool))
    announcing_4g = [255, 255, 255, 255] + good_rle[4:]  # a header claiming 2**32 - 1 values

    def hook(result, data=None):
        return {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                "annotation": {"id": 1, "result": result}, "task": {"id": 2, "data": data or {"image": frame_url}}}

    bodies = {
        "/predict": [None, [], "x", 3, {}, {"tasks": None}, {"tasks": {}}, {"tasks": [1]}, {"tasks": [{"id": 1}]},
                     {"tasks": [{"id": 1, "data": []}]}, {"tasks": [{"id": 1, "data": {"image": 5}}]},
                     {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=/etc/passwd"}}]},
                     {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?x=1"}}]},
                     {"tasks": [{"id": 1, "data": {"image": "http://127.0.0.1:1/x.png"}}]},
                     {"tasks": [{"id": 1, "data": {"image": frame_url}}], "project": {"id": "abc"}}],
        "/setup": [None, {}, {"project": "1.2"}, {"project": "1.2", "schema": 5}, {"project": [], "schema": ""},
                   {"project": "1.2", "schema": "<View"}, {"project": True, "schema": lsp.label_config()}],
        "/webhook": [None, {}, {"action": 5}, {"action": "ANNOTATION_CREATED"},
                     {"action": "ANNOTATION_CREATED", "annotation": [], "task": {}},
                     {"action": "ANNOTATION_CREATED", "annotation": {"result": {}}, "task": {"data": {}}},
                     hook([]), hook([5]), hook([{"type": "brushlabels"}]), hook([_brush(good_rle, label=["car"])]),
                     hook([_brush(good_rle, label="unicorn")]), hook([_brush("abc")]), hook([_brush({"a": 1})]),
                     hook([_brush([300, -1])]), hook([_brush(announcing_4g)]), hook([_brush(good_rle[:9])]),
                     hook([_brush(good_rle, h=8)]), hook([{**_brush(good_rle), "value": "v"}]),
                     hook([_brush(good_rle)], data={"image": "/data/local-files/?d=../../../etc/hostname"}),
                     hook([_brush(good_rle)], data={"image": frame_url.rsplit("/", 1)[0]})],
    }
    seen = 0
    for path, cases in bodies.items():
        for body in cases:
            status, reply = json_call(server.url, path, body, raw=b"" if body is None else None)
            assert 400 <= status < 500 and reply.get("error"), (path, body, status, reply)
            seen += 1
    for raw in (b"{", b"\xff\xfe", b"[1, 2"):
        status, reply = json_call(server.url, "/webhook", raw=raw)
        assert status == 400 and "not JSON" in reply["error"]
    assert json_call(server.url, "/health", method="GET")[0] == 200
    assert json_call(server.url, "/setup", method="GET")[0] == 405
    assert json_call(server.url, "/health", {})[0] == 405
    assert json_call(server.url, "/train", {})[0] == 404
    assert seen > 40


def test_the_entry_point_serves_health_and_stops_on_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.coordinator_support import REPO_ROOT
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SEGXAL_LS_ML_FORWARD": "none"}
    proc = subprocess.Popen([sys.executable, "-m", "clients.label_studio.ml_backend", "--port", "0",
                             "--eem-target", "127.0.0.1:1", "--cache-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ml backend listening on http://127.0.0.1:"), line
        status, reply = json_call(line.split()[-1], "/health", method="GET")
        assert status == 200 and reply["forward"] == "none"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    bad = subprocess.run([sys.executable, "-m", "clients.label_studio.ml_backend", "--forward", "coordinator"],
                         capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert bad.returncode == 2 and "forward = coordinator needs --coordinator and --pool" in bad.stderr

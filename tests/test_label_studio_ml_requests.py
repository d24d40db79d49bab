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
    cfg = MLBackendConfig(port=0, forward="trainer", trainer="127.0.0.1:1", ls_document_root=str(root),
                          insecure_no_auth=True)
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


# ---------------------------------------------------------------- the edge a labeling platform calls

AUTH = {"basic_auth_user": "label-studio", "basic_auth_pass": "pass-of-label-studio"}


def _basic(user: str, password: str) -> dict:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def guarded(tiny_dataset, tmp_path):
    """A forwarding backend with basic auth whose trainer is a real trainer-less address: a request
    that got past the edge fails at the trainer, so a 401 proves nothing was forwarded."""
    root = tiny_dataset.parent
    frame = next((tiny_dataset / "leftImg8bit" / "val").rglob("*.png"))
    cfg = MLBackendConfig(port=0, forward="trainer", trainer="127.0.0.1:1", eem_target="127.0.0.1:1",
                          ls_document_root=str(root), cache_dir=str(tmp_path / "cache"), **AUTH)
    with MLBackendServer(cfg) as server:  # its own clients, of addresses where nothing listens
        yield server, frame, root


def _forged_annotation(frame_url: str, h: int = 64, w: int = 128) -> dict:
    """What a forger posts: ANNOTATION_CREATED with a brush over the whole frame."""
    rle = brush.encode_mask(np.ones((h, w), bool))
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1},
            "annotation": {"id": 1, "result": [_brush(rle, "sky", h=h, w=w)]},
            "task": {"id": 2, "data": {"image": frame_url}}}


def test_every_route_but_health_requires_the_basic_auth_credentials(guarded):
    server, frame, root = guarded
    body = _forged_annotation(f"/data/local-files/?d={frame.relative_to(root).as_posix()}")
    for headers in ({}, _basic("label-studio", "wrong"), _basic("someone", AUTH["basic_auth_pass"]),
                    {"Authorization": "Bearer pass-of-label-studio"}):
        for path, method in (("/webhook", "POST"), ("/setup", "POST"), ("/predict", "POST"), ("/", "GET")):
            status, reply = json_call(server.url, path, body if method == "POST" else None, method=method,
                                      headers=headers)
            assert status == 401 and "basic auth" in reply["error"], (path, headers, status, reply)
    assert json_call(server.url, "/health", method="GET")[0] == 200  # Label Studio's health check stays open
    # With the credentials the forged-looking body is handled: it reaches the (absent) trainer -> 503.
    status, reply = json_call(server.url, "/webhook", body, headers=_basic("label-studio", AUTH["basic_auth_pass"]))
    assert status == 503, reply
    status, reply = json_call(server.url, "/setup", {"project": "1.2", "schema": lsp.label_config()},
                              headers=_basic("label-studio", AUTH["basic_auth_pass"]))
    assert status == 200 and reply["model_version"], reply


def test_a_forwarding_backend_will_not_start_without_credentials_unless_told(tmp_path):
    import os
    import subprocess
    import sys

    from tests.coordinator_support import REPO_ROOT
    env = {k: v for k, v in os.environ.items() if "BASIC_AUTH" not in k}
    env["PYTHONPATH"] = str(REPO_ROOT)
    base = [sys.executable, "-m", "clients.label_studio.ml_backend", "--port", "0", "--eem-target", "127.0.0.1:1",
            "--cache-dir", str(tmp_path), "--forward", "trainer", "--trainer", "127.0.0.1:1"]
    bad = subprocess.run(base, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert bad.returncode == 2 and "set basic auth" in bad.stderr and "--insecure-no-auth" in bad.stderr, bad.stderr
    (tmp_path / "pass").write_text("pw\n")
    for extra, extra_env in ((["--insecure-no-auth"], {}), (["--basic-auth-pass-file", str(tmp_path / "pass")],
                                                            {"BASIC_AUTH_USER": "ls"})):
        proc = subprocess.Popen(base + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**env, **extra_env}, cwd=REPO_ROOT)
        try:
            line = proc.stdout.readline()
            assert line.startswith("ml backend listening on "), line
            url = line.split()[-1]
            status, _ = json_call(url, "/setup", {"project": "1.2", "schema": "<View/>"})
            assert status == (400 if extra_env == {} else 401)
            if extra_env:
                status, _ = json_call(url, "/setup", {"project": "1.2", "schema": "<View/>"},
                                      headers=_basic("ls", "pw"))
                assert status == 400  # past the edge: the label config is what is refused
        finally:
            proc.terminate()
            proc.wait(30)


def _raw_post(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One hand-written HTTP request (urllib will not send a negative Content-Length): status, body."""
    import socket
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + b"\r\n" + body)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_a_content_length_that_is_not_a_plain_number_gets_400(backend):
    import json
    server, _ = backend
    for length in (b"-1", b"-5", b"+5", b"1_0", b"abc", b"0x10", b"5.0", b"99999999999999999999999"):
        head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + length + b"\r\n")
        status, body = _raw_post(server.url, head, b"[" + b" " * (300 << 10) + b"]")
        assert status in (400, 413) and json.loads(body)["error"], (length, status, body)
        assert status == 400 or length == b"99999999999999999999999"
    assert json_call(server.url, "/health", method="GET")[0] == 200  # still serving


def test_deeply_nested_json_gets_400(backend):
    server, _ = backend
    for path in ("/predict", "/setup", "/webhook"):
        for raw in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
            status, reply = json_call(server.url, path, raw=raw)
            assert status == 400 and "nested too deeply" in reply["error"], (path, status, reply)


def test_file_urls_are_read_only_inside_the_document_root(guarded, tmp_path):
    import shutil
    server, frame, root = guarded
    outside = tmp_path / "outside.png"  # a readable PNG outside the root
    shutil.copy(frame, outside)
    auth = _basic("label-studio", AUTH["basic_auth_pass"])
    for url in (f"file://{outside}", "file:///etc/shadow", "file:///etc/passwd", f"file://{root}/../outside.png",
                f"file://localhost{outside}", f"file://other-host{frame}"):
        status, reply = json_call(server.url, "/webhook", _forged_annotation(url), headers=auth)
        refused = "not inside the document root" in reply["error"] or "names a host" in reply["error"]
        assert status == 400 and refused, (url, status, reply)
    assert not (tmp_path / "cache").exists()  # nothing copied into the cache
    # Inside the root the frame is read (its size checks the annotation: a 8 x 8 brush does not fit).
    small = _forged_annotation(f"file://{frame}", h=8, w=8)
    status, reply = json_call(server.url, "/webhook", small, headers=auth)
    assert status == 422 and "drawn on a 8 x 8 image" in reply["error"], reply


def test_downloads_go_only_to_the_configured_label_studio(tmp_path):
    """A redirect by the configured server to another host is refused before the token could go
    there (urllib would carry it); a URL of another host is refused without a request."""
    import http.server
    import threading

    from clients.label_studio.api import LabelStudioAPI
    from segxal.errors import InvalidInput

    seen: list[tuple[str, str]] = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    target = f"http://127.0.0.1:{capture.server_address[1]}"

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", target + "/stolen" if self.path != "/same" else "/here")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for srv in (capture, redirect):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        api = LabelStudioAPI(f"http://127.0.0.1:{redirect.server_address[1]}", "a" * 40, timeout_s=10)
        with pytest.raises(InvalidInput, match="redirected off its origin"):
            api.download("/data/upload/1/frame.png")
        with pytest.raises(InvalidInput, match="not a URL of"):
            api.download(target + "/frame.png")
        assert seen == []
    finally:
        for srv in (capture, redirect):
            srv.shutdown()
            srv.server_close()


def test_import_tool_refuses_frames_outside_the_document_root(tiny_dataset, tmp_path):
    import subprocess
    import sys

    from tests.coordinator_support import REPO_ROOT
    tool = [sys.executable, "-m", "clients.label_studio.ml_import", "tasks"]
    val = tiny_dataset / "leftImg8bit" / "val"
    out = subprocess.run([*tool, str(val), "--document-root", str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 2 and "is not inside the document root" in out.stderr and out.stdout == ""
    out = subprocess.run([*tool, str(tmp_path), "--document-root", str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 2 and "no .png/.jpg/.jpeg files" in out.stderr
    (tmp_path / "labels.txt").write_text("road\ncar\n")
    out = subprocess.run([sys.executable, "-m", "clients.label_studio.ml_import", "label-config", "--classes-file",
                          str(tmp_path / "labels.txt")], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0
    lsp.check_label_config_xml(out.stdout, ("road", "car"))

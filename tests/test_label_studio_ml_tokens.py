"""The ML backend's entry point against a coordinator that requires TLS and a bearer token, with the
flags every client has (--coordinator-tls-ca, --coordinator-token-file): /setup reads the pool's
classes and /webhook submits an annotation over that channel. Without the token the caller gets a
502 naming the flags, not a 500."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from clients.label_studio import brush
from clients.label_studio import project as lsp
from segxal import imageio
from services.common.auth import token_digest
from services.common.channel import ChannelConfig
from services.coordinator.client import CoordinatorClient, image_folder_source
from tests.coordinator_support import REPO_ROOT, coordinator_config, running_coordinator, write_frames
from tests.labeling_support import json_call
from tests.tls_support import TestCA

FOUR = ("flat", "vehicle", "human", "sky")
TOKEN = "token-of-the-ml-backend"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"label-studio:pw-of-ls").decode()}


@pytest.fixture
def secured(tmp_path):
    """A coordinator with TLS and bearer tokens, a pool of one frame in four classes, one task waiting."""
    ca = TestCA(tmp_path / "pki")
    server_cert = ca.issue("localhost", server=True)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"label-studio-ml": token_digest(TOKEN), "test": token_digest("token-of-test")}))
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage", tls_cert=server_cert.cert,
                             tls_key=server_cert.key, auth_tokens_file=str(tokens), default_lease_s=30)
    root = tmp_path / "ls-root"  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    (frame,) = write_frames(root / "frames", 1, h=16, w=24)
    from services.coordinator.server import CoordinatorServer
    server = CoordinatorServer(cfg)
    server.start()
    try:
        target = f"localhost:{server.port}"
        with CoordinatorClient(target, ChannelConfig(tls_ca=ca.ca_path, bearer_token="token-of-test"),
                               client_id="test", timeout_s=60) as client:
            pool = client.create_pool("four", class_names=FOUR)
            client.ingest(pool.pool_id, [image_folder_source(str(root / "frames"))])
            client.rank_cycle(client.start_cycle(pool.pool_id, 1, selection="random").cycle_id)
            yield target, ca.ca_path, client, pool, root, frame
    finally:
        server.stop(1.0)


def _backend(args: list[str], tmp_path) -> subprocess.Popen:
    (tmp_path / "basic-pass").write_text("pw-of-ls\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SEGXAL_LS_ML_BASIC_AUTH_USER": "label-studio"}
    proc = subprocess.Popen([sys.executable, "-m", "clients.label_studio.ml_backend", "--port", "0",
                             "--eem-target", "127.0.0.1:1", "--cache-dir", str(tmp_path / "cache"),
                             "--basic-auth-pass-file", str(tmp_path / "basic-pass"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    line = proc.stdout.readline()
    if not line.startswith("ml backend listening on "):
        proc.kill()
        raise AssertionError(line + proc.stdout.read())
    proc.url = line.split()[-1]
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_backend_works_with_a_coordinator_that_requires_tls_and_a_token(secured, tmp_path):
    target, ca, client, pool, root, frame = secured
    (tmp_path / "token").write_text(TOKEN + "\n")
    common = ["--forward", "coordinator", "--coordinator", target, "--pool", "four", "--ls-document-root", str(root),
              "--coordinator-tls-ca", ca]
    top = np.zeros((16, 24), bool)
    top[:8] = True
    result = [{"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": 24,
               "original_height": 16, "value": {"format": "rle", "rle": brush.encode_mask(m), "brushlabels": [n]}}
              for m, n in ((top, "vehicle"), (~top, "sky"))]
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 3, "result": result},
            "task": {"id": 7, "data": {"image": f"/data/local-files/?d=frames/{frame.name}"}}}

    # Without the token: the coordinator says UNAUTHENTICATED, the caller a 502 that names the flag.
    proc = _backend(common, tmp_path)
    try:
        status, reply = json_call(proc.url, "/setup", {"project": "1.2", "schema": lsp.label_config(FOUR)},
                                  headers=BASIC)
        assert status == 502 and "--coordinator-token-file" in reply["error"], reply
    finally:
        _stop(proc)

    # The token's identity is the lease holder's name, as for every labeling client.
    proc = _backend([*common, "--coordinator-token-file", str(tmp_path / "token"), "--client-id", "label-studio-ml"],
                    tmp_path)
    try:
        status, reply = json_call(proc.url, "/setup", {"project": "1.2", "schema": lsp.label_config(FOUR)},
                                  headers=BASIC)
        assert status == 200, reply  # the pool's four classes were read over TLS with the token
        status, reply = json_call(proc.url, "/setup", {"project": "1.2", "schema": lsp.label_config()}, headers=BASIC)
        assert status == 400 and "(flat, vehicle, human, sky)" in reply["error"]
        status, reply = json_call(proc.url, "/webhook", hook, headers=BASIC)
        assert status == 201, reply
    finally:
        _stop(proc)
    (ann,) = client.annotations(pool.pool_id)
    np.testing.assert_array_equal(imageio.read_label(ann.mask_uri), np.where(top, 1, 3))  # vehicle, sky

"""Shared helpers of the tests/test_labeling_*.py files: the real serving stack (tiny exported models
in a model repository, the inference server, the EEM scoring service, the coordinator on SQLite, all
on ephemeral ports) and a pool of Cityscapes-layout frames ranked into EEM tasks with regions."""
from __future__ import annotations

import contextlib
import http.cookiejar
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from segxal.export import export_depth, export_segmentation
from services.common.model_repository import ModelRepository, build_config
from services.common.server import ServerConfig
from services.coordinator.client import CoordinatorClient, cityscapes_source
from services.coordinator.config import CoordinatorConfig
from services.coordinator.ranking import RankingConfig
from services.coordinator.server import CoordinatorServer
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer
from tests.coordinator_support import REPO_ROOT
from tests.inference_support import TRACE, tiny_depth, tiny_unet  # traced at the tiny_dataset's 64 x 128


@dataclass
class Stack:
    inference: str  # host:port of each server
    eem: str
    coordinator: str
    coordinator_storage: Path
    dataset: Path


def _export_models(root: Path) -> ModelRepository:
    """Tiny random-weight segmentation and depth models, exported and published as version 1."""
    seg_export = export_segmentation(tiny_unet(0).eval(), root / "export" / "seg" / "model.onnx", TRACE)
    depth_export = export_depth(tiny_depth(1).eval(), root / "export" / "depth" / "model.onnx", TRACE)
    repo = ModelRepository(root / "repo")
    repo.publish("segmentation", seg_export.path, build_config("segmentation", seg_export.spec))
    repo.publish("depth", depth_export.path, build_config("depth", depth_export.spec))
    return repo


@contextlib.contextmanager
def serving_stack(root: Path, dataset: Path):
    """Inference + EEM + coordinator (SQLite) on ephemeral ports; frames read from `dataset`."""
    repo = _export_models(root / "models")
    inference = InferenceServer(InferenceServerConfig(
        repository=str(repo.root), server=ServerConfig(address="127.0.0.1:0", max_workers=16, grace_s=1.0),
        runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0))
    inference.start()
    eem = EemServer(EemServiceConfig(seg_target=inference.target, depth_target=inference.target,
                                     storage_roots=[str(dataset)], health_poll_s=0.1,
                                     server=ServerConfig(address="127.0.0.1:0", grace_s=1.0),
                                     pipeline=PipelineConfig(max_concurrency=2)))
    eem.start()
    storage = root / "coordinator-storage"
    coordinator = CoordinatorServer(CoordinatorConfig(
        db=f"sqlite://{root / 'coordinator.db'}", storage=str(storage), server=ServerConfig(address="127.0.0.1:0", grace_s=1.0), db_pool_size=4,
        eem_target=eem.target, default_lease_s=60,
        ranking=RankingConfig(backoff_initial_s=0.05, backoff_max_s=0.2, deadline_s=60)))
    coordinator.start()
    try:
        yield Stack(inference.target, eem.target, coordinator.target, storage, dataset)
    finally:
        coordinator.stop(1.0)
        eem.stop(1.0)
        inference.stop(1.0)


def eem_pool(stack: Stack, name: str, split: str = "val", batch: int = 4, **budget):
    """A pool of the dataset's `split` frames and a ranked EEM cycle of `batch` tasks: (pool, tasks)."""
    with CoordinatorClient(stack.coordinator, client_id="test-setup", timeout_s=120) as client:
        pool = client.create_pool(name, **budget)
        client.ingest(pool.pool_id, [cityscapes_source(str(stack.dataset), split, require_labels=True)])
        client.register_model_version("segmentation", uri="repo/segmentation/1", version=1)
        cycle = client.start_cycle(pool.pool_id, batch, selection="eem")
        ranked = client.rank_cycle(cycle.cycle_id)
        assert not ranked.failed, ranked.failed
        return pool, list(ranked.tasks)


def random_pool(stack: Stack, name: str, split: str = "val", batch: int = 3):
    """A pool of the dataset's `split` frames and a random cycle of `batch` tasks (no regions)."""
    with CoordinatorClient(stack.coordinator, client_id="test-setup", timeout_s=120) as client:
        pool = client.create_pool(name)
        client.ingest(pool.pool_id, [cityscapes_source(str(stack.dataset), split)])
        cycle = client.start_cycle(pool.pool_id, batch, selection="random", random_seed=3)
        ranked = client.rank_cycle(cycle.cycle_id)
        return pool, list(ranked.tasks)


def annotations_by_task(stack: Stack, pool_id: str) -> dict:
    """The pool's accepted annotations, by task id."""
    with CoordinatorClient(stack.coordinator, client_id="test-reader") as client:
        return {a.task_id: a for a in client.annotations(pool_id)}


# ---------------------------------------------------------------- Label Studio

LS_VENV = REPO_ROOT / ".venv-ls"

# Runs in the Label Studio venv: label_studio_sdk's own brush RLE, the reference ours must match.
_SDK_BRUSH = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
out = []
for op in json.load(sys.stdin):
    if op["op"] == "mask2rle":
        out.append(mask2rle(np.array(op["mask"], dtype=np.uint8)))
    else:
        out.append(decode_rle(op["rle"]).reshape(op["height"], op["width"], 4)[:, :, 3].tolist())
json.dump(out, sys.stdout)
"""


def setup_label_studio() -> dict[str, str]:
    """Run scripts/setup_label_studio.sh; its closing lines ("label-studio: PATH", "chromium: PATH|missing").

    Raises:
        RuntimeError: the script failed (the message carries its output's tail).
    """
    out = subprocess.run(["bash", "scripts/setup_label_studio.sh"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/setup_label_studio.sh exited with {out.returncode}: "
                           f"{(out.stdout + out.stderr)[-1500:]}")
    return dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)


def sdk_brush(ops: list[dict]) -> list:
    """label_studio_sdk.converter.brush in the Label Studio venv: {"op": "mask2rle", "mask": [[...]]}
    -> RLE bytes; {"op": "decode", "rle": [...], "height": H, "width": W} -> alpha [[...]]."""
    out = subprocess.run([str(LS_VENV / "bin" / "python"), "-c", _SDK_BRUSH], input=json.dumps(ops),
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def django_login(url: str, username: str, password: str) -> dict[str, str]:
    """Log in through Label Studio's Django form, as a person does: the session cookies."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{url}/user/login/", timeout=30).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf, "email": username, "password": password}).encode()
    opener.open(urllib.request.Request(f"{url}/user/login/", data=form, headers={"Referer": f"{url}/user/login/"}),
                timeout=30)
    cookies = {c.name: c.value for c in jar}
    assert "sessionid" in cookies, "Label Studio did not log the user in"
    return cookies


# Headless Chromium, as FACTS.md found it works here (no sandbox as root, nothing fetched from outside).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--window-size=1400,900"]


class Chromium:
    """Headless Chromium driven over its remote-debugging port (Chrome DevTools Protocol)."""

    def __init__(self, executable: str, profile: Path):
        import websocket  # websocket-client (installed with kubernetes)
        self.proc = subprocess.Popen([executable, *CHROMIUM_FLAGS, "--remote-debugging-port=0",
                                      f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its remote-debugging port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=60)
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def json_call(url: str, path: str, body=None, raw: bytes | None = None, method: str = "POST",
              headers: dict | None = None, timeout_s: float = 60.0) -> tuple[int, object]:
    """One HTTP request with a JSON body (or `raw` bytes) to a test server: (status, parsed JSON
    reply), HTTP errors included, so tests can check both."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

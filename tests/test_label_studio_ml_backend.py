"""SegXAL's Label Studio ML backend against a real Label Studio 1.23.2 (its own venv), the real
EEM service, inference server and coordinator. Label Studio itself connects the backend (its
/api/ml, with basic auth, as "Connect Model" does), asks for predictions (the data manager's
"Retrieve Predictions" action), sorts the tasks by the prediction score in a data-manager view
with nothing changed by hand after connecting, and calls the backend's /webhook when an annotation
is saved; the annotation must reach the coordinator. The overlays live in a folder of their own,
which Label Studio serves without a Local Storage added by hand. The EEM service, asked directly,
is the reference for scores, regions and classes; label_studio_sdk decodes the brush RLE. One test
saves headless-Chromium screenshots of the sorted task list (artifacts/label_studio_sorted.png)
and of the pre-annotated task under artifacts/label_studio/. Malformed requests get 4xx with a
message, never 500; forged webhooks without credentials get 401; /setup cannot point downloads at
another host.

Skips (with the reason) only when the Label Studio venv cannot be made, e.g. without a package index.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as coco_mask
import pytest

from clients.label_studio import project as lsp
from clients.label_studio.local import LocalLabelStudio, LocalLabelStudioConfig
from clients.label_studio.ml_backend import MLBackendServer
from clients.label_studio.ml_import import queue
from clients.label_studio.ml_model import MLBackendConfig
from clients.label_studio.overlay import eem_overlay
from segxal import imageio
from segxal.labels import IGNORE, NAME_TO_TRAIN_ID
from services.eem.api import ScoreOptions
from services.coordinator.client import CoordinatorClient
from services.eem.client import EemClient
from tests.coordinator_support import REPO_ROOT
from tests.labeling_support import (LS_VENV, Chromium, annotations_by_task, django_login, json_call, sdk_brush,
                                    serving_stack)

ARTIFACTS = REPO_ROOT / "artifacts" / "label_studio"
SORTED_SCREENSHOT = REPO_ROOT / "artifacts" / "label_studio_sorted.png"
POOL = "ml-backend"
USER, PASSWORD = "label-studio", "basic-auth-pass-of-the-test"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="module")
def env(ls_tools, tiny_dataset, tmp_path_factory):
    """Label Studio (document root `media`), the serving stack reading a copy of the tiny dataset
    inside that root, a ranked EEM cycle in the coordinator, and the ML backend on an ephemeral port
    with basic auth, fetching only from this Label Studio, writing overlays to `media/overlays`
    (outside the frames' storage)."""
    root = tmp_path_factory.mktemp("ls-ml")
    media = root / "media"
    dataset = media / "ds"
    shutil.copytree(tiny_dataset, dataset)
    cfg = LocalLabelStudioConfig(data_dir=str(root / "ls-data"), document_root=str(media), venv=str(LS_VENV),
                                 template_dir=str(LS_VENV / "segxal-data-template"))
    with LocalLabelStudio(cfg) as ls, serving_stack(root / "stack", dataset) as stack:
        with CoordinatorClient(stack.coordinator, client_id="test-setup") as client:  # as the trainer's publish does
            client.register_model_version("segmentation", uri="repo/segmentation/1", version=1)
        tasks = queue(stack.coordinator, POOL, str(dataset), "val", 4)  # the guide's `ml_import queue`
        with CoordinatorClient(stack.coordinator, client_id="test-setup") as client:
            pool = client.get_pool(name=POOL)
        backend_cfg = MLBackendConfig(host="127.0.0.1", port=0, eem_target=stack.eem, ls_document_root=str(media),
                                      media_dir=str(media / "overlays"), cache_dir=str(dataset / "cache"),
                                      forward="coordinator", coordinator=stack.coordinator, pool=POOL,
                                      ls_url=ls.url, basic_auth_user=USER, basic_auth_pass=PASSWORD)
        with MLBackendServer(backend_cfg) as backend:
            yield SimpleNamespace(ls=ls, api=ls.api(), stack=stack, pool=pool, tasks=tasks, backend=backend,
                                  media=media, dataset=dataset, chromium=ls_tools.get("chromium", "missing"))


def _local_url(env, path) -> str:
    return f"/data/local-files/?d={path.relative_to(env.media).as_posix()}"


@pytest.fixture(scope="module")
def project(env):
    """A Label Studio project of the 8 validation frames, connected to the ML backend through Label
    Studio's API as "Connect Model" does (basic auth), with predictions retrieved by Label Studio and
    a view sorted by prediction score: what a user does, and nothing else."""
    api = env.api
    # The label config and the import file as docs/label_studio.md makes them (the commands' output).
    tool = [sys.executable, "-m", "clients.label_studio.ml_import"]
    config = subprocess.run([*tool, "label-config"], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    val = env.dataset / "leftImg8bit" / "val"
    imports = json.loads(subprocess.run([*tool, "tasks", str(val), "--document-root", str(env.media)],
                                        capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout)
    proj = api.create_project("SegXAL ML backend", config)
    pid = int(proj["id"])
    api.create_local_storage(pid, str(env.dataset), title="frames")
    frames = sorted(val.rglob("*.png"))
    # `overlay` starts as the frame itself (Label Studio wants every key the label config names);
    # the backend points it at the heat-map overlay when it predicts.
    assert imports == [{lsp.FRAME_KEY: _local_url(env, f), lsp.OVERLAY_KEY: _local_url(env, f)} for f in frames]
    api.request("POST", f"/api/projects/{pid}/import", imports)
    ml = api.request("POST", "/api/ml", {"url": env.backend.url, "project": pid, "title": "SegXAL EEM",
                                         "is_interactive": False, "auth_method": "BASIC_AUTH",
                                         "basic_auth_user": USER, "basic_auth_pass": PASSWORD})
    assert ml["state"] == "CO", ml  # Label Studio called /health and /setup: connected
    # Label Studio makes the backend's webhook itself, without credentials; the backend adds them.
    hook_url = env.backend.url + "/webhook"
    _wait(lambda: any(h["url"] == hook_url and h.get("headers", {}).get("Authorization") == BASIC["Authorization"]
                      for h in api.request("GET", "/api/webhooks", params={"project": pid})),
          timeout_s=60, what="the backend's credentials on Label Studio's webhook")
    api.request("POST", "/api/dm/actions", {"selectedItems": {"all": True, "excluded": []}},
                params={"id": "retrieve_tasks_predictions", "project": pid})
    view = api.request("POST", "/api/dm/views", {"project": pid, "data": {
        "title": "By EEM score", "ordering": ["-tasks:predictions_score"],
        "hiddenColumns": {"explore": ["tasks:annotations_results", "tasks:predictions_results", "tasks:data.overlay",
                                      "tasks:inner_id", "tasks:annotators", "tasks:updated_by", "tasks:file_upload",
                                      "tasks:storage_filename", "tasks:created_at", "tasks:updated_at",
                                      "tasks:avg_lead_time", "tasks:draft_exists", "tasks:cancelled_annotations",
                                      "tasks:total_predictions"],
                          "labeling": []}}})
    tasks = {int(t["id"]): api.get_task(int(t["id"])) for t in api.iter_tasks(pid)}
    return SimpleNamespace(id=pid, view=int(view["id"]), tasks=tasks, frames=frames, ml_id=int(ml["id"]))


def _sorted_ids(env, project) -> list[int]:
    listed = env.api.request("GET", "/api/tasks", params={"view": project.view, "project": project.id,
                                                          "page_size": 100})
    rows = listed["tasks"] if isinstance(listed, dict) else listed
    return [int(t["id"]) for t in rows]


def _region_masks(scored) -> list[np.ndarray]:
    """The EEM service's regions as bool masks, decoded by pycocotools (the reference)."""
    out = []
    for r in scored.regions:
        h, w = r.rle["size"]
        out.append(coco_mask.decode(coco_mask.frPyObjects({"size": [h, w], "counts": list(r.rle["counts"])}, h, w))
                   .astype(bool))
    return out


def _frame_path(env, ls_task) -> str:
    return str(env.media / ls_task["data"][lsp.FRAME_KEY].split("?d=", 1)[1])


def test_label_studio_gets_eem_restricted_pre_annotations_with_the_eem_score(env, project):
    assert len(project.tasks) == 8
    with EemClient(env.stack.eem) as eem:
        for ls_task in project.tasks.values():
            path = _frame_path(env, ls_task)
            ref = eem.score(path, ScoreOptions(maps=("eem",), regions=True, labels=True)).raise_for_error()
            (pred,) = ls_task["predictions"]
            assert pred["score"] == pytest.approx(ref.score, rel=1e-6)
            assert pred["model_version"] == ref.model_versions.segmentation
            regions = _region_masks(ref)
            predicted = ref.labels()
            painted = np.zeros(predicted.shape, bool)
            alphas = sdk_brush([{"op": "decode", "rle": r["value"]["rle"], "height": predicted.shape[0],
                                 "width": predicted.shape[1]} for r in pred["result"]])
            for r, alpha in zip(pred["result"], alphas):
                mask = np.array(alpha) == 255
                (label,) = r["value"]["brushlabels"]
                assert (predicted[mask] == NAME_TO_TRAIN_ID[label]).all()  # the model's class
                painted |= mask
            inside = np.any(regions, axis=0) if regions else np.zeros_like(painted)
            np.testing.assert_array_equal(painted, inside & (predicted != IGNORE))  # only the regions to fix
            # The task shows the overlay the backend set: the heat map over this frame, regions outlined.
            overlay_path = env.media / ls_task["data"][lsp.OVERLAY_KEY].split("?d=", 1)[1]
            np.testing.assert_array_equal(imageio.read_rgb(overlay_path),
                                          eem_overlay(imageio.read_rgb(path), ref.map("eem"), regions))


def test_data_manager_sorts_by_prediction_score_as_connect_model_leaves_the_project(env, project):
    """No setting changed by hand: the project's model version is the predictions' version, so
    each task's "Prediction score" is its EEM score and the view sorts by it."""
    scores = {i: t["predictions"][0]["score"] for i, t in project.tasks.items()}
    assert len(set(scores.values())) > 1  # the order says something
    expected = sorted(scores, key=lambda i: -scores[i])
    _wait(lambda: _sorted_ids(env, project) == expected, timeout_s=60, what="the view sorted by prediction score")
    versions = {t["predictions"][0]["model_version"] for t in project.tasks.values()}
    assert env.api.get_project(project.id)["model_version"] in versions
    listed = env.api.request("GET", "/api/tasks", params={"view": project.view, "project": project.id,
                                                          "fields": "all", "page_size": 100})
    rows = listed["tasks"] if isinstance(listed, dict) else listed
    for row in rows:  # the column the user sorts by holds the EEM score, not null
        assert row["predictions_score"] == pytest.approx(scores[int(row["id"])], rel=1e-6)


def test_overlays_are_served_by_label_studio_without_a_hand_made_storage(env, project):
    """The overlay folder lies outside the frames' storage; the backend connected it (a Local
    Storage whose Sync imports nothing) and Label Studio serves each task's overlay."""
    storages = env.api.local_storages(project.id)
    assert str(env.media / "overlays") in {s["path"] for s in storages}
    for ls_task in project.tasks.values():
        url = ls_task["data"][lsp.OVERLAY_KEY]
        assert url.startswith("/data/local-files/?d=overlays/"), url
        served = env.api.download(url)  # through Label Studio, as the browser fetches it
        assert served == (env.media / url.split("?d=", 1)[1]).read_bytes()
    for storage in storages:  # "Sync" adds no task (the overlay storage's filter matches no file)
        if storage["path"] == str(env.media / "overlays"):
            env.api.request("POST", f"/api/storages/localfiles/{storage['id']}/sync")
    assert len(list(env.api.iter_tasks(project.id, with_annotations=False))) == len(project.tasks)


def test_forged_webhooks_are_refused_without_credentials(env, project):
    """An anonymous ANNOTATION_CREATED (a brush over the whole frame) for a waiting task is refused
    and submits nothing; with the backend's credentials the same body is submitted."""
    task = env.tasks[1]
    (ls_id,) = [i for i, t in project.tasks.items() if _frame_path(env, t) == task.frame_uri]
    h, w = task.height, task.width
    body = {"action": "ANNOTATION_CREATED", "project": {"id": project.id},
            "annotation": {"id": 99001, "result": _strokes(np.ones((h, w), bool), "sky")},
            "task": {"id": ls_id, "data": project.tasks[ls_id]["data"]}}
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:guess".encode()).decode()}
    for headers in ({}, wrong):
        for _ in range(3):
            status, reply = json_call(env.backend.url, "/webhook", body, headers=headers)
            assert status == 401, reply
    assert task.task_id not in annotations_by_task(env.stack, env.pool.pool_id)
    status, reply = json_call(env.backend.url, "/webhook", body, headers=BASIC)
    assert status == 201 and reply["task_id"] == task.task_id, reply
    assert task.task_id in annotations_by_task(env.stack, env.pool.pool_id)


def test_setup_cannot_point_downloads_at_another_host(env, project):
    """/setup names a capture server as Label Studio's hostname; later downloads still go only to
    the configured Label Studio, and an absolute URL of another host is refused unfetched."""
    import http.server
    import threading

    seen: list[tuple[str, str]] = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    here = f"http://127.0.0.1:{capture.server_address[1]}"
    try:
        status, _ = json_call(env.backend.url, "/setup", {"project": f"{project.id}.0", "schema": lsp.label_config(),
                                                          "hostname": here, "access_token": env.ls.token},
                              headers=BASIC)
        assert status == 200
        for image in ("/data/upload/1/frame.png", f"{here}/data/upload/1/frame.png"):
            status, reply = json_call(env.backend.url, "/predict", {
                "project": f"{project.id}.0", "tasks": [{"id": 1, "data": {"image": image}}]}, headers=BASIC)
            assert 400 <= status < 600 and status != 500 and reply["error"], (image, status, reply)
        status, reply = json_call(env.backend.url, "/predict", {
            "project": f"{project.id}.0", "tasks": [{"id": 1, "data": {"image": f"{here}/x.png"}}]}, headers=BASIC)
        assert status == 400 and "only the configured Label Studio" in reply["error"], reply
        assert seen == []  # the capture server saw no request, so no token
    finally:
        capture.shutdown()
        capture.server_close()


def _strokes(mask: np.ndarray, label: str) -> list[dict]:
    (rle,) = sdk_brush([{"op": "mask2rle", "mask": (mask.astype(np.uint8) * 255).tolist()}])
    h, w = mask.shape
    return [{"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": w,
             "original_height": h, "image_rotation": 0, "value": {"format": "rle", "rle": rle, "brushlabels": [label]}}]


def _wait(predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_annotation_saved_in_label_studio_reaches_the_coordinator(env, project):
    from clients.labeling import region_masks
    task = env.tasks[0]  # a coordinator task of the ranked cycle
    (ls_id,) = [i for i, t in project.tasks.items() if _frame_path(env, t) == task.frame_uri]
    region = region_masks(task)[0]
    env.api.create_annotation(ls_id, _strokes(region, "bus"))  # as a person's browser posts it
    _wait(lambda: task.task_id in annotations_by_task(env.stack, env.pool.pool_id), what="the webhook")
    ann = annotations_by_task(env.stack, env.pool.pool_id)[task.task_id]
    stored = imageio.read_label(ann.mask_uri)
    assert (stored[region] == NAME_TO_TRAIN_ID["bus"]).all() and (stored[~region] == IGNORE).all()
    assert list(ann.region_ids) == [task.regions[0].region_id] and ann.client_id.startswith("label-studio-ml@")




def test_malformed_requests_get_4xx_with_a_message_never_500(env, project):
    some_task = next(iter(project.tasks.values()))
    frame_url = some_task["data"][lsp.FRAME_KEY]
    good_ann = {"id": 1, "result": _strokes(np.ones((64, 128), bool), "road")}
    cases = [
        ("/predict", None, b"{not json", 400, "not JSON"),
        ("/predict", {"project": "1.2"}, None, 400, "has no 'tasks'"),
        ("/predict", {"tasks": "t"}, None, 400, "tasks must be list"),
        ("/predict", {"tasks": []}, None, 400, "tasks is empty"),
        ("/predict", {"tasks": [{"id": 5, "data": {}}]}, None, 400, "data has no 'image'"),
        ("/predict", {"tasks": [{"id": 5, "data": {"image": "/data/local-files/?d=../../etc/passwd"}}]}, None, 400,
         "not inside the document root"),
        ("/predict", {"tasks": [{"id": 5, "data": {"image": "/data/local-files/?d=ds/nope.png"}}]}, None, 404,
         "does not exist"),
        ("/predict", {"tasks": [{"id": 5, "data": {"image": "/data/local-files/?d=ds/leftImg8bit"}}]}, None, 404,
         "does not exist"),
        ("/setup", {"project": "1.2", "schema": "<View><Image name='image' value='$image'/></View>"}, None, 400,
         "expected a BrushLabels control"),
        ("/setup", {"project": "x", "schema": lsp.label_config()}, None, 400, "project must be"),
        ("/webhook", [], None, 400, "must be a JSON object"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "task": {"data": {"image": frame_url}}}, None, 400,
         "has no 'annotation'"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": project.id},
                      "annotation": {"id": 2, "result": _strokes(np.ones((64, 128), bool), "unicorn")},
                      "task": {"id": 3, "data": {"image": frame_url}}}, None, 422, "unknown label 'unicorn'"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": project.id},
                      "annotation": {"id": 3, "result": _strokes(np.ones((8, 8), bool), "road")},
                      "task": {"id": 3, "data": {"image": frame_url}}}, None, 422, "drawn on a 8 x 8 image"),
        ("/nowhere", {}, None, 404, "unknown path"),
    ]
    for path, body, raw, code, text in cases:
        status, reply = json_call(env.backend.url, path, body, raw, headers=BASIC)
        assert (status, text in reply.get("error", "")) == (code, True), (path, body, status, reply)
    # A frame of the pool that no coordinator task waits for (not in the ranked cycle): 409.
    ranked = {t.frame_uri for t in env.tasks}
    idle = next(t for t in project.tasks.values() if _frame_path(env, t) not in ranked)
    status, reply = json_call(env.backend.url, "/webhook", {"action": "ANNOTATION_UPDATED", "project": {"id": project.id},
                                            "annotation": good_ann, "task": {"id": idle["id"], "data": idle["data"]}},
                              headers=BASIC)
    assert status == 409 and "no coordinator task waits for it" in reply["error"]
    status, reply = json_call(env.backend.url, "/webhook", {"action": "PROJECT_UPDATED", "project": {"id": project.id}},
                              headers=BASIC)
    assert (status, reply["status"]) == (200, "ignored")
    status, reply = json_call(env.backend.url, "/predict", None, raw=b"{}",
                              headers={"Content-Length": str(1 << 40), **BASIC})
    assert status == 413 and "larger than" in reply["error"]
    status, reply = json_call(env.backend.url, "/predict", None, method="GET", headers=BASIC)
    assert status == 405 and "takes POST" in reply["error"]
    status, reply = json_call(env.backend.url, "/health", None, method="GET")
    assert status == 200 and reply["status"] == "UP"


def _screenshot(browser: Chromium) -> bytes:
    return base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])


def test_screenshot_of_the_sorted_task_list_with_the_pre_annotation(env, project, tmp_path):
    if env.chromium == "missing":
        pytest.skip("no Chromium (scripts/setup_label_studio.sh installs it with apt-get as root)")
    scores = {i: t["predictions"][0]["score"] for i, t in project.tasks.items()}
    by_score = sorted(scores, key=lambda i: -scores[i])
    # The best-scored task nobody has annotated yet (an annotation would replace the pre-annotation).
    top = next(i for i in by_score if not env.api.get_task(i)["annotations"])
    names = sorted(r["value"]["brushlabels"][0] for r in project.tasks[top]["predictions"][0]["result"])
    cookies = django_login(env.ls.url, env.ls.username, env.ls.password)
    browser = Chromium(env.chromium, tmp_path / "chromium-profile")
    try:
        browser.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
        browser.call("Network.enable")
        for name, value in cookies.items():
            browser.call("Network.setCookie", name=name, value=value, domain="127.0.0.1", path="/")
        # 1. The data manager's task table in the view sorted by the prediction (EEM) score.
        browser.call("Page.navigate", url=f"{env.ls.url}/projects/{project.id}/data?tab={project.view}")
        shown = [f"{scores[i]:.3f}" for i in by_score[:3]]
        text = lambda: browser.evaluate("document.body.innerText") or ""  # noqa: E731
        _wait(lambda: all(s in text() for s in shown), timeout_s=90, what=f"the scores {shown} in the task table")
        positions = [text().index(s) for s in shown]
        assert positions == sorted(positions), (shown, positions)  # highest score first
        time.sleep(1.0)
        table = _screenshot(browser)
        # 2. The best-scored open task: the overlay with the pre-annotated regions, beside the sorted list.
        browser.call("Page.navigate", url=f"{env.ls.url}/projects/{project.id}/data?tab={project.view}&task={top}")
        images = "Array.from(document.images).filter(i => i.src.startsWith('blob:') && i.complete)"
        _wait(lambda: (browser.evaluate(f"{images}.filter(i => i.naturalWidth == 128).length") or 0) >= 1,
              timeout_s=90, what="the task's overlay in the labeling area")
        titles = "Array.from(document.querySelectorAll('.lsf-outliner-item__title')).map(e => e.innerText)"
        # the outliner renders only the rows that fit (20 regions do not), so: enough rows, and every
        # row one of the prediction's regions
        shown_regions = lambda: browser.evaluate(titles) or []  # noqa: E731
        _wait(lambda: len(shown_regions()) >= min(len(names), 8) and set(shown_regions()) <= set(names),
              timeout_s=60, what=f"the pre-annotated regions {names} in the Regions panel")
        labeling_text = text()
        time.sleep(1.5)  # let the canvas draw the brush layers
        task_page = _screenshot(browser)
    finally:
        browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path, png in ((ARTIFACTS / "ml_backend_task_list.png", table), (SORTED_SCREENSHOT, table),
                      (ARTIFACTS / "ml_backend_pre_annotation.png", task_page)):
        imageio.atomic_write_bytes(path, png)
        assert imageio.decode_image(png).shape == (1000, 1600, 3)
        print(f"\nscreenshot: {path}")
    assert "EEM heat map" in labeling_text and "Plain frame" in labeling_text

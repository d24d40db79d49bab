"""The Label Studio bridge against a real Label Studio 1.23.2 (its own venv, made by
scripts/setup_label_studio.sh; SQLite in a temp folder; ephemeral port), the real coordinator, EEM
service and inference server. Annotations go in through Label Studio's own API, as a person's
browser posts them, with brush RLE made by label_studio_sdk (run in the Label Studio venv), and are
found back in the coordinator. One test opens the task page in headless Chromium and saves a
screenshot under artifacts/label_studio/.

Skips (with the reason) only when the Label Studio venv cannot be made, e.g. without a package index.
"""
from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest

from clients.label_studio import brush
from clients.label_studio.api import LabelStudioAPI
from clients.label_studio.bridge import Bridge, BridgeConfig
from clients.label_studio.local import LocalLabelStudio, LocalLabelStudioConfig
from clients.label_studio import project as lsp
from clients.label_studio.project import class_colour_hex
from clients.labeling import LabelingConfig, region_masks
from segxal import imageio
from segxal.errors import InvalidInput, NotFound, NotReady, PermissionDenied
from segxal.labels import CLASS_NAMES, IGNORE, LABEL_MAP_FILE, NAME_TO_TRAIN_ID, load_label_map
from services.coordinator.client import CoordinatorClient, cityscapes_source
from tests.coordinator_support import REPO_ROOT
from tests.net_support import free_port
from tests.labeling_support import (LS_VENV, Chromium, annotations_by_task, django_login, eem_pool, sdk_brush,
                                    serving_stack)

ARTIFACTS = REPO_ROOT / "artifacts" / "label_studio"


@pytest.fixture(scope="module")
def ls(ls_tools, tmp_path_factory):
    """A Label Studio server on an ephemeral port; `token` follows a token reset (the last test)."""
    root = tmp_path_factory.mktemp("label-studio")
    cfg = LocalLabelStudioConfig(data_dir=str(root / "data"), document_root=str(root / "media"), venv=str(LS_VENV),
                                 template_dir=str(LS_VENV / "segxal-data-template"))
    with LocalLabelStudio(cfg) as server:
        yield SimpleNamespace(server=server, url=server.url, token=server.token, api=server.api(),
                              media=root / "media", chromium=ls_tools.get("chromium", "missing"))


@pytest.fixture(scope="module")
def stack(tiny_dataset, tmp_path_factory):
    with serving_stack(tmp_path_factory.mktemp("ls-stack"), tiny_dataset) as s:
        yield s


def _bridge_config(ls, stack, pool: str, work_dir, **overrides) -> BridgeConfig:
    labeling = LabelingConfig(coordinator=stack.coordinator, pool=pool, lease_s=60)
    cfg = dict(labeling=labeling, ls_url=ls.url, ls_token=ls.token, project_title=f"SegXAL {pool}",
               work_dir=str(work_dir), media_dir=str(ls.media / pool), ls_document_root=str(ls.media),
               frame_roots=[str(stack.dataset), str(stack.coordinator_storage)], eem_target=stack.eem,
               max_waiting=2, poll_s=3600.0)  # no poll within a test: only webhooks (or sync()) move things
    cfg.update(overrides)
    return BridgeConfig(**cfg)


@contextlib.contextmanager
def _running(bridge: Bridge):
    """The bridge's serve loop in a thread (webhooks are handled as they come)."""
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), name="bridge-run")
    thread.start()
    try:
        yield bridge
    finally:
        stop.set()
        thread.join(30)


def _wait(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _brush(mask: np.ndarray, label: str, rle: list[int]) -> dict:
    """A brush result as the Label Studio frontend posts it."""
    h, w = mask.shape
    return {"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": w,
            "original_height": h, "image_rotation": 0, "value": {"format": "rle", "rle": rle, "brushlabels": [label]}}


def _strokes(*pairs: tuple[np.ndarray, str]) -> list[dict]:
    """Brush results for (mask, label) pairs, RLE by label_studio_sdk's mask2rle (0/255 masks)."""
    rles = sdk_brush([{"op": "mask2rle", "mask": (m.astype(np.uint8) * 255).tolist()} for m, _ in pairs])
    return [_brush(m, label, rle) for (m, label), rle in zip(pairs, rles)]


def _still_leased(stack, pool_id: str, task_id: str) -> bool:
    """True when no other client can lease the task now (its lease is held)."""
    with CoordinatorClient(stack.coordinator, client_id="competitor") as other:
        got = other.lease(pool_id, max_tasks=10, lease_seconds=30)
        for t in got:
            other.release(t)
    return task_id not in {t.task_id for t in got}


# ---------------------------------------------------------------- brush RLE

def test_brush_rle_matches_label_studio_sdk_byte_for_byte(ls_tools):
    rng = np.random.default_rng(0)
    masks = [np.zeros((3, 5), bool), np.ones((300, 400), bool),  # one run of 480 000 values: 65536-blocks
             rng.random((40, 70)) > 0.5, rng.random((64, 128)) > 0.97]
    blob = np.zeros((129, 127), bool)
    blob[20:90, 30:100] = True
    blob[0, 0] = blob[-1, -1] = True
    masks.append(blob)
    theirs = sdk_brush([{"op": "mask2rle", "mask": (m.astype(np.uint8) * 255).tolist()} for m in masks])
    ours = [brush.encode_mask(m) for m in masks]
    assert ours == theirs
    decoded_by_sdk = sdk_brush([{"op": "decode", "rle": r, "height": m.shape[0], "width": m.shape[1]}
                                for r, m in zip(ours, masks)])
    for m, theirs_rle, sdk_alpha in zip(masks, theirs, decoded_by_sdk):
        np.testing.assert_array_equal(np.array(sdk_alpha) == 255, m)
        np.testing.assert_array_equal(brush.decode_alpha(theirs_rle, *m.shape) == 255, m)


# ---------------------------------------------------------------- the bridge

def test_bridge_makes_the_cityscapes_project_and_pre_annotated_tasks(ls, stack, tmp_path):
    pool, tasks = eem_pool(stack, "ls-tasks", batch=2)
    with Bridge(_bridge_config(ls, stack, "ls-tasks", tmp_path)) as bridge:
        project = ls.api.get_project(bridge.project_id)
        control = project["parsed_label_config"]["label"]
        assert '<Header value="$segxal_why"' in project["label_config"]
        assert control["type"] == "BrushLabels" and control["labels"] == CLASS_NAMES
        assert all(control["labels_attrs"][n]["background"] == class_colour_hex(i) for i, n in enumerate(CLASS_NAMES))
        assert set(bridge.waiting) == {t.task_id for t in tasks}
        assert _still_leased(stack, pool.pool_id, tasks[0].task_id)
        for task in tasks:
            ls_task = ls.api.get_task(bridge.waiting[task.task_id])
            # why it was picked, shown under the title: the selection's reasons (or, without any, the score)
            why = ls_task["data"]["segxal_why"]
            assert why.startswith("Why this frame: ") and f"score {task.score:.4f}" in why
            frame = _served(ls, ls_task["data"]["image"])
            assert frame == open(task.frame_uri, "rb").read()  # the frame, served as a local file
            overlay = imageio.decode_image(_served(ls, ls_task["data"]["overlay"]))
            assert overlay.shape == (task.height, task.width, 3)
            # The heat map over the frame, the regions outlined (white), the frame elsewhere where sure.
            regions = np.any(region_masks(task), axis=0)
            assert (overlay[regions] == 255).all(axis=-1).any()
            (prediction,) = ls_task["predictions"]
            results = prediction["result"]
            alphas = sdk_brush([{"op": "decode", "rle": r["value"]["rle"], "height": task.height,
                                 "width": task.width} for r in results])
            predicted = imageio.read_label(task.prediction_uri)
            painted = np.zeros((task.height, task.width), bool)
            for r, alpha in zip(results, alphas):
                mask = np.array(alpha) == 255
                (label,) = r["value"]["brushlabels"]
                assert (predicted[mask] == NAME_TO_TRAIN_ID[label]).all()  # the model's class inside the region
                painted |= mask
            np.testing.assert_array_equal(painted, np.any(region_masks(task), axis=0))  # exactly the regions


def _served(ls, url: str) -> bytes:
    req = urllib.request.Request(ls.url + url, headers={"Authorization": f"Token {ls.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def test_annotation_submitted_in_label_studio_reaches_the_coordinator(ls, stack, tmp_path):
    pool, (task,) = eem_pool(stack, "ls-submit", batch=1)
    region = region_masks(task)[0]
    box = task.regions[0].bbox
    left = region.copy()
    left[:, box.x + box.width // 2:] = False  # the region's left half is a car, the rest road
    rest = region & ~left
    outside = ~np.any(region_masks(task), axis=0)
    sky = np.zeros_like(region)
    sky[np.argwhere(outside)[0][0], np.argwhere(outside)[0][1]] = True  # one pixel outside every region
    # A one-second lease: only the bridge's heartbeats keep it while the task waits for the person.
    labeling = LabelingConfig(coordinator=stack.coordinator, pool="ls-submit", lease_s=1.0, heartbeat_s=0.2)
    with Bridge(_bridge_config(ls, stack, "ls-submit", tmp_path, max_waiting=1, labeling=labeling)) as bridge, \
            _running(bridge):
        ls_id = bridge.waiting[task.task_id]
        time.sleep(2.5)
        assert _still_leased(stack, pool.pool_id, task.task_id)
        ls.api.create_annotation(ls_id, _strokes((left, "car"), (rest, "road"), (sky, "sky")), lead_time=12.5)
        _wait(lambda: task.task_id in bridge.submitted, what="the webhook to bring the annotation back")
    ann = annotations_by_task(stack, pool.pool_id)[task.task_id]
    expected = np.full(region.shape, IGNORE, np.uint8)
    expected[left] = NAME_TO_TRAIN_ID["car"]
    expected[rest] = NAME_TO_TRAIN_ID["road"]
    expected[sky] = NAME_TO_TRAIN_ID["sky"]
    np.testing.assert_array_equal(imageio.read_label(ann.mask_uri), expected)
    assert ann.annotation_id == bridge.submitted[task.task_id]
    assert ann.scope == 2 and list(ann.region_ids) == [task.regions[0].region_id]  # ANNOTATION_SCOPE_REGIONS
    # The coordinator counts the pixels decided inside the fixed regions; the sky pixel is outside them.
    assert ann.pixels_count == int(region.sum()) and ann.client_id.startswith("label-studio@")


def test_unreadable_annotations_are_never_submitted_and_the_task_stays_leased(ls, stack, tmp_path):
    pool, (task,) = eem_pool(stack, "ls-bad", batch=1)
    region = np.any(region_masks(task), axis=0)
    with Bridge(_bridge_config(ls, stack, "ls-bad", tmp_path, max_waiting=1)) as bridge, _running(bridge):
        ls_id = bridge.waiting[task.task_id]
        bad = ls.api.create_annotation(ls_id, _strokes((region, "unicorn")))
        _wait(lambda: "unknown label 'unicorn'" in bridge.errors.get(task.task_id, ""), what="the unknown label")
        for result, why in [([], "empty annotation"),
                            (_strokes((~region, "road")), "paints none of the task's"),
                            ([{"from_name": "label", "to_name": "image", "type": "polygonlabels",
                               "value": {"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": ["car"]}}],
                             "'polygonlabels' result")]:
            ls.api.request("PATCH", f"/api/annotations/{bad['id']}", {"result": result})
            _wait(lambda: why in bridge.errors.get(task.task_id, ""), what=why)
            assert task.task_id in bridge.waiting and task.task_id not in bridge.submitted
            assert "stays leased" in bridge.errors[task.task_id]
        assert _still_leased(stack, pool.pool_id, task.task_id)
        assert annotations_by_task(stack, pool.pool_id) == {}
        # The person fixes the annotation: now it goes through.
        ls.api.request("PATCH", f"/api/annotations/{bad['id']}", {"result": _strokes((region, "person"))})
        _wait(lambda: task.task_id in bridge.submitted, what="the corrected annotation")
    stored = imageio.read_label(annotations_by_task(stack, pool.pool_id)[task.task_id].mask_uri)
    assert (stored[region] == NAME_TO_TRAIN_ID["person"]).all() and (stored[~region] == IGNORE).all()


def test_a_four_class_label_map_is_the_projects_labels_and_comes_back_as_its_class_ids(ls, stack, tmp_path):
    """The pool's classes come from the data's label map (as `segxal loop` makes it); the bridge's
    project gets them as its labels, and a person's strokes come back as their indices."""
    (tmp_path / LABEL_MAP_FILE).write_text(json.dumps({"flat": ["road", "sidewalk"], "vehicle": ["car", "bus"],
                                                       "human": ["person", "rider"], "sky": ["sky"]}))
    names = load_label_map(tmp_path / LABEL_MAP_FILE).names
    with CoordinatorClient(stack.coordinator, client_id="test-setup") as c:
        pool = c.create_pool("ls-four", class_names=names)
        c.ingest(pool.pool_id, [cityscapes_source(str(stack.dataset), "val")])
        (task,) = c.rank_cycle(c.start_cycle(pool.pool_id, 1, selection="random", random_seed=3).cycle_id).tasks
    cityscapes = ls.api.create_project("Cityscapes labels", lsp.label_config())
    with pytest.raises(InvalidInput, match=r"labels must be the 4 classes .*classes \['flat', 'vehicle', 'human'\] "
                                           r"have no label"):
        Bridge(_bridge_config(ls, stack, "ls-four", tmp_path / "old", project_id=cityscapes["id"])).start()
    with Bridge(_bridge_config(ls, stack, "ls-four", tmp_path / "bridge", max_waiting=1)) as bridge, \
            _running(bridge):
        control = ls.api.get_project(bridge.project_id)["parsed_label_config"]["label"]
        assert control["labels"] == list(names)
        assert [control["labels_attrs"][n]["background"] for n in names] == [
            class_colour_hex(i, names) for i in range(4)]
        ls_id = bridge.waiting[task.task_id]
        top = np.zeros((task.height, task.width), bool)
        top[: task.height // 2] = True
        left = ~top
        left[:, task.width // 2:] = False
        bad = ls.api.create_annotation(ls_id, _strokes((top, "car")))  # a Cityscapes name: not this project's
        _wait(lambda: "unknown label 'car'" in bridge.errors.get(task.task_id, ""), what="the Cityscapes label")
        assert "the 4 classes being labelled (flat, vehicle, human, sky)" in bridge.errors[task.task_id]
        ls.api.request("PATCH", f"/api/annotations/{bad['id']}", {"result": _strokes((top, "vehicle"), (left, "sky"))})
        _wait(lambda: task.task_id in bridge.submitted, what="the four-class annotation")
    expected = np.full(top.shape, IGNORE, np.uint8)
    expected[top], expected[left] = 1, 3  # vehicle, sky: their indices in the label map
    np.testing.assert_array_equal(imageio.read_label(annotations_by_task(stack, pool.pool_id)[task.task_id].mask_uri),
                                  expected)


def test_tasks_deleted_or_skipped_in_label_studio_are_released(ls, stack, tmp_path):
    pool, (task,) = eem_pool(stack, "ls-delete", batch=1)
    with Bridge(_bridge_config(ls, stack, "ls-delete", tmp_path, max_waiting=1)) as bridge:
        first = bridge.waiting[task.task_id]
        ls.api.delete_task(first)
        bridge.sync()  # the webhook's event (or the poll) releases it; the refill leases it again
        assert bridge.errors[task.task_id] == "deleted in Label Studio"
        second = bridge.waiting[task.task_id]
        assert second != first and bridge.session.get(task.task_id).task.lease_count == 2  # released, re-leased
        ls.api.create_annotation(second, [], was_cancelled=True)  # the person presses Skip
        _wait(lambda: (bridge.sync(), bridge.errors.get(task.task_id) == "skipped in Label Studio")[1],
              what="the skip")
        with pytest.raises(NotFound):
            ls.api.get_task(second)  # removed from Label Studio too
        assert bridge.session.get(task.task_id).task.lease_count == 3


def test_restarted_bridge_adopts_its_leases_and_collects_what_came_in_meanwhile(ls, stack, tmp_path):
    pool, tasks = eem_pool(stack, "ls-restart", batch=2)
    cfg = _bridge_config(ls, stack, "ls-restart", tmp_path, webhook=False, labeling=LabelingConfig(
        coordinator=stack.coordinator, pool="ls-restart", lease_s=60, client_id="bridge-a"))
    with Bridge(cfg) as bridge:
        waiting = bridge.waiting
    done = tasks[0]
    ls.api.create_annotation(waiting[done.task_id], _strokes((np.any(region_masks(done), axis=0), "truck")))
    with Bridge(cfg) as again:  # start() adopts the leases from the state file and polls
        assert again.submitted.keys() == {done.task_id}
        assert again.waiting == {tasks[1].task_id: waiting[tasks[1].task_id]}  # same Label Studio task
        assert len(list(ls.api.iter_tasks(again.project_id))) == 2  # nothing pushed twice
        assert _still_leased(stack, pool.pool_id, tasks[1].task_id)


def test_a_personal_access_token_works_like_the_legacy_token(ls):
    pat = ls.api.request("POST", "/api/token/")["token"]  # a JWT refresh token (Account & Settings)
    api = LabelStudioAPI(ls.url, pat)
    assert api.whoami()["email"] == ls.server.username  # exchanged at /api/token/refresh for an access token
    with pytest.raises(PermissionDenied, match="401"):
        LabelStudioAPI(ls.url, pat[:-4] + "abcd").whoami()


def test_label_studio_down_or_refusing_the_token(ls, stack, tmp_path):
    pool, tasks = eem_pool(stack, "ls-faults", batch=2)
    down = _bridge_config(ls, stack, "ls-faults", tmp_path / "a", ls_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(NotReady, match=r"Label Studio at http://127\.0\.0\.1:\d+ is unreachable"):
        Bridge(down).start()
    with pytest.raises(PermissionDenied, match=r"refused the API token \(401"):
        Bridge(_bridge_config(ls, stack, "ls-faults", tmp_path / "b", ls_token="0" * 40)).start()
    assert not _still_leased(stack, pool.pool_id, tasks[0].task_id)  # nothing was leased

    bridge = Bridge(_bridge_config(ls, stack, "ls-faults", tmp_path / "c", max_waiting=1))
    bridge.start()
    try:
        (task_id, ls_id), = bridge.waiting.items()
        # The token is revoked while the task waits: the person's annotation cannot be read.
        ls.token = ls.api.request("POST", "/api/current-user/reset-token/")["token"]
        ls.api = LabelStudioAPI(ls.url, ls.token)
        ls.api.create_annotation(ls_id, _strokes((np.any(region_masks(tasks[0]), axis=0), "car")))
        bridge.sync()
        assert bridge.waiting == {task_id: ls_id} and bridge.submitted == {}
        assert _still_leased(stack, pool.pool_id, task_id) and annotations_by_task(stack, pool.pool_id) == {}
        # The person deletes the task: the webhook releases it, and a new lease cannot be pushed (401),
        # so it is released at once rather than left to lapse.
        ls.api.delete_task(ls_id)
        _wait(lambda: (bridge.sync(), "401" in bridge.errors.get(task_id, ""))[1], what="the failed push")
        assert bridge.waiting == {}
        assert "could not put the task into Label Studio" in bridge.errors[task_id]
        with CoordinatorClient(stack.coordinator, client_id="competitor") as other:
            assert {t.task_id for t in other.lease(pool.pool_id, max_tasks=5)} == {t.task_id for t in tasks}
    finally:
        bridge.close()


# ---------------------------------------------------------------- what a person sees

# (height, width): Label Studio's Regions panel renders only the rows that fit on the screen, so the
# page is tall enough for every region of the frame (11 with the class-balanced CAM; 900 px showed 9)
VIEWPORT = (2000, 1400)


def test_task_page_in_chromium_shows_the_pre_annotated_regions(ls, stack, tmp_path):
    if ls.chromium == "missing":
        pytest.skip("no Chromium (scripts/setup_label_studio.sh installs it with apt-get as root)")
    pool, (task,) = eem_pool(stack, "ls-browser", batch=1)
    with Bridge(_bridge_config(ls, stack, "ls-browser", tmp_path, max_waiting=1)) as bridge:
        ls_id = bridge.waiting[task.task_id]
        names = [r["value"]["brushlabels"][0] for r in ls.api.get_task(ls_id)["predictions"][0]["result"]]
        cookies = django_login(ls.url, ls.server.username, ls.server.password)
        browser = Chromium(ls.chromium, tmp_path / "chromium-profile")
        try:
            browser.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[1], height=VIEWPORT[0], deviceScaleFactor=1,
                         mobile=False)
            browser.call("Network.enable")
            for name, value in cookies.items():
                browser.call("Network.setCookie", name=name, value=value, domain="127.0.0.1", path="/")
            browser.call("Page.navigate", url=f"{ls.url}/projects/{bridge.project_id}/data?task={ls_id}")
            # The labeling area shows the frame and the heat map, fetched from local files into blob: images.
            images = "Array.from(document.images).filter(i => i.src.startsWith('blob:'))"
            loaded = f"{images}.filter(i => i.complete && i.naturalWidth == {task.width}).length"
            _wait(lambda: browser.evaluate(loaded) == 2
                  and "EEM heat map" in (browser.evaluate("document.body.innerText") or ""),
                  timeout_s=60, what="the task page with the frame and the heat map")
            # The Regions panel (Label Studio's outliner) lists the pre-annotated brush regions by class.
            titles = "Array.from(document.querySelectorAll('.lsf-outliner-item__title')).map(e => e.innerText)"
            _wait(lambda: sorted(browser.evaluate(titles) or []) == sorted(names),
                  timeout_s=30, what=f"the regions {sorted(names)} in the Regions panel")
            time.sleep(1.0)  # let the canvas finish drawing the brush layers
            shown = _screenshot(browser)
            # Hide the regions (the Regions panel's eye): the frame's pixels must change where they were.
            browser.evaluate("document.querySelector('button[aria-label=\"Hide all regions\"]').click()")
            _wait(lambda: browser.evaluate("!!document.querySelector('button[aria-label=\"Show all regions\"]')"),
                  what="the regions to hide")
            time.sleep(1.0)
            hidden = _screenshot(browser)
            # The labeling area draws the frame on Konva canvases; the first drawn canvas is the frame's.
            frame_box = browser.evaluate(
                "(() => { const r = Array.from(document.querySelectorAll('canvas:not([class*=overlay])'))"
                ".map(c => c.getBoundingClientRect()).filter(r => r.width > 0)[0];"
                " return [r.x, r.y, r.width, r.height].map(Math.round); })()")
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "task_page.png"
    imageio.write_png(path, shown)
    imageio.write_png(tmp_path / "task_page.png", shown)
    imageio.write_png(ARTIFACTS / "task_page_regions_hidden.png", hidden)
    print(f"\nscreenshot of the Label Studio task page: {path}")
    assert shown.shape == (*VIEWPORT, 3)
    x, y, w, h = frame_box
    assert w > 100 and h > 50, frame_box  # the frame is on screen
    on_frame = np.abs(shown[y:y + h, x:x + w].astype(int) - hidden[y:y + h, x:x + w].astype(int)).max(axis=-1)
    region_screen_share = np.any(region_masks(task), axis=0).mean()
    assert (on_frame > 8).mean() > 0.5 * region_screen_share  # the brush layer tints the regions on screen
    assert (np.abs(shown.astype(int) - hidden.astype(int)).max(axis=-1) > 8)[:, 1080:].mean() < 0.2


def _screenshot(browser: Chromium) -> np.ndarray:
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    return imageio.decode_image(png)  # [*VIEWPORT, 3]

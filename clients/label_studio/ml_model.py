"""What SegXAL's Label Studio ML backend does for each call of Label Studio's ML backend protocol
(label_studio/ml/api_connector.py in Label Studio 1.23.2; label-studio-ml's api.py):

    GET  /health   -> {"status": "UP", "model_class": ...}           (Label Studio waits 1 s)
    POST /setup    {project, schema, hostname, access_token, extra_params}
                   -> {"model_version": ...}                          (Label Studio waits 3 s)
    POST /predict  {tasks: [{id, data, ...}], project, label_config, params}
                   -> {"results": [{"result": [...], "score": s, "model_version": v}, ...], "model_version": v}
    POST /webhook  {action, annotation, project, task}                (Label Studio adds this webhook
                   itself when the backend is connected; every action is sent)

/predict scores each task's frame with the EEM service: the pre-annotation is the model's
prediction restricted to the EEM regions to fix (brush results, one per class per region) and
`score` is the frame's EEM score, so the data manager sorts the project by it. The task also gets
an `overlay` image (the heat map blended over the frame, regions outlined), written as a local
file and set in the task's data through Label Studio's API, which the project's label config shows.
Label Studio refuses an import that lacks a key the label config names, so tasks are imported as
{"image": URL, "overlay": URL} (the same URL: the plain frame until the first prediction).

/webhook on ANNOTATION_CREATED / ANNOTATION_UPDATED reads the brush annotation as trainIds and
forwards it: to the coordinator (lease the waiting task of that frame, submit; region ids are the
regions the person painted in), or to the trainer (start a job on it), or nowhere.

Classes: the project's labels must be the classes being labelled (index = class id): the coordinator
pool's (`Pool.class_names`, the segmentation model's) when annotations go to a coordinator, else the
19 Cityscapes trainIds. /setup refuses a label config with other labels, naming the difference.

Frames: a task's `image` is `/data/local-files/?d=<path>` or `file://<path>` (read from the
LOCAL_FILES_DOCUMENT_ROOT as this backend sees it; anything outside it is refused), or a URL of the
configured Label Studio (--ls-url: a path such as /data/upload/..., or an absolute URL of that
origin), downloaded with the token into a cache folder. No other host is ever asked: the token
goes only to --ls-url, and /setup's `hostname` is not used. The EEM service reads frames by path,
so its storage roots must hold the document root and the cache.

Security: with basic auth configured (basic_auth_user / basic_auth_pass) every route but /health
needs it (the HTTP edge checks, clients.label_studio.ml_backend); a backend that forwards
annotations refuses to start without it unless insecure_no_auth is set.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

from clients.label_studio import project as lsp
from clients.label_studio.api import LabelStudioAPI
from clients.label_studio.ml_project import set_up_project
from clients.label_studio.overlay import eem_overlay_png
from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.annotation import Rle, decode_rle
from segxal.errors import FailedPrecondition, InvalidInput, NotFound, NotReady, PermissionDenied, SegxalError
from segxal.labels import CLASS_NAMES
from services.common.channel import ChannelConfig

log = logging.getLogger(__name__)

FORWARD_MODES = ("coordinator", "trainer", "none")
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
LOCAL_FILES_PREFIX = "/data/local-files/"
FRAME_LIST_REFRESH_S = 10.0  # least time between two listings of the pool's frames
# When /setup or /predict has answered, the project is set up (clients.label_studio.ml_project)
# after these delays: Label Studio writes the project's model version (the backend's title) only
# after /setup returns, and accepts a version for the project only once predictions of it are
# saved (after /predict returns), so one pass may come too early; every pass is idempotent.
PROJECT_SETUP_DELAYS_S = (0.5, 2.0, 6.0, 15.0)


@dataclass
class MLBackendConfig:
    host: str = "127.0.0.1"
    port: int = 9090  # Label Studio's examples use 9090; 0: a free port
    eem_target: str = "127.0.0.1:50071"  # the EEM scoring service
    eem: EEMOptions = field(default_factory=EEMOptions)
    eem_timeout_s: float = 60.0
    # Label Studio's LOCAL_FILES_DOCUMENT_ROOT as this backend (and the EEM service) sees it.
    ls_document_root: str = ""
    # Overlays are written here (strictly inside ls_document_root) and set as the task's `overlay`.
    media_dir: str = ""
    cache_dir: str = "runs/ls-ml-cache"  # frames downloaded from Label Studio (must be an EEM root)
    # Label Studio's URL: the only origin frames are fetched from and the API is called at (never the
    # hostname /setup sends, which any caller could name); empty: local files only, no overlays set.
    ls_url: str = ""
    ls_token: str = ""  # API token; empty: the access token /setup sends (used only with ls_url)
    # The overlay folder as Label Studio's host sees it (for its Local Storage); empty: media_dir.
    ls_media_dir: str = ""
    # HTTP basic auth (Label Studio: Model -> Authentication method "Basic Authentication"):
    # required on every route but /health when set. A forwarding backend needs it, or insecure_no_auth.
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    insecure_no_auth: bool = False
    # TLS / bearer token of each gRPC channel (services.common.channel, the flags every client has).
    eem_channel: ChannelConfig = field(default_factory=ChannelConfig)
    coordinator_channel: ChannelConfig = field(default_factory=ChannelConfig)
    trainer_channel: ChannelConfig = field(default_factory=ChannelConfig)
    forward: str = "coordinator"  # FORWARD_MODES: where annotations go on ANNOTATION_CREATED/UPDATED
    coordinator: str = ""  # coordinator host:port (forward = coordinator)
    pool: str = ""  # the coordinator pool the frames belong to (name or id)
    client_id: str = ""  # lease holder name; default "label-studio-ml@<host>:<pid>"
    lease_s: float = 120.0
    trainer: str = ""  # trainer host:port (forward = trainer)
    trainer_publish: bool = False  # publish when the trainer's gates pass
    model_version: str = "segxal-eem"  # until the EEM service names its segmentation model version
    alpha_threshold: int = lsp.DEFAULT_ALPHA_THRESHOLD
    max_body_bytes: int = 64 << 20

    def validate(self) -> "MLBackendConfig":
        if self.forward not in FORWARD_MODES:
            raise InvalidInput(f"forward must be one of {', '.join(FORWARD_MODES)}, got {self.forward!r}")
        if self.forward == "coordinator" and not (self.coordinator and self.pool):
            raise InvalidInput("forward = coordinator needs --coordinator and --pool")
        if self.forward == "trainer" and not self.trainer:
            raise InvalidInput("forward = trainer needs --trainer")
        if self.media_dir and not self.ls_document_root:
            raise InvalidInput("--media-dir needs --ls-document-root (overlays are served as local files)")
        if self.media_dir:
            media, root = Path(self.media_dir).resolve(), Path(self.ls_document_root).resolve()
            if media == root or not media.is_relative_to(root):
                raise InvalidInput(f"--media-dir {media} must lie strictly inside --ls-document-root {root}")
        if self.ls_url and urlsplit(self.ls_url).scheme not in ("http", "https"):
            raise InvalidInput(f"--ls-url must be an http:// or https:// URL, got {self.ls_url!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise InvalidInput("basic auth needs both a user and a password (BASIC_AUTH_USER and BASIC_AUTH_PASS, or "
                               "--basic-auth-user and --basic-auth-pass-file)")
        if self.basic_auth_user and ":" in self.basic_auth_user:
            raise InvalidInput("the basic-auth user cannot contain ':' (HTTP basic auth splits on it)")
        if self.forward != "none" and not self.basic_auth_user and not self.insecure_no_auth:
            raise InvalidInput(f"forward = {self.forward} acts on what callers post to /webhook: set basic auth "
                               f"(BASIC_AUTH_USER and BASIC_AUTH_PASS, the same in Label Studio's model settings) "
                               f"or pass --insecure-no-auth to accept anyone")
        self.eem.validate()
        return self

    @property
    def auth_header(self) -> str:
        """The `Authorization` value callers must send ("Basic ..."); empty when auth is off."""
        if not self.basic_auth_user:
            return ""
        pair = f"{self.basic_auth_user}:{self.basic_auth_pass}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


class RequestError(SegxalError):
    """A request we refuse, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _require(obj: Any, key: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(obj, dict):
        raise RequestError(400, f"{where} must be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise RequestError(400, f"{where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RequestError(400, f"{where}.{key} must be {names}, got {type(value).__name__}")
    return value


def _project_id(value: Any) -> int:
    """Label Studio names a project as "<id>.<created timestamp>" in /setup and /predict, and as
    an object with `id` in webhooks."""
    if isinstance(value, dict):
        value = value.get("id")
    try:
        return int(str(value).split(".", 1)[0])
    except (TypeError, ValueError):
        raise RequestError(400, f"project must be '<id>.<timestamp>' or an object with an id, got {value!r}") from None


def _region_masks(scored) -> list[tuple[int, np.ndarray, int]]:
    """(region id, bool mask [H, W], dominant trainId) of the EEM service's regions."""
    out = []
    for i, r in enumerate(scored.regions):
        h, w = r.rle["size"]
        mask = decode_rle(Rle(int(h), int(w), uncompressed_counts=tuple(int(c) for c in r.rle["counts"])),
                          where=f"{scored.uri} region {i}")
        out.append((i, mask, int(r.class_id)))
    return out


class SegxalMLModel:
    """The protocol's logic, free of HTTP: each handler takes the parsed JSON body and returns the
    JSON reply, or raises RequestError (4xx) / SegxalError (mapped by the server).

    Args:
        cfg: the configuration (validated).
        eem: an EEM client (services.eem.client.EemClient or anything with its `score`).
        coordinator / trainer: clients for the forward mode in use (None otherwise).
    """

    def __init__(self, cfg: MLBackendConfig, eem, coordinator=None, trainer=None):
        self.cfg = cfg
        self.eem = eem
        self.coordinator = coordinator
        self.trainer = trainer
        self.model_version = cfg.model_version
        self._projects: dict[int, dict] = {}  # project id -> {"access_token"} from /setup
        self._announced: set[str] = set()  # model versions /setup and /predict have named
        self._setups: dict[int, threading.Thread] = {}  # project id -> its running set-up passes
        self._setup_again: set[int] = set()  # projects asked again while their passes run
        self._closed = threading.Event()
        self._frame_ids: dict[str, str] = {}  # real path of a coordinator frame -> frame id
        self._pool = None  # the coordinator's pb.Pool, once resolved
        self._frames_listed_at = -math.inf
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ /health, /setup
    def health(self) -> dict:
        return {"status": "UP", "model_class": "SegXAL EEM (entropy + proximity-aware GradCAM)",
                "model_version": self.model_version, "forward": self.cfg.forward}

    def setup(self, body: Any) -> dict:
        """Check the project's label config is one this backend can pre-annotate and read back;
        remember the project's token (used only with the configured --ls-url; the `hostname` sent
        here is ignored, so no caller can point downloads elsewhere), and set the project up in the
        background (clients.label_studio.ml_project: model version, webhook credentials, overlay
        storage) once Label Studio has finished connecting.

        Raises:
            RequestError: a malformed body. InvalidInput: a label config this backend cannot use.
        """
        project = _project_id(_require(body, "project", (str, int), "setup request"))
        schema = _require(body, "schema", str, "setup request")
        lsp.check_label_config_xml(schema, self.classes())
        with self._lock:
            self._projects[project] = {"access_token": str(body.get("access_token") or "")}
        version = self._current_model_version()
        self._announced.add(version)
        self.set_up_project_later(project)
        return {"model_version": version}

    def set_up_project_later(self, project: int) -> None:
        """Run clients.label_studio.ml_project.set_up_project for `project` in a thread, after each of
        PROJECT_SETUP_DELAYS_S (one thread per project; a call while it runs restarts its delays)."""
        if self._api(project) is None:
            log.info("project %s: no --ls-url (or token): its model version, webhook and overlay storage are "
                     "left as they are", project)
            return
        with self._lock:
            if project in self._setups:
                self._setup_again.add(project)
                return
            thread = threading.Thread(target=self._set_up_project, args=(project,), daemon=True,
                                      name=f"ls-project-{project}-setup")
            self._setups[project] = thread
        thread.start()

    def _set_up_project(self, project: int) -> None:
        media = self.cfg.ls_media_dir or self.cfg.media_dir
        i = 0
        while True:
            if i == len(PROJECT_SETUP_DELAYS_S):
                with self._lock:
                    if project not in self._setup_again:
                        del self._setups[project]
                        return
            with self._lock:
                if project in self._setup_again:  # asked again meanwhile: the delays start over
                    self._setup_again.discard(project)
                    i = 0
            if self._closed.wait(PROJECT_SETUP_DELAYS_S[i]):
                return
            i += 1
            try:
                done = set_up_project(self._api(project), project, self.model_version, set(self._announced),
                                      auth_user=self.cfg.basic_auth_user, auth_header=self.cfg.auth_header,
                                      overlay_dir=str(Path(media).absolute()) if media else "")
            except Exception:  # a bug (an answer we did not expect): logged, and the next pass runs
                log.exception("project %s: setting up in Label Studio failed", project)
                continue
            for change in done.changed:
                log.info("project %s: %s", project, change)
            for problem in done.failed:  # Label Studio busy or refusing: the next pass tries again
                log.info("project %s: not yet: %s", project, problem)

    def close(self) -> None:
        """Stop the background set-up passes (the server's stop calls it)."""
        self._closed.set()

    def _current_model_version(self) -> str:
        """The segmentation model version the EEM service last scored with; before any scoring, the
        coordinator's current version (what the loop publishes and serves), else the configured name.
        Label Studio keeps a prediction's score for sorting only when its model_version is the one
        /setup announced, so the two must agree from the first prediction on."""
        if self.model_version == self.cfg.model_version and self.coordinator is not None:
            try:
                current = self.coordinator.current_model_version("segmentation")
                if current.model_name:
                    self.model_version = f"{current.model_name}:{current.version}"
            except SegxalError as e:  # no version registered yet, or the coordinator is down
                log.info("no current model version from the coordinator (%s); announcing %r", e, self.model_version)
        return self.model_version

    def classes(self) -> tuple[str, ...]:
        """The class names being labelled, index = class id: the pool's with a coordinator, else Cityscapes.

        Raises:
            NotFound: no such pool. NotReady: the coordinator cannot be reached.
        """
        if self.coordinator is None:
            return tuple(CLASS_NAMES)
        from services.coordinator.client import pool_class_names  # the coordinator client's deps only when used
        return pool_class_names(self._coordinator_pool())

    def _coordinator_pool(self):
        """The configured pool (by name, else by id), resolved once."""
        with self._lock:
            if self._pool is None:
                try:
                    self._pool = self.coordinator.get_pool(name=self.cfg.pool)
                except NotFound:
                    self._pool = self.coordinator.get_pool(pool_id=self.cfg.pool)
            return self._pool

    def _api(self, project: int | None) -> LabelStudioAPI | None:
        """A client of the configured Label Studio (never of a host a request names), or None
        without --ls-url or a token."""
        info = self._projects.get(project, {}) if project is not None else {}
        token = self.cfg.ls_token or info.get("access_token", "")
        if not (self.cfg.ls_url and token):
            return None
        return LabelStudioAPI(self.cfg.ls_url, token, timeout_s=30.0)

    # ------------------------------------------------------------------ frames
    def frame_path(self, task: dict, project: int | None) -> str:
        """The local path of a task's frame (data[`image`]), downloading it when Label Studio
        serves it from elsewhere.

        Raises:
            RequestError: no image in the task data, a local file outside the document root, or a
                URL that cannot be fetched.
        """
        data = _require(task, "data", dict, f"task {task.get('id')}")
        url = data.get(lsp.FRAME_KEY)
        if not isinstance(url, str) or not url:
            raise RequestError(400, f"task {task.get('id')}: data has no {lsp.FRAME_KEY!r} image URL "
                                    f"(keys: {sorted(data)})")
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise RequestError(400, f"task {task.get('id')}: file URL {url!r} names a host; only local files "
                                        f"inside the document root are read")
            return self._local_file(url, unquote(parts.path), task)
        if parts.path == LOCAL_FILES_PREFIX or parts.path.endswith(LOCAL_FILES_PREFIX):
            return self._local_file(url, unquote((parse_qs(parts.query).get("d") or [""])[0]), task)
        return self._download(url, project, task)

    def _local_file(self, url: str, rel: str, task: dict) -> str:
        """A file inside the document root (`rel` relative to it, or absolute), or RequestError."""
        if not self.cfg.ls_document_root:
            raise RequestError(422, f"task {task.get('id')}: {url} is a local file; start the backend "
                                    f"with --ls-document-root (Label Studio's LOCAL_FILES_DOCUMENT_ROOT)")
        root = os.path.realpath(self.cfg.ls_document_root)
        path = os.path.realpath(os.path.join(root, rel))  # an absolute `rel` stays itself, then is checked
        if not rel or not path.startswith(root + os.sep):
            raise RequestError(400, f"task {task.get('id')}: local file {rel!r} is not inside the document root")
        if not os.path.isfile(path):
            raise RequestError(404, f"task {task.get('id')}: local file {path} does not exist")
        return path

    def _download(self, url: str, project: int | None, task: dict) -> str:
        parts = urlsplit(url)
        if parts.scheme and parts.scheme not in ("http", "https"):
            raise RequestError(400, f"task {task.get('id')}: cannot read {parts.scheme}:// URLs ({url!r}); frames are "
                                    f"local files or files the configured Label Studio serves")
        if not self.cfg.ls_url:
            raise RequestError(422, f"task {task.get('id')}: cannot fetch {url}: start the backend with --ls-url "
                                    f"(the Label Studio it may fetch from) to read frames it serves")
        api = self._api(project)
        if api is None:
            raise RequestError(422, f"task {task.get('id')}: cannot fetch {url}: no Label Studio token (Label Studio "
                                    f"sends it to /setup; or start with --ls-token)")
        if parts.scheme and not api.same_origin(url):
            raise RequestError(400, f"task {task.get('id')}: refused to fetch {url!r}: only the configured Label "
                                    f"Studio ({self.cfg.ls_url}) is fetched from")
        try:
            data = api.download(url)
        except SegxalError as e:
            raise RequestError(502, f"task {task.get('id')}: could not fetch {url}: {e}") from None
        imageio.decode_image(data, where=url)  # an image, or InvalidInput
        name = hashlib.sha256(data).hexdigest()
        path = Path(self.cfg.cache_dir).resolve() / name[:2] / f"{name}.img"
        if not path.is_file():
            imageio.atomic_write_bytes(path, data)
        return str(path)

    # ------------------------------------------------------------------ /predict
    def predict(self, body: Any) -> dict:
        """One prediction per task, the frames scored together over one EEM stream (Label Studio
        waits ML_TIMEOUT_PREDICT, 100 s by default, for the whole batch). A task that fails gets
        {"error": ...} without a result, which Label Studio logs and skips; a request of one task
        that fails is answered with the error's 4xx."""
        from services.eem.api import ScoreOptions  # the EEM client's types only where used
        tasks = _require(body, "tasks", list, "predict request")
        project = _project_id(body["project"]) if body.get("project") not in (None, "") else None
        if not tasks:
            raise RequestError(400, "predict request: tasks is empty")
        results: list[dict | None] = [None] * len(tasks)
        paths: dict[str, str] = {}  # task index -> frame path
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise RequestError(400, f"predict request: tasks[{i}] must be an object")
            try:
                paths[str(i)] = self.frame_path(task, project)
            except RequestError as e:
                if len(tasks) == 1:
                    raise
                results[i] = {"error": str(e)}
        options = ScoreOptions(eem=self.cfg.eem, maps=("eem",), regions=True, labels=True)
        for scored in self.eem.score_stream(list(paths.items()), options, timeout_s=self.cfg.eem_timeout_s):
            i = int(scored.frame_id)
            try:
                results[i] = self._prediction(tasks[i], project, paths[scored.frame_id], scored.raise_for_error())
            except (InvalidInput, NotFound, PermissionDenied) as e:
                if len(tasks) == 1:
                    raise RequestError(422 if isinstance(e, InvalidInput) else 404 if isinstance(e, NotFound) else 403,
                                       f"task {tasks[i].get('id')}: {e}") from None
                results[i] = {"error": f"task {tasks[i].get('id')}: {e}"}
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise NotReady(f"the EEM service returned no result for tasks {missing}")
        if project is not None:  # once Label Studio has saved these, the project may take their version
            self.set_up_project_later(project)
        return {"results": results, "model_version": self.model_version}

    def _prediction(self, task: dict, project: int | None, path: str, scored) -> dict:
        if scored.model_versions.segmentation:
            self.model_version = scored.model_versions.segmentation
            self._announced.add(self.model_version)
        regions = _region_masks(scored)
        result = lsp.region_pre_annotation(regions, scored.labels(), self.classes())
        if self.cfg.media_dir and isinstance(task.get("id"), int):
            self._set_overlay(task, project, path, scored.map("eem"), [m for _, m, _ in regions])
        return {"result": result, "score": float(scored.score), "model_version": self.model_version}

    def _set_overlay(self, task: dict, project: int | None, frame_path: str, eem: np.ndarray,
                     masks: list[np.ndarray]) -> None:
        """Write the overlay as a local file and point the task's `overlay` at it (Label Studio API)."""
        frame = imageio.read_rgb(frame_path)  # [H, W, 3]
        png = eem_overlay_png(frame, eem, masks)
        media = Path(self.cfg.media_dir).resolve()
        out = media / f"task-{int(task['id'])}-{hashlib.sha256(png).hexdigest()[:12]}.png"
        imageio.atomic_write_bytes(out, png)
        rel = out.relative_to(Path(self.cfg.ls_document_root).resolve()).as_posix()
        url = f"{LOCAL_FILES_PREFIX}?d={quote(rel)}"
        if task["data"].get(lsp.OVERLAY_KEY) == url:
            return
        api = self._api(project)
        if api is None:
            log.warning("task %s: overlay written to %s but not set (no Label Studio URL/token yet)", task["id"], out)
            return
        api.request("PATCH", f"/api/tasks/{int(task['id'])}", {"data": {**task["data"], lsp.OVERLAY_KEY: url}})

    # ------------------------------------------------------------------ /webhook
    def webhook(self, body: Any) -> tuple[int, dict]:
        """Forward a saved annotation; other actions are acknowledged and ignored."""
        action = _require(body, "action", str, "webhook")
        if action not in ANNOTATION_ACTIONS:
            return 200, {"status": "ignored", "action": action}
        annotation = _require(body, "annotation", dict, "webhook")
        task = _require(body, "task", dict, "webhook")
        result = _require(annotation, "result", list, "webhook.annotation")
        ann_id = annotation.get("id")
        project = _project_id(body["project"]) if body.get("project") not in (None, "") else None
        if annotation.get("was_cancelled"):
            return 200, {"status": "ignored", "reason": "the annotation is a skip"}
        if self.cfg.forward == "none":
            return 200, {"status": "ignored", "reason": "forwarding is off"}
        path = self.frame_path(task, project)
        h, w = imageio.read_rgb(path).shape[:2]
        try:
            labels = lsp.annotation_to_train_ids(result, h, w, self.cfg.alpha_threshold, self.classes())  # [H, W]
        except InvalidInput as e:
            raise RequestError(422, f"annotation {ann_id}: {e}") from None
        key = f"label-studio-ml:{project}:{ann_id}:{annotation.get('updated_at', '')}"
        if self.cfg.forward == "trainer":
            return 202, self._to_trainer(path, labels, key)
        return 201, self._to_coordinator(path, labels, key, ann_id)

    def _frame_id(self, path: str) -> str:
        real = os.path.realpath(path)
        pool_id = self._coordinator_pool().pool_id
        with self._lock:
            # A frame the listing lacks: list the pool again (new frames were ingested), at most
            # every FRAME_LIST_REFRESH_S, so webhooks for foreign frames cannot make us list a big
            # pool over and over.
            stale = time.monotonic() - self._frames_listed_at >= FRAME_LIST_REFRESH_S
            if real not in self._frame_ids and stale:
                self._frame_ids = {os.path.realpath(f.uri): f.frame_id for f in self.coordinator.frames(pool_id)}
                self._frames_listed_at = time.monotonic()
            frame_id = self._frame_ids.get(real)
        if frame_id is None:
            raise RequestError(404, f"frame {real} is not in coordinator pool {self.cfg.pool!r}")
        return frame_id

    def _to_coordinator(self, path: str, labels: np.ndarray, key: str, ann_id) -> dict:
        frame_id = self._frame_id(path)
        leased = self.coordinator.lease(self._coordinator_pool().pool_id, max_tasks=1, lease_seconds=self.cfg.lease_s,
                                        frame_id=frame_id)
        if not leased:
            raise RequestError(409, f"frame {path}: no coordinator task waits for it in pool {self.cfg.pool!r} "
                                    f"(not ranked into a cycle yet, already annotated, or leased by another labeler)")
        (task,) = leased
        try:
            if task.regions:
                region_ids = _regions_painted(task, labels)
                if not region_ids:
                    raise RequestError(422, f"annotation {ann_id} paints none of the task's {len(task.regions)} "
                                            f"regions to fix")
            else:
                region_ids = ()
            reply = self.coordinator.submit(task, labels, region_ids=region_ids, idempotency_key=key)
        except BaseException:
            self.coordinator.release(task)
            raise
        return {"status": "submitted", "annotation_id": reply.annotation.annotation_id, "task_id": task.task_id,
                "region_ids": list(region_ids), "pixels": int(reply.annotation.pixels_count)}

    def _to_trainer(self, path: str, labels: np.ndarray, key: str) -> dict:
        from services.trainer.api import AnnotationRef, JobRequest
        job = self.trainer.start_job(JobRequest(
            annotations=[AnnotationRef(frame_uri=path, mask_png=imageio.encode_png(labels), annotation_id=key)],
            publish=self.cfg.trainer_publish))
        return {"status": "training", "job_id": job.job_id}


def _regions_painted(task, labels: np.ndarray) -> tuple[int, ...]:
    try:
        return lsp.regions_touched(task, labels)
    except InvalidInput as e:
        raise FailedPrecondition(f"task {task.task_id}: unreadable regions ({e})") from None

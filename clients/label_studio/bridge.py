"""The Label Studio bridge: how people label. It keeps up to `max_waiting` coordinator tasks waiting
in a Label Studio project, and brings the people's annotations back to the coordinator.

    lease (clients.labeling) ─▶ frame + EEM overlay into the media folder (Label Studio local files)
                             ─▶ Label Studio task with the EEM regions as brush pre-annotations
    person submits in Label Studio ─▶ webhook (or the poll every poll_s) ─▶ brush RLE -> trainIds
                             ─▶ SubmitAnnotation (region ids = regions the person painted in)

Leases are heartbeated while tasks wait in Label Studio (the labeling session's thread). A task
deleted in Label Studio, or skipped there, is released. An annotation the bridge cannot read (an
unknown label, nothing painted, a foreign result type) is never submitted: the task stays leased,
`errors` says why, and a corrected annotation is picked up on its next update. When Label Studio is
down or refuses the token, new leases are released at once and waiting tasks stay leased.

State: leased tasks (with their lease tokens) are kept in `<work_dir>/bridge-state-<project>.json`,
written atomically, so a restarted bridge adopts its leases and the tasks waiting in Label Studio.
The webhook is a notification only: the bridge reads the annotation from the API, and the webhook
must carry the secret header the bridge registered.

Classes: the project's labels are the pool's classes (the coordinator's `Pool.class_names`, the
segmentation model's; Cityscapes by default): a project the bridge creates gets them, an existing
one must have exactly them.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np

from clients.label_studio import project as lsp
from clients.label_studio.api import LabelStudioAPI
from clients.label_studio.overlay import eem_overlay_png
from clients.labeling import LabelingConfig, LabelingSession, Lease, region_masks
from segxal import imageio
from segxal.errors import FailedPrecondition, InvalidInput, SegxalError
from segxal.storage import FrameStorage
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.coordinator.client import CoordinatorClient

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhook"
WEBHOOK_SECRET_HEADER = "X-Segxal-Webhook-Secret"
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "TASKS_DELETED"]
PUSH_FAILED = "could not put the task into Label Studio"  # the reason given with such a release


@dataclass
class BridgeConfig:
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    ls_url: str = "http://127.0.0.1:8080"
    ls_token: str = ""  # legacy API token or personal access token (Account & Settings)
    project_title: str = "SegXAL"  # found by title, created when missing
    project_id: int = 0  # an existing project instead (its label config must be the bridge's)
    work_dir: str = "runs/label_studio"  # bridge state; media under it unless media_dir is set
    # Frames and heat maps are copied here for Label Studio to serve as local files: this folder
    # must lie strictly inside Label Studio's LOCAL_FILES_DOCUMENT_ROOT (Label Studio refuses a
    # storage at the root itself), on its host or a shared volume.
    media_dir: str = ""  # default <work_dir>/ls-files/segxal
    ls_document_root: str = ""  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT; default: ls_media_dir's parent
    ls_media_dir: str = ""  # media_dir as Label Studio's host sees it (container mounts); default media_dir
    frame_roots: list[str] = field(default_factory=list)  # frames (and stored predictions) are read under these
    eem_target: str = ""  # EEM service host:port for the heat map; empty: drawn from the task's regions
    max_waiting: int = 8  # tasks waiting in Label Studio at once
    poll_s: float = 30.0  # fallback poll of Label Studio (webhooks make it rarely needed)
    webhook: bool = True
    webhook_host: str = "127.0.0.1"  # where the receiver listens
    webhook_port: int = 0  # 0: ephemeral
    webhook_url: str = ""  # what Label Studio calls; default http://<webhook_host>:<port>/webhook
    alpha_threshold: int = lsp.DEFAULT_ALPHA_THRESHOLD
    ls_timeout_s: float = 30.0

    @property
    def media_path(self) -> Path:
        return Path(self.media_dir or Path(self.work_dir) / "ls-files" / "segxal").absolute()

    @property
    def document_root(self) -> PurePosixPath:
        """Label Studio's LOCAL_FILES_DOCUMENT_ROOT, as Label Studio's host sees it."""
        if self.ls_document_root:
            return PurePosixPath(self.ls_document_root)
        return PurePosixPath(self.ls_media_dir or self.media_path.as_posix()).parent


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], secret: str, events: queue.Queue):
        self.secret = secret
        self.events = events
        super().__init__(address, _WebhookHandler)


class _WebhookHandler(BaseHTTPRequestHandler):
    server: _WebhookServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != WEBHOOK_PATH:
            self._reply(404, "unknown path")
            return
        if not secrets.compare_digest(self.headers.get(WEBHOOK_SECRET_HEADER, ""), self.server.secret):
            self._reply(403, "missing or wrong webhook secret")
            return
        try:
            payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except ValueError:
            self._reply(400, "body is not JSON")
            return
        self.server.events.put(("webhook", payload))
        self._reply(200, "queued")

    def _reply(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("webhook: " + fmt, *args)


@dataclass
class _Waiting:
    """A leased task the bridge put (or is putting) into Label Studio."""
    task: pb.Task
    ls_task_id: int | None = None

    def to_json(self) -> dict:
        return {"task": base64.b64encode(self.task.SerializeToString()).decode(), "ls_task_id": self.ls_task_id}

    @classmethod
    def from_json(cls, d: dict) -> "_Waiting":
        return cls(pb.Task.FromString(base64.b64decode(d["task"])), d.get("ls_task_id"))


class Bridge:
    """One Label Studio project fed from one coordinator pool. A context manager: `start()` on enter,
    `close()` on exit (leases are kept for the next start).

    Args:
        cfg: the configuration.
        api: a Label Studio client; default one on cfg.ls_url with cfg.ls_token.

    Attributes:
        errors: coordinator task id -> why its annotation was not submitted (or why it was released).
        submitted: coordinator task id -> the coordinator's annotation id.
    """

    def __init__(self, cfg: BridgeConfig, api: LabelStudioAPI | None = None):
        if cfg.max_waiting < 1:
            raise InvalidInput(f"bridge: max_waiting must be >= 1, got {cfg.max_waiting}")
        if not 1 <= cfg.alpha_threshold <= 255:
            raise InvalidInput(f"bridge: alpha_threshold must be in 1..255, got {cfg.alpha_threshold}")
        self.cfg = cfg
        self.api = api or LabelStudioAPI(cfg.ls_url, cfg.ls_token, cfg.ls_timeout_s)
        self.storage = FrameStorage(cfg.frame_roots)
        self.media = cfg.media_path
        self.ls_media = PurePosixPath(cfg.ls_media_dir or self.media.as_posix())
        self.ls_document_root = cfg.document_root
        if self.ls_media == self.ls_document_root or not self.ls_media.is_relative_to(self.ls_document_root):
            raise InvalidInput(f"bridge: the media folder {self.ls_media} must lie strictly inside Label Studio's "
                               f"LOCAL_FILES_DOCUMENT_ROOT {self.ls_document_root} (a subfolder of it)")
        self.project_id = cfg.project_id
        self.errors: dict[str, str] = {}
        self.submitted: dict[str, str] = {}
        self.session: LabelingSession | None = None
        self._waiting: dict[str, _Waiting] = {}  # coordinator task id -> waiting task
        self._events: queue.Queue = queue.Queue()
        self._work = threading.Lock()  # one handler at a time (run loop, sync, webhook events)
        self._webhook_server: _WebhookServer | None = None
        self._webhook_id: int | None = None
        self._eem = None
        self.classes: tuple[str, ...] = ()  # the pool's class names, index = class id (set by start)
        self._no_prediction_logged = False
        self._refused: dict[str, tuple] = {}  # task id -> (annotation id, updated_at) last refused

    # ================================================================ life cycle
    def __enter__(self) -> "Bridge":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Check the token, find or create the project and its local-files storage, adopt the leases
        of the last run, start the webhook receiver, and fill Label Studio with tasks.

        Raises:
            PermissionDenied: Label Studio refused the token. NotReady: Label Studio or the
            coordinator is unreachable. NotFound: no such pool. InvalidInput: an existing project has
            another label config, or labels other than the pool's classes.
        """
        try:
            self.api.whoami()
            self.session = LabelingSession(self.cfg.labeling, on_lost=self._lease_lost, release_on_close=False,
                                           kind="label-studio")
            self.classes = self.session.class_names  # the pool's: the project's labels
            self._ensure_project()
            self.media.mkdir(parents=True, exist_ok=True)
            self._ensure_storage()
            if self.cfg.eem_target:
                from services.eem.client import EemClient  # the EEM client's deps only when used
                self._eem = EemClient(self.cfg.eem_target)
            for task_id, waiting in self._load_state().items():
                self._waiting[task_id] = waiting
                self.session.adopt(waiting.task)
            if self.cfg.webhook:
                self._start_webhook()
            self.sync()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the webhook receiver and heartbeats; the leases stay with the tasks in Label Studio
        (a restarted bridge adopts them; otherwise they lapse)."""
        if self._webhook_server is not None:
            self._webhook_server.shutdown()
            self._webhook_server.server_close()
            self._webhook_server = None
        if self._webhook_id is not None:
            try:
                self.api.delete_webhook(self._webhook_id)
            except SegxalError as e:
                log.warning("could not remove the webhook from Label Studio: %s", e)
            self._webhook_id = None
        if self.session is not None:
            self.session.close()
            self.session = None
        if self._eem is not None:
            self._eem.close()
            self._eem = None

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set: handle webhook events as they come, poll every poll_s."""
        next_poll = time.monotonic() + self.cfg.poll_s
        while not stop.is_set():
            try:
                event = self._events.get(timeout=min(0.5, max(0.0, next_poll - time.monotonic())))
            except queue.Empty:
                event = None
            if event is not None:
                with self._work:
                    self._handle(event)
                    self._refill()
            if time.monotonic() >= next_poll:
                self.sync()
                next_poll = time.monotonic() + self.cfg.poll_s

    def sync(self) -> None:
        """One full round: queued events, a poll of the project's tasks, then new tasks."""
        with self._work:
            while True:
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
                self._handle(event)
            self._poll()
            self._refill()

    @property
    def waiting(self) -> dict[str, int | None]:
        """Coordinator task id -> Label Studio task id of the tasks waiting in Label Studio."""
        with self._work:
            return {k: w.ls_task_id for k, w in self._waiting.items()}

    @property
    def webhook_url(self) -> str:
        if self.cfg.webhook_url:
            return self.cfg.webhook_url
        assert self._webhook_server is not None
        return f"http://{self.cfg.webhook_host}:{self._webhook_server.server_address[1]}{WEBHOOK_PATH}"

    # ================================================================ Label Studio set-up
    def _ensure_project(self) -> None:
        if self.project_id:
            project = self.api.get_project(self.project_id)
        else:
            project = self.api.find_project(self.cfg.project_title)
            if project is None:
                project = self.api.create_project(
                    self.cfg.project_title, lsp.label_config(self.classes, with_reasons=True),
                    description="SegXAL: fix the regions the model is unsure about (pre-annotated)")
                log.info("created Label Studio project %d %r", project["id"], self.cfg.project_title)
            self.project_id = int(project["id"])
        lsp.check_label_config(project.get("parsed_label_config") or {}, self.classes)

    def _ensure_storage(self) -> None:
        path = self.ls_media.as_posix()
        if not any(s.get("path") == path for s in self.api.local_storages(self.project_id)):
            self.api.create_local_storage(self.project_id, path, title="SegXAL frames and EEM maps")

    def _start_webhook(self) -> None:
        secret = secrets.token_urlsafe(24)
        self._webhook_server = _WebhookServer((self.cfg.webhook_host, self.cfg.webhook_port), secret, self._events)
        threading.Thread(target=self._webhook_server.serve_forever, name="ls-webhook", daemon=True).start()
        url = self.webhook_url
        for hook in self.api.webhooks(self.project_id):
            if hook.get("url") == url:  # a previous run's, with its old secret
                self.api.delete_webhook(hook["id"])
        try:
            hook = self.api.create_webhook(self.project_id, url, WEBHOOK_ACTIONS, {WEBHOOK_SECRET_HEADER: secret})
            self._webhook_id = int(hook["id"])
        except InvalidInput as e:
            log.warning("Label Studio refused the webhook %s (%s); polling every %.0fs instead. For a "
                        "webhook to a local address Label Studio needs SSRF_PROTECTION_ENABLED=false",
                        url, e, self.cfg.poll_s)

    # ================================================================ state
    @property
    def _state_path(self) -> Path:
        return Path(self.cfg.work_dir) / f"bridge-state-{self.project_id}.json"

    def _load_state(self) -> dict[str, _Waiting]:
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise InvalidInput(f"{self._state_path}: unreadable bridge state ({e}); move it away to start "
                               f"afresh (its leases then lapse)") from None
        return {task_id: _Waiting.from_json(d) for task_id, d in raw.get("tasks", {}).items()}

    def _save_state(self) -> None:
        doc = {"project_id": self.project_id, "ls_url": self.cfg.ls_url,
               "tasks": {k: w.to_json() for k, w in self._waiting.items()}}
        imageio.atomic_write_bytes(self._state_path, json.dumps(doc, indent=1).encode())

    # ================================================================ coordinator -> Label Studio
    def _refill(self) -> None:
        assert self.session is not None
        want = self.cfg.max_waiting - len(self._waiting)
        if want <= 0:
            return
        try:
            leases = self.session.lease(want)
        except SegxalError as e:
            log.warning("lease from the coordinator failed: %s", e)
            return
        for lease in leases:
            self._push(lease)

    def _push(self, lease: Lease) -> None:
        """Put a leased task into Label Studio; release it when that fails."""
        task = lease.task
        waiting = _Waiting(task)
        try:
            data = self._write_media(task)
            predicted = self._prediction(task)
            results = lsp.prediction_results(task, predicted, self.classes)
            self._waiting[task.task_id] = waiting
            self._save_state()
            created = self.api.create_task(self.project_id, data)
            waiting.ls_task_id = int(created["id"])
            self._save_state()
            if results:
                version = f"{task.model.model_name}:{task.model.version}" if task.model.model_name else "eem-regions"
                self.api.create_prediction(waiting.ls_task_id, results, model_version=version, score=task.score)
        except SegxalError as e:
            self._give_back(task.task_id, lease, f"{PUSH_FAILED}: {e}",
                            delete_in_ls=waiting.ls_task_id is not None)
            return
        log.info("task %s waits in Label Studio as task %d (%d regions)", task.task_id, waiting.ls_task_id,
                 len(task.regions))

    def _write_media(self, task: pb.Task) -> dict:
        """Copy the frame and write the EEM overlay (heat map blended over the frame, regions
        outlined) into the media folder; the Label Studio task data."""
        folder = self.media / task.task_id
        folder.mkdir(parents=True, exist_ok=True)
        raw = self.storage.read_bytes(task.frame_uri)
        frame = imageio.decode_image(raw, where=task.frame_uri)  # [H, W, 3]
        if frame.shape[:2] != (task.height, task.width):
            raise InvalidInput(f"{task.frame_uri}: frame is {frame.shape[0]} x {frame.shape[1]}, the task says "
                               f"{task.height} x {task.width}")
        suffix = PurePosixPath(task.frame_uri).suffix.lower() or ".png"
        imageio.atomic_write_bytes(folder / f"frame{suffix}", raw)
        overlay = eem_overlay_png(frame, self._eem_map(task), region_masks(task))
        imageio.atomic_write_bytes(folder / "overlay.png", overlay)
        return {lsp.FRAME_KEY: self._url(f"{task.task_id}/frame{suffix}"),
                lsp.OVERLAY_KEY: self._url(f"{task.task_id}/overlay.png"),
                lsp.TASK_KEY: task.task_id, "segxal_frame_uri": task.frame_uri,
                "segxal_regions": len(task.regions), "segxal_score": task.score,
                lsp.WHY_KEY: "Why this frame: " + (CoordinatorClient.pick_reasons(task) or f"EEM score {task.score:.4f}")}

    def _url(self, relative: str) -> str:
        """/data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>, as Label Studio serves it."""
        path = (self.ls_media / relative).relative_to(self.ls_document_root).as_posix()
        return f"/data/local-files/?d={quote(path)}"

    def _eem_map(self, task: pb.Task) -> np.ndarray:
        """The frame's EEM map from the EEM service, or drawn from the task's regions. float [H, W]."""
        if self._eem is None:
            return lsp.region_eem_map(task)
        from services.eem.api import ScoreOptions
        scored = self._eem.score(task.frame_uri, ScoreOptions(maps=("eem",))).raise_for_error()
        return scored.map("eem")

    def _prediction(self, task: pb.Task) -> np.ndarray | None:
        """The model's trainIds for the task (the coordinator's stored prediction), when readable."""
        if not task.prediction_uri:
            return None
        try:
            pred = imageio.decode_image(self.storage.read_bytes(task.prediction_uri), where=task.prediction_uri,
                                        mode=None)  # [H, W]
        except SegxalError as e:
            if not self._no_prediction_logged:
                log.info("stored predictions are not readable (%s): pre-annotations use each region's dominant "
                         "class; add the coordinator's storage to --frame-root for per-pixel ones", e)
                self._no_prediction_logged = True
            return None
        return pred if pred.shape == (task.height, task.width) else None

    # ================================================================ Label Studio -> coordinator
    def _handle(self, event: tuple) -> None:
        kind, payload = event
        if kind == "lost":
            task_id, reason = payload
            if task_id in self._waiting:
                self._give_back(task_id, None, f"lease lost: {reason}", delete_in_ls=True)
            return
        action = payload.get("action")
        try:
            if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
                ls_task_id = int((payload.get("task") or {}).get("id") or payload["annotation"]["task"])
                if any(w.ls_task_id == ls_task_id for w in self._waiting.values()):
                    self._collect(self.api.get_task(ls_task_id))
            elif action == "TASKS_DELETED":
                gone = {int(t["id"]) for t in payload.get("tasks") or []}
                for task_id, w in list(self._waiting.items()):
                    if w.ls_task_id in gone:
                        self._give_back(task_id, None, "deleted in Label Studio", delete_in_ls=False)
        except SegxalError as e:
            log.warning("webhook %s: %s (the poll retries)", action, e)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("webhook %s: unexpected payload (%s: %s)", action, type(e).__name__, e)

    def _poll(self) -> None:
        """Read every task of the project: submit new annotations, release tasks deleted there."""
        try:
            ls_tasks = {t["data"][lsp.TASK_KEY]: t for t in self.api.iter_tasks(self.project_id)
                        if lsp.TASK_KEY in (t.get("data") or {})}
        except SegxalError as e:
            log.warning("poll of Label Studio failed, tasks stay leased: %s", e)
            return
        for task_id, w in list(self._waiting.items()):
            found = ls_tasks.get(task_id)
            if found is None:
                # Never created (a crash between lease and create), or deleted by someone.
                why = "deleted in Label Studio" if w.ls_task_id is not None else "not found in Label Studio"
                self._give_back(task_id, None, why, delete_in_ls=False)
                continue
            if w.ls_task_id != found["id"]:
                w.ls_task_id = int(found["id"])
                self._save_state()
            if found.get("annotations"):
                self._collect(found)

    def _collect(self, ls_task: dict) -> None:
        """Submit the latest annotation of a Label Studio task, when it is readable."""
        task_id = (ls_task.get("data") or {}).get(lsp.TASK_KEY)
        waiting = self._waiting.get(task_id)
        lease = self.session.get(task_id) if (waiting is not None and self.session is not None) else None
        if waiting is None or lease is None:
            return
        annotations = ls_task.get("annotations") or []
        done = [a for a in annotations if not a.get("was_cancelled")]
        if not done:
            if annotations:  # every annotation is a skip
                self._give_back(task_id, lease, "skipped in Label Studio", delete_in_ls=True)
            return
        ann = max(done, key=lambda a: (a.get("updated_at") or "", int(a["id"])))
        version = (ann["id"], ann.get("updated_at"))
        if self._refused.get(task_id) == version:
            return  # refused before and not changed since
        where = f"Label Studio task {ls_task['id']} annotation {ann['id']}"
        task = waiting.task
        try:
            labels = lsp.annotation_to_train_ids(ann.get("result") or [], task.height, task.width,
                                                 self.cfg.alpha_threshold, self.classes)  # [H, W]
            region_ids = lsp.regions_touched(task, labels) if task.regions else ()
            if task.regions and not region_ids:
                raise InvalidInput(f"the annotation paints none of the task's {len(task.regions)} regions to fix")
            key = f"label-studio:{self.project_id}:{ann['id']}:{ann.get('updated_at', '')}"
            reply = lease.submit(labels, region_ids=region_ids, idempotency_key=key)
        except InvalidInput as e:
            self._refused[task_id] = version
            self.errors[task_id] = f"{where}: not submitted, the task stays leased: {e}"
            log.warning("%s", self.errors[task_id])
            return
        except FailedPrecondition as e:
            self._give_back(task_id, None, f"{where}: the coordinator refused it: {e}", delete_in_ls=False)
            return
        except SegxalError as e:  # coordinator down (NotReady) or refusing this client: try again later
            self.errors[task_id] = f"{where}: not submitted yet, retrying on the next poll: {e}"
            log.warning("%s", self.errors[task_id])
            return
        self.submitted[task_id] = reply.annotation.annotation_id
        self.errors.pop(task_id, None)
        self._refused.pop(task_id, None)
        del self._waiting[task_id]
        self._save_state()
        log.info("%s -> coordinator annotation %s (%d regions, %d pixels)", where, reply.annotation.annotation_id,
                 len(region_ids), reply.annotation.pixels_count)

    def _give_back(self, task_id: str, lease: Lease | None, reason: str, delete_in_ls: bool) -> None:
        """Release a task's lease (when still held), forget it, and remove it from Label Studio."""
        waiting = self._waiting.pop(task_id, None)
        lease = lease or (self.session.get(task_id) if self.session is not None else None)
        if lease is not None:
            lease.release(quiet=True)
        if delete_in_ls and waiting is not None and waiting.ls_task_id is not None:
            try:
                self.api.delete_task(waiting.ls_task_id)
            except SegxalError as e:
                log.warning("could not delete Label Studio task %s: %s", waiting.ls_task_id, e)
        shutil.rmtree(self.media / task_id, ignore_errors=True)
        self.errors[task_id] = reason
        self._save_state()
        log.warning("task %s given back: %s", task_id, reason)

    def _lease_lost(self, lease: Lease) -> None:
        """From the heartbeat thread: handled in the run loop (or the next sync)."""
        self._events.put(("lost", (lease.task_id, str(lease.lost))))

"""A Label Studio server on this machine, for tests and for a laptop: `label-studio` from its own venv
(scripts/setup_label_studio.sh makes .venv-ls), SQLite and media in a data folder of our choosing
(LABEL_STUDIO_BASE_DATA_DIR), a user and a legacy API token made at first start, local-files
serving on, and no outbound calls (version check and analytics off).

    with LocalLabelStudio(LocalLabelStudioConfig(data_dir="/tmp/ls", document_root="/tmp/media")) as ls:
        ls.url, ls.token        # for clients.label_studio.api.LabelStudioAPI

A first start on an empty data folder migrates the database (30-90 s on 2 cores); a restart takes
seconds. `template_dir` keeps a data folder that has been started once (database migrated, user and
token made): each start copies it instead of migrating again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from segxal.errors import NotFound, NotReady
from clients.label_studio.api import LabelStudioAPI

log = logging.getLogger(__name__)

_CREDENTIALS = "segxal-local.json"  # in the data folder: the user, password and token made at first start


@dataclass
class LocalLabelStudioConfig:
    data_dir: str  # LABEL_STUDIO_BASE_DATA_DIR: SQLite database, uploads, logs
    document_root: str  # LOCAL_FILES_DOCUMENT_ROOT: local-files storages must lie under it
    venv: str = ".venv-ls"  # made by scripts/setup_label_studio.sh
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    template_dir: str = ""  # a started-once data folder to copy (see module doc); empty: none
    # Webhooks to a local receiver (the bridge's) are refused by Label Studio's SSRF protection.
    ssrf_protection: bool = False
    # An ML backend on a loopback / private address (ours, on this machine) is refused (403) unless
    # ML_BLOCK_LOCAL_IP=false (Label Studio 1.23 ml/serializers.py).
    ml_block_local_ip: bool = False
    startup_timeout_s: float = 300.0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalLabelStudio:
    """A started Label Studio; `stop()` (or leaving the context) ends it.

    Raises:
        NotFound: no label-studio executable in the venv (run scripts/setup_label_studio.sh).
        NotReady: it did not answer within startup_timeout_s (the log's tail is in the message).
    """

    def __init__(self, cfg: LocalLabelStudioConfig):
        self.cfg = cfg
        self.executable = Path(cfg.venv).absolute() / "bin" / "label-studio"
        if not self.executable.is_file():
            raise NotFound(f"{self.executable}: missing; run scripts/setup_label_studio.sh")
        self.port = cfg.port or _free_port(cfg.host)
        self.url = f"http://{cfg.host}:{self.port}"
        self.data_dir = Path(cfg.data_dir).absolute()
        self.log_path = self.data_dir / "label-studio.log"
        self.username = ""
        self.password = ""
        self.token = ""
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "LocalLabelStudio":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.cfg.template_dir:
            _ensure_template(self.cfg)
            if not (self.data_dir / _CREDENTIALS).is_file():
                shutil.copytree(self.cfg.template_dir, self.data_dir, dirs_exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = _credentials(self.data_dir)
        self.username, self.password, self.token = creds["username"], creds["password"], creds["token"]
        self._proc = _launch(self.cfg, self.executable, self.data_dir, self.port, creds, self.log_path)
        try:
            _wait_ready(self.url, self.token, self._proc, self.log_path, self.cfg.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc is None:
            return
        _terminate(self._proc)
        self._proc = None

    def api(self, timeout_s: float = 30.0) -> LabelStudioAPI:
        return LabelStudioAPI(self.url, self.token, timeout_s)


def _credentials(data_dir: Path) -> dict:
    """The data folder's user and token, made (and written down) on first use."""
    path = data_dir / _CREDENTIALS
    if path.is_file():
        return json.loads(path.read_text())
    creds = {"username": "segxal@localhost.local", "password": secrets.token_urlsafe(12),
             "token": secrets.token_hex(20)}
    path.write_text(json.dumps(creds))
    return creds


def _launch(cfg: LocalLabelStudioConfig, executable: Path, data_dir: Path, port: int, creds: dict,
            log_path: Path) -> subprocess.Popen:
    document_root = Path(cfg.document_root).absolute()
    document_root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # The user and token are made when the organization is first created (ignored afterwards).
        "LABEL_STUDIO_USERNAME": creds["username"],
        "LABEL_STUDIO_PASSWORD": creds["password"],
        "LABEL_STUDIO_USER_TOKEN": creds["token"],
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # else the token above gets 401
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "SSRF_PROTECTION_ENABLED": "true" if cfg.ssrf_protection else "false",
        "ML_BLOCK_LOCAL_IP": "true" if cfg.ml_block_local_ip else "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    })
    log_file = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [str(executable), "start", "--no-browser", "--internal-host", cfg.host, "--port", str(port),
             "--host", f"http://{cfg.host}:{port}"],
            cwd=data_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: stop() ends the server and its children
    finally:
        log_file.close()


def _wait_ready(url: str, token: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    api = LabelStudioAPI(url, token, timeout_s=5.0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NotReady(f"Label Studio exited with {proc.returncode} while starting; log {log_path}: "
                           f"{_tail(log_path)}")
        if api.health():
            api.whoami()  # the token works (PermissionDenied otherwise)
            return
        time.sleep(0.5)
    raise NotReady(f"Label Studio at {url} did not answer within {timeout_s:.0f} s; log {log_path}: {_tail(log_path)}")


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _terminate(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _ensure_template(cfg: LocalLabelStudioConfig) -> None:
    """Start Label Studio once on the template folder (migrate, make the user and token), then stop
    it; several processes may ask at once (a lock file serialises them)."""
    template = Path(cfg.template_dir).absolute()
    template.parent.mkdir(parents=True, exist_ok=True)
    with open(template.parent / f".{template.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (template / ".ready").is_file():
            return
        shutil.rmtree(template, ignore_errors=True)
        template.mkdir(parents=True)
        log.info("preparing the Label Studio template data folder %s (first start: a minute or two)", template)
        once = LocalLabelStudio(LocalLabelStudioConfig(
            data_dir=str(template), document_root=cfg.document_root, venv=cfg.venv, host=cfg.host,
            startup_timeout_s=cfg.startup_timeout_s))
        with once:
            pass
        (template / "label-studio.log").unlink(missing_ok=True)
        (template / ".ready").write_text("ok")

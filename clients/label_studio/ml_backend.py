"""SegXAL's Label Studio ML backend: a small HTTP service that speaks Label Studio's ML backend
protocol (/health, /setup, /predict, /webhook; the logic is clients.label_studio.ml_model), so a
team that already runs Label Studio connects SegXAL in Project Settings -> Model, gets EEM-restricted
brush pre-annotations with the frame's EEM score (sort the data manager by "Prediction score"),
and its saved annotations reach the coordinator (or start a trainer job).

    python -m clients.label_studio.ml_backend --eem-target host:port --ls-document-root /shared \
        --media-dir /shared/segxal-overlays --coordinator host:port --pool drive-2026-11 [--port 9090]
    python -m clients.label_studio.ml_backend ... --forward trainer --trainer host:port

Security (docs/label_studio.md): with BASIC_AUTH_USER / BASIC_AUTH_PASS set (the same pair in
Label Studio's model settings, "Basic Authentication") every route but /health answers 401 without
them; the backend puts the same credentials on the webhook Label Studio makes for it. A backend
that forwards annotations (--forward coordinator|trainer) will not start without them unless
--insecure-no-auth is given. Frames and the API are fetched from --ls-url only, never from a host
a request names; local files only from inside --ls-document-root. gRPC channels take the TLS and
bearer-token flags every client has (--coordinator-token-file, --eem-tls-ca, ...).

The project's label config must be clients.label_studio.project.label_config(classes) (BrushLabels
named "label" on the Image "image", one label per class of the --pool, Cityscapes without a
coordinator; /setup refuses others with the reason). Every flag has an environment
variable SEGXAL_LS_ML_<FLAG>; flags win. Prints "ml backend listening on http://HOST:PORT" once
serving; SIGINT / SIGTERM stop it.

Errors: a malformed request gets a 4xx with a JSON {"error": message} (400 bad JSON, bad
Content-Length or fields, 401 no or wrong credentials, 404 unknown path or frame, 405 wrong
method, 409 no task waits, 411 no Content-Length, 413 too large, 422 unreadable
annotation or frame); a service behind it that is down gets 503. A 500 means a bug (logged).
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from clients.label_studio.ml_model import FORWARD_MODES, MLBackendConfig, RequestError, SegxalMLModel
from services.common.channel import add_channel_args, channel_config_from_args
from segxal.eem.options import add_eem_arguments, eem_options_from_args
from segxal.errors import (FailedPrecondition, InvalidInput, NotFound, NotReady, PermissionDenied, ResourceExhausted,
                           SegxalError)

log = logging.getLogger(__name__)

ENV_PREFIX = "SEGXAL_LS_ML_"
_DIGITS = re.compile(r"[0-9]{1,20}")  # a Content-Length as RFC 9110 writes it: digits only
PUBLIC_PATHS = ("/health",)  # Label Studio's health check; every other route needs the credentials
_STATUS = [(RequestError, None), (InvalidInput, 400), (NotFound, 404), (PermissionDenied, 403),
           (FailedPrecondition, 409), (ResourceExhausted, 429), (NotReady, 503)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: SegxalMLModel, max_body_bytes: int, auth_header: str):
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.auth_header = auth_header  # "Basic ..." every caller must send; empty: auth off
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    _POST = ("/setup", "/predict", "/webhook")
    _GET = ("/", "/health")

    def _authorized(self, path: str) -> bool:
        """True when the request may go on; else a 401 has been sent (the body is never read)."""
        expected = self.server.auth_header
        if not expected or path in PUBLIC_PATHS:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
            return True
        log.warning("%s %s from %s refused: %s", self.command, path, self.client_address[0],
                    "wrong credentials" if given else "no credentials")
        self.close_connection = True  # an unread body must not be parsed as the next request
        self._reply(401, {"error": "this ML backend requires HTTP basic auth (Label Studio: the model's Authentication "
                                   "method 'Basic Authentication' with the backend's user and password)"},
                    {"WWW-Authenticate": 'Basic realm="SegXAL ML backend"'})
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if not self._authorized(path):
            return
        if path in self._GET:
            self._reply(200, self.server.model.health())
        elif path in self._POST:
            self._reply(405, {"error": f"{path} takes POST"})
        else:
            self._reply(404, {"error": f"unknown path {path}; this ML backend serves /health, /setup, /predict, "
                                       f"/webhook"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if not self._authorized(path):
            return
        if path not in self._POST:
            code = 405 if path in self._GET else 404
            self._reply(code, {"error": f"{path} takes GET" if code == 405 else f"unknown path {path}"})
            return
        try:
            body = self._body()
            model = self.server.model
            if path == "/setup":
                status, reply = 200, model.setup(body)
            elif path == "/predict":
                status, reply = 200, model.predict(body)
            else:
                status, reply = model.webhook(body)
        except SegxalError as e:
            status = next((code or getattr(e, "status") for kind, code in _STATUS if isinstance(e, kind)), 500)
            reply = {"error": str(e)}
            if getattr(getattr(e, "code", None), "name", "") == "UNAUTHENTICATED":
                # A service behind us refused our credentials: a set-up error, not a bug here.
                status = 502
                reply = {"error": f"{e}: a service refused this backend's credentials (--coordinator-token-file, "
                                  f"--eem-token-file, --trainer-token-file and the matching --*-tls-ca)"}
            log.info("%s -> %d: %s", path, status, reply["error"])
        except Exception:  # a bug: the traceback goes to the log, the caller gets no internals
            log.exception("%s failed", path)
            status, reply = 500, {"error": "internal error in the SegXAL ML backend (see its log)"}
        self._reply(status, reply)

    def _body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "a JSON body with Content-Length is required")
        # int() would take "-1", "+5", " 5" and "1_0": only plain digits are a length. A refused
        # length leaves the body unread, so the connection is closed after the reply.
        if not _DIGITS.fullmatch(length):
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {length[:40]!r}: expected a non-negative whole number")
        n = int(length)
        if n > self.server.max_body_bytes:
            self.close_connection = True
            raise RequestError(413, f"body of {n} bytes is larger than {self.server.max_body_bytes}")
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except RecursionError:
            raise RequestError(400, "body is not JSON this backend reads: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"body is not JSON ({e})") from None

    def _reply(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("http: " + fmt, *args)


class MLBackendServer:
    """The HTTP server over a SegxalMLModel; `start()` serves from a thread, `stop()` ends it. It
    owns the EEM / coordinator / trainer clients it makes and closes them on stop.

    Args:
        cfg: the configuration.
        model: a ready model (tests); default: one with clients made from cfg.
    """

    def __init__(self, cfg: MLBackendConfig, model: SegxalMLModel | None = None):
        self.cfg = cfg.validate()
        self._owned = []
        if model is None:
            model = self._make_model()
        self.model = model
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _make_model(self) -> SegxalMLModel:
        from services.eem.client import EemClient
        eem = EemClient(self.cfg.eem_target, self.cfg.eem_channel, timeout_s=self.cfg.eem_timeout_s)
        self._owned.append(eem)
        coordinator = trainer = None
        if self.cfg.forward == "coordinator":
            from clients.labeling import default_client_id
            from services.coordinator.client import CoordinatorClient
            coordinator = CoordinatorClient(self.cfg.coordinator, self.cfg.coordinator_channel,
                                            client_id=self.cfg.client_id or default_client_id("label-studio-ml"))
            self._owned.append(coordinator)
        elif self.cfg.forward == "trainer":
            from services.trainer.client import TrainerClient
            trainer = TrainerClient(self.cfg.trainer, self.cfg.trainer_channel)
            self._owned.append(trainer)
        return SegxalMLModel(self.cfg, eem, coordinator, trainer)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        if self.cfg.media_dir:  # Label Studio checks a Local Storage's folder exists when it is added
            Path(self.cfg.media_dir).mkdir(parents=True, exist_ok=True)
        self._server = _Server((self.cfg.host, self.cfg.port), self.model, self.cfg.max_body_bytes,
                               self.cfg.auth_header)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ls-ml-backend", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if hasattr(self.model, "close"):
            self.model.close()
        for client in self._owned:
            client.close()
        self._owned.clear()

    def __enter__(self) -> "MLBackendServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    d = MLBackendConfig()
    env = lambda name, default: os.environ.get(ENV_PREFIX + name, default)  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m clients.label_studio.ml_backend", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=env("HOST", d.host), help="address the backend listens on")
    p.add_argument("--port", type=int, default=int(env("PORT", d.port)), help="its port")
    p.add_argument("--eem-target", default=env("EEM_TARGET", d.eem_target), help="EEM scoring service host:port")
    add_eem_arguments(p, prefix="eem-", env=lambda name: os.environ.get(ENV_PREFIX + name))
    p.add_argument("--ls-document-root", default=env("LS_DOCUMENT_ROOT", d.ls_document_root),
                   help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT as this machine sees it")
    p.add_argument("--media-dir", default=env("MEDIA_DIR", d.media_dir),
                   help="where overlays are written (inside the document root); empty: no overlays")
    p.add_argument("--cache-dir", default=env("CACHE_DIR", d.cache_dir), help="frames fetched from Label Studio")
    p.add_argument("--ls-url", default=env("LS_URL", ""),
                   help="Label Studio's URL: the only host frames are fetched from and the API is called at "
                        "(overlays, project set-up); empty: local files only")
    p.add_argument("--ls-token", default=env("LS_TOKEN", ""),
                   help="API token (default: the one Label Studio sends to /setup); better SEGXAL_LS_ML_LS_TOKEN")
    p.add_argument("--ls-media-dir", default=env("LS_MEDIA_DIR", ""),
                   help="--media-dir as Label Studio's host sees it (its Local Storage path; default: the same)")
    p.add_argument("--basic-auth-user", default=env("BASIC_AUTH_USER", os.environ.get("BASIC_AUTH_USER", "")),
                   help="require HTTP basic auth on every route but /health (also BASIC_AUTH_USER)")
    p.add_argument("--basic-auth-pass-file", default=env("BASIC_AUTH_PASS_FILE", ""),
                   help="file holding the password (else SEGXAL_LS_ML_BASIC_AUTH_PASS or BASIC_AUTH_PASS)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="let a forwarding backend run without basic auth: anyone who reaches it can submit")
    for flag, what in (("eem", "the EEM service"), ("coordinator", "the coordinator"), ("trainer", "the trainer")):
        add_channel_args(p, flag, ENV_PREFIX, what)
    p.add_argument("--forward", choices=FORWARD_MODES, default=env("FORWARD", d.forward),
                   help="where saved annotations go")
    p.add_argument("--coordinator", default=env("COORDINATOR", ""), help="coordinator host:port")
    p.add_argument("--pool", default=env("POOL", ""), help="the coordinator pool of the project's frames")
    p.add_argument("--client-id", default=env("CLIENT_ID", ""),
                   help="lease holder's name at the coordinator (default: label-studio-ml@<host>:<pid>)")
    p.add_argument("--trainer", default=env("TRAINER", ""), help="trainer host:port (--forward trainer)")
    p.add_argument("--trainer-publish", action="store_true", help="publish the trained version when it passes")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _basic_auth_pass(args: argparse.Namespace) -> str:
    """The password: the file's first line, else the environment (never a flag: `ps` shows flags).

    Raises:
        OSError: the file cannot be read.
    """
    if args.basic_auth_pass_file:
        with open(args.basic_auth_pass_file) as f:
            return f.readline().rstrip("\r\n")
    return os.environ.get(ENV_PREFIX + "BASIC_AUTH_PASS", os.environ.get("BASIC_AUTH_PASS", ""))


def config_from_args(args: argparse.Namespace) -> MLBackendConfig:
    """The MLBackendConfig of the parsed flags.

    Raises:
        OSError: a password or token file cannot be read.
    """
    return MLBackendConfig(
        ls_media_dir=args.ls_media_dir, basic_auth_user=args.basic_auth_user, basic_auth_pass=_basic_auth_pass(args),
        insecure_no_auth=args.insecure_no_auth, eem_channel=channel_config_from_args(args, "eem"),
        coordinator_channel=channel_config_from_args(args, "coordinator"),
        trainer_channel=channel_config_from_args(args, "trainer"),
        host=args.host, port=args.port, eem_target=args.eem_target,
        eem=eem_options_from_args(args, prefix="eem-"),
        ls_document_root=args.ls_document_root, media_dir=args.media_dir, cache_dir=args.cache_dir,
        ls_url=args.ls_url, ls_token=args.ls_token, forward=args.forward, coordinator=args.coordinator,
        pool=args.pool, client_id=args.client_id, trainer=args.trainer, trainer_publish=args.trainer_publish)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Handlers first: whoever reads the "listening" line may stop us at once.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = MLBackendServer(config_from_args(args))
        server.start()
    except (SegxalError, OSError) as e:
        print(f"ml backend: error: {e}", file=sys.stderr)
        return 2
    print(f"ml backend listening on {server.url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

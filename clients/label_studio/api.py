"""Label Studio's REST API, the calls the bridge makes, over urllib (no SDK in our venv).

Tokens (Label Studio: Account & Settings):
- a legacy API token (40 hex characters) is sent as `Authorization: Token <token>`;
- a personal access token (a JWT refresh token, three dot-separated parts) is exchanged at
  POST /api/token/refresh for a short-lived access token, sent as `Authorization: Bearer <access>`
  and refreshed once when Label Studio answers 401.

Errors are our exceptions, and each says what went wrong with which Label Studio:
unreachable / 5xx -> NotReady; 401 / 403 -> PermissionDenied; 404 -> NotFound; 400 -> InvalidInput
(with Label Studio's validation errors).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

from segxal.errors import InvalidInput, NotFound, NotReady, PermissionDenied

log = logging.getLogger(__name__)

PAGE_SIZE = 100
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple | None:
    """(scheme, host, port) of an absolute URL; None when it has none or a bad port."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    return (scheme, parts.hostname, port) if scheme and parts.hostname else None


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the request's own origin: urllib would carry the Authorization
    header to any host a redirect names."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        if _origin(newurl) != _origin(req.full_url):
            b = urllib.parse.urlsplit(newurl)
            error = urllib.error.HTTPError(req.full_url, code, f"to {b.scheme}://{b.netloc}", headers, fp)
            error.off_origin = True
            raise error
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_SAME_ORIGIN_OPENER = urllib.request.build_opener(_SameOriginRedirects)


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2


def _detail(body: bytes) -> str:
    """Label Studio's error text: `detail` plus any validation errors."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    if not isinstance(payload, dict):
        return str(payload)[:200]
    parts = [str(payload.get("detail") or "")]
    if payload.get("validation_errors"):
        parts.append(json.dumps(payload["validation_errors"]))
    return ": ".join(p for p in parts if p) or str(payload)[:200]


class LabelStudioAPI:
    """A thread-safe client of one Label Studio server.

    Args:
        url: the server's base URL, e.g. "http://127.0.0.1:8080".
        token: a legacy API token or a personal access token.
        timeout_s: per request.
    """

    def __init__(self, url: str, token: str, timeout_s: float = 30.0):
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"Label Studio URL must start with http:// or https://, got {url!r}")
        if not token:
            raise InvalidInput("Label Studio API token is empty (Account & Settings -> Access Token)")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self._access: str | None = None  # personal access tokens: the current access token
        self._lock = threading.Lock()

    # ---- transport
    def _auth_header(self, refresh: bool = False) -> str:
        if not _is_jwt(self._token):
            return f"Token {self._token}"
        with self._lock:
            if self._access is None or refresh:
                reply = self._send("POST", "/api/token/refresh/", {"refresh": self._token}, auth=None)
                self._access = reply["access"]
            return f"Bearer {self._access}"

    def _send(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
              auth: str | None) -> Any:
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = auth
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        what = f"Label Studio {method} {path}"
        try:
            with _SAME_ORIGIN_OPENER.open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if getattr(e, "off_origin", False):
                raise InvalidInput(f"{what}: Label Studio redirected off its origin ({e.msg}); refused") from None
            detail = _detail(e.read())
            if e.code in (401, 403):
                raise PermissionDenied(f"{what}: Label Studio at {self.url} refused the API token "
                                       f"({e.code} {detail})") from None
            if e.code == 404:
                raise NotFound(f"{what}: not found ({detail})") from None
            if 400 <= e.code < 500:
                raise InvalidInput(f"{what}: refused ({e.code} {detail})") from None
            raise NotReady(f"{what}: Label Studio at {self.url} failed ({e.code} {detail})") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise NotReady(f"{what}: Label Studio at {self.url} is unreachable ({reason})") from None
        return json.loads(raw) if raw else None

    def same_origin(self, url: str) -> bool:
        """`url` (absolute) is on this server's scheme, host and port."""
        mine = _origin(self.url)
        return mine is not None and _origin(url) == mine

    def download(self, path: str, max_bytes: int = 64 << 20) -> bytes:
        """The bytes Label Studio serves at `path` (an uploaded or local file of a task), with the token.
        Only this server is asked: a URL of another origin is refused before any request, and so is
        a redirect to one (the token would go with it).

        Raises:
            PermissionDenied / NotFound / NotReady: as request(); InvalidInput: larger than max_bytes,
                or a URL / redirect off this server.
        """
        url = urllib.parse.urljoin(self.url + "/", path)
        if not self.same_origin(url):
            raise InvalidInput(f"Label Studio GET {path}: not a URL of {self.url}; refused")
        req = urllib.request.Request(url, headers={"Authorization": self._auth_header()})
        what = f"Label Studio GET {path}"
        try:
            with _SAME_ORIGIN_OPENER.open(req, timeout=self.timeout_s) as resp:
                data = resp.read(max_bytes + 1)
        except urllib.error.HTTPError as e:
            if getattr(e, "off_origin", False):
                raise InvalidInput(f"{what}: Label Studio redirected off its origin ({e.msg}); refused") from None
            if e.code in (401, 403):
                raise PermissionDenied(f"{what}: refused ({e.code})") from None
            if e.code == 404:
                raise NotFound(f"{what}: not found") from None
            raise NotReady(f"{what}: failed ({e.code})") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            raise NotReady(f"{what}: unreachable ({getattr(e, 'reason', e)})") from None
        if len(data) > max_bytes:
            raise InvalidInput(f"{what}: larger than {max_bytes} bytes")
        return data

    def request(self, method: str, path: str, body: Any = None, *, params: dict | None = None) -> Any:
        """One authenticated call; JSON in, JSON out (None for an empty reply)."""
        try:
            return self._send(method, path, body, params=params, auth=self._auth_header())
        except PermissionDenied:
            if not _is_jwt(self._token):
                raise
            # The access token may have expired: refresh once, then let a second refusal through.
            return self._send(method, path, body, params=params, auth=self._auth_header(refresh=True))

    # ---- server
    def health(self) -> bool:
        """True when the server answers /health (no token needed)."""
        try:
            self._send("GET", "/health", auth=None)
            return True
        except NotReady:
            return False

    def whoami(self) -> dict:
        """The token's user; the cheapest call that checks the token."""
        return self.request("GET", "/api/current-user/whoami")

    # ---- projects
    def find_project(self, title: str) -> dict | None:
        page = 1
        while True:
            reply = self.request("GET", "/api/projects", params={"title": title, "page": page,
                                                                  "page_size": PAGE_SIZE})
            for project in reply["results"]:
                if project["title"] == title:
                    return project
            if not reply.get("next"):
                return None
            page += 1

    def create_project(self, title: str, label_config: str, description: str = "", **fields) -> dict:
        return self.request("POST", "/api/projects", {"title": title, "label_config": label_config,
                                                      "description": description, **fields})

    def get_project(self, project_id: int) -> dict:
        return self.request("GET", f"/api/projects/{project_id}")

    def local_storages(self, project_id: int) -> list[dict]:
        return self.request("GET", "/api/storages/localfiles", params={"project": project_id})

    def create_local_storage(self, project_id: int, path: str, title: str) -> dict:
        """Connect a folder on the Label Studio host (under its LOCAL_FILES_DOCUMENT_ROOT) so that
        tasks may reference its files as /data/local-files/?d=<path relative to that root>."""
        return self.request("POST", "/api/storages/localfiles", {
            "project": project_id, "path": path, "title": title, "use_blob_urls": False})

    # ---- tasks
    def create_task(self, project_id: int, data: dict) -> dict:
        return self.request("POST", "/api/tasks", {"project": project_id, "data": data})

    def get_task(self, task_id: int) -> dict:
        """A task with its annotations (and predictions)."""
        return self.request("GET", f"/api/tasks/{task_id}")

    def delete_task(self, task_id: int) -> None:
        self.request("DELETE", f"/api/tasks/{task_id}")

    def iter_tasks(self, project_id: int, with_annotations: bool = True) -> Iterator[dict]:
        """Every task of a project, page by page."""
        seen = 0
        page = 1
        while True:
            params = {"project": project_id, "page": page, "page_size": PAGE_SIZE}
            if with_annotations:
                params["fields"] = "all"
            reply = self.request("GET", "/api/tasks", params=params)
            tasks = reply["tasks"]
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= reply["total"]:
                return
            page += 1

    def create_prediction(self, task_id: int, result: list[dict], model_version: str, score: float = 0.0) -> dict:
        return self.request("POST", "/api/predictions", {"task": task_id, "result": result,
                                                         "model_version": model_version, "score": score})

    def create_annotation(self, task_id: int, result: list[dict], **fields) -> dict:
        """What a person's browser posts on Submit."""
        return self.request("POST", f"/api/tasks/{task_id}/annotations", {"result": result, **fields})

    # ---- webhooks
    def webhooks(self, project_id: int) -> list[dict]:
        return self.request("GET", "/api/webhooks", params={"project": project_id})

    def create_webhook(self, project_id: int, url: str, actions: list[str], headers: dict[str, str]) -> dict:
        return self.request("POST", "/api/webhooks", {
            "project": project_id, "url": url, "send_payload": True, "send_for_all_actions": False,
            "actions": actions, "headers": headers, "is_active": True})

    def delete_webhook(self, webhook_id: int) -> None:
        self.request("DELETE", f"/api/webhooks/{webhook_id}")

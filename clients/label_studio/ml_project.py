"""What the ML backend sets up in a Label Studio project after Label Studio connects it, so that a
team needs no step beyond "Connect Model" (Label Studio 1.23.2):

- the project's model version: on connect Label Studio sets it to the backend's *title*, while the
  predictions carry the backend's model version ("segmentation:1"); the data manager averages, and
  sorts by, only the scores of the project's model version, so "Prediction score" would be empty.
  The project's version is moved to the backend's when it is empty, one of this backend's titles
  or a version this backend announced before (a version a person chose stays);
- the webhook Label Studio makes for the backend (<url>/webhook) carries no credentials; with basic
  auth on, it gets the same `Authorization: Basic ...` header Label Studio sends to /predict;
- a Local Storage for the overlay folder (--media-dir), which Label Studio must have before it
  serves a file from it; its regex matches no file, so a "Sync" imports no overlay as a task.

Each step reads first and changes only what differs; running it again changes nothing. A step
Label Studio refuses (e.g. a model version no prediction carries yet) leaves the others to run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from clients.label_studio.api import LabelStudioAPI
from segxal.errors import SegxalError

log = logging.getLogger(__name__)

OVERLAY_STORAGE_TITLE = "SegXAL overlays (set by the ML backend; do not sync)"
NO_FILE_REGEX = "(?!)"  # a Python regex that matches nothing: Sync imports no overlay as a task


@dataclass
class ProjectSetup:
    """What one pass of `set_up_project` changed (for logs and tests)."""
    model_version: str = ""  # the project's version after the pass
    changed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # steps Label Studio refused (with its reason)


def _ours(api: LabelStudioAPI, project_id: int, auth_user: str) -> list[dict]:
    """The project's ML backends that are this backend: those using our basic-auth user, or, with
    auth off, every one (Label Studio gives no other way to tell which URL reaches us)."""
    backends = api.request("GET", "/api/ml", params={"project": project_id}) or []
    if not auth_user:
        return list(backends)
    return [b for b in backends if b.get("auth_method") == "BASIC_AUTH" and b.get("basic_auth_user") == auth_user]


def set_up_project(api: LabelStudioAPI, project_id: int, model_version: str, announced: set[str], *,
                   auth_user: str = "", auth_header: str = "", overlay_dir: str = "") -> ProjectSetup:
    """One pass over the project (see the module docstring).

    Args:
        api: a client of the configured Label Studio.
        project_id: the project.
        model_version: the version this backend's predictions carry now.
        announced: versions this backend announced before (the project may still name one).
        auth_user / auth_header: the basic-auth user and its "Basic ..." header; empty: auth off.
        overlay_dir: the overlay folder as Label Studio sees it; empty: no overlays.

    Returns:
        What the pass changed, and the steps Label Studio refused (never raises for those).
    """
    out = ProjectSetup()
    try:
        ours = _ours(api, project_id, auth_user)
    except SegxalError as e:
        out.failed.append(f"listing the project's ML backends: {e}")
        return out
    try:
        current = api.get_project(project_id).get("model_version") or ""
        replaceable = {""} | {b.get("title") or "" for b in ours} | set(announced)
        if current != model_version and current in replaceable:
            # Label Studio takes only a version that an ML backend is titled or predictions carry.
            api.request("PATCH", f"/api/projects/{project_id}", {"model_version": model_version})
            out.changed.append(f"project model version {current!r} -> {model_version!r}")
            current = model_version
        out.model_version = current
    except SegxalError as e:
        out.failed.append(f"project model version {model_version!r}: {e}")
    if auth_header:
        try:
            urls = {b["url"].rstrip("/") + "/webhook" for b in ours if b.get("url")}
            for hook in api.webhooks(project_id) or []:
                headers = dict(hook.get("headers") or {})
                if hook.get("url") in urls and headers.get("Authorization") != auth_header:
                    api.request("PATCH", f"/api/webhooks/{int(hook['id'])}",
                                {"headers": {**headers, "Authorization": auth_header}})
                    out.changed.append(f"webhook {hook['id']} authenticates")
        except SegxalError as e:
            out.failed.append(f"webhook credentials: {e}")
    if overlay_dir:
        want = Path(overlay_dir)
        try:
            covered = any(s.get("path") and (want == Path(s["path"]) or Path(s["path"]) in want.parents)
                          for s in api.local_storages(project_id) or [])
            if not covered:
                api.request("POST", "/api/storages/localfiles", {
                    "project": project_id, "path": str(want), "title": OVERLAY_STORAGE_TITLE,
                    "regex_filter": NO_FILE_REGEX, "use_blob_urls": False})
                out.changed.append(f"local storage for {want}")
        except SegxalError as e:
            out.failed.append(f"local storage for {want}: {e}")
    return out

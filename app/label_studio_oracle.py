"""Label Studio as the oracle of the services loop (`segxal loop --oracle label-studio`).

People label in Label Studio; the loop waits for them. One Label Studio serves the whole run: the
one at --ls-url (with --ls-token), or, without one, a local server started from its own venv
(scripts/setup_label_studio.sh makes .venv-ls; it is run here when the venv is missing). Each cycle
runs a bridge (clients.label_studio.bridge) on that cycle's tasks: it leases them from the
coordinator, puts them into the project "SegXAL loop" pre-annotated with the model's classes in the
EEM regions and the EEM heat map beside the frame, and submits what people save back to the
coordinator. The cycle ends when the coordinator has no open or leased task left in it.

How to log in is printed, and written to <workdir>/label-studio/connection.json (mode 0600), which
is also what a script driving the people's side reads (the end-to-end test does).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from segxal.progress import progress

from clients.label_studio.bridge import PUSH_FAILED, Bridge, BridgeConfig
from clients.label_studio.local import LocalLabelStudio, LocalLabelStudioConfig
from clients.labeling import LabelingConfig, WorkSummary
from segxal.errors import FailedPrecondition, InvalidInput, NotReady
from services.coordinator.client import CoordinatorClient

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_TITLE = "SegXAL loop"


@dataclass
class LabelStudioOracleConfig:
    url: str = ""  # a running Label Studio; empty: start a local one for the run
    token: str = ""  # its API token (legacy token or personal access token)
    document_root: str = ""  # with url: its LOCAL_FILES_DOCUMENT_ROOT as this machine sees it (required)
    venv: str = ".venv-ls"  # the local server's venv (relative to the repository)
    wait_s: float = 0.0  # longest wait for the people per cycle; 0: as long as it takes
    poll_s: float = 1.0  # how often the cycle's progress is read from the coordinator

    def validate(self) -> "LabelStudioOracleConfig":
        if self.url and not self.token:
            raise InvalidInput("--ls-url needs --ls-token (Label Studio: Account & Settings -> Access Token)")
        if self.url and not self.document_root:
            raise InvalidInput("--ls-url needs --ls-document-root: the folder that server serves local files "
                               "from (its LOCAL_FILES_DOCUMENT_ROOT), where the loop writes frames and EEM maps")
        if self.wait_s < 0 or self.poll_s <= 0:
            raise InvalidInput("--ls-wait must be >= 0 and the poll interval > 0")
        return self


class LabelStudioOracle:
    """A context manager: on enter, the Label Studio of the run (started when local); on exit, stopped.

    Args:
        cfg: the configuration.
        work_dir: the loop's work folder (local server data, media, bridge state, connection.json).
        frame_roots: where frames and stored predictions may be read (the bridge copies them).
        eem_target: the EEM service, for the heat map shown beside each frame.
        progress: show a progress bar of the cycle's tasks.
    """

    def __init__(self, cfg: LabelStudioOracleConfig, work_dir: Path, frame_roots: list[str], eem_target: str,
                 progress: bool = True):
        self.cfg = cfg.validate()
        self.dir = Path(work_dir) / "label-studio"
        self.frame_roots = frame_roots
        self.eem_target = eem_target
        self.progress = progress
        self.url, self.token = cfg.url, cfg.token
        self.document_root = Path(cfg.document_root or self.dir / "media").absolute()
        self._server: LocalLabelStudio | None = None

    def __enter__(self) -> "LabelStudioOracle":
        if not self.url:
            self._server = _start_local(self.cfg, self.dir, self.document_root)
            self.url, self.token = self._server.url, self._server.token
        self._write_connection()
        who = (f"user {self._server.username}  password {self._server.password}" if self._server
               else "your own account")
        print(f"Label Studio: {self.url}  ({who}); project {PROJECT_TITLE!r}; details in "
              f"{self.dir / 'connection.json'}", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def label_cycle(self, labeling: LabelingConfig, coord: CoordinatorClient, cycle_id: str) -> WorkSummary:
        """Serve the cycle's tasks in Label Studio until people have answered all of them.

        Raises:
            FailedPrecondition: a task could not be put into Label Studio (a frame outside the roots,
                Label Studio refusing it): the task is released, the message says why.
            NotReady: wait_s passed with tasks still unanswered (what was submitted stays submitted;
                the rest keep their leases, which lapse, and can be labeled in a later run).
        """
        total = coord.cycle_report(cycle_id).tasks_total
        cfg = BridgeConfig(labeling=labeling, ls_url=self.url, ls_token=self.token, project_title=PROJECT_TITLE,
                           work_dir=str(self.dir / "bridge" / cycle_id),
                           media_dir=str(self.document_root / "segxal"), ls_document_root=str(self.document_root),
                           frame_roots=self.frame_roots, eem_target=self.eem_target,
                           max_waiting=max(1, total),  # all of the cycle at once: several people can share it
                           poll_s=10.0)  # webhooks bring annotations at once; the poll is the fallback
        stop = threading.Event()
        deadline = time.monotonic() + self.cfg.wait_s if self.cfg.wait_s else None
        with Bridge(cfg) as bridge:
            thread = threading.Thread(target=bridge.run, args=(stop,), name=f"bridge-{cycle_id}", daemon=True)
            thread.start()
            bar = progress(total=total, desc=f"label {cycle_id} in Label Studio", unit="task", enabled=self.progress)
            try:
                while True:
                    report = coord.cycle_report(cycle_id)
                    finished = report.tasks_done + report.tasks_cancelled
                    bar.update(finished - bar.n)
                    if report.tasks_open == 0 and report.tasks_leased == 0:
                        break
                    broken = [f"{k}: {v}" for k, v in bridge.errors.items() if v.startswith(PUSH_FAILED)]
                    if broken:  # set-up, not people: retrying would only spin (the task is released)
                        raise FailedPrecondition(f"cycle {cycle_id}: {broken[0]}")
                    if deadline is not None and time.monotonic() > deadline:
                        raise NotReady(f"cycle {cycle_id}: {total - finished} of {total} tasks still unanswered in "
                                       f"Label Studio ({self.url}, project {PROJECT_TITLE!r}) after "
                                       f"{self.cfg.wait_s:.0f} s")
                    time.sleep(self.cfg.poll_s)
            finally:
                bar.close()
                stop.set()
                thread.join(30)
            gave_back = {k: v for k, v in bridge.errors.items() if k not in bridge.submitted}
            return WorkSummary(submitted=len(bridge.submitted), released=len(gave_back),
                               errors=[f"{k}: {v}" for k, v in gave_back.items()])

    def _write_connection(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        info = {"url": self.url, "token": self.token, "project_title": PROJECT_TITLE,
                "document_root": str(self.document_root)}
        if self._server is not None:
            info.update(username=self._server.username, password=self._server.password)
        path = self.dir / "connection.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the token
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=2)


def _start_local(cfg: LabelStudioOracleConfig, folder: Path, document_root: Path) -> LocalLabelStudio:
    venv = Path(cfg.venv) if Path(cfg.venv).is_absolute() else REPO_ROOT / cfg.venv
    if not (venv / "bin" / "label-studio").is_file():
        print(f"setting up Label Studio in {venv} (first time: a few minutes)...", flush=True)
        out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_label_studio.sh")], cwd=REPO_ROOT,
                             env={**os.environ, "SEGXAL_LS_VENV": str(venv)}, capture_output=True, text=True)
        if out.returncode != 0:
            raise NotReady(f"scripts/setup_label_studio.sh failed ({out.returncode}): "
                           f"{(out.stdout + out.stderr)[-1500:]}")
    server = LocalLabelStudio(LocalLabelStudioConfig(
        data_dir=str(folder / "data"), document_root=str(document_root), venv=str(venv),
        # a migrated, started-once data folder kept beside the venv: later runs start in seconds
        template_dir=str(venv / "segxal-data-template")))
    server.start()
    return server


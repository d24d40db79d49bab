"""Crash safety: a coordinator subprocess is killed with SIGKILL while labeling clients lease and
submit; restarted on the same database, it still has every annotation whose submit returned OK
(row and mask file), and every task gets done: leases held by the dead run expire and requeue."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.coordinator_support import BACKENDS, CoordinatorProcess, database_url, labels_for, pool_with_tasks
from segxal.errors import SegxalError
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.coordinator.client import CoordinatorClient

TASKS = 40
LEASE_S = 2.0  # short, so the leases the crash orphaned come back quickly
LABELERS = 4


def _label_until_stopped(target: str, pool_id: str, name: str, accepted: dict, lock: threading.Lock,
                         stop: threading.Event) -> None:
    with CoordinatorClient(target, client_id=name, timeout_s=5) as client:
        while not stop.is_set():
            try:
                tasks = client.lease(pool_id, max_tasks=1, lease_seconds=LEASE_S)
                if not tasks:
                    time.sleep(0.05)
                    continue
                reply = client.submit(tasks[0], labels_for(tasks[0], hash(name) % 19))
            except SegxalError:
                return  # the server is gone: what returned OK so far is what must survive
            with lock:
                accepted[tasks[0].task_id] = reply.annotation


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_keeps_every_accepted_annotation_and_loses_no_task(backend, tmp_path):
    storage = tmp_path / "storage"
    with database_url(backend, tmp_path) as url:
        first = CoordinatorProcess(url, storage, tmp_path / "first.log")
        try:
            with CoordinatorClient(first.target, client_id="setup", timeout_s=30) as setup:
                pool, cycle = pool_with_tasks(setup, tmp_path / "frames", TASKS)
            accepted: dict[str, pb.Annotation] = {}
            lock, stop = threading.Lock(), threading.Event()
            labelers = [threading.Thread(target=_label_until_stopped,
                                         args=(first.target, pool.pool_id, f"labeler-{i}", accepted, lock, stop))
                        for i in range(LABELERS)]
            for t in labelers:
                t.start()
            deadline = time.monotonic() + 60
            while len(accepted) < TASKS // 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            first.kill()  # SIGKILL mid-traffic: submits and leases are in flight
        finally:
            stop.set()
            first.kill() if first.proc.poll() is None else None
        for t in labelers:
            t.join(30)
        assert TASKS // 3 <= len(accepted) < TASKS, "the crash must land mid-cycle"

        second = CoordinatorProcess(url, storage, tmp_path / "second.log")
        try:
            with CoordinatorClient(second.target, client_id="after-crash", timeout_s=30) as client:
                stored = {a.task_id: a for a in client.annotations(pool.pool_id)}
                for task_id, ann in accepted.items():  # every OK survived, row and file
                    assert stored[task_id].annotation_id == ann.annotation_id
                    assert stored[task_id].content_sha256 == ann.content_sha256
                    assert Path(stored[task_id].mask_uri).is_file()
                report = client.cycle_report(cycle.cycle_id)
                assert report.tasks_done == len(stored) and report.tasks_total == TASKS
                # the rest gets done by a fresh labeler: orphaned leases expire and requeue
                deadline = time.monotonic() + LEASE_S + 30
                while time.monotonic() < deadline:
                    tasks = client.lease(pool.pool_id, max_tasks=8, lease_seconds=30)
                    for task in tasks:
                        client.submit(task, labels_for(task, 1))
                    report = client.cycle_report(cycle.cycle_id)
                    if report.cycle_complete:
                        break
                    if not tasks:
                        time.sleep(0.1)
                assert report.cycle_complete and report.tasks_done == TASKS
                final = list(client.annotations(pool.pool_id))
                assert len(final) == TASKS and len({a.task_id for a in final}) == TASKS
        finally:
            second.stop()

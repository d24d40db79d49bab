"""Several replicas on one PostgreSQL: 3 coordinator subprocesses, 16 labeling clients (threads)
leasing batches and submitting as fast as they can. No task is ever leased to two clients at once
(leases are long, so any second lease of a task would be a double lease), and every task is done
exactly once."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

from tests.coordinator_support import CoordinatorProcess, database_url, labels_for, pool_with_tasks
from services.coordinator.client import CoordinatorClient

REPLICAS = 3
LABELERS = 16
TASKS = 240


def _labeler(target: str, pool_id: str, name: str, batch: int, leases: list, submits: list,
             errors: list) -> None:
    try:
        with CoordinatorClient(target, client_id=name, timeout_s=30) as client:
            while True:
                tasks = client.lease(pool_id, max_tasks=batch, lease_seconds=300)
                if not tasks:
                    return
                leases.extend((t.task_id, name) for t in tasks)  # list.extend is atomic under the GIL
                for t in tasks:
                    reply = client.submit(t, labels_for(t, len(name) % 19))
                    submits.append((t.task_id, reply.annotation.annotation_id, reply.replayed))
    except Exception as e:  # noqa: BLE001 - reported by the test, not swallowed
        errors.append(f"{name}: {type(e).__name__}: {e}")


@pytest.mark.postgres
def test_three_replicas_sixteen_labelers_never_double_lease(tmp_path):
    storage = tmp_path / "storage"
    with database_url("postgres", tmp_path) as url:
        replicas = [CoordinatorProcess(url, storage, tmp_path / f"replica{i}.log") for i in range(REPLICAS)]
        try:
            with CoordinatorClient(replicas[0].target, client_id="setup", timeout_s=60) as setup:
                pool, cycle = pool_with_tasks(setup, tmp_path / "frames", TASKS)
            leases: list = []
            submits: list = []
            errors: list = []
            # each labeler talks to one replica (all three serve), leasing 1 to 3 tasks at a time
            threads = [threading.Thread(target=_labeler, args=(
                replicas[i % REPLICAS].target, pool.pool_id, f"labeler-{i:02d}", 1 + i % 3, leases, submits, errors))
                for i in range(LABELERS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            assert not errors, errors[:5]
            lease_counts = Counter(task_id for task_id, _ in leases)
            assert len(lease_counts) == TASKS
            assert max(lease_counts.values()) == 1, [t for t, n in lease_counts.items() if n > 1][:5]
            assert len(submits) == TASKS and not any(replayed for _, _, replayed in submits)
            assert len({task_id for task_id, _, _ in submits}) == TASKS
            assert len({name for _, name in leases}) == LABELERS  # everyone got work
            with CoordinatorClient(replicas[2].target, timeout_s=60) as check:
                stored = list(check.annotations(pool.pool_id))
                assert len(stored) == TASKS and len({a.task_id for a in stored}) == TASKS
                report = check.cycle_report(cycle.cycle_id)
                assert report.cycle_complete and report.tasks_done == TASKS
        finally:
            for r in replicas:
                r.stop()

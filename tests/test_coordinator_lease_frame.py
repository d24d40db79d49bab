"""LeaseTasks with frame_id: a platform that shows frames, not tasks (Label Studio's ML backend),
leases exactly the waiting task of one frame, on SQLite and PostgreSQL."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.coordinator.client import CoordinatorClient
from tests.coordinator_support import (BACKENDS, coordinator_config, database_url, labels_for, pool_with_tasks,
                                       running_coordinator)


@pytest.fixture(params=BACKENDS)
def coord(request, tmp_path):
    with database_url(request.param, tmp_path) as url:
        with running_coordinator(coordinator_config(url, tmp_path / "storage")) as (server, client):
            yield SimpleNamespace(server=server, client=client, tmp=tmp_path)


def test_lease_the_waiting_task_of_one_frame(coord):
    pool, cycle = pool_with_tasks(coord.client, coord.tmp / "frames", 4)
    frames = list(coord.client.frames(pool.pool_id))
    wanted = frames[2].frame_id
    with CoordinatorClient(coord.server.target, client_id="ml-backend") as a, \
            CoordinatorClient(coord.server.target, client_id="other") as b:
        (task,) = a.lease(pool.pool_id, max_tasks=4, frame_id=wanted)
        assert task.frame_id == wanted
        assert b.lease(pool.pool_id, max_tasks=4, frame_id=wanted) == []  # held by the first client
        others = b.lease(pool.pool_id, max_tasks=4)
        assert len(others) == 3 and wanted not in {t.frame_id for t in others}
        a.submit(task, labels_for(task, 1))
        assert a.lease(pool.pool_id, frame_id=wanted) == []  # done: nothing waits for that frame
        assert a.lease(pool.pool_id, frame_id="no-such-frame") == []

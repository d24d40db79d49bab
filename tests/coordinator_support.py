"""Shared helpers of the tests/test_coordinator_*.py files: a database per test on SQLite or
PostgreSQL (a fresh schema each time), the real coordinator server in process or as a subprocess,
and small frames on disk."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from segxal import imageio
from services.coordinator.client import CoordinatorClient, image_folder_source
from services.common.server import ServerConfig
from segxal.selection import SelectionSpec
from services.coordinator.config import CoordinatorConfig
from services.coordinator.ranking import RankingConfig
from services.coordinator.server import CoordinatorServer
from services.coordinator.store.db import Database

REPO_ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("SEGXAL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def database_url(backend: str, tmp_path: Path):
    """A URL to an empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite://{tmp_path / 'coordinator.db'}"
        return
    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} (.ci/run starts it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        # libpq's options parameter sets the search_path of every connection to the new schema.
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


_SERVER_KEYS = ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file")


def coordinator_config(db_url: str, storage: Path, **overrides) -> CoordinatorConfig:
    """Fast settings: ephemeral port, short grace, quick retries. Server settings (TLS, auth,
    health_port) may be given flat; they go into the nested ServerConfig."""
    ranking = overrides.pop("ranking", RankingConfig(backoff_initial_s=0.05, backoff_max_s=0.2, deadline_s=30))
    server = {k: overrides.pop(k) for k in _SERVER_KEYS if k in overrides}
    if "health_port" in overrides:
        server["health_address"] = f"127.0.0.1:{overrides.pop('health_port')}"
    # by score alone unless a test asks otherwise: most tests check the ranking itself
    # (tests/test_coordinator_selection.py covers the product's default selection)
    overrides.setdefault("default_selection", SelectionSpec())
    return CoordinatorConfig(db=db_url, storage=str(storage), ranking=ranking, db_pool_size=4,
                             server=ServerConfig(address="127.0.0.1:0", grace_s=1.0, **server), **overrides)


@contextlib.contextmanager
def running_coordinator(cfg: CoordinatorConfig, scorer=None):
    """The real coordinator server in this process, and a client on it."""
    server = CoordinatorServer(cfg, scorer=scorer)
    server.start()
    try:
        with CoordinatorClient(server.target, client_id="test", timeout_s=60) as client:
            yield server, client
    finally:
        server.stop(1.0)


def write_frames(folder: Path, n: int, h: int = 32, w: int = 64, seed: int = 0) -> list[Path]:
    """n distinct random RGB PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"frame_{i:05d}.png"
        imageio.write_png(p, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def pool_with_tasks(client: CoordinatorClient, frames_dir: Path, n: int, name: str = "pool",
                    h: int = 32, w: int = 64, **pool_kwargs):
    """A pool of n frames and a ranked random cycle holding n open tasks: (pool, cycle)."""
    write_frames(frames_dir, n, h, w)
    pool = client.create_pool(name, **pool_kwargs)
    client.ingest(pool.pool_id, [image_folder_source(str(frames_dir))])
    cycle = client.start_cycle(pool.pool_id, n, selection="random", random_seed=1)
    ranked = client.rank_cycle(cycle.cycle_id)
    assert len(ranked.tasks) == n
    return pool, cycle


def lapse_lease(db_url: str, task_id: str) -> None:
    """Make a task's lease run out now, in the coordinator's database, as its clock would: a test of
    what happens after a lease lapses must not depend on how long a sleep takes on a loaded machine."""
    db = Database(db_url)
    try:
        db.run(lambda tx: tx.execute("UPDATE tasks SET lease_expires_at = 0 WHERE task_id = ?", (task_id,)))
    finally:
        db.close()


def labels_for(task, value: int = 0) -> np.ndarray:
    """A whole-frame trainId annotation of the task's size: class `value` everywhere."""
    return np.full((task.height, task.width), value, dtype=np.uint8)


_LISTENING = re.compile(r"coordinator listening on (\S+)")


class CoordinatorProcess:
    """`python -m services.coordinator.main` in a subprocess (crash and replica tests)."""

    def __init__(self, db_url: str, storage: Path, log_path: Path, extra: tuple[str, ...] = ()):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.coordinator.main", "--db", db_url, "--storage", str(storage),
             "--port", "0", "--grace-s", "1", "--db-pool-size", "4", *extra],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._log)
        self.target = self._wait_for_port(timeout_s=60)

    def _wait_for_port(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}; log: "
                                   f"{self.log_path.read_text()[-2000:]}")
            m = _LISTENING.search(line)
            if m:
                return m.group(1)
        raise RuntimeError("coordinator did not start in time")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

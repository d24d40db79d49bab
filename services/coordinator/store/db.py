"""One way to run SQL on SQLite (the embedded default) and PostgreSQL (several replicas).

The store writes its SQL once, with `?` placeholders and two dialect tokens:
  {now}          the database clock in UNIX seconds (PostgreSQL's clock is shared by every replica,
                 so leases never depend on a replica's own clock)
  {skip_locked}  "FOR UPDATE SKIP LOCKED" on PostgreSQL (leasing replicas skip each other's rows),
                 nothing on SQLite (a write transaction already holds the one writer lock)

Transactions run through `Database.run(fn)`, which retries the whole function when the database
says the transaction lost a race (PostgreSQL deadlock / serialization failure, SQLite busy), and
turns a lost connection into NotReady.
"""
from __future__ import annotations

import logging
import queue
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from segxal.errors import InvalidInput, NotReady

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE, POSTGRES = "sqlite", "postgres"
_TOKENS = {
    SQLITE: {"now": "((julianday('now') - 2440587.5) * 86400.0)", "skip_locked": "",
             "for_update": ""},
    POSTGRES: {"now": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
               "skip_locked": "FOR UPDATE SKIP LOCKED", "for_update": "FOR UPDATE"},
}
_RETRIES = 5  # transactions that lost a race are re-run this many times before giving up


class Tx:
    """A transaction's cursor: `execute` / `one` / `all` take the store's dialect-neutral SQL."""

    def __init__(self, db: "Database", conn):
        self._db = db
        self._conn = conn

    @property
    def dialect(self) -> str:
        return self._db.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()):
        return self._conn.execute(self._db.translate(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self._db.dialect == SQLITE:
            self._conn.executemany(self._db.translate(sql), rows)
        else:
            with self._conn.cursor() as cur:
                cur.executemany(self._db.translate(sql), rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict | None:
        row = self.execute(sql, params).fetchone()
        return None if row is None else dict(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        return [dict(r) for r in self.execute(sql, params).fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.execute(sql, params).fetchone()
        if row is None:
            return None
        return row[0] if self._db.dialect == SQLITE else next(iter(row.values()))


class Database:
    """Connections to one database URL: psycopg_pool's ConnectionPool for PostgreSQL, a few kept
    sqlite3 connections for SQLite.

    URLs: `sqlite:///abs/path.db` (everything after "sqlite://" is the file path) or a libpq URI
    `postgresql://user@host:port/db` (options such as `?options=-csearch_path%3Dmyschema` pass
    through, which is how tests give each run its own schema).
    """

    def __init__(self, url: str, pool_size: int = 8, connect_timeout_s: float = 10.0):
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        if url.startswith("sqlite://"):
            self.dialect = SQLITE
            self.path = url[len("sqlite://"):]
            if not self.path:
                raise InvalidInput("sqlite URL needs a file path: sqlite:///path/to/coordinator.db")
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = POSTGRES
        else:
            raise InvalidInput(f"database URL must start with sqlite:// or postgresql://, got {url!r}")
        self._translated: dict[str, str] = {}
        if self.dialect == POSTGRES:
            # psycopg_pool: connections checked before use (a restarted server's dead connections are
            # replaced, not handed out) and reconnected in the background
            self._pg = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout_s,
                                      check=ConnectionPool.check_connection, name="coordinator",
                                      kwargs={"autocommit": True, "row_factory": dict_row,
                                              "connect_timeout": max(1, int(connect_timeout_s))})
            self._pg.open(wait=False)
        else:  # sqlite3 connections: a few, kept idle between transactions
            self._idle: queue.LifoQueue = queue.LifoQueue()
            self._slots = threading.BoundedSemaphore(pool_size)
            self._all_conns: list = []
            self._lock = threading.Lock()

    # ---------------------------------------------------------------- SQL dialect
    def translate(self, sql: str) -> str:
        out = self._translated.get(sql)
        if out is None:
            out = sql.format(**_TOKENS[self.dialect])
            if self.dialect == POSTGRES:
                out = out.replace("?", "%s")
            self._translated[sql] = out
        return out

    @property
    def integrity_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.IntegrityError, psycopg.IntegrityError)

    # ---------------------------------------------------------------- connections
    def _connect_sqlite(self):
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE for writes).
        conn = sqlite3.connect(self.path, timeout=self.connect_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it returns, so an accepted annotation survives a
        # power cut, not just a killed process.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self.connect_timeout_s * 1000)}")
        with self._lock:
            self._all_conns.append(conn)
        return conn

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self.dialect == POSTGRES:
            try:
                with self._pg.connection() as conn:  # broken connections are dropped on return
                    yield conn
            except PoolTimeout as e:
                raise NotReady(f"PostgreSQL unreachable: {str(e).strip().splitlines()[0]}") from None
            return
        self._slots.acquire()
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect_sqlite()
            try:
                yield conn
            finally:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        if self.dialect == POSTGRES:
            self._pg.close()
            return
        with self._lock:
            conns, self._all_conns = self._all_conns, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        with self._connection() as conn:
            if self.dialect == SQLITE:
                # IMMEDIATE takes the write lock up front: two writers never both read, then
                # both try to upgrade (which SQLite would refuse to one of them).
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield Tx(self, conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                with conn.transaction():
                    yield Tx(self, conn)

    def run(self, fn: Callable[[Tx], T], write: bool = True) -> T:
        """Run fn(tx) in one transaction, committed when fn returns. Re-runs fn when the database
        reports a lost race; our own exceptions roll back and propagate unchanged."""
        for attempt in range(_RETRIES + 1):
            try:
                with self._transaction(write) as tx:
                    return fn(tx)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as e:
                err = e
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                err = e
            except psycopg.OperationalError as e:
                raise NotReady(f"PostgreSQL connection lost: {str(e).strip().splitlines()[0]}") from None
            if attempt < _RETRIES:
                log.info("transaction lost a race (%s), retrying", type(err).__name__)
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise NotReady(f"database busy: transaction lost {_RETRIES + 1} races in a row ({err})")

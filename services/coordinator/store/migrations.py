"""The coordinator's schema, as numbered migrations applied in order, once.

One schema serves SQLite and PostgreSQL: the column types used (TEXT, BIGINT, INTEGER, DOUBLE
PRECISION) mean the same on both. Times are UNIX seconds from the database clock. Every replica
runs `migrate` at start-up; a lock makes concurrent start-ups apply each migration once (PostgreSQL
advisory lock; SQLite's write lock). A database newer than the code is refused rather than used.

To change the schema, append a Migration; never edit one that has shipped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from segxal.errors import FailedPrecondition
from services.coordinator.store.db import POSTGRES, Database, Tx

log = logging.getLogger(__name__)

# Any fixed 64-bit number: the advisory lock that serializes migrations across replicas.
_MIGRATION_LOCK_KEY = 0x5E6A1C00


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "pools, frames, model versions, cycles, scores, tasks, annotations", (
        """CREATE TABLE pools (
            pool_id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            max_frames BIGINT NOT NULL DEFAULT 0,
            max_regions BIGINT NOT NULL DEFAULT 0,
            max_pixels BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        # frame_id is derived from (pool_id, uri): re-ingesting the same frame hits the primary key.
        """CREATE TABLE frames (
            frame_id TEXT PRIMARY KEY,
            pool_id TEXT NOT NULL REFERENCES pools (pool_id),
            uri TEXT NOT NULL,
            source TEXT NOT NULL,
            timestamp_ns BIGINT NOT NULL DEFAULT 0,
            width INTEGER NOT NULL DEFAULT 0,
            height INTEGER NOT NULL DEFAULT 0,
            label_uri TEXT NOT NULL DEFAULT '',
            retired INTEGER NOT NULL DEFAULT 0,
            fully_labeled INTEGER NOT NULL DEFAULT 0,
            annotation_count INTEGER NOT NULL DEFAULT 0,
            ingested_at DOUBLE PRECISION NOT NULL,
            UNIQUE (pool_id, uri)
        )""",
        "CREATE INDEX frames_by_pool ON frames (pool_id, frame_id)",
        """CREATE TABLE model_versions (
            model_name TEXT NOT NULL,
            version BIGINT NOT NULL,
            uri TEXT NOT NULL DEFAULT '',
            registered_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (model_name, version)
        )""",
        """CREATE TABLE cycles (
            cycle_id TEXT PRIMARY KEY,
            pool_id TEXT NOT NULL REFERENCES pools (pool_id),
            number INTEGER NOT NULL,
            selection TEXT NOT NULL,
            model_name TEXT,
            model_version BIGINT,
            batch_size INTEGER NOT NULL,
            dice_threshold DOUBLE PRECISION NOT NULL,
            random_seed BIGINT NOT NULL DEFAULT 0,
            started_at DOUBLE PRECISION NOT NULL,
            ranked_at DOUBLE PRECISION,
            closed_at DOUBLE PRECISION,
            UNIQUE (pool_id, number)
        )""",
        # One score per frame and model version ("<model name>:<version>"): a new version never
        # reads an old version's scores.
        """CREATE TABLE scores (
            frame_id TEXT NOT NULL REFERENCES frames (frame_id),
            model_key TEXT NOT NULL,
            score DOUBLE PRECISION NOT NULL,
            regions TEXT NOT NULL,
            height INTEGER NOT NULL DEFAULT 0,
            width INTEGER NOT NULL DEFAULT 0,
            depth_model_key TEXT NOT NULL DEFAULT '',
            scored_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (frame_id, model_key)
        )""",
        """CREATE TABLE score_failures (
            cycle_id TEXT NOT NULL REFERENCES cycles (cycle_id),
            frame_id TEXT NOT NULL REFERENCES frames (frame_id),
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            failed_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (cycle_id, frame_id)
        )""",
        """CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            cycle_id TEXT NOT NULL REFERENCES cycles (cycle_id),
            pool_id TEXT NOT NULL REFERENCES pools (pool_id),
            frame_id TEXT NOT NULL REFERENCES frames (frame_id),
            score DOUBLE PRECISION NOT NULL,
            rank INTEGER NOT NULL,
            regions TEXT NOT NULL,
            prediction_uri TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_token TEXT NOT NULL DEFAULT '',
            lease_expires_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            lease_count INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            done_at DOUBLE PRECISION,
            UNIQUE (cycle_id, frame_id)
        )""",
        # The lease query: waiting tasks of a pool, best first.
        "CREATE INDEX tasks_leasable ON tasks (pool_id, state, score DESC)",
        "CREATE INDEX tasks_by_cycle ON tasks (cycle_id, state)",
        "CREATE INDEX tasks_by_frame ON tasks (frame_id)",
        # UNIQUE (task_id): one annotation per task, whatever the races between submits.
        """CREATE TABLE annotations (
            annotation_id TEXT PRIMARY KEY,
            task_id TEXT NOT NULL UNIQUE REFERENCES tasks (task_id),
            cycle_id TEXT NOT NULL REFERENCES cycles (cycle_id),
            pool_id TEXT NOT NULL REFERENCES pools (pool_id),
            frame_id TEXT NOT NULL REFERENCES frames (frame_id),
            client_id TEXT NOT NULL,
            scope TEXT NOT NULL,
            region_ids TEXT NOT NULL,
            mask_uri TEXT NOT NULL,
            content_sha256 TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            regions_count BIGINT NOT NULL,
            pixels_count BIGINT NOT NULL,
            dice DOUBLE PRECISION,
            frame_retired INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX annotations_by_pool ON annotations (pool_id, annotation_id)",
        "CREATE INDEX annotations_by_cycle ON annotations (cycle_id)",
    )),
    # Per-cycle EEM options (StartCycleRequest.eem_options), and scores keyed by them too: a ranking
    # with other options (another cycle, a replica configured otherwise) never reuses a score they
    # did not make. Scores of version 1 were made with options nobody recorded: they are dropped
    # (a cache; the next ranking scores those frames again).
    Migration(2, "per-cycle EEM options; scores per (frame, model version, EEM options)", (
        "ALTER TABLE cycles ADD COLUMN eem_options TEXT NOT NULL DEFAULT ''",
        "DROP TABLE scores",
        """CREATE TABLE scores (
            frame_id TEXT NOT NULL REFERENCES frames (frame_id),
            model_key TEXT NOT NULL,
            options_key TEXT NOT NULL,
            score DOUBLE PRECISION NOT NULL,
            regions TEXT NOT NULL,
            height INTEGER NOT NULL DEFAULT 0,
            width INTEGER NOT NULL DEFAULT 0,
            depth_model_key TEXT NOT NULL DEFAULT '',
            scored_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (frame_id, model_key, options_key)
        )""",
    )),
    # The token of the lease before the current one: lets a refusal say "taken over after yours
    # ended" only to the client whose lease it really was.
    Migration(3, "tasks.previous_lease_token", (
        "ALTER TABLE tasks ADD COLUMN previous_lease_token TEXT NOT NULL DEFAULT ''",
    )),
    # A pool's own classes (CreatePoolRequest.class_names), a JSON list; '' = the Cityscapes trainIds
    # (every pool made before this migration).
    Migration(4, "pools.class_names", (
        "ALTER TABLE pools ADD COLUMN class_names TEXT NOT NULL DEFAULT ''",
    )),
    # Composed selection (docs/design.md, "EEM options and selection"): the cycle's selection spec
    # (a JSON dict; '' = by score alone, every cycle made before), each score's frame embedding and
    # predicted class histogram (base64 of float32; '' = the model gave none), and each task's
    # reasons for being picked (JSON; '' = none recorded).
    Migration(5, "cycles.selection_spec, scores.embedding / class_hist, tasks.reasons", (
        "ALTER TABLE cycles ADD COLUMN selection_spec TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE scores ADD COLUMN embedding TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE scores ADD COLUMN class_hist TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tasks ADD COLUMN reasons TEXT NOT NULL DEFAULT ''",
    )),
)

LATEST_VERSION = MIGRATIONS[-1].version


def _apply_pending(tx: Tx) -> list[int]:
    if tx.dialect == POSTGRES:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_KEY,))
    tx.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                      version INTEGER PRIMARY KEY,
                      description TEXT NOT NULL,
                      applied_at DOUBLE PRECISION NOT NULL)""")
    current = tx.scalar("SELECT MAX(version) FROM schema_migrations") or 0
    if current > LATEST_VERSION:
        raise FailedPrecondition(
            f"database schema is at version {current}, newer than this coordinator knows "
            f"({LATEST_VERSION}); upgrade the coordinator")
    applied = []
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        for stmt in m.statements:
            tx.execute(stmt)
        tx.execute("INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, {now})",
                   (m.version, m.description))
        applied.append(m.version)
    return applied


def migrate(db: Database) -> int:
    """Bring the schema up to LATEST_VERSION (all pending migrations in one transaction).

    Returns:
        The schema version after migrating.
    Raises:
        FailedPrecondition: the database is newer than this code.
    """
    applied = db.run(_apply_pending)
    if applied:
        log.info("applied schema migrations %s", applied)
    return LATEST_VERSION


def schema_version(db: Database) -> int:
    return db.run(lambda tx: tx.scalar("SELECT MAX(version) FROM schema_migrations") or 0, write=False)

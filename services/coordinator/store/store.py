"""All of the coordinator's SQL. Each public method is one transaction (Database.run), so a method
that returns has committed.

Leasing is the hot path: one UPDATE picks the best waiting tasks with `FOR UPDATE SKIP LOCKED` on
PostgreSQL, so replicas leasing at the same moment skip each other's rows instead of waiting or
double-leasing; SQLite gets the same guarantee from its single writer lock. An expired lease needs
no sweeper: the lease query treats `leased` with `lease_expires_at <= now` as waiting, so an
expired task is requeued the moment anyone asks for work.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict
from typing import Iterator, Sequence

from segxal.al.scoring import EEMOptions
from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from segxal.ingest import IngestedFrame
from services.coordinator.domain import (
    CANCELLED, CYCLE_CLOSED, CYCLE_COMPLETE, CYCLE_LABELING, CYCLE_STARTED, DONE, OPEN,
    WHOLE_FRAME, Annotation, AnnotationDraft, Budget, BudgetLimits, Candidate, Cycle, FailedFrame,
    Frame, FrameScore, ModelVersion, Pool, Task, TaskCounts, TaskDraft, check_lease_holder,
    regions_from_json, regions_to_json)
from services.coordinator.store.db import Database, Tx
from services.coordinator.store.migrations import migrate

_BATCH = 500  # rows per multi-row statement / IN list


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def frame_id_for(pool_id: str, uri: str) -> str:
    """Deterministic: the same URI in the same pool is the same frame, so ingest is idempotent."""
    return "f_" + hashlib.sha256(f"{pool_id}\0{uri}".encode()).hexdigest()[:24]


# ---------------------------------------------------------------- rows -> records

_POOL_SELECT = """
SELECT p.pool_id, p.name, p.max_frames, p.max_regions, p.max_pixels, p.created_at,
       (SELECT COUNT(*) FROM frames f WHERE f.pool_id = p.pool_id) AS frame_count,
       (SELECT COUNT(*) FROM frames f WHERE f.pool_id = p.pool_id
                                         AND f.retired = 0 AND f.fully_labeled = 0) AS queryable
FROM pools p"""

_CYCLE_SELECT = """
SELECT c.cycle_id, c.pool_id, c.number, c.selection, c.model_name, c.model_version, c.batch_size,
       c.dice_threshold, c.random_seed, c.started_at, c.ranked_at, c.closed_at, c.eem_options,
       m.uri AS model_uri, m.registered_at AS model_registered_at,
       (SELECT COUNT(*) FROM tasks t WHERE t.cycle_id = c.cycle_id
                                       AND t.state IN ('open', 'leased')) AS unfinished,
       (SELECT COUNT(*) FROM tasks t WHERE t.cycle_id = c.cycle_id) AS task_total
FROM cycles c LEFT JOIN model_versions m
  ON m.model_name = c.model_name AND m.version = c.model_version"""

_TASK_SELECT = """
SELECT t.task_id, t.cycle_id, t.pool_id, t.frame_id, f.uri AS frame_uri, f.width, f.height,
       f.label_uri, t.score, t.rank, t.regions, t.prediction_uri, t.state, t.lease_owner,
       t.lease_token, t.previous_lease_token, t.lease_expires_at, t.lease_count, c.model_name, c.model_version,
       c.dice_threshold
FROM tasks t JOIN frames f ON f.frame_id = t.frame_id JOIN cycles c ON c.cycle_id = t.cycle_id"""

_ANNOTATION_SELECT = """
SELECT a.*, f.uri AS frame_uri FROM annotations a JOIN frames f ON f.frame_id = a.frame_id"""


def _pool(r: dict) -> Pool:
    return Pool(pool_id=r["pool_id"], name=r["name"],
                budget=BudgetLimits(int(r["max_frames"]), int(r["max_regions"]), int(r["max_pixels"])),
                created_at=float(r["created_at"]), frame_count=int(r["frame_count"]),
                queryable_frame_count=int(r["queryable"]))


def _frame(r: dict) -> Frame:
    return Frame(frame_id=r["frame_id"], pool_id=r["pool_id"], uri=r["uri"], source=r["source"],
                 timestamp_ns=int(r["timestamp_ns"]), width=int(r["width"]), height=int(r["height"]),
                 label_uri=r["label_uri"], retired=bool(r["retired"]),
                 fully_labeled=bool(r["fully_labeled"]), annotation_count=int(r["annotation_count"]))


def _model(r: dict) -> ModelVersion:
    return ModelVersion(model_name=r["model_name"], version=int(r["version"]), uri=r["uri"],
                        registered_at=float(r["registered_at"]))


def _cycle(r: dict) -> Cycle:
    if r["closed_at"] is not None:
        state = CYCLE_CLOSED
    elif r["ranked_at"] is None or int(r["task_total"]) == 0:
        state = CYCLE_STARTED  # not ranked, or ranking found nothing to label (yet)
    elif int(r["unfinished"]) > 0:
        state = CYCLE_LABELING
    else:
        state = CYCLE_COMPLETE
    model = None
    if r["model_name"] is not None:
        model = ModelVersion(r["model_name"], int(r["model_version"]), r["model_uri"] or "",
                             float(r["model_registered_at"] or 0.0))
    return Cycle(cycle_id=r["cycle_id"], pool_id=r["pool_id"], number=int(r["number"]),
                 selection=r["selection"], model=model, batch_size=int(r["batch_size"]),
                 dice_threshold=float(r["dice_threshold"]), random_seed=int(r["random_seed"]),
                 started_at=float(r["started_at"]), ranked_at=r["ranked_at"], closed_at=r["closed_at"],
                 state=state, eem=EEMOptions(**json.loads(r["eem_options"])) if r["eem_options"] else EEMOptions())


def _task(r: dict, with_token: bool = False) -> Task:
    model = (ModelVersion(r["model_name"], int(r["model_version"]))
             if r["model_name"] is not None else None)
    return Task(task_id=r["task_id"], cycle_id=r["cycle_id"], pool_id=r["pool_id"],
                frame_id=r["frame_id"], frame_uri=r["frame_uri"], width=int(r["width"]),
                height=int(r["height"]), score=float(r["score"]), rank=int(r["rank"]),
                regions=regions_from_json(r["regions"]), model=model,
                prediction_uri=r["prediction_uri"], state=r["state"], lease_owner=r["lease_owner"],
                lease_token=r["lease_token"] if with_token else "",
                lease_expires_at=float(r["lease_expires_at"]), lease_count=int(r["lease_count"]),
                label_uri=r["label_uri"], dice_threshold=float(r["dice_threshold"]),
                previous_lease_token=r["previous_lease_token"] if with_token else "")


def _annotation(r: dict) -> Annotation:
    return Annotation(
        annotation_id=r["annotation_id"], task_id=r["task_id"], cycle_id=r["cycle_id"],
        pool_id=r["pool_id"], frame_id=r["frame_id"], frame_uri=r["frame_uri"],
        client_id=r["client_id"], scope=r["scope"], region_ids=tuple(json.loads(r["region_ids"])),
        mask_uri=r["mask_uri"], regions_count=int(r["regions_count"]),
        pixels_count=int(r["pixels_count"]), dice=None if r["dice"] is None else float(r["dice"]),
        frame_retired=bool(r["frame_retired"]), created_at=float(r["created_at"]),
        content_sha256=r["content_sha256"], idempotency_key=r["idempotency_key"])


class CoordinatorStore:
    """Durable state over a Database (SQLite or PostgreSQL, same SQL)."""

    def __init__(self, db: Database):
        self.db = db

    @classmethod
    def open(cls, url: str, pool_size: int = 8) -> "CoordinatorStore":
        """Connect and bring the schema up to date."""
        db = Database(url, pool_size=pool_size)
        migrate(db)
        return cls(db)

    def close(self) -> None:
        self.db.close()

    def now(self) -> float:
        """The database clock (UNIX seconds): the clock leases are measured with."""
        return float(self.db.run(lambda tx: tx.scalar("SELECT {now}"), write=False))

    # ================================================================ pools and frames
    def create_pool(self, name: str, limits: BudgetLimits) -> Pool:
        pool_id = _new_id("pool")

        def txn(tx: Tx) -> Pool:
            clash = tx.one("SELECT pool_id FROM pools WHERE name = ?", (name,))
            if clash:
                raise FailedPrecondition(f"a pool named {name!r} already exists ({clash['pool_id']})")
            tx.execute("""INSERT INTO pools (pool_id, name, max_frames, max_regions, max_pixels, created_at)
                          VALUES (?, ?, ?, ?, ?, {now})""",
                       (pool_id, name, limits.max_frames, limits.max_regions, limits.max_pixels))
            return _pool(tx.one(_POOL_SELECT + " WHERE p.pool_id = ?", (pool_id,)))
        try:
            return self.db.run(txn)
        except self.db.integrity_errors:  # a racing create with the same name won
            raise FailedPrecondition(f"a pool named {name!r} already exists") from None

    def get_pool(self, pool_id: str = "", name: str = "") -> Pool:
        def txn(tx: Tx) -> Pool:
            if pool_id:
                r = tx.one(_POOL_SELECT + " WHERE p.pool_id = ?", (pool_id,))
            else:
                r = tx.one(_POOL_SELECT + " WHERE p.name = ?", (name,))
            if r is None:
                raise NotFound(f"no pool {pool_id or repr(name)}")
            return _pool(r)
        return self.db.run(txn, write=False)

    def list_pools(self) -> list[Pool]:
        return self.db.run(lambda tx: [_pool(r) for r in tx.all(_POOL_SELECT + " ORDER BY p.created_at")],
                           write=False)

    def add_frames(self, pool_id: str, records: Sequence[IngestedFrame]) -> tuple[int, int]:
        """Insert frames not yet in the pool. Returns (added, already present)."""
        by_id: dict[str, IngestedFrame] = {}
        for rec in records:
            by_id.setdefault(frame_id_for(pool_id, rec.uri), rec)
        ids = list(by_id)

        def txn(tx: Tx) -> tuple[int, int]:
            present: set[str] = set()
            for i in range(0, len(ids), _BATCH):
                chunk = ids[i:i + _BATCH]
                marks = ",".join("?" * len(chunk))
                present.update(r["frame_id"] for r in tx.all(
                    f"SELECT frame_id FROM frames WHERE frame_id IN ({marks})", chunk))
            new = [(fid, pool_id, r.uri, r.source, r.timestamp_ns, r.width, r.height, r.label_uri)
                   for fid, r in by_id.items() if fid not in present]
            tx.executemany("""INSERT INTO frames (frame_id, pool_id, uri, source, timestamp_ns, width,
                                                  height, label_uri, ingested_at)
                              VALUES (?, ?, ?, ?, ?, ?, ?, ?, {now})
                              ON CONFLICT (frame_id) DO NOTHING""", new)
            return len(new), len(records) - len(new)
        self.get_pool(pool_id)  # NotFound before anything else
        return self.db.run(txn)

    def list_frames(self, pool_id: str, after_frame_id: str, limit: int) -> list[Frame]:
        self.get_pool(pool_id)
        return self.db.run(lambda tx: [_frame(r) for r in tx.all(
            "SELECT * FROM frames WHERE pool_id = ? AND frame_id > ? ORDER BY frame_id LIMIT ?",
            (pool_id, after_frame_id, limit))], write=False)

    def set_frame_sizes(self, sizes: dict[str, tuple[int, int]]) -> None:
        """Record (height, width) of frames whose size was not known at ingest."""
        rows = [(w, h, fid) for fid, (h, w) in sizes.items()]
        self.db.run(lambda tx: tx.executemany(
            "UPDATE frames SET width = ?, height = ? WHERE frame_id = ?", rows))

    # ================================================================ model versions
    def register_model_version(self, model_name: str, version: int, uri: str) -> ModelVersion:
        def txn(tx: Tx) -> ModelVersion:
            want = version
            for _ in range(100):  # version 0 = next: loop only when a racing register took it
                if version == 0:
                    want = int(tx.scalar("SELECT COALESCE(MAX(version), 0) FROM model_versions "
                                         "WHERE model_name = ?", (model_name,))) + 1
                inserted = tx.one("""INSERT INTO model_versions (model_name, version, uri, registered_at)
                                     VALUES (?, ?, ?, {now}) ON CONFLICT (model_name, version) DO NOTHING
                                     RETURNING model_name""", (model_name, want, uri))
                row = tx.one("SELECT * FROM model_versions WHERE model_name = ? AND version = ?",
                             (model_name, want))
                if inserted or row["uri"] == uri:
                    return _model(row)
                if version != 0:
                    raise FailedPrecondition(
                        f"model {model_name} version {want} is already registered with uri "
                        f"{row['uri']!r}, not {uri!r}; register the new weights as a new version")
            raise FailedPrecondition(f"could not allocate a version for model {model_name}")
        return self.db.run(txn)

    def list_model_versions(self, model_name: str = "") -> list[ModelVersion]:
        def txn(tx: Tx) -> list[ModelVersion]:
            if model_name:
                rows = tx.all("SELECT * FROM model_versions WHERE model_name = ? ORDER BY version",
                              (model_name,))
            else:
                rows = tx.all("SELECT * FROM model_versions ORDER BY model_name, version")
            return [_model(r) for r in rows]
        return self.db.run(txn, write=False)

    def get_model_version(self, model_name: str, version: int = 0) -> ModelVersion:
        """A registered version; version 0 = the current (highest) one."""
        def txn(tx: Tx) -> ModelVersion:
            if version:
                r = tx.one("SELECT * FROM model_versions WHERE model_name = ? AND version = ?",
                           (model_name, version))
            else:
                r = tx.one("SELECT * FROM model_versions WHERE model_name = ? "
                           "ORDER BY version DESC LIMIT 1", (model_name,))
            if r is None:
                raise NotFound(f"model {model_name!r} has no registered version"
                               f"{f' {version}' if version else ''}")
            return _model(r)
        return self.db.run(txn, write=False)

    # ================================================================ cycles
    def start_cycle(self, pool_id: str, selection: str, model: ModelVersion | None, batch_size: int,
                    dice_threshold: float, random_seed: int, cancel_unfinished: bool,
                    eem: EEMOptions | None = None) -> Cycle:
        cycle_id = _new_id("cycle")

        def txn(tx: Tx) -> Cycle:
            if tx.one("SELECT pool_id FROM pools WHERE pool_id = ? {for_update}", (pool_id,)) is None:
                raise NotFound(f"no pool {pool_id}")
            for prev in tx.all(_CYCLE_SELECT + " WHERE c.pool_id = ? AND c.closed_at IS NULL", (pool_id,)):
                unfinished = int(prev["unfinished"])
                if unfinished and not cancel_unfinished:
                    raise FailedPrecondition(
                        f"cycle {prev['number']} of pool {pool_id} still has {unfinished} open or "
                        f"leased tasks; finish them, or start with cancel_unfinished")
                tx.execute("UPDATE tasks SET state = 'cancelled' WHERE cycle_id = ? "
                           "AND state IN ('open', 'leased')", (prev["cycle_id"],))
                tx.execute("UPDATE cycles SET closed_at = {now} WHERE cycle_id = ?", (prev["cycle_id"],))
            number = int(tx.scalar("SELECT COALESCE(MAX(number), 0) FROM cycles WHERE pool_id = ?",
                                   (pool_id,))) + 1
            tx.execute("""INSERT INTO cycles (cycle_id, pool_id, number, selection, model_name,
                                              model_version, batch_size, dice_threshold, random_seed,
                                              eem_options, started_at)
                          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now})""",
                       (cycle_id, pool_id, number, selection, model.model_name if model else None,
                        model.version if model else None, batch_size, dice_threshold, random_seed,
                        json.dumps(asdict(eem or EEMOptions()))))
            return _cycle(tx.one(_CYCLE_SELECT + " WHERE c.cycle_id = ?", (cycle_id,)))
        return self.db.run(txn)

    def get_cycle(self, cycle_id: str) -> Cycle:
        def txn(tx: Tx) -> Cycle:
            r = tx.one(_CYCLE_SELECT + " WHERE c.cycle_id = ?", (cycle_id,))
            if r is None:
                raise NotFound(f"no cycle {cycle_id}")
            return _cycle(r)
        return self.db.run(txn, write=False)

    def latest_cycle(self, pool_id: str) -> Cycle:
        def txn(tx: Tx) -> Cycle:
            r = tx.one(_CYCLE_SELECT + " WHERE c.pool_id = ? ORDER BY c.number DESC LIMIT 1", (pool_id,))
            if r is None:
                raise NotFound(f"pool {pool_id} has no cycle yet")
            return _cycle(r)
        self.get_pool(pool_id)
        return self.db.run(txn, write=False)

    def iter_candidates(self, cycle: Cycle, page_size: int = _BATCH) -> Iterator[Candidate]:
        """The cycle's query pool, in frame_id order, one short read per page (no transaction is
        held open while the caller scores): frames neither retired nor fully labeled, without a
        leased or annotated task in this cycle, and not waiting in another cycle's task. Each comes
        with its score for the cycle's model version and EEM options when it has one."""
        model_key = cycle.model.key if cycle.model else ""
        options_key = cycle.eem.key()
        after = ""
        while True:
            rows = self.db.run(lambda tx: tx.all(
                """SELECT f.frame_id, f.uri, f.width, f.height, s.score, s.regions,
                          s.height AS s_height, s.width AS s_width, s.depth_model_key
                   FROM frames f LEFT JOIN scores s ON s.frame_id = f.frame_id AND s.model_key = ?
                                                   AND s.options_key = ?
                   WHERE f.pool_id = ? AND f.retired = 0 AND f.fully_labeled = 0 AND f.frame_id > ?
                     AND NOT EXISTS (
                       SELECT 1 FROM tasks t WHERE t.frame_id = f.frame_id AND (
                         (t.cycle_id = ? AND t.state IN ('leased', 'done'))
                         OR (t.cycle_id <> ? AND t.state IN ('open', 'leased'))))
                   ORDER BY f.frame_id LIMIT ?""",
                (model_key, options_key, cycle.pool_id, after, cycle.cycle_id, cycle.cycle_id, page_size)),
                write=False)
            for r in rows:
                cached = None
                if r["score"] is not None:
                    cached = FrameScore(uri=r["uri"], score=float(r["score"]), segmentation_version=model_key,
                                        depth_version=r["depth_model_key"],
                                        regions=regions_from_json(r["regions"]),
                                        height=int(r["s_height"]), width=int(r["s_width"]))
                yield Candidate(frame_id=r["frame_id"], uri=r["uri"], width=int(r["width"]),
                                height=int(r["height"]), cached=cached)
            if len(rows) < page_size:
                return
            after = rows[-1]["frame_id"]

    def record_scores(self, scored: Sequence[tuple[str, FrameScore]], options_key: str) -> None:
        """Upsert (frame_id, score) pairs, each under its own model version, made with the EEM
        options whose EEMOptions.key() is `options_key`."""
        rows = [(fid, s.segmentation_version, options_key, s.score, regions_to_json(s.regions), s.height,
                 s.width, s.depth_version) for fid, s in scored]
        self.db.run(lambda tx: tx.executemany(
            """INSERT INTO scores (frame_id, model_key, options_key, score, regions, height, width,
                                   depth_model_key, scored_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, {now})
               ON CONFLICT (frame_id, model_key, options_key) DO UPDATE SET
                 score = excluded.score, regions = excluded.regions, height = excluded.height,
                 width = excluded.width, depth_model_key = excluded.depth_model_key,
                 scored_at = excluded.scored_at""", rows))

    def record_score_failures(self, cycle_id: str, failed: Sequence[FailedFrame]) -> None:
        """Remember scoring failures of a cycle: the frames stay in the pool, and the next
        RankCycle scores them again (attempts add up)."""
        self.db.run(lambda tx: tx.executemany(
            """INSERT INTO score_failures (cycle_id, frame_id, error, attempts, failed_at)
               VALUES (?, ?, ?, ?, {now})
               ON CONFLICT (cycle_id, frame_id) DO UPDATE SET
                 error = excluded.error, attempts = score_failures.attempts + excluded.attempts,
                 failed_at = excluded.failed_at""",
            [(cycle_id, f.frame_id, f.error, f.attempts) for f in failed]))

    def forget_resolved_failures(self, cycle_id: str, model_key: str, options_key: str) -> None:
        """Drop the cycle's failures of frames that now have a score of its model version and options."""
        self.db.run(lambda tx: tx.execute(
            """DELETE FROM score_failures WHERE cycle_id = ? AND frame_id IN (
                 SELECT frame_id FROM scores WHERE model_key = ? AND options_key = ?)""",
            (cycle_id, model_key, options_key)))

    def list_score_failures(self, cycle_id: str, limit: int = 1000) -> list[FailedFrame]:
        return self.db.run(lambda tx: [FailedFrame(r["frame_id"], r["uri"], r["error"], int(r["attempts"]))
                                       for r in tx.all(
            """SELECT s.frame_id, f.uri, s.error, s.attempts FROM score_failures s
               JOIN frames f ON f.frame_id = s.frame_id WHERE s.cycle_id = ? ORDER BY s.frame_id LIMIT ?""",
            (cycle_id, limit))], write=False)

    def replace_open_tasks(self, cycle: Cycle, drafts: Sequence[TaskDraft]) -> list[Task]:
        """Make the ranked frames the cycle's waiting tasks: open tasks (never leased, or released)
        are dropped and re-made from `drafts`; leased and annotated tasks stay and count against
        the batch size. Returns the cycle's open and leased tasks, best first."""
        def txn(tx: Tx) -> list[Task]:
            tx.execute("DELETE FROM tasks WHERE cycle_id = ? AND state = 'open'", (cycle.cycle_id,))
            kept = {r["frame_id"] for r in tx.all(
                "SELECT frame_id FROM tasks WHERE cycle_id = ? AND state <> 'cancelled'", (cycle.cycle_id,))}
            room = max(cycle.batch_size - len(kept), 0)
            fresh = [d for d in drafts if d.frame_id not in kept][:room]
            tx.executemany(
                """INSERT INTO tasks (task_id, cycle_id, pool_id, frame_id, score, rank, regions,
                                      prediction_uri, state, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', {now})""",
                [(_new_id("task"), cycle.cycle_id, cycle.pool_id, d.frame_id, d.score, d.rank,
                  regions_to_json(d.regions), d.prediction_uri) for d in fresh])
            tx.execute("UPDATE cycles SET ranked_at = {now} WHERE cycle_id = ?", (cycle.cycle_id,))
            return [_task(r) for r in tx.all(
                _TASK_SELECT + " WHERE t.cycle_id = ? AND t.state IN ('open', 'leased') "
                               "ORDER BY t.score DESC, t.rank", (cycle.cycle_id,))]
        return self.db.run(txn)

    # ================================================================ tasks
    def get_task(self, task_id: str, with_token: bool = False) -> Task:
        """A task; its lease token only when with_token (never sent to anyone but the holder)."""
        def txn(tx: Tx) -> Task:
            r = tx.one(_TASK_SELECT + " WHERE t.task_id = ?", (task_id,))
            if r is None:
                raise NotFound(f"no task {task_id}")
            return _task(r, with_token)
        return self.db.run(txn, write=False)

    def lease_tasks(self, pool_id: str, cycle_id: str, client_id: str, max_tasks: int,
                    lease_seconds: float, frame_id: str = "") -> tuple[list[Task], bool]:
        """Lease up to max_tasks waiting tasks (open, or leased with an expired lease), best first.

        Returns:
            (leased tasks with their lease token, budget exhausted). A frames budget also counts
            tasks under unexpired leases, so concurrent labelers never overshoot it.
        """
        token = uuid.uuid4().hex

        def txn(tx: Tx) -> tuple[list[Task], bool]:
            pool = tx.one("SELECT max_frames, max_regions, max_pixels FROM pools WHERE pool_id = ?", (pool_id,))
            if pool is None:
                raise NotFound(f"no pool {pool_id}")
            n = max_tasks
            if pool["max_frames"] or pool["max_regions"] or pool["max_pixels"]:
                # The budget check and the lease must see the same numbers: serialize leases of
                # this pool (only pools with a budget pay for this).
                tx.execute("SELECT pool_id FROM pools WHERE pool_id = ? {for_update}", (pool_id,))
                budget = self._budget(tx, pool_id)
                if budget.exhausted:
                    return [], True
                if budget.limits.max_frames:
                    n = min(n, budget.limits.max_frames - budget.spent_frames - budget.leased_frames)
                if n <= 0:
                    return [], False
            leased = tx.all(
                """UPDATE tasks SET state = 'leased', lease_owner = ?, lease_token = ?,
                                    previous_lease_token = CASE WHEN lease_token <> '' THEN lease_token
                                                                ELSE previous_lease_token END,
                                    lease_expires_at = {now} + ?, lease_count = lease_count + 1
                   WHERE task_id IN (
                     SELECT task_id FROM tasks
                     WHERE pool_id = ? AND (? = '' OR cycle_id = ?) AND (? = '' OR frame_id = ?)
                       AND (state = 'open' OR (state = 'leased' AND lease_expires_at <= {now}))
                     ORDER BY score DESC, rank, task_id LIMIT ? {skip_locked})
                   RETURNING task_id""",
                (client_id, token, lease_seconds, pool_id, cycle_id, cycle_id, frame_id, frame_id, n))
            if not leased:
                return [], False
            ids = [r["task_id"] for r in leased]
            marks = ",".join("?" * len(ids))
            rows = tx.all(_TASK_SELECT + f" WHERE t.task_id IN ({marks}) ORDER BY t.score DESC, t.rank", ids)
            return [_task(r, with_token=True) for r in rows], False
        return self.db.run(txn)

    def _diagnose_lease(self, task_id: str, lease_token: str, client_id: str, action: str) -> None:
        """Called when a lease-guarded UPDATE matched nothing: raise the reason."""
        check_lease_holder(self.get_task(task_id, with_token=True), lease_token, client_id, action)
        raise FailedPrecondition(f"{action}: task {task_id} changed meanwhile; try again")

    def heartbeat(self, task_id: str, lease_token: str, lease_seconds: float, client_id: str = "") -> float:
        """Extend a lease; returns the new expiry (database clock).

        Args:
            client_id: the caller's authenticated identity ('' = not authenticated: the token decides).

        Raises:
            as check_lease_holder.
        """
        if not lease_token:
            raise InvalidInput("heartbeat: lease_token is required")
        r = self.db.run(lambda tx: tx.one(
            """UPDATE tasks SET lease_expires_at = {now} + ?
               WHERE task_id = ? AND state = 'leased' AND lease_token = ? AND (? = '' OR lease_owner = ?)
               RETURNING lease_expires_at""",
            (lease_seconds, task_id, lease_token, client_id, client_id)))
        if r is None:
            self._diagnose_lease(task_id, lease_token, client_id, "heartbeat")
        return float(r["lease_expires_at"])

    def release(self, task_id: str, lease_token: str, client_id: str = "") -> None:
        """Give a lease back: the task is leasable again at once.

        Args:
            client_id: the caller's authenticated identity ('' = not authenticated: the token decides).

        Raises:
            as check_lease_holder.
        """
        if not lease_token:
            raise InvalidInput("release: lease_token is required")
        r = self.db.run(lambda tx: tx.one(
            """UPDATE tasks SET state = 'open', lease_owner = '', lease_token = '', lease_expires_at = 0,
                                previous_lease_token = lease_token
               WHERE task_id = ? AND state = 'leased' AND lease_token = ? AND (? = '' OR lease_owner = ?)
               RETURNING task_id""",
            (task_id, lease_token, client_id, client_id)))
        if r is None:
            self._diagnose_lease(task_id, lease_token, client_id, "release")

    # ================================================================ annotations
    def submit_annotation(self, draft: AnnotationDraft) -> tuple[Annotation, bool]:
        """Commit an annotation and finish its task, or recognise a repeat of an accepted one.

        Returns:
            (the task's annotation, replayed): replayed is True when this submit repeats one that
            was already accepted (same idempotency key, or same content).
        Raises:
            NotFound: no such task.
            FailedPrecondition: the lease was taken over / released, the task was cancelled, or it
                already holds a different annotation.
            InvalidInput: the idempotency key was used before for different content.
        """
        def txn(tx: Tx) -> tuple[Annotation, bool]:
            # Lock the task row first: concurrent submits of one task run one after the other.
            if tx.one("SELECT task_id FROM tasks WHERE task_id = ? {for_update}", (draft.task_id,)) is None:
                raise NotFound(f"no task {draft.task_id}")
            task = _task(tx.one(_TASK_SELECT + " WHERE t.task_id = ?", (draft.task_id,)), with_token=True)
            existing = tx.one(_ANNOTATION_SELECT + " WHERE a.task_id = ?", (draft.task_id,))
            # a replay returns the record only to the lease (and client) that stored it
            check_lease_holder(task, draft.lease_token, draft.client_id, "submit", finished_ok=existing is not None)
            if existing is not None:
                return self._replay(_annotation(existing), draft), True
            retired = draft.dice is not None and draft.dice >= task.dice_threshold
            annotation_id = _new_id("ann")
            tx.execute(
                """INSERT INTO annotations (annotation_id, task_id, cycle_id, pool_id, frame_id, client_id,
                                            scope, region_ids, mask_uri, content_sha256, idempotency_key,
                                            regions_count, pixels_count, dice, frame_retired, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now})""",
                (annotation_id, task.task_id, task.cycle_id, task.pool_id, task.frame_id, draft.client_id,
                 draft.scope, json.dumps(list(draft.region_ids)), draft.mask_uri, draft.content_sha256,
                 draft.idempotency_key, draft.regions_count, draft.pixels_count, draft.dice, int(retired)))
            tx.execute("UPDATE tasks SET state = 'done', done_at = {now} WHERE task_id = ?", (task.task_id,))
            tx.execute(
                """UPDATE frames SET annotation_count = annotation_count + 1,
                                     retired = CASE WHEN ? = 1 THEN 1 ELSE retired END,
                                     fully_labeled = CASE WHEN ? = 1 THEN 1 ELSE fully_labeled END
                   WHERE frame_id = ?""",
                (int(retired), int(draft.scope == WHOLE_FRAME), task.frame_id))
            return _annotation(tx.one(_ANNOTATION_SELECT + " WHERE a.annotation_id = ?", (annotation_id,))), False
        return self.db.run(txn)

    @staticmethod
    def _replay(existing: Annotation, draft: AnnotationDraft) -> Annotation:
        if existing.idempotency_key == draft.idempotency_key:
            if existing.content_sha256 != draft.content_sha256:
                raise InvalidInput(
                    f"submit: idempotency key {draft.idempotency_key!r} was used for a different "
                    f"annotation of task {draft.task_id}; use a new key for new content")
            return existing
        if existing.content_sha256 == draft.content_sha256:
            return existing
        raise FailedPrecondition(
            f"submit: task {draft.task_id} is already annotated (annotation {existing.annotation_id} "
            f"by client '{existing.client_id}'); this different annotation was not stored")

    def list_annotations(self, pool_id: str, cycle_id: str, after_annotation_id: str,
                         limit: int) -> list[Annotation]:
        self.get_pool(pool_id)
        return self.db.run(lambda tx: [_annotation(r) for r in tx.all(
            _ANNOTATION_SELECT + """ WHERE a.pool_id = ? AND (? = '' OR a.cycle_id = ?)
                                     AND a.annotation_id > ? ORDER BY a.annotation_id LIMIT ?""",
            (pool_id, cycle_id, cycle_id, after_annotation_id, limit))], write=False)

    # ================================================================ budget and reports
    @staticmethod
    def _budget(tx: Tx, pool_id: str) -> Budget:
        p = tx.one("SELECT max_frames, max_regions, max_pixels FROM pools WHERE pool_id = ?", (pool_id,))
        if p is None:
            raise NotFound(f"no pool {pool_id}")
        spent = tx.one("""SELECT COUNT(*) AS frames, COALESCE(SUM(regions_count), 0) AS regions,
                                 COALESCE(SUM(pixels_count), 0) AS pixels
                          FROM annotations WHERE pool_id = ?""", (pool_id,))
        leased = tx.scalar("SELECT COUNT(*) FROM tasks WHERE pool_id = ? AND state = 'leased' "
                           "AND lease_expires_at > {now}", (pool_id,))
        return Budget(pool_id=pool_id,
                      limits=BudgetLimits(int(p["max_frames"]), int(p["max_regions"]), int(p["max_pixels"])),
                      spent_frames=int(spent["frames"]), spent_regions=int(spent["regions"]),
                      spent_pixels=int(spent["pixels"]), leased_frames=int(leased))

    def budget(self, pool_id: str) -> Budget:
        return self.db.run(lambda tx: self._budget(tx, pool_id), write=False)

    def cycle_numbers(self, cycle_id: str) -> tuple[TaskCounts, int, float | None, int, int]:
        """(task counts, annotations with DICE, mean DICE or None, frames retired, scoring failures)."""
        def txn(tx: Tx):
            c = tx.one("""SELECT COUNT(*) AS total,
                 SUM(CASE WHEN state = 'open' OR (state = 'leased' AND lease_expires_at <= {now})
                          THEN 1 ELSE 0 END) AS waiting,
                 SUM(CASE WHEN state = 'leased' AND lease_expires_at > {now} THEN 1 ELSE 0 END) AS leased,
                 SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS done,
                 SUM(CASE WHEN state = 'cancelled' THEN 1 ELSE 0 END) AS cancelled
                 FROM tasks WHERE cycle_id = ?""", (cycle_id,))
            counts = TaskCounts(int(c["total"]), int(c["waiting"] or 0), int(c["leased"] or 0),
                                int(c["done"] or 0), int(c["cancelled"] or 0))
            a = tx.one("""SELECT COUNT(dice) AS n, AVG(dice) AS mean, COALESCE(SUM(frame_retired), 0) AS retired
                          FROM annotations WHERE cycle_id = ?""", (cycle_id,))
            failed = tx.scalar("SELECT COUNT(*) FROM score_failures WHERE cycle_id = ?", (cycle_id,))
            mean = None if a["mean"] is None else float(a["mean"])
            return counts, int(a["n"]), mean, int(a["retired"]), int(failed)
        return self.db.run(txn, write=False)

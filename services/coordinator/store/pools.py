"""Pools and their frames: create, find, ingest (idempotent by frame id), list, frame sizes."""
from __future__ import annotations

import json
from typing import Sequence

from segxal.errors import FailedPrecondition, NotFound
from segxal.ingest import IngestedFrame
from segxal.labels import is_cityscapes
from services.coordinator.domain import BudgetLimits, Frame, Pool
from services.coordinator.store.db import Database, Tx
from services.coordinator.store.rows import _BATCH, _POOL_SELECT, _frame, _new_id, _pool, frame_id_for


class PoolRepository:
    """Part of CoordinatorStore (each public method is one transaction)."""

    db: Database

    def create_pool(self, name: str, limits: BudgetLimits, class_names: tuple[str, ...]) -> Pool:
        pool_id = _new_id("pool")
        classes = "" if is_cityscapes(class_names) else json.dumps(list(class_names))

        def txn(tx: Tx) -> Pool:
            clash = tx.one("SELECT pool_id FROM pools WHERE name = ?", (name,))
            if clash:
                raise FailedPrecondition(f"a pool named {name!r} already exists ({clash['pool_id']})")
            tx.execute("""INSERT INTO pools (pool_id, name, max_frames, max_regions, max_pixels, class_names,
                                             created_at)
                          VALUES (?, ?, ?, ?, ?, ?, {now})""",
                       (pool_id, name, limits.max_frames, limits.max_regions, limits.max_pixels, classes))
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

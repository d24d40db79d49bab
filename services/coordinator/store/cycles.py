"""Cycles: start (closing the previous one), find, and the ranked drafts that become a cycle's open tasks."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Sequence

from segxal.eem.options import EEMOptions
from segxal.selection import SelectionSpec
from segxal.errors import FailedPrecondition, NotFound
from services.coordinator.domain import Cycle, ModelVersion, Task, TaskDraft, regions_to_json
from services.coordinator.store.db import Database, Tx
from services.coordinator.store.rows import _CYCLE_SELECT, _TASK_SELECT, _cycle, _new_id, _task


class CycleRepository:
    """Part of CoordinatorStore (each public method is one transaction)."""

    db: Database

    def start_cycle(self, pool_id: str, selection: str, model: ModelVersion | None, batch_size: int,
                    dice_threshold: float, random_seed: int, cancel_unfinished: bool,
                    eem: EEMOptions | None = None, selection_spec: SelectionSpec | None = None) -> Cycle:
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
                                              eem_options, selection_spec, started_at)
                          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now})""",
                       (cycle_id, pool_id, number, selection, model.model_name if model else None,
                        model.version if model else None, batch_size, dice_threshold, random_seed,
                        json.dumps(asdict(eem or EEMOptions())),
                        json.dumps((selection_spec or SelectionSpec()).to_dict())))
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

    def replace_open_tasks(self, cycle: Cycle, drafts: Sequence[TaskDraft]) -> list[Task]:
        """Make the ranked frames the cycle's waiting tasks: open tasks (never leased, or released)
        are dropped and re-made from `drafts`; leased and annotated tasks stay and count against
        the batch size. Returns the cycle's open and leased tasks, in pick order."""
        def txn(tx: Tx) -> list[Task]:
            tx.execute("DELETE FROM tasks WHERE cycle_id = ? AND state = 'open'", (cycle.cycle_id,))
            kept = {r["frame_id"] for r in tx.all(
                "SELECT frame_id FROM tasks WHERE cycle_id = ? AND state <> 'cancelled'", (cycle.cycle_id,))}
            room = max(cycle.batch_size - len(kept), 0)
            fresh = [d for d in drafts if d.frame_id not in kept][:room]
            tx.executemany(
                """INSERT INTO tasks (task_id, cycle_id, pool_id, frame_id, score, rank, regions,
                                      prediction_uri, reasons, state, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', {now})""",
                [(_new_id("task"), cycle.cycle_id, cycle.pool_id, d.frame_id, d.score, d.rank,
                  regions_to_json(d.regions), d.prediction_uri, json.dumps(d.reasons) if d.reasons else "")
                 for d in fresh])
            tx.execute("UPDATE cycles SET ranked_at = {now} WHERE cycle_id = ?", (cycle.cycle_id,))
            return [_task(r) for r in tx.all(
                _TASK_SELECT + " WHERE t.cycle_id = ? AND t.state IN ('open', 'leased') "
                               "ORDER BY t.rank, t.task_id", (cycle.cycle_id,))]
        return self.db.run(txn)

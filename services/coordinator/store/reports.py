"""A pool's budget (spent and leased against its limits) and a cycle's numbers for its report."""
from __future__ import annotations

from segxal.errors import NotFound
from services.coordinator.domain import Budget, BudgetLimits, TaskCounts
from services.coordinator.store.db import Database, Tx



class BudgetRepository:
    """Part of CoordinatorStore (each public method is one transaction)."""

    db: Database

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

"""Tasks and their leases: the lease query (FOR UPDATE SKIP LOCKED on PostgreSQL), heartbeat, release."""
from __future__ import annotations

import uuid

from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from services.coordinator.domain import Task, check_lease_holder
from services.coordinator.store.db import Database, Tx
from services.coordinator.store.rows import _TASK_SELECT, _task


class TaskRepository:
    """Part of CoordinatorStore (each public method is one transaction)."""

    db: Database

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
                     ORDER BY rank, score DESC, task_id LIMIT ? {skip_locked})
                   RETURNING task_id""",
                (client_id, token, lease_seconds, pool_id, cycle_id, cycle_id, frame_id, frame_id, n))
            if not leased:
                return [], False
            ids = [r["task_id"] for r in leased]
            marks = ",".join("?" * len(ids))
            rows = tx.all(_TASK_SELECT + f" WHERE t.task_id IN ({marks}) ORDER BY t.rank, t.score DESC", ids)
            return [_task(r, with_token=True) for r in rows], False
        return self.db.run(txn)

    def _update_held_lease(self, action: str, task_id: str, lease_token: str, client_id: str, set_sql: str,
                           set_params: tuple = ()) -> dict:
        """One lease-guarded UPDATE: it applies only to the holder's still-leased task, and returns
        the row (RETURNING lease_expires_at); when it matched nothing, raise the reason."""
        if not lease_token:
            raise InvalidInput(f"{action}: lease_token is required")
        r = self.db.run(lambda tx: tx.one(
            f"""UPDATE tasks SET {set_sql}
                WHERE task_id = ? AND state = 'leased' AND lease_token = ? AND (? = '' OR lease_owner = ?)
                RETURNING lease_expires_at""",
            (*set_params, task_id, lease_token, client_id, client_id)))
        if r is None:
            check_lease_holder(self.get_task(task_id, with_token=True), lease_token, client_id, action)
            raise FailedPrecondition(f"{action}: task {task_id} changed meanwhile; try again")
        return r

    def heartbeat(self, task_id: str, lease_token: str, lease_seconds: float, client_id: str = "") -> float:
        """Extend a lease; returns the new expiry (database clock).

        Args:
            client_id: the caller's authenticated identity ('' = not authenticated: the token decides).

        Raises:
            as check_lease_holder.
        """
        r = self._update_held_lease("heartbeat", task_id, lease_token, client_id,
                                    "lease_expires_at = {now} + ?", (lease_seconds,))
        return float(r["lease_expires_at"])

    def release(self, task_id: str, lease_token: str, client_id: str = "") -> None:
        """Give a lease back: the task is leasable again at once.

        Args:
            client_id: the caller's authenticated identity ('' = not authenticated: the token decides).

        Raises:
            as check_lease_holder.
        """
        self._update_held_lease("release", task_id, lease_token, client_id,
                                "state = 'open', lease_owner = '', lease_token = '', lease_expires_at = 0, "
                                "previous_lease_token = lease_token")

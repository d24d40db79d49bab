"""Annotations: submit (one per task, idempotent by key) and list."""
from __future__ import annotations

import json

from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from services.coordinator.domain import WHOLE_FRAME, Annotation, AnnotationDraft, check_lease_holder
from services.coordinator.store.db import Database, Tx
from services.coordinator.store.rows import _ANNOTATION_SELECT, _TASK_SELECT, _annotation, _new_id, _task


class AnnotationRepository:
    """Part of CoordinatorStore (each public method is one transaction)."""

    db: Database

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

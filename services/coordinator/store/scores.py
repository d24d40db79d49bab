"""Scores per (frame, model version, EEM options), the query pool with the scores it can reuse, and
scoring failures per cycle."""
from __future__ import annotations

from typing import Iterator, Sequence

from services.coordinator.domain import (
    Candidate, Cycle, FailedFrame, FrameScore, regions_from_json, regions_to_json)
from services.coordinator.store.rows import _BATCH, vector_from_text, vector_to_text
from services.coordinator.store.db import Database


class ScoreRepository:
    """Part of CoordinatorStore (each public method is one transaction)."""

    db: Database

    def iter_candidates(self, cycle: Cycle, page_size: int = _BATCH) -> Iterator[Candidate]:
        """The cycle's query pool, in frame_id order, one short read per page (no transaction is
        held open while the caller scores): frames neither retired nor fully labeled, without a
        leased or annotated task in this cycle, and not waiting in another cycle's task. Each comes
        with its score for the cycle's model version and EEM options when it has one."""
        return self._frames_with_scores(cycle, """f.retired = 0 AND f.fully_labeled = 0 AND NOT EXISTS (
                       SELECT 1 FROM tasks t WHERE t.frame_id = f.frame_id AND (
                         (t.cycle_id = ? AND t.state IN ('leased', 'done'))
                         OR (t.cycle_id <> ? AND t.state IN ('open', 'leased'))))""",
                                        (cycle.cycle_id, cycle.cycle_id), page_size)

    def iter_labelled(self, cycle: Cycle, page_size: int = _BATCH) -> Iterator[Candidate]:
        """The pool's labelled frames (an accepted annotation, or retired), in frame_id order, each
        with its score of the cycle's model version and EEM options when it has one: a composed
        selection counts its distance to them (diversity) and their classes (balance)."""
        return self._frames_with_scores(
            cycle, "f.annotation_count > 0 OR f.retired = 1 OR f.fully_labeled = 1", (), page_size)

    def _frames_with_scores(self, cycle: Cycle, where: str, params: tuple, page_size: int) -> Iterator[Candidate]:
        """Frames of the cycle's pool matching `where` (SQL over f = frames), page by page, each with
        its stored score of the cycle's model version and EEM options (None when it has none)."""
        model_key = cycle.model.key if cycle.model else ""
        options_key = cycle.eem.key()
        sql = f"""SELECT f.frame_id, f.uri, f.width, f.height, f.source, s.score, s.regions,
                         s.height AS s_height, s.width AS s_width, s.depth_model_key, s.embedding, s.class_hist
                  FROM frames f LEFT JOIN scores s ON s.frame_id = f.frame_id AND s.model_key = ?
                                                  AND s.options_key = ?
                  WHERE f.pool_id = ? AND f.frame_id > ? AND ({where})
                  ORDER BY f.frame_id LIMIT ?"""
        after = ""
        while True:
            rows = self.db.run(lambda tx: tx.all(sql, (model_key, options_key, cycle.pool_id, after, *params,
                                                       page_size)), write=False)
            for r in rows:
                cached = None
                if r["score"] is not None:
                    cached = FrameScore(uri=r["uri"], score=float(r["score"]), segmentation_version=model_key,
                                        depth_version=r["depth_model_key"],
                                        regions=regions_from_json(r["regions"]),
                                        height=int(r["s_height"]), width=int(r["s_width"]),
                                        embedding=vector_from_text(r["embedding"]),
                                        class_hist=vector_from_text(r["class_hist"]))
                yield Candidate(frame_id=r["frame_id"], uri=r["uri"], width=int(r["width"]),
                                height=int(r["height"]), cached=cached, source=r["source"])
            if len(rows) < page_size:
                return
            after = rows[-1]["frame_id"]

    def record_scores(self, scored: Sequence[tuple[str, FrameScore]], options_key: str) -> None:
        """Upsert (frame_id, score) pairs, each under its own model version, made with the EEM
        options whose EEMOptions.key() is `options_key`."""
        rows = [(fid, s.segmentation_version, options_key, s.score, regions_to_json(s.regions), s.height,
                 s.width, s.depth_version, vector_to_text(s.embedding), vector_to_text(s.class_hist))
                for fid, s in scored]
        self.db.run(lambda tx: tx.executemany(
            """INSERT INTO scores (frame_id, model_key, options_key, score, regions, height, width,
                                   depth_model_key, embedding, class_hist, scored_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now})
               ON CONFLICT (frame_id, model_key, options_key) DO UPDATE SET
                 score = excluded.score, regions = excluded.regions, height = excluded.height,
                 width = excluded.width, depth_model_key = excluded.depth_model_key,
                 embedding = excluded.embedding, class_hist = excluded.class_hist,
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

"""Model versions, cycles (each pinned to a model version, with its EEM options and selection) and
ranking: EEM scores through the scorer, picked by score or by the cycle's composed selection
(segxal.selection), or a seeded random sample; the cycle report and its stop decision."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from segxal.selection import PoolFeatures, SelectionSpec, select
from services.coordinator.config import CoordinatorConfig
from services.coordinator.domain import (
    CYCLE_CLOSED, CYCLE_COMPLETE, CYCLE_STARTED, SELECTION_EEM, SELECTION_RANDOM, STOP_BUDGET_SPENT,
    STOP_DICE_REACHED, STOP_NONE, STOP_POOL_EXHAUSTED, Budget, Candidate, Cycle, CycleReport, FailedFrame,
    FrameScore, ModelVersion, RankResult, TaskCounts, TaskDraft)
from services.coordinator.ranking import FrameScorer, Ranked, TopK, rank_frames, score_candidates
from services.coordinator.store.store import CoordinatorStore
from services.eem.api import ScoreOptions


_MAX_FAILED_LISTED = 1000  # per RankCycle reply; the cycle report has the full count
_RANDOM_SPARES = 8  # extra frames a random sample draws, in case some cannot be read


@dataclass(frozen=True)
class StartCycleSpec:
    pool_id: str
    batch_size: int
    selection: str = SELECTION_EEM
    model_name: str = ""      # "" = the configured default model
    model_version: int = 0    # 0 = current
    dice_threshold: float | None = None
    random_seed: int = 0
    cancel_unfinished: bool = False
    eem: EEMOptions | None = None  # EEM cycles rank with these (None: EEMOptions' defaults)
    selection_spec: SelectionSpec | None = None  # EEM cycles pick with it (None: cfg.default_selection)


def decide_stop(cycle: Cycle, complete: bool, mean_dice: float | None, dice_count: int, budget: Budget,
                queryable_frames: int, tasks: TaskCounts, failed_frames: int) -> tuple[str, str]:
    """The loop's stop decision for a cycle (docs/design.md, "DICE stopping"): (reason, detail)."""
    thr = cycle.dice_threshold
    if complete and dice_count and mean_dice is not None and mean_dice >= thr:
        return STOP_DICE_REACHED, f"mean DICE {mean_dice:.4f} over {dice_count} annotations >= {thr}"
    if budget.exhausted:
        return STOP_BUDGET_SPENT, budget.exhausted_reason
    if queryable_frames == 0 and tasks.open + tasks.leased == 0:
        return STOP_POOL_EXHAUSTED, "every frame of the pool is retired or fully labeled"
    if cycle.state == CYCLE_STARTED:
        if cycle.ranked_at is None:
            return STOP_NONE, f"cycle {cycle.number} is not ranked yet"
        return STOP_NONE, (f"cycle {cycle.number} has no task: scoring failed for {failed_frames} frames; "
                           f"rank it again when the scorer is back")
    if not complete:
        return STOP_NONE, f"cycle {cycle.number} in progress: {tasks.open} tasks waiting, {tasks.leased} leased"
    if mean_dice is None:
        return STOP_NONE, f"cycle {cycle.number} complete without DICE (no prediction known): go on"
    return STOP_NONE, f"cycle {cycle.number} complete, mean DICE {mean_dice:.4f} < {thr}: train and go on"


class CyclesAndRanking:
    """Part of Coordinator (services/coordinator/coordinator.py)."""

    store: CoordinatorStore
    cfg: CoordinatorConfig
    scorer: FrameScorer | None
    storage: Path

    def register_model_version(self, model_name: str, version: int, uri: str) -> ModelVersion:
        if not model_name:
            raise InvalidInput("register model version: model_name is required")
        if version < 0:
            raise InvalidInput(f"register model version: version must be >= 0 (0 = next), got {version}")
        return self.store.register_model_version(model_name, version, uri)

    def list_model_versions(self, model_name: str) -> list[ModelVersion]:
        return self.store.list_model_versions(model_name)

    def current_model_version(self, model_name: str) -> ModelVersion:
        return self.store.get_model_version(model_name or self.cfg.model_name, 0)


    def start_cycle(self, spec: StartCycleSpec) -> Cycle:
        """Open the next cycle of a pool, pinned to one model version.

        Raises:
            NotFound: no such pool, or the named model version does not exist.
            InvalidInput: batch size or threshold out of range, unknown selection.
            FailedPrecondition: the budget is spent; an EEM cycle but no model version registered;
                the previous cycle still has tasks (and cancel_unfinished is not set).
        """
        if spec.batch_size <= 0:
            raise InvalidInput(f"start cycle: batch_size must be > 0, got {spec.batch_size}")
        thr = self.cfg.default_dice_threshold if spec.dice_threshold is None else spec.dice_threshold
        if not 0.0 < thr <= 1.0:
            raise InvalidInput(f"start cycle: dice_threshold must be in (0, 1], got {thr}")
        if spec.selection not in (SELECTION_EEM, SELECTION_RANDOM):
            raise InvalidInput(f"start cycle: unknown selection {spec.selection!r}")
        if spec.model_version < 0:
            raise InvalidInput(f"start cycle: model_version must be >= 0, got {spec.model_version}")
        try:
            eem = (spec.eem or EEMOptions()).validate()
        except InvalidInput as e:
            raise InvalidInput(f"start cycle: EEM options: {e}") from None
        try:
            selection_spec = (spec.selection_spec or self.cfg.default_selection).validate()
        except InvalidInput as e:
            raise InvalidInput(f"start cycle: {e}") from None
        budget = self.store.budget(spec.pool_id)  # NotFound for an unknown pool
        if budget.exhausted:
            raise FailedPrecondition(f"start cycle: pool {spec.pool_id} has no budget left ({budget.exhausted_reason})")
        name = spec.model_name or self.cfg.model_name
        model: ModelVersion | None
        if spec.model_version:
            model = self.store.get_model_version(name, spec.model_version)
        else:
            try:
                model = self.store.get_model_version(name, 0)
            except NotFound:
                if spec.selection == SELECTION_EEM:
                    raise FailedPrecondition(
                        f"start cycle: EEM selection needs a registered version of model {name!r}; "
                        f"register one, or start a random cycle") from None
                model = None  # a cold-start random cycle: no model yet
        return self.store.start_cycle(spec.pool_id, spec.selection, model, spec.batch_size, thr,
                                      spec.random_seed, spec.cancel_unfinished, eem, selection_spec)

    def rank_cycle(self, cycle_id: str) -> RankResult:
        """Rank the cycle's query pool and make the top K frames its open tasks.

        EEM cycles score every frame without a score of the cycle's model version (failures are
        recorded and stay in the pool; the next call scores them again); random cycles sample
        the pool with the cycle's seed.

        Raises:
            NotFound: no such cycle.
            FailedPrecondition: the cycle is closed, or EEM ranking without a scorer.
        """
        cycle = self.store.get_cycle(cycle_id)
        if cycle.state == CYCLE_CLOSED:
            raise FailedPrecondition(f"rank cycle: cycle {cycle.number} is closed (a newer cycle started)")
        candidates = self.store.iter_candidates(cycle)
        scored = reused = 0
        if cycle.selection == SELECTION_RANDOM:
            drafts = self._sample(candidates, cycle)
        else:
            if self.scorer is None:
                raise FailedPrecondition("rank cycle: EEM ranking needs the EEM service: start the "
                                         "coordinator with --eem-target")
            assert cycle.model is not None  # EEM cycles always pin a model version (start_cycle)
            options_key = cycle.eem.key()
            pool_classes = tuple(self.store.get_pool(cycle.pool_id).class_names)

            def record(batch: list[tuple[str, FrameScore]]) -> None:
                _check_classes(cycle, pool_classes, batch)
                self.store.record_scores(batch, options_key)
            composed = cycle.selection_spec != SelectionSpec()
            outcome = rank_frames(
                candidates, self.scorer, None if composed else cycle.batch_size, cycle.model.key,
                self.cfg.ranking, self._score_options(cycle), on_scored=record,
                on_failed=lambda batch: self.store.record_score_failures(cycle.cycle_id, batch))
            self.store.forget_resolved_failures(cycle.cycle_id, cycle.model.key, options_key)
            scored, reused = outcome.scored, outcome.reused
            top, reasons = outcome.top, {}
            if composed:
                top, reasons = self._compose(cycle, outcome.top, record)
            drafts = self._drafts_with_predictions(cycle, top, reasons)
        tasks = self.store.replace_open_tasks(cycle, drafts)
        return RankResult(cycle=self.store.get_cycle(cycle_id), frames_scored=scored, frames_reused=reused,
                          failed=self.store.list_score_failures(cycle_id, limit=_MAX_FAILED_LISTED),
                          tasks=tasks)

    def _sample(self, candidates: Iterator[Candidate], cycle: Cycle) -> list[TaskDraft]:
        """K frames uniformly at random, reproducible from the seed and independent of the order
        frames come in: each frame's key is a hash of (seed, frame_id); the K smallest keys win.
        A few spares stand in for frames that turn out unreadable."""
        top = TopK(cycle.batch_size + _RANDOM_SPARES)
        for cand in candidates:
            digest = hashlib.sha256(f"{cycle.random_seed}:{cand.frame_id}".encode()).digest()
            key = int.from_bytes(digest[:8], "big") / 2.0 ** 64  # uniform in [0, 1)
            top.offer(Ranked(1.0 - key, cand.frame_id, cand, FrameScore(cand.uri, 0.0, "")))
        chosen = self._with_known_sizes(cycle, top.best_first())[: cycle.batch_size]
        return [TaskDraft(r.frame_id, 0.0, i + 1) for i, r in enumerate(chosen)]

    def _with_known_sizes(self, cycle: Cycle, ranked: Sequence[Ranked]) -> list[Ranked]:
        """The ranked frames whose size is known, learning the sizes not known since ingest (the
        annotation check needs them) from the scorer's answer, else from the image itself. A frame
        that cannot be read is recorded as a failure of the cycle and left out."""
        sizes, kept, failed = {}, [], []
        for r in ranked:
            if not (r.candidate.width and r.candidate.height):
                if r.result.height and r.result.width:
                    sizes[r.frame_id] = (r.result.height, r.result.width)
                else:
                    try:
                        sizes[r.frame_id] = imageio.read_rgb(r.candidate.uri).shape[:2]  # (H, W)
                    except (NotFound, InvalidInput) as e:
                        failed.append(FailedFrame(r.frame_id, r.candidate.uri, str(e), 1))
                        continue
            kept.append(r)
        if sizes:
            self.store.set_frame_sizes(sizes)
        if failed:
            self.store.record_score_failures(cycle.cycle_id, failed)
        return kept

    def _score_options(self, cycle: Cycle) -> ScoreOptions:
        # labels for DICE at submit time, regions for the labeling clients
        return ScoreOptions(eem=cycle.eem, regions=True, labels=True)

    def _compose(self, cycle: Cycle, ranked: list[Ranked], record) -> tuple[list[Ranked], dict[str, dict]]:
        """The cycle's composed selection over every scored frame (segxal.selection.select, the
        benchmark's and the fleet's one path): the winners in pick order, and each one's reasons.

        Raises:
            FailedPrecondition: the selection needs embeddings or class histograms the served
                model does not give.
        """
        spec = cycle.selection_spec
        if not ranked:
            return [], {}
        missing = [r.frame_id for r in ranked if (spec.needs_embeddings and r.result.embedding is None)
                   or (spec.needs_class_histograms and r.result.class_hist is None)]
        if missing:
            raise FailedPrecondition(
                f"rank cycle: selection '{spec.text()}' needs frame embeddings and class histograms, but model "
                f"{cycle.model.key if cycle.model else ''} gave none for {len(missing)} of {len(ranked)} frames "
                f"(e.g. {missing[0]}): serve a model exported with an `embedding` output, or select without "
                f"diversity / min_distance / balance")
        lab_emb, lab_hist = self._labelled_features(cycle, record)
        pool = PoolFeatures(
            ids=[r.frame_id for r in ranked], scores=np.array([r.score for r in ranked], np.float64),
            embeddings=np.stack([r.result.embedding for r in ranked]) if spec.needs_embeddings else None,
            class_hist=np.stack([r.result.class_hist for r in ranked]) if spec.needs_class_histograms else None,
            log_ids=[r.candidate.source for r in ranked])
        try:
            picks = select(pool, cycle.batch_size, spec, labelled_embeddings=lab_emb, labelled_class_hist=lab_hist)
        except InvalidInput as e:  # features of another shape than the labelled frames': a model change
            raise FailedPrecondition(f"rank cycle: {e}") from None
        return [ranked[p.index] for p in picks], {p.id: p.reasons() for p in picks}

    def _labelled_features(self, cycle: Cycle, record) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Embeddings [M, D] and summed class histograms [C] of the pool's labelled frames under the
        cycle's model version, scoring (and storing) those without a score of it; (None, None)
        when the selection needs neither. A labelled frame that cannot be scored is left out."""
        spec = cycle.selection_spec
        if not (spec.needs_embeddings or spec.needs_class_histograms):
            return None, None
        assert cycle.model is not None
        have: dict[str, FrameScore] = {}
        todo = []
        for cand in self.store.iter_labelled(cycle):
            if cand.cached is not None:
                have[cand.frame_id] = cand.cached
            else:
                todo.append(cand)
        fresh = []
        for cand, res in score_candidates(todo, self.scorer, ScoreOptions(eem=cycle.eem), self.cfg.ranking):
            if isinstance(res, FrameScore) and res.segmentation_version == cycle.model.key:
                have[cand.frame_id] = res
                fresh.append((cand.frame_id, res))
        if fresh:
            record(fresh)
        embs = [s.embedding for s in have.values() if s.embedding is not None]
        hists = [s.class_hist for s in have.values() if s.class_hist is not None]
        return (np.stack(embs) if embs else None), (np.sum(hists, axis=0) if hists else None)

    def _drafts_with_predictions(self, cycle: Cycle, top: list[Ranked],
                                 reasons: dict[str, dict] | None = None) -> list[TaskDraft]:
        """Tasks for the winners, each with the model's prediction saved for DICE at submit time.
        Winners ranked from stored scores have no prediction in memory: ask the scorer again for
        just those (K frames, not the pool); one it cannot give gets a task without prediction."""
        assert cycle.model is not None
        missing = [r for r in top if r.result.prediction_png is None]
        fetched: dict[str, FrameScore] = {}
        if missing:
            again = score_candidates([r.candidate for r in missing], self.scorer, self._score_options(cycle),
                                     self.cfg.ranking)
            for cand, res in again:
                if isinstance(res, FrameScore) and res.segmentation_version == cycle.model.key:
                    fetched[cand.frame_id] = res
        drafts = []
        for i, r in enumerate(self._with_known_sizes(cycle, top)):
            png = r.result.prediction_png or (fetched[r.frame_id].prediction_png if r.frame_id in fetched else None)
            uri = ""
            if png:
                path = (self.storage / "predictions" / cycle.model.model_name / str(cycle.model.version)
                        / f"{r.frame_id}.png")
                imageio.atomic_write_bytes(path, png)
                uri = str(path)
            drafts.append(TaskDraft(r.frame_id, r.result.score, i + 1, tuple(r.result.regions), uri,
                                    (reasons or {}).get(r.frame_id)))
        return drafts

    def cycle_report(self, cycle_id: str, pool_id: str = "") -> CycleReport:
        """Progress, mean DICE and the stop decision of a cycle (the pool's latest when no id).

        Raises:
            NotFound: no such cycle / pool, or the pool has no cycle.
        """
        if cycle_id:
            cycle = self.store.get_cycle(cycle_id)
        elif pool_id:
            cycle = self.store.latest_cycle(pool_id)
        else:
            raise InvalidInput("cycle report: give cycle_id or pool_id")
        counts, dice_count, mean, retired, failed = self.store.cycle_numbers(cycle.cycle_id)
        budget = self.store.budget(cycle.pool_id)
        pool = self.store.get_pool(cycle.pool_id)
        complete = cycle.state == CYCLE_COMPLETE
        reason, detail = decide_stop(cycle, complete, mean, dice_count, budget, pool.queryable_frame_count,
                                     counts, failed)
        return CycleReport(cycle=cycle, tasks=counts, annotations_with_dice=dice_count,
                           mean_dice=math.nan if mean is None else mean, frames_retired=retired,
                           cycle_complete=complete, stop_reason=reason, stop_detail=detail, budget=budget,
                           failed_frames=failed, queryable_frames=pool.queryable_frame_count)


def _check_classes(cycle: Cycle, pool_classes: tuple[str, ...], batch: list[tuple[str, FrameScore]]) -> None:
    """A pool labelled in other classes than the model predicts would get tasks whose predictions,
    DICE and annotations mean different things: refuse to rank it, naming both lists."""
    def show(names: Sequence[str]) -> str:
        return f"{len(names)} classes ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
    for _, score in batch:
        if score.class_names and tuple(score.class_names) != pool_classes:
            raise FailedPrecondition(
                f"rank cycle: pool {cycle.pool_id} is labelled in {show(pool_classes)}, but the segmentation "
                f"model {score.segmentation_version} predicts {show(score.class_names)}: create the pool with "
                f"the model's label file (segxal ingest log --create-pool --labels <model>/labels.txt) or serve "
                f"a model of the pool's classes")

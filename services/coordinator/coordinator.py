"""The coordinator's core: what each request does, between the servicer (protos) and the store
(SQL). No gRPC here; errors are segxal.errors exceptions, mapped to status codes at the edge.

Files it writes under the storage folder (shared storage when there are replicas):
    frames/<sha256[:2]>/<sha256>.<ext>            frames extracted from drive logs (content-addressed)
    annotations/<sha256[:2]>/<sha256>.png         accepted masks as trainIds, 255 = not annotated
    predictions/<model>/<version>/<frame_id>.png  the model's trainIds for each task's frame
Every file is written atomically (temp file, fsync, rename) before the database row that names it
is committed, so a committed row never points at a missing or half-written file.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from segxal import imageio
from segxal.al.scoring import EEMOptions
from segxal.annotation import EncodedMask, annotation_cost, content_sha256, decode_mask, decode_rle
from segxal.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from segxal.ingest import (DEFAULT_NEAR_DUPLICATE_THRESHOLD, IngestCounters, IngestedFrame,
                           extract_drive_log, iter_cityscapes, iter_image_folder)
from segxal.labels import IGNORE
from segxal.metrics import macro_dice
from services.coordinator.config import CoordinatorConfig
from services.coordinator.domain import (
    CYCLE_CLOSED, CYCLE_COMPLETE, CYCLE_STARTED, DONE, MIN_LEASE_S, REGIONS, SELECTION_EEM, SELECTION_RANDOM, STOP_BUDGET_SPENT,
    STOP_DICE_REACHED, STOP_NONE, STOP_POOL_EXHAUSTED, WHOLE_FRAME, Annotation, AnnotationDraft, Budget,
    BudgetLimits, Candidate, Cycle, CycleReport, FailedFrame, FrameScore, IngestSourceResult, ModelVersion,
    Page, Pool, RankResult, Task, TaskCounts, TaskDraft, check_lease_holder)
from services.coordinator.ranking import (FrameScorer, Ranked, ScoreOptions, TopK, rank_frames,
                                          score_candidates)
from services.coordinator.store.store import CoordinatorStore

IMAGE_FOLDER, CITYSCAPES, DRIVE_LOG = "image_folder", "cityscapes", "drive_log"
_INGEST_BATCH = 500  # frames per insert transaction
_MAX_PAGE = 10_000
_MAX_FAILED_LISTED = 1000  # per RankCycle reply; the cycle report has the full count
_RANDOM_SPARES = 8  # extra frames a random sample draws, in case some cannot be read


@dataclass(frozen=True)
class IngestSource:
    kind: str  # IMAGE_FOLDER, CITYSCAPES or DRIVE_LOG
    path: str  # folder, Cityscapes root, or .mcap file
    recursive: bool = False                      # image folders
    split: str = ""                              # Cityscapes
    require_labels: bool = False                 # Cityscapes
    topics: tuple[str, ...] = ()                 # drive logs; empty = every image topic
    near_duplicate_threshold: float | None = None  # drive logs; None = the default
    min_gap_s: float = 0.0                       # drive logs: per topic, least time between kept frames


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


@dataclass(frozen=True)
class SubmitSpec:
    task_id: str
    lease_token: str
    client_id: str
    mask: EncodedMask
    scope: str = WHOLE_FRAME
    region_ids: tuple[int, ...] = ()
    prediction: EncodedMask | None = None
    idempotency_key: str = ""


@dataclass
class SubmitResult:
    annotation: Annotation
    replayed: bool
    budget: Budget


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidInput(f"page_size must be >= 0, got {requested}")
    return min(requested or 1000, _MAX_PAGE)


def decide_stop(cycle: Cycle, complete: bool, mean_dice: float | None, dice_count: int, budget: Budget,
                queryable_frames: int, tasks: TaskCounts, failed_frames: int) -> tuple[str, str]:
    """The loop's stop decision for a cycle (DESIGN.md, DICE stopping): (reason, detail)."""
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


class Coordinator:
    """Pools, ingest, cycles and ranking, leases, annotations, model versions, budget.

    Args:
        store: the durable state (SQLite or PostgreSQL).
        cfg: the service configuration.
        scorer: ranks frames for EEM cycles (the EEM client adapter); None: only random cycles rank.
    """

    def __init__(self, store: CoordinatorStore, cfg: CoordinatorConfig, scorer: FrameScorer | None = None):
        self.store = store
        self.cfg = cfg
        self.scorer = scorer
        self.storage = Path(cfg.storage).resolve()
        self.storage.mkdir(parents=True, exist_ok=True)

    # ================================================================ pools and frames
    def create_pool(self, name: str, limits: BudgetLimits) -> Pool:
        if not name.strip():
            raise InvalidInput("create pool: name is required")
        if min(limits.max_frames, limits.max_regions, limits.max_pixels) < 0:
            raise InvalidInput(f"create pool: budget limits must be >= 0 (0 = unlimited), got {limits}")
        return self.store.create_pool(name.strip(), limits)

    def get_pool(self, pool_id: str = "", name: str = "") -> Pool:
        if not pool_id and not name:
            raise InvalidInput("get pool: give pool_id or name")
        return self.store.get_pool(pool_id=pool_id, name=name)

    def list_pools(self) -> list[Pool]:
        return self.store.list_pools()

    def list_frames(self, pool_id: str, page_token: str, page_size: int) -> Page:
        limit = _page_size(page_size)
        frames = self.store.list_frames(pool_id, page_token, limit)
        return Page(frames, frames[-1].frame_id if len(frames) == limit else "")

    def _allowed_path(self, path: str) -> Path:
        if not path:
            raise InvalidInput("ingest: source path is required")
        p = Path(path).resolve()
        roots = [Path(r).resolve() for r in self.cfg.ingest_roots]
        if roots and not any(p.is_relative_to(r) for r in roots):
            raise PermissionDenied(f"{p}: outside the ingest roots {[str(r) for r in roots]}")
        return p

    def _frames_of(self, source: IngestSource, counters: IngestCounters) -> Iterator[IngestedFrame]:
        path = self._allowed_path(source.path)
        if source.kind == IMAGE_FOLDER:
            return iter_image_folder(path, source.recursive, counters)
        if source.kind == CITYSCAPES:
            if not source.split:
                raise InvalidInput(f"{path}: Cityscapes source needs a split (e.g. 'train')")
            return iter_cityscapes(path, source.split, source.require_labels, counters)
        if source.kind == DRIVE_LOG:
            thr = (DEFAULT_NEAR_DUPLICATE_THRESHOLD if source.near_duplicate_threshold is None
                   else source.near_duplicate_threshold)
            return extract_drive_log(path, self.storage, source.topics or None, thr, counters, source.min_gap_s)
        raise InvalidInput(f"ingest: unknown source kind {source.kind!r}")

    def _ingest_one(self, pool_id: str, source: IngestSource) -> IngestSourceResult:
        counters = IngestCounters()
        added = present = 0
        batch: list[IngestedFrame] = []
        error = ""

        def flush() -> None:
            nonlocal added, present
            if batch:
                a, p = self.store.add_frames(pool_id, batch)
                added, present = added + a, present + p
                batch.clear()

        try:
            frames = self._frames_of(source, counters)
            for rec in frames:
                batch.append(rec)
                if len(batch) >= _INGEST_BATCH:
                    flush()
        # Only errors of reading this source end it (NotFound, InvalidInput, PermissionDenied);
        # a database that is down (NotReady) fails the whole call.
        except (NotFound, InvalidInput, PermissionDenied) as e:
            error = str(e)
        flush()  # the frames read before an error are kept
        return IngestSourceResult(source=source.path, frames_added=added, frames_already_present=present,
                                  frames_skipped_near_duplicate=counters.frames_skipped_near_duplicate,
                                  frames_skipped_min_gap=counters.frames_skipped_min_gap,
                                  error=error)

    def ingest(self, pool_id: str, sources: Sequence[IngestSource]) -> tuple[list[IngestSourceResult], Pool]:
        """Add every source's frames to a pool; a failing source reports its error and the others
        (and its frames read before the failure) are kept.

        Raises:
            NotFound: no such pool.
            InvalidInput: no sources.
        """
        if not sources:
            raise InvalidInput("ingest: give at least one source")
        self.store.get_pool(pool_id)
        results = [self._ingest_one(pool_id, s) for s in sources]
        return results, self.store.get_pool(pool_id)

    # ================================================================ model versions
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

    # ================================================================ cycles
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
                                      spec.random_seed, spec.cancel_unfinished, eem)

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
            outcome = rank_frames(
                candidates, self.scorer, cycle.batch_size, cycle.model.key, self.cfg.ranking,
                self._score_options(cycle), on_scored=lambda batch: self.store.record_scores(batch, options_key),
                on_failed=lambda batch: self.store.record_score_failures(cycle.cycle_id, batch))
            self.store.forget_resolved_failures(cycle.cycle_id, cycle.model.key, options_key)
            scored, reused = outcome.scored, outcome.reused
            drafts = self._drafts_with_predictions(cycle, outcome.top)
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
        return ScoreOptions(deadline_s=self.cfg.ranking.deadline_s, eem=cycle.eem)

    def _drafts_with_predictions(self, cycle: Cycle, top: list[Ranked]) -> list[TaskDraft]:
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
            drafts.append(TaskDraft(r.frame_id, r.result.score, i + 1, tuple(r.result.regions), uri))
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

    # ================================================================ tasks
    def _lease_seconds(self, requested: float) -> float:
        if requested < 0 or not math.isfinite(requested):
            raise InvalidInput(f"lease_seconds must be >= 0 (0 = default), got {requested}")
        secs = requested or self.cfg.default_lease_s
        if secs < MIN_LEASE_S:
            raise InvalidInput(f"lease_seconds {secs} is below the minimum of {MIN_LEASE_S} s: such a lease "
                               f"would expire before its reply reached you")
        if secs > self.cfg.max_lease_s:
            raise InvalidInput(f"lease_seconds {secs} exceeds the maximum {self.cfg.max_lease_s}")
        return secs

    def lease_tasks(self, pool_id: str, cycle_id: str, client_id: str, max_tasks: int,
                    lease_seconds: float, frame_id: str = "") -> tuple[list[Task], bool]:
        """Lease up to max_tasks tasks, best first (only frame_id's, when given). Returns (tasks,
        budget exhausted).

        Raises:
            NotFound: no such pool / cycle of that pool.
            InvalidInput: no client_id, max_tasks or lease_seconds out of range.
        """
        if not client_id:
            raise InvalidInput("lease: client_id is required (it names the lease holder)")
        if max_tasks < 0 or max_tasks > self.cfg.max_lease_batch:
            raise InvalidInput(f"lease: max_tasks must be in 0..{self.cfg.max_lease_batch} (0 = 1), got {max_tasks}")
        if not pool_id:
            raise InvalidInput("lease: pool_id is required")
        if cycle_id and self.store.get_cycle(cycle_id).pool_id != pool_id:
            raise NotFound(f"pool {pool_id} has no cycle {cycle_id}")
        return self.store.lease_tasks(pool_id, cycle_id, client_id, max_tasks or 1,
                                      self._lease_seconds(lease_seconds), frame_id)

    def heartbeat(self, task_id: str, lease_token: str, lease_seconds: float, client_id: str = "") -> float:
        """Extend a lease. `client_id`: the caller's authenticated identity ('' without authentication).

        Raises:
            InvalidInput: lease_seconds out of range. Otherwise as domain.check_lease_holder.
        """
        return self.store.heartbeat(task_id, lease_token, self._lease_seconds(lease_seconds), client_id)

    def release(self, task_id: str, lease_token: str, client_id: str = "") -> None:
        """Give a lease back. `client_id` as in heartbeat.

        Raises:
            as domain.check_lease_holder.
        """
        self.store.release(task_id, lease_token, client_id)

    def _prediction_for(self, task: Task, sent: EncodedMask | None) -> np.ndarray | None:
        """The model's trainIds for the frame: the client's when sent, else the scorer's saved one."""
        shape = (task.height, task.width)
        if sent is not None:
            return decode_mask(sent, shape, where="prediction")
        if task.prediction_uri:
            pred = imageio.read_label(task.prediction_uri)  # [H, W] trainIds
            if pred.shape != shape:
                raise FailedPrecondition(f"stored prediction {task.prediction_uri} is {pred.shape}, "
                                         f"the frame is {shape}")
            return pred
        return None

    def submit(self, spec: SubmitSpec) -> SubmitResult:
        """Validate, store and commit an annotation; finish its task; retire the frame when the
        model already agreed with it (DICE >= the cycle's threshold).

        Raises:
            NotFound: no such task.
            InvalidInput: mask of the wrong size, unknown label ids, bad RLE, nothing annotated,
                region ids the task does not have.
            FailedPrecondition: the lease was taken over or released, the task was cancelled, or it
                already holds a different annotation.
        """
        task = self.store.get_task(spec.task_id, with_token=True)
        # Fail fast (before decoding and writing) when the lease is not ours; the store checks
        # again under the row lock. A finished task may still take a repeat of its annotation
        # from the lease that finished it.
        check_lease_holder(task, spec.lease_token, spec.client_id, "submit", finished_ok=task.state == DONE)
        if spec.scope not in (WHOLE_FRAME, REGIONS):
            raise InvalidInput(f"submit: unknown scope {spec.scope!r}")
        region_ids = tuple(sorted(set(spec.region_ids)))
        if spec.scope == REGIONS:
            known = {r.region_id for r in task.regions}
            if not region_ids:
                raise InvalidInput("submit: a region-level annotation must name the regions it fixed")
            unknown = [i for i in region_ids if i not in known]
            if unknown:
                raise InvalidInput(f"submit: task {task.task_id} has no regions {unknown} "
                                   f"(it has {sorted(known)})")
        elif region_ids:
            raise InvalidInput("submit: region_ids only go with scope REGIONS")
        train_ids = decode_mask(spec.mask, (task.height, task.width), where="annotation mask")  # [H, W]
        if not (train_ids != IGNORE).any():
            raise InvalidInput("submit: the annotation mask marks no pixel (all 'not annotated')")
        prediction = self._prediction_for(task, spec.prediction)
        dice = macro_dice(prediction, train_ids) if prediction is not None else None
        content = content_sha256(train_ids, spec.scope, region_ids)
        regions_fixed = len(region_ids) if spec.scope == REGIONS else len(task.regions)
        touched = None
        if spec.scope == REGIONS:  # only the fixed regions are a person's work
            touched = np.zeros(train_ids.shape, bool)
            for r in task.regions:
                if r.region_id in region_ids and r.rle is not None:
                    touched |= decode_rle(r.rle, where=f"task {task.task_id} region {r.region_id}").astype(bool)
        cost = annotation_cost(train_ids, regions_fixed, touched)
        mask_path = self.storage / "annotations" / content[:2] / f"{content}.png"
        if not mask_path.is_file():
            imageio.write_png(mask_path, train_ids)
        draft = AnnotationDraft(
            task_id=task.task_id, lease_token=spec.lease_token, client_id=spec.client_id, scope=spec.scope,
            region_ids=region_ids, mask_uri=str(mask_path), content_sha256=content,
            idempotency_key=spec.idempotency_key or content, regions_count=cost.regions,
            pixels_count=cost.pixels, dice=dice)
        annotation, replayed = self.store.submit_annotation(draft)
        return SubmitResult(annotation, replayed, self.store.budget(task.pool_id))

    def list_annotations(self, pool_id: str, cycle_id: str, page_token: str, page_size: int) -> Page:
        limit = _page_size(page_size)
        items = self.store.list_annotations(pool_id, cycle_id, page_token, limit)
        return Page(items, items[-1].annotation_id if len(items) == limit else "")

    def budget(self, pool_id: str) -> Budget:
        return self.store.budget(pool_id)

"""Tasks and leases, annotations (validated, DICE against the stored prediction, budget), the
pool's budget."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segxal import imageio
from segxal.annotation import EncodedMask, annotation_cost, content_sha256, decode_mask, decode_rle
from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from segxal.labels import IGNORE
from segxal.metrics import macro_dice
from services.coordinator.config import CoordinatorConfig
from services.coordinator.domain import (
    DONE, MIN_LEASE_S, REGIONS, WHOLE_FRAME, Annotation, AnnotationDraft, Budget, Page, Task,
    check_lease_holder)
from services.coordinator.ranking import FrameScorer
from services.coordinator.store.store import CoordinatorStore
from services.coordinator.core.pools import _page_size


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


class Labeling:
    """Part of Coordinator (services/coordinator/coordinator.py)."""

    store: CoordinatorStore
    cfg: CoordinatorConfig
    scorer: FrameScorer | None
    storage: Path

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

    def _prediction_for(self, task: Task, sent: EncodedMask | None, classes: tuple[str, ...]) -> np.ndarray | None:
        """The model's trainIds for the frame: the client's when sent, else the scorer's saved one."""
        shape = (task.height, task.width)
        if sent is not None:
            return decode_mask(sent, shape, where="prediction", classes=classes)
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
            InvalidInput: mask of the wrong size, class ids outside the pool's classes, bad RLE,
                nothing annotated, region ids the task does not have.
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
        classes = self.store.get_pool(task.pool_id).class_names  # what the mask's ids may be
        train_ids = decode_mask(spec.mask, (task.height, task.width), where=f"annotation mask of pool {task.pool_id}",
                                classes=classes)  # [H, W]
        if not (train_ids != IGNORE).any():
            raise InvalidInput("submit: the annotation mask marks no pixel (all 'not annotated')")
        prediction = self._prediction_for(task, spec.prediction, classes)
        dice = macro_dice(prediction, train_ids, len(classes)) if prediction is not None else None
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

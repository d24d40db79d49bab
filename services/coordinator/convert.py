"""segxal.coordinator.v1 messages <-> the coordinator's records (services.coordinator.domain): the
one place that knows both, used by the servicer (and by the client for masks)."""
from __future__ import annotations

import math

from segxal.annotation import LABEL_IDS, TRAIN_IDS, ClassRle, EncodedMask, Rle
from segxal.errors import InvalidInput
from segxal.selection import SelectionSpec
from segxalpb.common.v1 import types_pb2 as types_pb
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.coordinator.core.cycles import StartCycleSpec
from services.coordinator.core.labeling import SubmitSpec
from services.coordinator.core.pools import CITYSCAPES, DRIVE_LOG, IMAGE_FOLDER, IngestSource
from services.eem.wire import eem_options_from_proto, eem_options_to_proto
from services.coordinator.domain import (
    CANCELLED, CYCLE_CLOSED, CYCLE_COMPLETE, CYCLE_LABELING, CYCLE_STARTED, DONE, LEASED, OPEN, REGIONS,
    SELECTION_EEM, SELECTION_RANDOM, STOP_BUDGET_SPENT, STOP_DICE_REACHED, STOP_NONE, STOP_POOL_EXHAUSTED,
    WHOLE_FRAME, Annotation, Budget, BudgetLimits, Cycle, CycleReport, FailedFrame, Frame,
    IngestSourceResult, ModelVersion, Pool, TaskRegion, Task)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # "segxal.coordinator.v1.Coordinator"
_SELECTION = {pb.SELECTION_UNSPECIFIED: SELECTION_EEM, pb.SELECTION_EEM: SELECTION_EEM,
              pb.SELECTION_RANDOM: SELECTION_RANDOM}
_SELECTION_PB = {SELECTION_EEM: pb.SELECTION_EEM, SELECTION_RANDOM: pb.SELECTION_RANDOM}
_CYCLE_STATE_PB = {CYCLE_STARTED: pb.CYCLE_STATE_STARTED, CYCLE_LABELING: pb.CYCLE_STATE_LABELING,
                   CYCLE_COMPLETE: pb.CYCLE_STATE_COMPLETE, CYCLE_CLOSED: pb.CYCLE_STATE_CLOSED}
_TASK_STATE_PB = {OPEN: pb.TASK_STATE_OPEN, LEASED: pb.TASK_STATE_LEASED, DONE: pb.TASK_STATE_DONE,
                  CANCELLED: pb.TASK_STATE_CANCELLED}
_STOP_PB = {STOP_NONE: pb.STOP_REASON_NONE, STOP_DICE_REACHED: pb.STOP_REASON_DICE_THRESHOLD_REACHED,
            STOP_BUDGET_SPENT: pb.STOP_REASON_BUDGET_SPENT, STOP_POOL_EXHAUSTED: pb.STOP_REASON_POOL_EXHAUSTED}
_SCOPE = {pb.ANNOTATION_SCOPE_UNSPECIFIED: WHOLE_FRAME, pb.ANNOTATION_SCOPE_WHOLE_FRAME: WHOLE_FRAME,
          pb.ANNOTATION_SCOPE_REGIONS: REGIONS}
_SCOPE_PB = {WHOLE_FRAME: pb.ANNOTATION_SCOPE_WHOLE_FRAME, REGIONS: pb.ANNOTATION_SCOPE_REGIONS}
_LABEL_SPACE = {pb.LABEL_SPACE_LABEL_IDS: LABEL_IDS, pb.LABEL_SPACE_TRAIN_IDS: TRAIN_IDS}
_LABEL_SPACE_PB = {v: k for k, v in _LABEL_SPACE.items()}


def _enum(table: dict, value: int, what: str):
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(f"unknown {what} {value}") from None


# ---------------------------------------------------------------- requests in

def budget_limits_from_proto(msg: pb.BudgetLimits) -> BudgetLimits:
    return BudgetLimits(msg.max_frames, msg.max_regions, msg.max_pixels)


def ingest_sources_from_proto(sources) -> list[IngestSource]:
    out = []
    for i, s in enumerate(sources):
        kind = s.WhichOneof("source")
        if kind == "image_folder":
            out.append(IngestSource(IMAGE_FOLDER, s.image_folder.path, recursive=s.image_folder.recursive))
        elif kind == "cityscapes":
            out.append(IngestSource(CITYSCAPES, s.cityscapes.root, split=s.cityscapes.split,
                                    require_labels=s.cityscapes.require_labels))
        elif kind == "drive_log":
            d = s.drive_log
            out.append(IngestSource(DRIVE_LOG, d.path, topics=tuple(d.topics),
                                    near_duplicate_threshold=(d.near_duplicate_threshold
                                                              if d.HasField("near_duplicate_threshold") else None),
                                    min_gap_s=d.min_gap_s))
        else:
            raise InvalidInput(f"ingest source {i}: set one of image_folder, cityscapes, drive_log")
    return out


def selection_spec_from_proto(msg: pb.SelectionSpec) -> SelectionSpec:
    """Unset fields take SelectionSpec's defaults; not validated here (start_cycle validates)."""
    d = SelectionSpec()
    return SelectionSpec(**{name: getattr(msg, name) if msg.HasField(name) else getattr(d, name)
                            for name in ("score", "diversity", "balance", "log_cap", "min_distance",
                                         "min_score", "shortlist")})


def selection_spec_to_proto(s: SelectionSpec) -> pb.SelectionSpec:
    """Every field set but a min_score of -inf (no threshold), which stays unset."""
    msg = pb.SelectionSpec(score=s.score, diversity=s.diversity, balance=s.balance, log_cap=s.log_cap,
                           min_distance=s.min_distance, shortlist=s.shortlist)
    if s.min_score != -math.inf:
        msg.min_score = s.min_score
    return msg


def reasons_to_proto(r: dict) -> pb.PickReasons:
    msg = pb.PickReasons(order=int(r.get("order", 0)), gain=float(r.get("gain", 0.0)),
                         score=float(r.get("score", 0.0)), log=r.get("log") or "")
    for name in ("distance", "class_gain"):
        if r.get(name) is not None:
            setattr(msg, name, float(r[name]))
    return msg


def reasons_from_proto(msg: pb.PickReasons) -> dict:
    return {"order": msg.order, "gain": msg.gain, "score": msg.score,
            "distance": msg.distance if msg.HasField("distance") else None,
            "class_gain": msg.class_gain if msg.HasField("class_gain") else None, "log": msg.log or None}


def start_cycle_from_proto(r: pb.StartCycleRequest) -> StartCycleSpec:
    return StartCycleSpec(pool_id=r.pool_id, batch_size=r.batch_size,
                          selection=_enum(_SELECTION, r.selection, "selection"), model_name=r.model_name,
                          model_version=r.model_version,
                          dice_threshold=r.dice_threshold if r.HasField("dice_threshold") else None,
                          random_seed=r.random_seed, cancel_unfinished=r.cancel_unfinished,
                          eem=eem_options_from_proto(r.eem_options) if r.HasField("eem_options") else None,
                          selection_spec=(selection_spec_from_proto(r.selection_spec)
                                          if r.HasField("selection_spec") else None))


def rle_from_proto(msg: types_pb.CocoRle) -> Rle:
    return Rle(msg.height, msg.width, msg.counts, tuple(msg.uncompressed_counts))


def mask_from_proto(msg: pb.LabelMask, what: str) -> EncodedMask:
    space = _LABEL_SPACE.get(msg.label_space)
    if space is None:
        raise InvalidInput(f"{what}: label_space must be LABEL_IDS or TRAIN_IDS")
    kind = msg.WhichOneof("encoding")
    if kind == "png":
        return EncodedMask(space, png=msg.png)
    if kind == "rle":
        return EncodedMask(space, rle=tuple(ClassRle(c.label_id, rle_from_proto(c.rle)) for c in msg.rle.classes))
    raise InvalidInput(f"{what}: give the mask as png or rle")


def submit_from_proto(r: pb.SubmitAnnotationRequest) -> SubmitSpec:
    if not r.HasField("mask"):
        raise InvalidInput("submit: mask is required")
    return SubmitSpec(task_id=r.task_id, lease_token=r.lease_token, client_id=r.client_id,
                      mask=mask_from_proto(r.mask, "annotation mask"),
                      scope=_enum(_SCOPE, r.scope, "annotation scope"), region_ids=tuple(r.region_ids),
                      prediction=mask_from_proto(r.prediction, "prediction") if r.HasField("prediction") else None,
                      idempotency_key=r.idempotency_key)


def mask_to_proto(mask: EncodedMask) -> pb.LabelMask:
    msg = pb.LabelMask(label_space=_LABEL_SPACE_PB[mask.label_space])
    if mask.png is not None:
        msg.png = mask.png
    else:
        for c in mask.rle or ():
            msg.rle.classes.add(label_id=c.label_id, rle=rle_to_proto(c.rle))
    return msg


# ---------------------------------------------------------------- replies out

def rle_to_proto(rle: Rle) -> types_pb.CocoRle:
    return types_pb.CocoRle(height=rle.height, width=rle.width, counts=rle.counts,
                      uncompressed_counts=list(rle.uncompressed_counts))


def budget_limits_to_proto(b: BudgetLimits) -> pb.BudgetLimits:
    return pb.BudgetLimits(max_frames=b.max_frames, max_regions=b.max_regions, max_pixels=b.max_pixels)


def budget_to_proto(b: Budget) -> pb.Budget:
    return pb.Budget(pool_id=b.pool_id, limits=budget_limits_to_proto(b.limits), spent_frames=b.spent_frames,
                     spent_regions=b.spent_regions, spent_pixels=b.spent_pixels, leased_frames=b.leased_frames,
                     exhausted=b.exhausted, exhausted_reason=b.exhausted_reason)


def pool_to_proto(p: Pool) -> pb.Pool:
    return pb.Pool(pool_id=p.pool_id, name=p.name, budget=budget_limits_to_proto(p.budget),
                   frame_count=p.frame_count, queryable_frame_count=p.queryable_frame_count,
                   created_unix_s=p.created_at, class_names=p.class_names)


def frame_to_proto(f: Frame) -> pb.Frame:
    return pb.Frame(frame_id=f.frame_id, pool_id=f.pool_id, uri=f.uri, source=f.source,
                    timestamp_ns=f.timestamp_ns, width=f.width, height=f.height, label_uri=f.label_uri,
                    retired=f.retired, annotation_count=f.annotation_count, fully_labeled=f.fully_labeled)


def ingest_result_to_proto(r: IngestSourceResult) -> pb.IngestSourceResult:
    return pb.IngestSourceResult(source=r.source, frames_added=r.frames_added,
                                 frames_already_present=r.frames_already_present,
                                 frames_skipped_near_duplicate=r.frames_skipped_near_duplicate, error=r.error,
                                 frames_skipped_min_gap=r.frames_skipped_min_gap,
                                 frames_skipped_unreadable=r.frames_skipped_unreadable)


def model_to_proto(m: ModelVersion) -> pb.ModelVersion:
    return pb.ModelVersion(model_name=m.model_name, version=m.version, uri=m.uri,
                           registered_unix_s=m.registered_at)


def cycle_to_proto(c: Cycle) -> pb.Cycle:
    msg = pb.Cycle(cycle_id=c.cycle_id, pool_id=c.pool_id, number=c.number,
                   selection=_SELECTION_PB[c.selection], batch_size=c.batch_size,
                   dice_threshold=c.dice_threshold, state=_CYCLE_STATE_PB[c.state],
                   started_unix_s=c.started_at, ranked_unix_s=c.ranked_at or 0.0,
                   eem_options=eem_options_to_proto(c.eem),
                   selection_spec=selection_spec_to_proto(c.selection_spec))
    if c.model is not None:
        msg.model.CopyFrom(model_to_proto(c.model))
    return msg


def region_to_proto(r: TaskRegion) -> pb.Region:
    x, y, w, h = r.bbox
    msg = pb.Region(region_id=r.region_id, bbox=types_pb.BoundingBox(x=x, y=y, width=w, height=h),
                    polygon=[types_pb.Point(x=px, y=py) for px, py in r.polygon], area=r.area,
                    mean_eem=r.mean_eem, dominant_train_id=r.dominant_train_id,
                    dominant_class=r.dominant_class)
    if r.rle is not None:
        msg.rle.CopyFrom(rle_to_proto(r.rle))
    return msg


def task_to_proto(t: Task) -> pb.Task:
    msg = pb.Task(task_id=t.task_id, cycle_id=t.cycle_id, pool_id=t.pool_id, frame_id=t.frame_id,
                  frame_uri=t.frame_uri, width=t.width, height=t.height, score=t.score, rank=t.rank,
                  regions=[region_to_proto(r) for r in t.regions], prediction_uri=t.prediction_uri,
                  state=_TASK_STATE_PB[t.state], lease_owner=t.lease_owner, lease_token=t.lease_token,
                  lease_expires_unix_s=t.lease_expires_at, lease_count=t.lease_count,
                  label_uri=t.label_uri)
    if t.reasons:
        msg.reasons.CopyFrom(reasons_to_proto(t.reasons))
    if t.model is not None:
        msg.model.CopyFrom(model_to_proto(t.model))
    return msg


def failed_frame_to_proto(f: FailedFrame) -> pb.FailedFrame:
    return pb.FailedFrame(frame_id=f.frame_id, uri=f.uri, error=f.error, attempts=f.attempts)


def annotation_to_proto(a: Annotation) -> pb.Annotation:
    return pb.Annotation(
        annotation_id=a.annotation_id, task_id=a.task_id, cycle_id=a.cycle_id, pool_id=a.pool_id,
        frame_id=a.frame_id, frame_uri=a.frame_uri, client_id=a.client_id, scope=_SCOPE_PB[a.scope],
        region_ids=list(a.region_ids), mask_uri=a.mask_uri, regions_count=a.regions_count,
        pixels_count=a.pixels_count, has_dice=a.dice is not None, dice=a.dice if a.dice is not None else 0.0,
        frame_retired=a.frame_retired, created_unix_s=a.created_at, content_sha256=a.content_sha256)


def cycle_report_to_proto(r: CycleReport) -> pb.CycleReport:
    return pb.CycleReport(
        cycle=cycle_to_proto(r.cycle), tasks_total=r.tasks.total, tasks_open=r.tasks.open,
        tasks_leased=r.tasks.leased, tasks_done=r.tasks.done, tasks_cancelled=r.tasks.cancelled,
        annotations_with_dice=r.annotations_with_dice, mean_dice=r.mean_dice, frames_retired=r.frames_retired,
        cycle_complete=r.cycle_complete, stop_reason=_STOP_PB[r.stop_reason], stop_detail=r.stop_detail,
        budget=budget_to_proto(r.budget), failed_frames=r.failed_frames)

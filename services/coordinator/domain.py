"""The coordinator's records, as the core and the store pass them around (no gRPC, no SQL)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from segxal.eem.options import EEMOptions
from segxal.selection import SelectionSpec
from segxal.labels import CLASS_NAMES
from segxal.annotation import Rle
from segxal.errors import FailedPrecondition, InvalidInput, PermissionDenied

# Task states, as stored.
OPEN, LEASED, DONE, CANCELLED = "open", "leased", "done", "cancelled"
# Cycle selections.
SELECTION_EEM, SELECTION_RANDOM = "eem", "random"
# Cycle states (derived, never stored).
CYCLE_STARTED, CYCLE_LABELING, CYCLE_COMPLETE, CYCLE_CLOSED = "started", "labeling", "complete", "closed"
# Annotation scopes.
WHOLE_FRAME, REGIONS = "whole_frame", "regions"
# Stop reasons of a cycle report.
STOP_NONE = "none"
STOP_DICE_REACHED = "dice_threshold_reached"
STOP_BUDGET_SPENT = "budget_spent"
STOP_POOL_EXHAUSTED = "pool_exhausted"
# Shortest lease granted: a shorter one expires before its reply reaches the client (a round
# trip over a loaded network), so it could only ever be taken over.
MIN_LEASE_S = 0.25


@dataclass(frozen=True)
class BudgetLimits:
    """0 = unlimited."""
    max_frames: int = 0
    max_regions: int = 0
    max_pixels: int = 0


@dataclass(frozen=True)
class Budget:
    pool_id: str
    limits: BudgetLimits
    spent_frames: int = 0
    spent_regions: int = 0
    spent_pixels: int = 0
    leased_frames: int = 0  # tasks under an unexpired lease, reserved against max_frames

    @property
    def exhausted_reason(self) -> str:
        """Which limit is reached ('' when none): no more leases once one is."""
        lim = self.limits
        for name, spent, limit in (("frames", self.spent_frames, lim.max_frames),
                                   ("regions", self.spent_regions, lim.max_regions),
                                   ("pixels", self.spent_pixels, lim.max_pixels)):
            if limit > 0 and spent >= limit:
                return f"{name} budget spent: {spent} of {limit}"
        return ""

    @property
    def exhausted(self) -> bool:
        return bool(self.exhausted_reason)


@dataclass(frozen=True)
class Pool:
    pool_id: str
    name: str
    budget: BudgetLimits
    created_at: float
    frame_count: int = 0
    queryable_frame_count: int = 0
    # The classes it is labelled in, index = class id (segxal.labels.check_class_names).
    class_names: tuple[str, ...] = tuple(CLASS_NAMES)


@dataclass(frozen=True)
class Frame:
    frame_id: str
    pool_id: str
    uri: str
    source: str
    timestamp_ns: int = 0
    width: int = 0
    height: int = 0
    label_uri: str = ""
    retired: bool = False        # an annotation agreed with the model (DICE >= threshold)
    fully_labeled: bool = False  # a whole-frame annotation was accepted
    annotation_count: int = 0


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    uri: str = ""
    registered_at: float = 0.0

    @property
    def key(self) -> str:
        """'<model name>:<version>', the form the EEM service reports (ModelVersions.segmentation)."""
        return f"{self.model_name}:{self.version}"


@dataclass(frozen=True)
class TaskRegion:
    """A region to fix, as the EEM service cut it out of the EEM map."""
    region_id: int
    bbox: tuple[int, int, int, int]  # x, y, width, height
    polygon: tuple[tuple[int, int], ...] = ()
    rle: Rle | None = None
    area: int = 0
    mean_eem: float = 0.0
    dominant_train_id: int = 0
    dominant_class: str = ""


def regions_to_json(regions: tuple[TaskRegion, ...] | list[TaskRegion]) -> str:
    return json.dumps([asdict(r) for r in regions], separators=(",", ":"))


def regions_from_json(text: str | None) -> tuple[TaskRegion, ...]:
    out = []
    for d in json.loads(text or "[]"):
        rle = d.get("rle")
        out.append(TaskRegion(
            region_id=int(d["region_id"]), bbox=tuple(d["bbox"]),
            polygon=tuple(tuple(p) for p in d.get("polygon", ())),
            rle=Rle(rle["height"], rle["width"], rle.get("counts", ""),
                    tuple(rle.get("uncompressed_counts", ()))) if rle else None,
            area=int(d.get("area", 0)), mean_eem=float(d.get("mean_eem", 0.0)),
            dominant_train_id=int(d.get("dominant_train_id", 0)),
            dominant_class=d.get("dominant_class", "")))
    return tuple(out)


@dataclass(frozen=True)
class Cycle:
    cycle_id: str
    pool_id: str
    number: int
    selection: str
    model: ModelVersion | None
    batch_size: int
    dice_threshold: float
    random_seed: int
    started_at: float
    ranked_at: float | None = None
    closed_at: float | None = None
    state: str = CYCLE_STARTED
    eem: EEMOptions = field(default_factory=EEMOptions)  # the EEM maths this cycle ranks with
    selection_spec: SelectionSpec = field(default_factory=SelectionSpec)  # how it picks from the scores


@dataclass(frozen=True)
class TaskDraft:
    """A ranked frame about to become a task."""
    frame_id: str
    score: float
    rank: int
    regions: tuple[TaskRegion, ...] = ()
    prediction_uri: str = ""
    reasons: dict | None = field(default=None, compare=False)  # segxal.selection.Pick.reasons()


@dataclass(frozen=True)
class Task:
    task_id: str
    cycle_id: str
    pool_id: str
    frame_id: str
    frame_uri: str
    width: int
    height: int
    score: float
    rank: int
    regions: tuple[TaskRegion, ...]
    model: ModelVersion | None
    prediction_uri: str
    state: str
    lease_owner: str = ""
    lease_token: str = ""
    lease_expires_at: float = 0.0
    lease_count: int = 0
    label_uri: str = ""
    dice_threshold: float = 0.95
    previous_lease_token: str = ""  # the lease before this one (set with lease_token only)
    reasons: dict | None = field(default=None, compare=False)  # why the selection picked it


def check_lease_holder(task: Task, lease_token: str, client_id: str, action: str,
                       finished_ok: bool = False) -> None:
    """The one lease-ownership check of every lease RPC: heartbeat, release, submit (and a
    submit's replay onto its finished task).

    The token proves the lease; with authentication on, `client_id` (the caller's proven
    identity) must also be the lease holder, so a token passed on or stolen is useless. A lease
    that expired but that nobody has taken over yet still counts as held: the work is good and
    no one else is doing it.

    Args:
        task: the task, read with its lease tokens.
        lease_token: the token the caller sent.
        client_id: who the caller is ('' when the server does not authenticate: the token alone
            then proves the lease).
        action: the RPC, for messages ("heartbeat", "release", "submit").
        finished_ok: a finished task passes when the caller holds the lease that finished it
            (a submit repeated after its reply was lost).

    Raises:
        InvalidInput: no token.
        FailedPrecondition: the task is finished, cancelled, released, or leased under another
            token (the message says "taken over after yours ended" only when the token was the
            previous lease of this task).
        PermissionDenied: the token is right but the caller is not the client that leased it.
    """
    if not lease_token:
        raise InvalidInput(f"{action}: lease_token is required (it comes with the leased task)")
    if task.state == DONE:
        if not finished_ok:
            raise FailedPrecondition(f"{action}: task {task.task_id} is already annotated")
        if lease_token != task.lease_token:
            raise FailedPrecondition(f"{action}: task {task.task_id} is already annotated, under another "
                                     f"lease than this lease_token's; nothing was stored")
    elif task.state == CANCELLED:
        raise FailedPrecondition(f"{action}: task {task.task_id} was cancelled when a newer cycle "
                                 f"started; nothing was stored")
    elif task.state == OPEN:
        raise FailedPrecondition(f"{action}: task {task.task_id} is not leased (the lease was released "
                                 f"or never granted); lease it again")
    elif lease_token != task.lease_token:
        if task.previous_lease_token and lease_token == task.previous_lease_token:
            raise FailedPrecondition(
                f"{action}: the lease on task {task.task_id} was taken over by client "
                f"'{task.lease_owner}' (lease #{task.lease_count}) after yours ended (expired or "
                f"released); nothing was stored")
        raise FailedPrecondition(
            f"{action}: this lease_token does not hold the lease on task {task.task_id} (it is "
            f"leased under another token); nothing was stored")
    if client_id and client_id != task.lease_owner:
        raise PermissionDenied(f"{action}: task {task.task_id} is leased to client '{task.lease_owner}', "
                               f"not to '{client_id}'")


@dataclass(frozen=True)
class AnnotationDraft:
    """A validated annotation, its mask already on storage, about to be committed."""
    task_id: str
    lease_token: str
    client_id: str
    scope: str
    region_ids: tuple[int, ...]
    mask_uri: str
    content_sha256: str
    idempotency_key: str
    regions_count: int
    pixels_count: int
    dice: float | None


@dataclass(frozen=True)
class Annotation:
    annotation_id: str
    task_id: str
    cycle_id: str
    pool_id: str
    frame_id: str
    frame_uri: str
    client_id: str
    scope: str
    region_ids: tuple[int, ...]
    mask_uri: str
    regions_count: int
    pixels_count: int
    dice: float | None
    frame_retired: bool
    created_at: float
    content_sha256: str
    idempotency_key: str


@dataclass(frozen=True)
class FailedFrame:
    frame_id: str
    uri: str
    error: str
    attempts: int


@dataclass(frozen=True)
class IngestSourceResult:
    source: str
    frames_added: int = 0
    frames_already_present: int = 0
    frames_skipped_near_duplicate: int = 0
    error: str = ""
    frames_skipped_min_gap: int = 0
    frames_skipped_unreadable: int = 0


@dataclass(frozen=True)
class RankResult:
    cycle: Cycle
    frames_scored: int
    frames_reused: int
    failed: list[FailedFrame]
    tasks: list[Task]


@dataclass(frozen=True)
class TaskCounts:
    total: int = 0
    open: int = 0      # includes tasks whose lease expired (they are leasable again)
    leased: int = 0    # unexpired leases
    done: int = 0
    cancelled: int = 0


@dataclass(frozen=True)
class CycleReport:
    cycle: Cycle
    tasks: TaskCounts
    annotations_with_dice: int
    mean_dice: float  # NaN when no annotation has a DICE
    frames_retired: int
    cycle_complete: bool
    stop_reason: str
    stop_detail: str
    budget: Budget
    failed_frames: int
    queryable_frames: int = 0


@dataclass(frozen=True)
class Page:
    items: list = field(default_factory=list)
    next_token: str = ""


def nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class FrameScore:
    """What a scorer says about one frame."""
    uri: str
    score: float
    segmentation_version: str  # "<model name>:<version>" whose labels / EBU / CAM made the score
    depth_version: str = ""
    regions: tuple[TaskRegion, ...] = ()
    height: int = 0
    width: int = 0
    prediction_png: bytes | None = None  # predicted trainIds, 8-bit PNG, when asked for
    class_names: tuple[str, ...] = ()  # the segmentation model's classes; empty: not said
    embedding: np.ndarray | None = field(default=None, compare=False)  # float32 [D], unit; None: none
    class_hist: np.ndarray | None = field(default=None, compare=False)  # float32 [C] shares; None: none


@dataclass(frozen=True)
class Candidate:
    """A frame of the query pool, with its score for the cycle's model version when it has one."""
    frame_id: str
    uri: str
    width: int = 0
    height: int = 0
    cached: FrameScore | None = None
    source: str = ""  # the drive log or folder it came from (the selection's log cap)

"""The trainer's request and result types in Python, shared by the job runner (which fills them),
the wire conversion (services.trainer.wire) and the client (which returns them).

No gRPC here. Jobs are saved as JSON (`to_json` / `from_json`) so that they outlive a restart.
"""
from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

from segxal.annotation import LABEL_IDS, LABEL_SPACES, TRAIN_IDS
from segxal.errors import InvalidInput


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # trained, evaluated and exported; see the report for publishing
    FAILED = "failed"
    CANCELLED = "cancelled"  # CancelJob: stopped (or never started); never resumes

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobPhase(str, Enum):
    QUEUED = "queued"
    LOADING = "loading"
    TRAINING = "training"
    EVALUATING = "evaluating"
    EXPORTING = "exporting"
    PUBLISHING = "publishing"
    DONE = "done"


@dataclass(frozen=True)
class AnnotationRef:
    """One annotated frame, as the caller names it. Exactly one of mask_uri / mask_png; at most one
    of human_mask_uri / human_mask_png (region-level only)."""
    frame_uri: str
    mask_uri: str = ""
    mask_png: bytes | None = None
    label_space: str = TRAIN_IDS  # segxal.annotation.LABEL_SPACES
    region_level: bool = False
    human_mask_uri: str = ""
    human_mask_png: bytes | None = None
    annotation_id: str = ""

    def describe(self, index: int) -> str:
        """How error messages name this annotation: its position in the request (negative: a seed
        frame, which the request does not list), its id, its frame."""
        if index < 0:
            return f"seed frame {self.frame_uri}"
        name = f"annotation {index}" + (f" ({self.annotation_id})" if self.annotation_id else "")
        return f"{name} of frame {self.frame_uri}"

    def validate(self, index: int) -> "AnnotationRef":
        """Raises:
            InvalidInput: no frame URI, not exactly one mask, an unknown label space, or a human
                mask on a whole-frame annotation.
        """
        where = self.describe(index)
        if not self.frame_uri:
            raise InvalidInput(f"annotation {index}: frame_uri is empty")
        if bool(self.mask_uri) == (self.mask_png is not None):
            raise InvalidInput(f"{where}: give the mask as exactly one of mask_uri or mask_png")
        if self.label_space not in LABEL_SPACES:
            raise InvalidInput(f"{where}: label space must be one of {LABEL_SPACES}, got {self.label_space!r}")
        has_human = bool(self.human_mask_uri) or self.human_mask_png is not None
        if has_human and not self.region_level:
            raise InvalidInput(f"{where}: a human mask only makes sense for a region-level annotation")
        if self.human_mask_uri and self.human_mask_png is not None:
            raise InvalidInput(f"{where}: give the human mask as one of human_mask_uri or human_mask_png")
        return self


@dataclass
class TrainingOptions:
    """Per-job overrides of the trainer's defaults (0 / None: the default)."""
    epochs: int = 0
    batch_size: int = 0
    learning_rate: float = 0.0
    seed: int | None = None


@dataclass
class PublishPolicy:
    force: bool = False  # overrides the regression and changed-base gates, never the parity gate
    miou_tolerance: float | None = None  # None: the trainer's default


@dataclass
class JobRequest:
    model_name: str = ""
    cycle_id: str = ""
    annotations: list[AnnotationRef] = field(default_factory=list)
    pool_id: str = ""  # also use every accepted annotation of this coordinator pool
    options: TrainingOptions = field(default_factory=TrainingOptions)
    publish: bool = False
    policy: PublishPolicy = field(default_factory=PublishPolicy)


@dataclass
class Metrics:
    """Held-out mIoU and per-class IoU (classes absent from ground truth and prediction left out)."""
    miou: float
    per_class_iou: dict[str, float]
    split: str
    frames: int

    @classmethod
    def from_report(cls, report: dict, split: str, frames: int) -> "Metrics":
        """From segxal.metrics.iou_report's dict."""
        return cls(miou=float(report["miou"]),
                   per_class_iou={k: float(v) for k, v in report["per_class"].items() if v is not None},
                   split=split, frames=frames)


@dataclass
class JobReport:
    candidate: Metrics | None = None
    base: Metrics | None = None  # the base version on the same split; None when trained from scratch
    epoch_losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    job_seconds: float = 0.0
    device: str = ""
    parity_passed: bool = False
    parity_summary: str = ""
    published_version: int = 0
    publish_refused: str = ""

    @property
    def publishable(self) -> bool:
        return self.parity_passed


@dataclass
class JobSpec:
    """What a job was asked to do, fixed when it is created; saved once as spec.json."""
    job_id: str
    model_name: str
    cycle_id: str
    annotations: list[AnnotationRef]  # the seed frames first, then the annotations, in order
    seed_frame_count: int
    annotation_count: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    publish: bool
    policy: PublishPolicy
    created_unix_s: float

    def to_json(self) -> dict:
        d = asdict(self)
        for a in d["annotations"]:  # inline PNGs as base64: the spec is written once, read on restart
            for key in ("mask_png", "human_mask_png"):
                if a[key] is not None:
                    a[key] = base64.b64encode(a[key]).decode("ascii")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "JobSpec":
        d = dict(d)
        refs = []
        for a in d["annotations"]:
            a = dict(a)
            for key in ("mask_png", "human_mask_png"):
                if a.get(key) is not None:
                    a[key] = base64.b64decode(a[key])
            refs.append(AnnotationRef(**a))
        d["annotations"] = refs
        d["policy"] = PublishPolicy(**d["policy"])
        return cls(**d)


@dataclass
class Job:
    """A job: its spec and how far it got (the status part is saved as status.json at every
    phase change)."""
    spec: JobSpec
    state: JobState = JobState.QUEUED
    phase: JobPhase = JobPhase.QUEUED
    base_version: int = 0  # fixed when the job first starts running, kept across a resume
    base_resolved: bool = False
    train_frame_count: int = 0
    started_unix_s: float = 0.0
    finished_unix_s: float = 0.0
    error: str = ""
    error_code: str = ""  # the gRPC status name our exception maps to, e.g. "INVALID_ARGUMENT"
    # CancelJob on a running job: it stops at its next epoch or phase change; saved, so a restart
    # in between ends it CANCELLED instead of resuming it
    cancel_requested: bool = False
    report: JobReport = field(default_factory=JobReport)

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    def status_json(self) -> dict:
        d = asdict(self)
        del d["spec"]
        d["state"], d["phase"] = self.state.value, self.phase.value
        return d

    @classmethod
    def from_json(cls, spec: JobSpec, status: dict) -> "Job":
        d = dict(status)
        report = dict(d.pop("report"))
        for key in ("candidate", "base"):
            if report.get(key) is not None:
                report[key] = Metrics(**report[key])
        known = {f.name for f in fields(cls)}
        return cls(spec=spec, report=JobReport(**report), state=JobState(d.pop("state")),
                   phase=JobPhase(d.pop("phase")), **{k: v for k, v in d.items() if k in known})


@dataclass
class JobProgress:
    job_id: str
    state: JobState
    phase: JobPhase
    epoch: int = 0  # epochs finished
    epochs: int = 0
    loss: float = float("nan")  # mean training loss of the last finished epoch
    elapsed_s: float = 0.0  # since the job started running
    eta_s: float = -1.0  # to the end of training; -1 = unknown
    message: str = ""


@dataclass
class VersionInfo:
    """A version in the model repository and what the trainer knows about it."""
    model_name: str
    version: int
    uri: str
    current: bool = False
    metrics: Metrics | None = None
    job_id: str = ""
    cycle_id: str = ""
    base_version: int = 0
    rolled_back_from: int = 0
    has_training_state: bool = False
    published_unix_s: float = 0.0


__all__ = ["AnnotationRef", "Job", "JobPhase", "JobProgress", "JobReport", "JobRequest", "JobSpec", "JobState",
           "LABEL_IDS", "Metrics", "PublishPolicy", "TRAIN_IDS", "TrainingOptions", "VersionInfo"]

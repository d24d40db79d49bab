"""segxal.trainer.v1 messages <-> services.trainer.api dataclasses: the one place that knows both,
used by the servicer (requests in, results out) and by the client (requests out, results in).
Also the coordinator's accepted annotations -> the trainer's AnnotationRef."""
from __future__ import annotations

from segxal.annotation import LABEL_IDS, TRAIN_IDS
from segxal.errors import InvalidInput
from segxalpb.coordinator.v1 import coordinator_pb2 as coordinator_pb
from segxalpb.trainer.v1 import trainer_pb2 as pb
from services.trainer.api import (AnnotationRef, Job, JobPhase, JobProgress, JobReport, JobRequest, JobSpec,
                                  JobState, Metrics, PublishPolicy, TrainingOptions, VersionInfo)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Trainer"].full_name  # "segxal.trainer.v1.Trainer"

_LABEL_SPACE = {pb.LABEL_SPACE_UNSPECIFIED: TRAIN_IDS, pb.LABEL_SPACE_TRAIN_IDS: TRAIN_IDS,
                pb.LABEL_SPACE_LABEL_IDS: LABEL_IDS}
_LABEL_SPACE_PB = {TRAIN_IDS: pb.LABEL_SPACE_TRAIN_IDS, LABEL_IDS: pb.LABEL_SPACE_LABEL_IDS}
_STATE_PB = {JobState.QUEUED: pb.JOB_STATE_QUEUED, JobState.RUNNING: pb.JOB_STATE_RUNNING,
             JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED, JobState.FAILED: pb.JOB_STATE_FAILED,
             JobState.CANCELLED: pb.JOB_STATE_CANCELLED}
_STATE = {v: k for k, v in _STATE_PB.items()}
_PHASE_PB = {JobPhase.QUEUED: pb.JOB_PHASE_QUEUED, JobPhase.LOADING: pb.JOB_PHASE_LOADING,
             JobPhase.TRAINING: pb.JOB_PHASE_TRAINING, JobPhase.EVALUATING: pb.JOB_PHASE_EVALUATING,
             JobPhase.EXPORTING: pb.JOB_PHASE_EXPORTING, JobPhase.PUBLISHING: pb.JOB_PHASE_PUBLISHING,
             JobPhase.DONE: pb.JOB_PHASE_DONE}
_PHASE = {v: k for k, v in _PHASE_PB.items()}


# ---- requests ----

def annotation_from_proto(msg: pb.TrainingAnnotation, index: int) -> AnnotationRef:
    """Raises:
        InvalidInput: an unknown label space.
    """
    try:
        space = _LABEL_SPACE[msg.label_space]
    except KeyError:
        raise InvalidInput(f"annotation {index}: unknown label space {msg.label_space}") from None
    return AnnotationRef(
        frame_uri=msg.frame_uri, mask_uri=msg.mask_uri,
        mask_png=msg.mask_png if msg.WhichOneof("mask") == "mask_png" else None,
        label_space=space, region_level=msg.region_level, human_mask_uri=msg.human_mask_uri,
        human_mask_png=msg.human_mask_png if msg.WhichOneof("human_mask") == "human_mask_png" else None,
        annotation_id=msg.annotation_id)


def annotation_to_proto(ref: AnnotationRef) -> pb.TrainingAnnotation:
    msg = pb.TrainingAnnotation(frame_uri=ref.frame_uri, label_space=_LABEL_SPACE_PB[ref.label_space],
                                region_level=ref.region_level, annotation_id=ref.annotation_id)
    if ref.mask_png is not None:
        msg.mask_png = ref.mask_png
    else:
        msg.mask_uri = ref.mask_uri
    if ref.human_mask_png is not None:
        msg.human_mask_png = ref.human_mask_png
    elif ref.human_mask_uri:
        msg.human_mask_uri = ref.human_mask_uri
    return msg


def policy_from_proto(msg: pb.PublishPolicy) -> PublishPolicy:
    return PublishPolicy(force=msg.force,
                         miou_tolerance=msg.miou_tolerance if msg.HasField("miou_tolerance") else None)


def policy_to_proto(policy: PublishPolicy) -> pb.PublishPolicy:
    msg = pb.PublishPolicy(force=policy.force)
    if policy.miou_tolerance is not None:
        msg.miou_tolerance = policy.miou_tolerance
    return msg


def request_from_proto(msg: pb.StartJobRequest) -> JobRequest:
    o = msg.options
    return JobRequest(
        model_name=msg.model_name, cycle_id=msg.cycle_id,
        annotations=[annotation_from_proto(a, i) for i, a in enumerate(msg.annotations)],
        pool_id=msg.pool_id,
        options=TrainingOptions(epochs=o.epochs, batch_size=o.batch_size, learning_rate=o.learning_rate,
                                seed=o.seed if o.HasField("seed") else None),
        publish=msg.publish, policy=policy_from_proto(msg.policy))


def request_to_proto(request: JobRequest) -> pb.StartJobRequest:
    o = request.options
    options = pb.TrainingOptions(epochs=o.epochs, batch_size=o.batch_size, learning_rate=o.learning_rate)
    if o.seed is not None:
        options.seed = o.seed
    return pb.StartJobRequest(
        model_name=request.model_name, cycle_id=request.cycle_id,
        annotations=[annotation_to_proto(a) for a in request.annotations], pool_id=request.pool_id,
        options=options, publish=request.publish, policy=policy_to_proto(request.policy))


def annotations_from_coordinator(annotations: list[coordinator_pb.Annotation]) -> list[AnnotationRef]:
    """The coordinator's accepted annotations (trainId PNGs on its storage, 255 = not annotated),
    oldest first, as training annotations."""
    ordered = sorted(annotations, key=lambda a: a.created_unix_s)
    return [AnnotationRef(frame_uri=a.frame_uri, mask_uri=a.mask_uri, label_space=TRAIN_IDS,
                          region_level=a.scope == coordinator_pb.ANNOTATION_SCOPE_REGIONS,
                          annotation_id=a.annotation_id) for a in ordered]


# ---- results ----

def metrics_to_proto(m: Metrics | None) -> pb.Metrics | None:
    if m is None:
        return None
    return pb.Metrics(miou=m.miou, per_class_iou=m.per_class_iou, split=m.split, frames=m.frames)


def metrics_from_proto(msg: pb.Metrics, present: bool) -> Metrics | None:
    if not present:
        return None
    return Metrics(miou=msg.miou, per_class_iou=dict(msg.per_class_iou), split=msg.split, frames=msg.frames)


def job_to_proto(job: Job) -> pb.Job:
    s, r = job.spec, job.report
    report = pb.JobReport(
        candidate=metrics_to_proto(r.candidate), base=metrics_to_proto(r.base), epoch_losses=r.epoch_losses,
        train_seconds=r.train_seconds, job_seconds=r.job_seconds, device=r.device,
        parity=pb.Parity(passed=r.parity_passed, summary=r.parity_summary), publishable=r.publishable,
        published_version=r.published_version, publish_refused=r.publish_refused)
    return pb.Job(
        job_id=s.job_id, model_name=s.model_name, cycle_id=s.cycle_id, state=_STATE_PB[job.state],
        phase=_PHASE_PB[job.phase], base_version=job.base_version, annotation_count=s.annotation_count,
        seed_frame_count=s.seed_frame_count, train_frame_count=job.train_frame_count, epochs=s.epochs,
        seed=s.seed, publish=s.publish, created_unix_s=s.created_unix_s, started_unix_s=job.started_unix_s,
        finished_unix_s=job.finished_unix_s, error=job.error, error_code=job.error_code, report=report,
        cancel_requested=job.cancel_requested)


def job_from_proto(msg: pb.Job) -> Job:
    """The client's view of a job: its spec carries no annotations (they stay on the trainer)."""
    r = msg.report
    spec = JobSpec(job_id=msg.job_id, model_name=msg.model_name, cycle_id=msg.cycle_id, annotations=[],
                   seed_frame_count=msg.seed_frame_count, annotation_count=msg.annotation_count,
                   epochs=msg.epochs, batch_size=0, learning_rate=0.0, seed=msg.seed, publish=msg.publish,
                   policy=PublishPolicy(), created_unix_s=msg.created_unix_s)
    report = JobReport(
        candidate=metrics_from_proto(r.candidate, r.HasField("candidate")),
        base=metrics_from_proto(r.base, r.HasField("base")), epoch_losses=list(r.epoch_losses),
        train_seconds=r.train_seconds, job_seconds=r.job_seconds, device=r.device,
        parity_passed=r.parity.passed, parity_summary=r.parity.summary,
        published_version=r.published_version, publish_refused=r.publish_refused)
    return Job(spec=spec, state=_STATE[msg.state], phase=_PHASE[msg.phase], base_version=msg.base_version,
               base_resolved=True, train_frame_count=msg.train_frame_count, started_unix_s=msg.started_unix_s,
               finished_unix_s=msg.finished_unix_s, error=msg.error, error_code=msg.error_code, report=report,
               cancel_requested=msg.cancel_requested)


def progress_to_proto(p: JobProgress) -> pb.JobProgress:
    return pb.JobProgress(job_id=p.job_id, state=_STATE_PB[p.state], phase=_PHASE_PB[p.phase], epoch=p.epoch,
                          epochs=p.epochs, loss=p.loss, elapsed_s=p.elapsed_s, eta_s=p.eta_s, message=p.message)


def progress_from_proto(msg: pb.JobProgress) -> JobProgress:
    return JobProgress(job_id=msg.job_id, state=_STATE[msg.state], phase=_PHASE[msg.phase], epoch=msg.epoch,
                       epochs=msg.epochs, loss=msg.loss, elapsed_s=msg.elapsed_s, eta_s=msg.eta_s,
                       message=msg.message)


def version_to_proto(v: VersionInfo) -> pb.ModelVersion:
    return pb.ModelVersion(
        model_name=v.model_name, version=v.version, uri=v.uri, current=v.current,
        metrics=metrics_to_proto(v.metrics), job_id=v.job_id, cycle_id=v.cycle_id, base_version=v.base_version,
        rolled_back_from=v.rolled_back_from, has_training_state=v.has_training_state,
        published_unix_s=v.published_unix_s)


def version_from_proto(msg: pb.ModelVersion) -> VersionInfo:
    return VersionInfo(
        model_name=msg.model_name, version=msg.version, uri=msg.uri, current=msg.current,
        metrics=metrics_from_proto(msg.metrics, msg.HasField("metrics")), job_id=msg.job_id,
        cycle_id=msg.cycle_id, base_version=msg.base_version, rolled_back_from=msg.rolled_back_from,
        has_training_state=msg.has_training_state, published_unix_s=msg.published_unix_s)


def versions_to_proto(versions: list[VersionInfo], current: int) -> pb.ListVersionsResponse:
    return pb.ListVersionsResponse(versions=[version_to_proto(v) for v in versions], current_version=current)

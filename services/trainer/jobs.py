"""The trainer's core: fine-tuning jobs, one at a time in a worker thread.

A job goes
    LOADING     seed frames + annotations (services.trainer.trainset), the base version's weights
    TRAINING    segxal.train.train_segmentation, checkpointed every epoch in the job's folder
    EVALUATING  held-out mIoU and per-class IoU (segxal.train.evaluate_segmentation + iou_report)
    EXPORTING   ONNX with the extra outputs + parity check (segxal.export), config.pbtxt
    PUBLISHING  (when asked) gates, then services.trainer.versions (atomic, the next version)
and every phase change and epoch is an event that WatchJob streams.

Everything a job needs to run again is on disk under <state>/jobs/<job_id>/ (spec.json once,
status.json at every change, checkpoint.pt every epoch), so a trainer killed at any point resumes
its unfinished jobs on start: training from the last finished epoch, and a publish that may have
happened is looked up by job id before it is tried again.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from segxal import imageio
from segxal.data.cityscapes import SegDataset, list_frames
from segxal.errors import FailedPrecondition, InvalidInput, NotFound, ResourceExhausted, SegxalError
from segxal.export import ParityError, export_segmentation
from segxal.graph.traced_cam import export_for_serving
from segxal.metrics import iou_report
from segxal.models.external import ExternalModel, ExternalModelConfig, num_classes_of
from segxal.models.unet import UNet
from segxal.storage import FrameStorage
from segxal.train import TrainConfig, evaluate_segmentation, resolve_device, train_segmentation
from services.common.errors import STATUS_FOR
from services.common.model_repository import build_config, format_config, parse_config
from services.trainer.api import (AnnotationRef, Job, JobPhase, JobProgress, JobRequest, JobSpec, JobState,
                                  Metrics, PublishPolicy, VersionInfo)
from services.trainer.config import TrainerConfig
from services.trainer.finite import check_finite_export
from services.trainer.trainset import LabeledFrames, build_training_set, seed_annotations
from services.trainer.versions import VersionStore

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.pbtxt"
CANDIDATE_DIR = "candidate"  # model.onnx of the job's export: the files a publish copies

PoolAnnotations = Callable[[str], list[AnnotationRef]]


class _ShuttingDown(Exception):
    """Raised inside a job when the runner stops: the job stays RUNNING on disk and resumes."""


class _Cancelled(Exception):
    """Raised inside a job at its next epoch or phase change after CancelJob: it ends CANCELLED."""


@dataclass
class _Tracked:
    job: Job
    events: list[JobProgress]
    dataset: LabeledFrames | None = None  # decoded by StartJob; None after a restart (read again)


def _check_policy(policy: PublishPolicy) -> None:
    """Raises InvalidInput: a NaN or infinite mIoU tolerance (NaN would refuse every candidate,
    inf pass every one)."""
    if policy.miou_tolerance is not None and not math.isfinite(policy.miou_tolerance):
        raise InvalidInput(f"miou_tolerance must be finite, got {policy.miou_tolerance}")


def _error_code(e: BaseException) -> str:
    for cls, code in STATUS_FOR.items():
        if isinstance(e, cls):
            return code.name
    return "INTERNAL"


class JobRunner:
    """Queues, runs, saves and reports fine-tuning jobs; publishes and rolls back versions.

    Args:
        cfg: the trainer's configuration.
        storage: where frames and masks are read.
        versions: the model repository and per-version training state.
        pool_annotations: pool id -> the coordinator's accepted annotations (None: StartJob's
            pool_id is refused).

    Raises:
        NotFound / InvalidInput: the held-out split or the seed set cannot be listed.
        PermissionDenied: the seed set lies outside the storage roots.
    """

    def __init__(self, cfg: TrainerConfig, storage: FrameStorage, versions: VersionStore,
                 pool_annotations: PoolAnnotations | None = None):
        self.cfg = cfg.validate()
        self.storage = storage
        self.versions = versions
        self._pool_annotations = pool_annotations
        self._jobs_dir = Path(cfg.state_dir) / "jobs"
        self._export_cfg = replace(cfg.export, trace_hw=tuple(cfg.size), declare_input_size=True)  # one scale
        self._heldout = SegDataset(list_frames(cfg.data, cfg.eval_split, require_labels=True), tuple(cfg.size))
        self._seed = seed_annotations(cfg.seed_data, cfg.seed_split, cfg.seed_frames) if cfg.seed_data else []
        for ref in self._seed[:1]:
            storage.resolve(ref.frame_uri)  # the seed set must be readable through the storage roots
        self._jobs: dict[str, _Tracked] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()  # guards jobs, queue and events; watchers wait on it
        self._publish_lock = threading.Lock()  # check-then-publish of one job is not interleaved
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="trainer-jobs", daemon=True)

    # ---- life cycle ----

    def start(self) -> None:
        """Load saved jobs, drop temp folders of publishes that died, queue unfinished jobs again,
        start the worker."""
        models = {self.cfg.model_name}
        if self._jobs_dir.is_dir():
            for d in sorted(self._jobs_dir.iterdir()):
                tracked = self._load(d)
                if tracked is None:
                    continue
                self._jobs[tracked.job.job_id] = tracked
                models.add(tracked.job.spec.model_name)
        for model in sorted(models):
            self.versions.discard_unfinished_publishes(model)
        unfinished = sorted((t.job for t in self._jobs.values() if not t.job.state.finished),
                            key=lambda j: j.spec.created_unix_s)
        for job in unfinished:
            problem = self._limits_problem(job.spec)
            if job.cancel_requested:  # cancelled while running, stopped before it noticed
                self._update(job, state=JobState.CANCELLED, finished_unix_s=time.time(), message="cancelled")
                log.info("job %s: cancelled before the stop; not resumed", job.job_id)
            elif problem:  # saved by a trainer without these limits: it would block the worker
                self._update(job, state=JobState.FAILED, error=problem, error_code="INVALID_ARGUMENT",
                             finished_unix_s=time.time(), message=problem)
                log.warning("job %s: not resumed: %s", job.job_id, problem)
            else:
                job.state = JobState.QUEUED
                self._queue.append(job.job_id)
                log.info("job %s: resumes (was %s)", job.job_id, job.phase.value)
        self._worker.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the running job's current epoch (it resumes at the next start)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)

    def _load(self, d: Path) -> _Tracked | None:
        try:
            spec = JobSpec.from_json(json.loads((d / SPEC_FILE).read_text()))
            status_path = d / STATUS_FILE
            job = Job.from_json(spec, json.loads(status_path.read_text())) if status_path.is_file() else Job(spec)
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.error("%s: saved job unreadable (%s); ignored", d, e)
            return None
        return _Tracked(job, [self._progress(job)])

    # ---- jobs ----

    def submit(self, request: JobRequest) -> Job:
        """Check a request, read and decode its training data, save the job and queue it.

        Raises:
            InvalidInput: bad options, a malformed annotation, an unreadable frame or mask.
            FailedPrecondition: no annotations (and a version exists already), no coordinator for
                pool_id, a repository that cannot be written, a current version without state.
            NotFound / PermissionDenied: a frame or mask missing, or outside the storage roots.
            ResourceExhausted: the queue is full.
        """
        model = request.model_name or self.cfg.model_name
        self.versions.repository.version_dir(model, 1)  # InvalidInput when the name is no plain folder name
        opts = request.options
        self._check_options(opts)
        _check_policy(request.policy)
        annotations = self._fetch_pool(request.pool_id) + list(request.annotations)
        current = self.versions.current(model)
        if not annotations and current:
            raise FailedPrecondition(
                f"cycle {request.cycle_id or '(unnamed)'}: no annotations to fine-tune on (the request names "
                f"none{f' and pool {request.pool_id} has none accepted' if request.pool_id else ''}); "
                f"model {model!r} version {current} stays current")
        if request.publish:
            self.versions.check_writable(model)
        with self._cond:
            idle = not self._queue and not any(t.job.state == JobState.RUNNING for t in self._jobs.values())
            if len(self._queue) >= self.cfg.max_queued_jobs:
                raise ResourceExhausted(f"{len(self._queue)} jobs are queued already (max {self.cfg.max_queued_jobs})")
        if current and idle:
            self.versions.require_state(model, current)  # FailedPrecondition now rather than in the job
        refs = self._seed + annotations
        dataset = build_training_set(self.storage, refs, tuple(self.cfg.size), seed_count=len(self._seed),
                                     classes=self.cfg.class_names)
        spec = JobSpec(
            job_id=f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}", model_name=model,
            cycle_id=request.cycle_id, annotations=refs, seed_frame_count=len(self._seed),
            annotation_count=len(annotations), epochs=opts.epochs or self.cfg.epochs,
            batch_size=opts.batch_size or self.cfg.batch_size,
            learning_rate=opts.learning_rate or self.cfg.learning_rate,
            seed=self.cfg.seed if opts.seed is None else opts.seed, publish=request.publish,
            policy=copy.copy(request.policy), created_unix_s=time.time())
        job = Job(spec, train_frame_count=len(dataset))
        job_dir = self._job_dir(job)
        job_dir.mkdir(parents=True, exist_ok=True)
        imageio.atomic_write_bytes(job_dir / SPEC_FILE, json.dumps(spec.to_json()).encode())
        self._save(job)
        with self._cond:
            self._jobs[job.job_id] = _Tracked(job, [self._progress(job, message="queued")], dataset)
            self._queue.append(job.job_id)
            self._cond.notify_all()
            log.info("job %s: queued (model %s, cycle %s, %d annotations + %d seed frames, %d frames)",
                     job.job_id, model, spec.cycle_id, spec.annotation_count, spec.seed_frame_count, len(dataset))
            return copy.deepcopy(job)

    def _check_options(self, opts) -> None:
        """Raises InvalidInput naming the limit: epochs or batch size out of 0..max (0: the
        default), a learning rate that is negative, NaN or infinite."""
        cfg = self.cfg
        for name, value, limit in (("epochs", opts.epochs, cfg.max_epochs),
                                   ("batch_size", opts.batch_size, cfg.max_batch_size)):
            if not 0 <= value <= limit:
                raise InvalidInput(f"{name} must be 1..{limit} (0: the trainer's default {getattr(cfg, name)}; "
                                   f"the limit is the trainer's --max-{name.replace('_', '-')}), got {value}")
        if not (math.isfinite(opts.learning_rate) and opts.learning_rate >= 0):
            raise InvalidInput(f"learning_rate must be finite and > 0 (0: the trainer's default "
                               f"{cfg.learning_rate:g}), got {opts.learning_rate}")

    def _limits_problem(self, spec: JobSpec) -> str:
        """Why a saved job is out of this trainer's limits ("" when it is within them)."""
        cfg = self.cfg
        if not 1 <= spec.epochs <= cfg.max_epochs:
            return f"epochs {spec.epochs} is out of 1..{cfg.max_epochs} (--max-epochs)"
        if not 1 <= spec.batch_size <= cfg.max_batch_size:
            return f"batch_size {spec.batch_size} is out of 1..{cfg.max_batch_size} (--max-batch-size)"
        if not (math.isfinite(spec.learning_rate) and spec.learning_rate > 0):
            return f"learning_rate {spec.learning_rate} is not finite and positive"
        return ""

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (it never runs) or ask a running one to stop at its next epoch or
        phase change; either way it never resumes.

        Returns:
            The job now (CANCELLED, or RUNNING with cancel_requested).

        Raises:
            NotFound: no such job. FailedPrecondition: the job already succeeded or failed.
        """
        with self._cond:
            job = self._tracked(job_id).job
            if job.state == JobState.CANCELLED:
                return copy.deepcopy(job)
            if job.state.finished:
                raise FailedPrecondition(f"job {job_id} is {job.state.value}; only a queued or running job "
                                         f"can be cancelled")
            if job.state == JobState.QUEUED and job_id in self._queue:
                self._queue.remove(job_id)
                self._update(job, state=JobState.CANCELLED, cancel_requested=True, finished_unix_s=time.time(),
                             message="cancelled before it ran")
            else:  # running: the worker raises _Cancelled at the job's next epoch or phase change
                self._update(job, cancel_requested=True, message="cancel requested")
            log.info("job %s: cancel (%s)", job_id, job.state.value)
            return copy.deepcopy(job)

    def _fetch_pool(self, pool_id: str) -> list[AnnotationRef]:
        if not pool_id:
            return []
        if self._pool_annotations is None:
            raise FailedPrecondition(f"pool {pool_id}: this trainer has no coordinator to list annotations "
                                     f"from (start it with --coordinator); pass the annotations instead")
        return self._pool_annotations(pool_id)

    def get(self, job_id: str) -> Job:
        """Raises: NotFound."""
        with self._cond:
            return copy.deepcopy(self._tracked(job_id).job)

    def list(self) -> list[Job]:
        with self._cond:
            return [copy.deepcopy(t.job) for t in sorted(self._jobs.values(), key=lambda t: t.job.spec.created_unix_s)]

    def watch(self, job_id: str, is_active: Callable[[], bool] = lambda: True) -> Iterator[JobProgress]:
        """The job's latest progress, then every new one until the job ends (or the runner stops,
        or `is_active` turns false: the caller went away).

        Raises:
            NotFound: no such job.
        """
        with self._cond:
            tracked = self._tracked(job_id)
            seen = len(tracked.events) - 1
        while True:
            with self._cond:
                while (seen >= len(tracked.events) and not tracked.job.state.finished
                       and not self._stopping.is_set() and is_active()):
                    self._cond.wait(timeout=0.5)
                new = tracked.events[seen:]
                seen = len(tracked.events)
                done = tracked.job.state.finished or self._stopping.is_set() or not is_active()
            yield from new
            if done:
                return

    def _tracked(self, job_id: str) -> _Tracked:
        tracked = self._jobs.get(job_id)
        if tracked is None:
            raise NotFound(f"no job {job_id!r}")
        return tracked

    def _job_dir(self, job: Job) -> Path:
        return self._jobs_dir / job.job_id

    def _save(self, job: Job) -> None:
        imageio.atomic_write_bytes(self._job_dir(job) / STATUS_FILE, json.dumps(job.status_json()).encode())

    def _progress(self, job: Job, **fields) -> JobProgress:
        end = job.finished_unix_s if job.state.finished else time.time()
        elapsed = end - job.started_unix_s if job.started_unix_s else 0.0
        losses = job.report.epoch_losses
        base = dict(job_id=job.job_id, state=job.state, phase=job.phase, epoch=len(losses),
                    epochs=job.spec.epochs, loss=losses[-1] if losses else float("nan"), elapsed_s=elapsed)
        return JobProgress(**{**base, **fields})

    def _update(self, job: Job, **changes) -> None:
        """Change a job, save its status and tell the watchers (one event)."""
        message = changes.pop("message", "")
        eta_s = changes.pop("eta_s", -1.0)
        with self._cond:
            for key, value in changes.items():
                setattr(job, key, value)
            self._save(job)
            self._jobs[job.job_id].events.append(self._progress(job, message=message, eta_s=eta_s))
            self._cond.notify_all()

    # ---- running ----

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                tracked = self._jobs[self._queue.popleft()]
                if tracked.job.state.finished:  # cancelled while queued
                    continue
            try:
                self._run(tracked)
            finally:
                tracked.dataset = None  # the decoded frames are not needed any more

    def _run(self, tracked: _Tracked) -> None:
        job = tracked.job
        self._update(job, state=JobState.RUNNING, phase=JobPhase.LOADING, started_unix_s=time.time(),
                     message="loading frames, annotations and the base version")
        try:
            self._execute(tracked)
        except _ShuttingDown:
            log.info("job %s: stopped at epoch %d by shutdown; resumes at the next start",
                     job.job_id, len(job.report.epoch_losses))
        except _Cancelled:
            log.info("job %s: cancelled at epoch %d", job.job_id, len(job.report.epoch_losses))
            self._update(job, state=JobState.CANCELLED, finished_unix_s=time.time(),
                         message=f"cancelled at epoch {len(job.report.epoch_losses)}/{job.spec.epochs}")
        except SegxalError as e:
            log.warning("job %s failed: %s", job.job_id, e)
            self._update(job, state=JobState.FAILED, error=str(e), error_code=_error_code(e),
                         finished_unix_s=time.time(), message=str(e))
        except Exception as e:  # noqa: BLE001 - a job must end FAILED, never hang RUNNING
            log.exception("job %s: internal error", job.job_id)
            self._update(job, state=JobState.FAILED, error=f"internal error: {type(e).__name__}: {e}",
                         error_code="INTERNAL", finished_unix_s=time.time(), message="internal error")

    def _execute(self, tracked: _Tracked) -> None:
        job, spec, cfg = tracked.job, tracked.job.spec, self.cfg
        t0 = time.monotonic()
        dataset = tracked.dataset or build_training_set(self.storage, spec.annotations, tuple(cfg.size),
                                                        seed_count=spec.seed_frame_count, classes=cfg.class_names)
        if not job.base_resolved:  # fixed once: a resumed job continues from the same weights
            base = self.versions.current(spec.model_name)
            self._update(job, base_version=base, base_resolved=True, train_frame_count=len(dataset),
                         message=f"fine-tuning from version {base}" if base else "training a fresh model")
        model = self._base_model(job)
        device = resolve_device(cfg.device)
        model.to(device)
        if job.base_version:
            job.report.base = self._evaluate(model)

        self._stop_if_cancelled(job)
        self._update(job, phase=JobPhase.TRAINING, message=f"fine-tuning on {len(dataset)} frames ({device})")
        train_cfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.learning_rate,
                                seed=spec.seed, device=cfg.device, progress=False)
        stats = train_segmentation(model, dataset, train_cfg, ckpt_path=self._job_dir(job) / CHECKPOINT_FILE,
                                   meta={"job_id": job.job_id, "base_version": job.base_version},
                                   on_epoch=self._epoch_reporter(job))
        job.report.train_seconds += stats["seconds"]
        job.report.device = str(device)
        diverged = [e for e, loss in enumerate(job.report.epoch_losses, 1) if not math.isfinite(loss)]
        if diverged:  # a NaN model exports and even passes parity (both sides agree on garbage)
            raise FailedPrecondition(
                f"training diverged: loss {job.report.epoch_losses[diverged[0] - 1]} at epoch {diverged[0]} "
                f"(learning rate {spec.learning_rate:g}); nothing was published")

        self._stop_if_cancelled(job)
        self._update(job, phase=JobPhase.EVALUATING, message=f"held-out split {cfg.eval_split!r}")
        job.report.candidate = self._evaluate(model)

        self._stop_if_cancelled(job)
        self._update(job, phase=JobPhase.EXPORTING, message=f"candidate mIoU {job.report.candidate.miou:.4f}")
        self._export(job, model.cpu(), dataset)

        self._stop_if_cancelled(job)
        if spec.publish:
            self._update(job, phase=JobPhase.PUBLISHING, message="gates, then publish")
            try:
                self._publish(job, spec.policy)
            except FailedPrecondition as e:
                job.report.publish_refused = str(e)
                log.warning("job %s: publish refused: %s", job.job_id, e)
        job.report.job_seconds = time.monotonic() - t0
        published = job.report.published_version
        self._update(job, state=JobState.SUCCEEDED, phase=JobPhase.DONE, finished_unix_s=time.time(),
                     message=f"published version {published}" if published else
                     (f"not published: {job.report.publish_refused}" if spec.publish else "candidate ready"))

    def _stop_if_cancelled(self, job: Job) -> None:
        if job.cancel_requested:
            raise _Cancelled

    def _base_model(self, job: Job) -> UNet | ExternalModel:
        cfg = self.cfg
        if job.base_version:
            model = self.versions.load_model(job.spec.model_name, job.base_version)
        else:
            torch.manual_seed(job.spec.seed)  # the first version's initial weights repeat with the seed
            model = UNet(cfg.unet) if cfg.model_import is None else ExternalModel(
                ExternalModelConfig(cfg.model_import, cfg.model_kwargs), cfg.model_checkpoint)
        h, w = cfg.size
        if h % model.multiple or w % model.multiple:
            raise FailedPrecondition(f"training size {h}x{w} is not a multiple of {model.multiple}, "
                                     f"which version {job.base_version}'s model needs")
        if cfg.class_names is not None and len(cfg.class_names) != num_classes_of(model):
            raise FailedPrecondition(f"{len(cfg.class_names)} class names for a model with "
                                     f"{num_classes_of(model)} classes")
        return model

    def _epoch_reporter(self, job: Job) -> Callable[[int, float], None]:
        started = time.monotonic()
        first_epoch: list[int] = []  # the first epoch this process trains (after a resume: not 1)

        def report(epoch: int, loss: float) -> None:
            if not first_epoch:
                first_epoch.append(epoch)
            done_here = epoch - first_epoch[0] + 1
            eta = (time.monotonic() - started) / done_here * (job.spec.epochs - epoch)
            losses = job.report.epoch_losses[:epoch - 1] + [loss]
            with self._cond:
                job.report.epoch_losses = losses
            self._update(job, eta_s=eta, message=f"epoch {epoch}/{job.spec.epochs} loss {loss:.4f}")
            if job.cancel_requested:
                raise _Cancelled
            if self._stopping.is_set():
                raise _ShuttingDown  # the epoch's checkpoint is on disk: the resume starts after it
        return report

    def _evaluate(self, model: UNet) -> Metrics:
        cm = evaluate_segmentation(model, self._heldout, batch_size=self.cfg.batch_size)
        return Metrics.from_report(iou_report(cm, self.cfg.class_names), split=self.cfg.eval_split,
                                   frames=len(self._heldout))

    def _export(self, job: Job, model: UNet, dataset: LabeledFrames) -> None:
        """ONNX export with the parity check; the candidate folder and config.pbtxt on success."""
        job_dir = self._job_dir(job)
        candidate = job_dir / CANDIDATE_DIR
        shutil.rmtree(candidate, ignore_errors=True)  # an earlier attempt's
        try:
            if isinstance(model, ExternalModel):  # GradCAM at a named layer, traced into the graph (docs/cam.md)
                result = export_for_serving(model, candidate / "model.onnx", self._export_cfg,
                                            class_names=self.cfg.class_names, layer=self.cfg.cam_layer,
                                            target=self.cfg.cam_target, method=self.cfg.cam_method,
                                            uncertainty_at=self.cfg.uncertainty_at,
                                            sample_images=dataset.sample_images(self.cfg.parity_frames))
            else:
                result = export_segmentation(model, candidate / "model.onnx", self._export_cfg,
                                             sample_images=dataset.sample_images(self.cfg.parity_frames),
                                             class_names=self.cfg.class_names)
        except ParityError as e:
            job.report.parity_passed, job.report.parity_summary = False, str(e)
            return
        config = build_config(job.spec.model_name, result.spec, self.cfg.batching)
        imageio.atomic_write_bytes(job_dir / CONFIG_FILE, format_config(config).encode())
        job.report.parity_passed, job.report.parity_summary = True, result.parity.summary()

    # ---- publishing ----

    def publish(self, job_id: str, policy: PublishPolicy) -> tuple[VersionInfo, Job]:
        """Publish a finished job's candidate (idempotent).

        Raises:
            NotFound: no such job.
            FailedPrecondition: the job has not succeeded, failed parity, or a gate refused.
        """
        _check_policy(policy)
        with self._cond:
            job = self._tracked(job_id).job
            if job.state != JobState.SUCCEEDED:
                detail = f": {job.error}" if job.error else ""
                raise FailedPrecondition(f"job {job_id} is {job.state.value}{detail}; only a succeeded job "
                                         f"has a candidate to publish")
        version = self._publish(job, policy)
        self._update(job, message=f"published version {version}")
        return self.versions.info(job.spec.model_name, version), self.get(job_id)

    def _publish(self, job: Job, policy: PublishPolicy) -> int:
        spec, report = job.spec, job.report
        with self._publish_lock:
            if report.published_version:
                return report.published_version
            found = self.versions.find_published(spec.model_name, spec.job_id)
            if found is not None:  # published just before a crash: finish what the crash cut short
                if not self.versions.checkpoint_path(spec.model_name, found).is_file():
                    self.versions.keep_state(spec.model_name, found, self._job_dir(job) / CHECKPOINT_FILE)
                self._set_published(job, found)
                return found
            if not report.parity_passed:
                raise FailedPrecondition(f"job {spec.job_id}: the ONNX export failed the parity check "
                                         f"({report.parity_summary}); it is never published")
            # never overridable, first versions included: parity passes on a diverged model
            check_finite_export(self._job_dir(job) / CANDIDATE_DIR / "model.onnx", self._heldout_images())
            version = self.versions.publish(
                spec.model_name, self._job_dir(job) / CANDIDATE_DIR,
                parse_config((self._job_dir(job) / CONFIG_FILE).read_text()),
                self._job_dir(job) / CHECKPOINT_FILE,
                VersionInfo(model_name=spec.model_name, version=0, uri="", metrics=report.candidate,
                            job_id=spec.job_id, cycle_id=spec.cycle_id, base_version=job.base_version),
                gate=lambda current: self._gate(job, policy, current))
            self._set_published(job, version)
            return version

    def _heldout_images(self) -> np.ndarray:
        """uint8 [n, H, W, 3]: the first parity_frames held-out frames at the training size."""
        n = max(1, min(self.cfg.parity_frames, len(self._heldout)))
        return np.stack([self._heldout.raw(i)[0] for i in range(n)])

    def _set_published(self, job: Job, version: int) -> None:
        with self._cond:
            job.report.published_version, job.report.publish_refused = version, ""
            self._save(job)

    def _gate(self, job: Job, policy: PublishPolicy, current: int) -> None:
        """Raises FailedPrecondition when the candidate must not replace `current` (unless forced)."""
        if policy.force:
            return
        if current != job.base_version:
            raise FailedPrecondition(
                f"model {job.spec.model_name!r}: the current version is {current}, not version {job.base_version} "
                f"that job {job.job_id} fine-tuned from (a rollback or another publish happened since); "
                f"start a new job, or publish with force")
        base, candidate = job.report.base, job.report.candidate
        tolerance = self.cfg.miou_tolerance if policy.miou_tolerance is None else policy.miou_tolerance
        if base is not None and not candidate.miou >= base.miou - tolerance:  # NaN mIoU fails too
            raise FailedPrecondition(
                f"candidate held-out mIoU {candidate.miou:.4f} is {base.miou - candidate.miou:+.4f} below "
                f"version {job.base_version}'s {base.miou:.4f}, beyond the tolerance {tolerance:.4f}; "
                f"version {current} stays current (publish with force to override)")

    # ---- versions ----

    def rollback(self, model: str, version: int) -> VersionInfo:
        """Serve an older version again, as the newest (see VersionStore.rollback)."""
        return self.versions.rollback(model or self.cfg.model_name, version)

    def list_versions(self, model: str) -> tuple[list[VersionInfo], int]:
        """(every version oldest first, the current version or 0)."""
        model = model or self.cfg.model_name
        versions = self.versions.list(model)
        return versions, max((v.version for v in versions), default=0)

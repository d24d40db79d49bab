"""The trainer's client (what the active-learning main loop calls).

    with TrainerClient("localhost:50055") as trainer:
        job = trainer.start_job(JobRequest(cycle_id="c3", annotations=[AnnotationRef(frame_uri, mask_uri)],
                                           publish=True))
        for p in trainer.watch(job.job_id):
            print(p.phase.value, p.epoch, p.loss, p.eta_s)
        job = trainer.get_job(job.job_id)
        job.report.candidate.miou, job.report.published_version, job.report.publish_refused
        trainer.publish(job.job_id, PublishPolicy(force=True))
        trainer.rollback(version=2)
        trainer.cancel_job(job.job_id)
        versions, current = trainer.list_versions()

Results are services.trainer.api dataclasses. Channels come from services.common.channel (message
size, keepalive, TLS, token). Errors are our exceptions (segxal.errors), mapped from the status code.
"""
from __future__ import annotations

from typing import Iterator

from segxalpb.trainer.v1 import trainer_pb2 as pb
from segxalpb.trainer.v1 import trainer_pb2_grpc
from services.common.channel import ChannelConfig
from services.common.client import NO_DEADLINE, GrpcClient
from services.trainer import wire
from services.trainer.api import Job, JobProgress, JobRequest, PublishPolicy, VersionInfo
from services.trainer.wire import SERVICE_NAME


class TrainerClient(GrpcClient):
    """Thread-safe; a context manager that closes its channel (services.common.client.GrpcClient:
    deadlines, errors, health).

    Args:
        target: "host:port" (services.common.channel targets).
        channel_cfg: message size, keepalive, TLS, token; defaults as ChannelConfig.
        timeout_s: default deadline of each call (None: none). StartJob reads and decodes every
            frame before it answers: give it room on large cycles. watch/wait state their own.
    """

    stub_class = trainer_pb2_grpc.TrainerStub
    service_name = SERVICE_NAME
    what = "trainer"

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None, *, timeout_s: float | None = 120.0):
        super().__init__(target, channel_cfg, timeout_s=timeout_s)

    def start_job(self, request: JobRequest) -> Job:
        """Queue a fine-tuning job (its data is checked and decoded before this returns).

        Raises:
            FailedPrecondition: no annotations, repository not writable, no training state.
            InvalidInput: a malformed annotation or unreadable file (named in the message).
            NotFound / PermissionDenied: a missing file, or one outside the trainer's storage roots.
            ResourceExhausted: the trainer's queue is full.
        """
        return wire.job_from_proto(self._call("StartJob", wire.request_to_proto(request)))

    def watch(self, job_id: str, timeout_s: float | None = NO_DEADLINE) -> Iterator[JobProgress]:
        """Progress events until the job ends (timeout_s: deadline of the whole stream; default
        none, a job takes as long as it takes; None: the client's default).

        Raises:
            NotFound: no such job. NotReady: the trainer went away or the deadline passed.
        """
        for msg in self._stream("WatchJob", pb.WatchJobRequest(job_id=job_id), timeout_s):
            yield wire.progress_from_proto(msg)

    def wait(self, job_id: str, timeout_s: float | None = NO_DEADLINE) -> Job:
        """Block until the job ends; returns it with its report."""
        for _ in self.watch(job_id, timeout_s):
            pass
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> Job:
        return wire.job_from_proto(self._call("GetJob", pb.GetJobRequest(job_id=job_id)))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued job (it never runs) or a running one (it stops at its next epoch or
        phase change and ends CANCELLED; a restart before that does not resume it).

        Returns:
            The job now: CANCELLED, or still RUNNING with cancel_requested set.

        Raises:
            NotFound: no such job. FailedPrecondition: the job already succeeded or failed.
        """
        return wire.job_from_proto(self._call("CancelJob", pb.CancelJobRequest(job_id=job_id)))

    def list_jobs(self) -> list[Job]:
        return [wire.job_from_proto(j) for j in self._call("ListJobs", pb.ListJobsRequest()).jobs]

    def publish(self, job_id: str, policy: PublishPolicy | None = None) -> tuple[VersionInfo, Job]:
        """Publish a succeeded job's candidate as the next version.

        Raises:
            FailedPrecondition: parity failed, a regression beyond the tolerance, the current
                version changed since the job started (the last two: unless policy.force).
        """
        reply = self._call("Publish", pb.PublishRequest(job_id=job_id,
                                                        policy=wire.policy_to_proto(policy or PublishPolicy())))
        return wire.version_from_proto(reply.version), wire.job_from_proto(reply.job)

    def rollback(self, version: int, model_name: str = "") -> VersionInfo:
        """Serve `version` again, re-published as the newest version."""
        return wire.version_from_proto(self._call("Rollback", pb.RollbackRequest(model_name=model_name,
                                                                                 version=version)))

    def list_versions(self, model_name: str = "") -> tuple[list[VersionInfo], int]:
        """(every version oldest first, the current version or 0)."""
        reply = self._call("ListVersions", pb.ListVersionsRequest(model_name=model_name))
        return [wire.version_from_proto(v) for v in reply.versions], reply.current_version

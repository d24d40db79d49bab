"""Trainer servicer: decode the request, call the job runner, encode the reply. Nothing else:
errors are our exceptions, mapped to status codes by services.common.server's interceptor."""
from __future__ import annotations

from segxalpb.trainer.v1 import trainer_pb2 as pb
from segxalpb.trainer.v1 import trainer_pb2_grpc
from services.trainer import wire
from services.trainer.jobs import JobRunner


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, runner: JobRunner):
        self.runner = runner

    def StartJob(self, request, context):
        return wire.job_to_proto(self.runner.submit(wire.request_from_proto(request)))

    def WatchJob(self, request, context):
        for progress in self.runner.watch(request.job_id, is_active=context.is_active):
            yield wire.progress_to_proto(progress)

    def GetJob(self, request, context):
        return wire.job_to_proto(self.runner.get(request.job_id))

    def CancelJob(self, request, context):
        return wire.job_to_proto(self.runner.cancel(request.job_id))

    def ListJobs(self, request, context):
        return pb.ListJobsResponse(jobs=[wire.job_to_proto(j) for j in self.runner.list()])

    def Publish(self, request, context):
        version, job = self.runner.publish(request.job_id, wire.policy_from_proto(request.policy))
        return pb.PublishResponse(version=wire.version_to_proto(version), job=wire.job_to_proto(job))

    def Rollback(self, request, context):
        return wire.version_to_proto(self.runner.rollback(request.model_name, request.version))

    def ListVersions(self, request, context):
        return wire.versions_to_proto(*self.runner.list_versions(request.model_name))

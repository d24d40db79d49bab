"""The gRPC face of the coordinator: each RPC decodes its request, calls one Coordinator method and
encodes the reply. Errors are segxal.errors exceptions; services.common.server's interceptor maps
them to status codes."""
from __future__ import annotations

import dataclasses

from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from segxalpb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from services.common.auth import authenticated_client_id
from services.coordinator import convert as cv
from services.coordinator.coordinator import Coordinator


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, core: Coordinator):
        self.core = core

    # ---- pools and frames
    def CreatePool(self, request, context):
        return cv.pool_to_proto(self.core.create_pool(request.name, cv.budget_limits_from_proto(request.budget),
                                                      tuple(request.class_names)))

    def GetPool(self, request, context):
        return cv.pool_to_proto(self.core.get_pool(request.pool_id, request.name))

    def ListPools(self, request, context):
        return pb.ListPoolsResponse(pools=[cv.pool_to_proto(p) for p in self.core.list_pools()])

    def IngestFrames(self, request, context):
        results, pool = self.core.ingest(request.pool_id, cv.ingest_sources_from_proto(request.sources))
        return pb.IngestFramesResponse(results=[cv.ingest_result_to_proto(r) for r in results],
                                       frames_added=sum(r.frames_added for r in results),
                                       frame_count=pool.frame_count)

    def ListFrames(self, request, context):
        page = self.core.list_frames(request.pool_id, request.page_token, request.page_size)
        return pb.ListFramesResponse(frames=[cv.frame_to_proto(f) for f in page.items],
                                     next_page_token=page.next_token)

    # ---- model versions
    def RegisterModelVersion(self, request, context):
        return cv.model_to_proto(self.core.register_model_version(request.model_name, request.version, request.uri))

    def ListModelVersions(self, request, context):
        return pb.ListModelVersionsResponse(
            versions=[cv.model_to_proto(m) for m in self.core.list_model_versions(request.model_name)])

    def GetCurrentModelVersion(self, request, context):
        return cv.model_to_proto(self.core.current_model_version(request.model_name))

    # ---- cycles
    def StartCycle(self, request, context):
        return cv.cycle_to_proto(self.core.start_cycle(cv.start_cycle_from_proto(request)))

    def RankCycle(self, request, context):
        r = self.core.rank_cycle(request.cycle_id)
        return pb.RankCycleResponse(cycle=cv.cycle_to_proto(r.cycle), frames_scored=r.frames_scored,
                                    frames_reused=r.frames_reused,
                                    failed=[cv.failed_frame_to_proto(f) for f in r.failed],
                                    tasks=[cv.task_to_proto(t) for t in r.tasks])

    def GetCycleReport(self, request, context):
        return cv.cycle_report_to_proto(self.core.cycle_report(request.cycle_id, request.pool_id))

    # ---- tasks and annotations
    def LeaseTasks(self, request, context):
        tasks, exhausted = self.core.lease_tasks(request.pool_id, request.cycle_id,
                                                 authenticated_client_id(request.client_id),
                                                 request.max_tasks, request.lease_seconds,
                                                 frame_id=request.frame_id)
        return pb.LeaseTasksResponse(tasks=[cv.task_to_proto(t) for t in tasks], budget_exhausted=exhausted)

    def HeartbeatTask(self, request, context):
        expires = self.core.heartbeat(request.task_id, request.lease_token, request.lease_seconds,
                                      authenticated_client_id(""))
        return pb.HeartbeatTaskResponse(lease_expires_unix_s=expires)

    def SubmitAnnotation(self, request, context):
        spec = cv.submit_from_proto(request)
        r = self.core.submit(dataclasses.replace(spec, client_id=authenticated_client_id(spec.client_id)))
        return pb.SubmitAnnotationResponse(annotation=cv.annotation_to_proto(r.annotation), replayed=r.replayed,
                                           budget=cv.budget_to_proto(r.budget))

    def ReleaseTask(self, request, context):
        self.core.release(request.task_id, request.lease_token, authenticated_client_id(""))
        return pb.ReleaseTaskResponse()

    def ListAnnotations(self, request, context):
        page = self.core.list_annotations(request.pool_id, request.cycle_id, request.page_token,
                                          request.page_size)
        return pb.ListAnnotationsResponse(annotations=[cv.annotation_to_proto(a) for a in page.items],
                                          next_page_token=page.next_token)

    # ---- budget
    def GetBudget(self, request, context):
        return cv.budget_to_proto(self.core.budget(request.pool_id))

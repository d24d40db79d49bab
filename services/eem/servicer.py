"""EemScoring servicer: decode the request, call the pipeline, encode the reply. Nothing else:
errors are our exceptions, mapped to status codes by services.common.server's interceptor (one
call) or by services.eem.wire (per frame in a stream)."""
from __future__ import annotations

from segxalpb.eem.v1 import eem_pb2_grpc
from services.eem import wire
from services.eem.pipeline import Caller, ScoringPipeline


class EemScoringServicer(eem_pb2_grpc.EemScoringServicer):
    def __init__(self, pipeline: ScoringPipeline):
        self.pipeline = pipeline

    def ScoreFrame(self, request, context):
        return wire.result_to_proto(self.pipeline.score(wire.request_from_proto(request), Caller.of(context)))

    def ScoreStream(self, request_iterator, context):
        for result in self.pipeline.score_many(wire.requests_from_proto(request_iterator),
                                                 Caller.of(context)):
            yield wire.result_to_proto(result)

    def GetStats(self, request, context):
        return wire.stats_to_proto(self.pipeline.stats())


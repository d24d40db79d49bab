"""KServe v2 / Triton `inference.GRPCInferenceService`, thin: decode, one core call, encode.
Errors are our exceptions, mapped to status codes by services.common.server's interceptor.
RPCs not listed here (tracing, logging, shared memory, streaming) answer UNIMPLEMENTED."""
from __future__ import annotations

from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from services.inference import protocol
from services.inference.config import InferenceServerConfig
from services.inference.model_manager import ModelManager

EXTENSIONS = ["model_repository", "model_configuration", "schedule_policy", "statistics"]


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: ModelManager, cfg: InferenceServerConfig):
        self.models = models
        self.cfg = cfg

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.models.server_ready())

    def ModelReady(self, request, context):
        version = protocol.parse_version(request.version)
        return pb.ModelReadyResponse(ready=self.models.model_ready(request.name, version))

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self.cfg.server_name, version=self.cfg.server_version,
                                         extensions=EXTENSIONS)

    def ModelMetadata(self, request, context):
        d = self.models.describe(request.name, protocol.parse_version(request.version))
        return protocol.metadata_to_proto(d.name, d.versions, d.platform, d.inputs, d.outputs, d.batched)

    def ModelConfig(self, request, context):
        d = self.models.describe(request.name, protocol.parse_version(request.version))
        return pb.ModelConfigResponse(config=d.config)

    def ModelInfer(self, request, context):
        infer_request = protocol.request_from_proto(request, self.cfg.max_tensor_bytes, context.time_remaining())
        return protocol.response_to_proto(self.models.infer(infer_request))

    def ModelStatistics(self, request, context):
        rows = self.models.statistics(request.name, protocol.parse_version(request.version))
        return protocol.statistics_to_proto(rows)

    def RepositoryIndex(self, request, context):
        return protocol.repository_index_to_proto(self.models.repository_index(request.ready))

    def RepositoryModelLoad(self, request, context):
        self.models.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        self.models.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

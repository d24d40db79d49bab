"""Inference server set-up: the common gRPC server (health, TLS, error mapping, limits) with the
inference servicer and the model manager; health follows model readiness."""
from __future__ import annotations

import logging

from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2_grpc

from services.common.model_repository import ModelRepository
from services.common.server import ServiceServer
from services.inference.config import InferenceServerConfig
from services.inference.model_manager import ModelManager
from services.inference.servicer import InferenceServicer

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


class InferenceServer(ServiceServer):
    """The inference service: `start()` binds, loads the repository and starts polling; `stop()`
    refuses new RPCs, lets in-flight ones finish within the grace period, then drains the models.

    Health (grpc.health.v1): one entry per model (SERVING while it has a version loaded), and
    SERVICE_NAME plus the overall "" entry SERVING while every model meant to serve is ready.
    """

    service_name = SERVICE_NAME

    def __init__(self, cfg: InferenceServerConfig):
        self.cfg = cfg
        super().__init__(cfg.server)
        self.models = ModelManager(ModelRepository(cfg.repository), cfg, on_readiness=self._set_health)
        self.grpc.add(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                      InferenceServicer(self.models, cfg))

    def _set_health(self, model: str, ready: bool) -> None:
        self.grpc.health.set(model, health_pb2.HealthCheckResponse.SERVING if ready
                             else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.set_serving(SERVICE_NAME, self.models.server_ready())

    def _started(self) -> None:
        """Live (ServerLive) at once; ready once the models are loaded."""
        self.models.start()
        self.grpc.set_serving(SERVICE_NAME, self.models.server_ready())

    def _stopping(self, grace: float | None) -> None:
        """Queued requests run at once (no batching window) while in-flight RPCs get `grace`."""
        self.models.begin_shutdown()

    def _stopped(self) -> None:
        self.models.stop()

"""Inference server set-up: the common gRPC server (health, TLS, error mapping, limits) with the
inference servicer and the model manager; health follows model readiness."""
from __future__ import annotations

import logging

from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2_grpc

from services.common.model_repository import ModelRepository
from services.common.server import GrpcServer
from services.inference.config import InferenceServerConfig
from services.inference.model_manager import ModelManager
from services.inference.servicer import InferenceServicer

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


class InferenceServer:
    """The inference service: `start()` binds, loads the repository and starts polling; `stop()`
    refuses new RPCs, lets in-flight ones finish within the grace period, then drains the models.

    Health (grpc.health.v1): one entry per model (SERVING while it has a version loaded), and
    SERVICE_NAME plus the overall "" entry SERVING while every model meant to serve is ready.
    """

    def __init__(self, cfg: InferenceServerConfig):
        self.cfg = cfg
        self.grpc = GrpcServer(cfg.server)
        self.models = ModelManager(ModelRepository(cfg.repository), cfg, on_readiness=self._set_health)
        self.grpc.add(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                      InferenceServicer(self.models, cfg))
        self.grpc.set_serving(SERVICE_NAME, False)

    def _set_health(self, model: str, ready: bool) -> None:
        self.grpc.health.set(model, health_pb2.HealthCheckResponse.SERVING if ready
                             else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.set_serving(SERVICE_NAME, self.models.server_ready())

    def start(self) -> int:
        """Bind, load every model, start polling. Returns the bound port."""
        port = self.grpc.start()  # live (ServerLive) at once; ready once the models are loaded
        self.models.start()
        self.grpc.set_serving(SERVICE_NAME, self.models.server_ready())
        return port

    @property
    def target(self) -> str:
        return self.grpc.target

    def stop(self, grace: float | None = None) -> None:
        """Graceful: queued requests run at once (no batching window), new RPCs are refused,
        in-flight ones get `grace` seconds (ServerConfig.grace_s by default), then models unload."""
        self.models.begin_shutdown()
        self.grpc.stop(grace)
        self.models.stop()

    def wait(self) -> None:
        self.grpc.wait()

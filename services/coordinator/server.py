"""The coordinator's server: store (migrated at start), scorer, core and servicer on the one
gRPC server set-up (services.common.server: health, TLS, error interceptor, grace period)."""
from __future__ import annotations

from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from segxalpb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from services.common.auth import BearerTokenAuth
from services.common.server import GrpcServer, ServerConfig
from services.coordinator.config import CoordinatorConfig
from services.coordinator.convert import SERVICE_NAME
from services.coordinator.coordinator import Coordinator
from services.coordinator.ranking import FrameScorer
from services.coordinator.servicer import CoordinatorServicer
from services.coordinator.store.store import CoordinatorStore



class CoordinatorServer:
    """A coordinator replica. `start()` returns the bound port; `stop()` drains and closes.

    Args:
        cfg: the configuration (database, storage, EEM target, port...).
        scorer: ranks EEM cycles; default: the EEM service at cfg.eem_target (none when empty).
    """

    def __init__(self, cfg: CoordinatorConfig, scorer: FrameScorer | None = None):
        self.cfg = cfg
        self.store = CoordinatorStore.open(cfg.db, cfg.db_pool_size)
        self._owned_scorer = None
        if scorer is None and cfg.eem_target:
            from services.coordinator.eem_scorer import EemScorer  # EEM client deps only when used
            scorer = self._owned_scorer = EemScorer(cfg.eem_target, cfg.eem_channel)
        self.core = Coordinator(self.store, cfg, scorer)
        self.grpc = GrpcServer(ServerConfig(
            address=f"{cfg.host}:{cfg.port}", max_workers=cfg.max_workers, grace_s=cfg.grace_s,
            tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, tls_client_ca=cfg.tls_client_ca,
            interceptors=[BearerTokenAuth.from_file(cfg.auth_tokens_file)] if cfg.auth_tokens_file else [],
            health_address=f"{cfg.host}:{cfg.health_port}" if cfg.health_port is not None else None))
        self.grpc.add(pb_grpc.add_CoordinatorServicer_to_server, CoordinatorServicer(self.core))

    def start(self) -> int:
        port = self.grpc.start()
        # The schema is migrated and the database answered (CoordinatorStore.open): serving.
        self.grpc.set_serving(SERVICE_NAME, True)
        return port

    @property
    def port(self) -> int | None:
        return self.grpc.port

    @property
    def target(self) -> str:
        return self.grpc.target

    def stop(self, grace: float | None = None) -> None:
        self.grpc.set_serving(SERVICE_NAME, False)
        self.grpc.stop(grace)
        if self._owned_scorer is not None:
            self._owned_scorer.close()
        self.store.close()

    def wait(self) -> None:
        self.grpc.wait()

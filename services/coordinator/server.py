"""The coordinator's server: store (migrated at start), scorer, core and servicer on the one
service-server base (services.common.server: health, TLS, auth, error interceptor, grace period)."""
from __future__ import annotations

from segxalpb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from services.common.server import ServiceServer
from services.coordinator.config import CoordinatorConfig
from services.coordinator.convert import SERVICE_NAME
from services.coordinator.coordinator import Coordinator
from services.coordinator.ranking import FrameScorer
from services.coordinator.servicer import CoordinatorServicer
from services.coordinator.store.store import CoordinatorStore


class CoordinatorServer(ServiceServer):
    """A coordinator replica. `start()` returns the bound port; `stop()` drains and closes. SERVING
    once started: the schema is migrated and the database answered (CoordinatorStore.open).

    Args:
        cfg: the configuration (database, storage, EEM target, server...).
        scorer: ranks EEM cycles; default: the EEM service at cfg.eem_target (none when empty).
    """

    service_name = SERVICE_NAME

    def __init__(self, cfg: CoordinatorConfig, scorer: FrameScorer | None = None):
        self.cfg = cfg
        self.store = CoordinatorStore.open(cfg.db, cfg.db_pool_size)
        self._owned_scorer = None
        if scorer is None and cfg.eem_target:
            from services.coordinator.eem_scorer import EemScorer  # EEM client deps only when used
            scorer = self._owned_scorer = EemScorer(cfg.eem_target, cfg.eem_channel)
        self.core = Coordinator(self.store, cfg, scorer)
        super().__init__(cfg.server)
        self.grpc.add(pb_grpc.add_CoordinatorServicer_to_server, CoordinatorServicer(self.core))

    def _stopped(self) -> None:
        if self._owned_scorer is not None:
            self._owned_scorer.close()
        self.store.close()

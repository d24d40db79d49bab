"""The coordinator's core: what each request does, between the servicer (protos) and the store
(SQL). No gRPC here; errors are segxal.errors exceptions, mapped to status codes at the edge.

Files it writes under the storage folder (shared storage when there are replicas):
    frames/<sha256[:2]>/<sha256>.<ext>            frames extracted from drive logs (content-addressed)
    annotations/<sha256[:2]>/<sha256>.png         accepted masks as trainIds, 255 = not annotated
    predictions/<model>/<version>/<frame_id>.png  the model's trainIds for each task's frame
Every file is written atomically (temp file, fsync, rename) before the database row that names it
is committed, so a committed row never points at a missing or half-written file.
"""
from __future__ import annotations

from pathlib import Path

from services.coordinator.config import CoordinatorConfig
from services.coordinator.core.cycles import CyclesAndRanking
from services.coordinator.core.labeling import Labeling
from services.coordinator.core.pools import PoolsAndIngest
from services.coordinator.ranking import FrameScorer
from services.coordinator.store.store import CoordinatorStore


class Coordinator(PoolsAndIngest, CyclesAndRanking, Labeling):
    """Pools, ingest, cycles and ranking, leases, annotations, model versions, budget: one part per
    concept (services/coordinator/core/), sharing the store, the configuration and the scorer.

    Args:
        store: the durable state (SQLite or PostgreSQL).
        cfg: the service configuration.
        scorer: ranks frames for EEM cycles (the EEM client adapter); None: only random cycles rank.
    """

    def __init__(self, store: CoordinatorStore, cfg: CoordinatorConfig, scorer: FrameScorer | None = None):
        self.store = store
        self.cfg = cfg
        self.scorer = scorer
        self.storage = Path(cfg.storage).resolve()
        self.storage.mkdir(parents=True, exist_ok=True)

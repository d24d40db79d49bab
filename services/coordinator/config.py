"""The coordinator's one configuration, built once in main() from flags and environment."""
from __future__ import annotations

from dataclasses import dataclass, field

from segxal.selection import DEFAULT_SELECTION, SelectionSpec
from services.coordinator.ranking import RankingConfig
from services.common.channel import ChannelConfig
from services.common.server import ServerConfig


@dataclass
class CoordinatorConfig:
    # sqlite:///path/to.db (embedded, one replica) or postgresql://user@host:port/db (replicas)
    db: str = "sqlite:///runs/coordinator/coordinator.db"
    # Extracted drive-log frames, annotation masks and predictions go under this folder; with
    # several replicas it must be shared storage, like the frames the EEM service reads.
    storage: str = "runs/coordinator/storage"
    eem_target: str = ""  # host:port of the EEM scoring service; empty: only random cycles rank
    eem_channel: ChannelConfig = field(default_factory=ChannelConfig)  # TLS / mTLS / token to EEM
    model_name: str = "segmentation"  # the model whose versions pin cycles when none is named
    default_lease_s: float = 300.0  # a labeler annotating one frame by hand takes minutes
    max_lease_s: float = 3600.0     # longer leases hide crashed clients for too long
    max_lease_batch: int = 64       # tasks per LeaseTasks call
    default_dice_threshold: float = 0.95  # docs/design.md, "DICE stopping"
    db_pool_size: int = 8           # connections per replica (PostgreSQL allows ~100 in all)
    # address (port 0 = ephemeral, tests), handler threads, grace period, TLS / mTLS, bearer tokens
    # (every call but health must carry one; leases and submits act for its identity), health port
    server: ServerConfig = field(default_factory=lambda: ServerConfig(address="127.0.0.1:50061"))
    # Ingest reads server-side paths: when set, they must lie under one of these folders.
    ingest_roots: tuple[str, ...] = ()
    ranking: RankingConfig = field(default_factory=RankingConfig)
    # how an EEM cycle picks when StartCycle names no selection (docs/design.md, "EEM options and
    # selection"); the benchmark's choice, segxal.selection.DEFAULT_SELECTION
    default_selection: SelectionSpec = field(default_factory=lambda: SelectionSpec.parse(DEFAULT_SELECTION))
    # The EEM maths come with each cycle (StartCycleRequest.eem_options), not from here.

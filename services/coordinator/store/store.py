"""All of the coordinator's SQL. Each public method is one transaction (Database.run), so a method
that returns has committed.

Leasing is the hot path: one UPDATE picks the best waiting tasks with `FOR UPDATE SKIP LOCKED` on
PostgreSQL, so replicas leasing at the same moment skip each other's rows instead of waiting or
double-leasing; SQLite gets the same guarantee from its single writer lock. An expired lease needs
no sweeper: the lease query treats `leased` with `lease_expires_at <= now` as waiting, so an
expired task is requeued the moment anyone asks for work.
"""
from __future__ import annotations

from services.coordinator.store.db import Database
from services.coordinator.store.migrations import migrate
from services.coordinator.store.annotations import AnnotationRepository
from services.coordinator.store.cycles import CycleRepository
from services.coordinator.store.models import ModelVersionRepository
from services.coordinator.store.pools import PoolRepository
from services.coordinator.store.reports import BudgetRepository
from services.coordinator.store.scores import ScoreRepository
from services.coordinator.store.tasks import TaskRepository


class CoordinatorStore(PoolRepository, ModelVersionRepository, CycleRepository, ScoreRepository, TaskRepository,
                       AnnotationRepository, BudgetRepository):
    """Durable state over a Database (SQLite or PostgreSQL, same SQL): one repository per aggregate
    (pools and frames, model versions, cycles, scores, tasks and leases, annotations, budget and
    reports), each in its own module, sharing the Database."""

    def __init__(self, db: Database):
        self.db = db

    @classmethod
    def open(cls, url: str, pool_size: int = 8) -> "CoordinatorStore":
        """Connect and bring the schema up to date."""
        db = Database(url, pool_size=pool_size)
        migrate(db)
        return cls(db)

    def close(self) -> None:
        self.db.close()

    def now(self) -> float:
        """The database clock (UNIX seconds): the clock leases are measured with."""
        return float(self.db.run(lambda tx: tx.scalar("SELECT {now}"), write=False))

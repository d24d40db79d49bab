"""The coordinator's durable state: one schema with numbered migrations (migrations.py), one way
to run SQL on SQLite and PostgreSQL (db.py), and the coordinator's SQL as one repository per
aggregate (pools.py, models.py, cycles.py, scores.py, tasks.py, annotations.py, reports.py, over
the rows of rows.py), composed into CoordinatorStore (store.py)."""
from services.coordinator.store.store import CoordinatorStore

__all__ = ["CoordinatorStore"]

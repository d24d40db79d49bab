"""The coordinator's durable state: one schema with numbered migrations (migrations.py), one way
to run SQL on SQLite and PostgreSQL (db.py), and all of the coordinator's SQL (store.py)."""
from services.coordinator.store.store import CoordinatorStore

__all__ = ["CoordinatorStore"]

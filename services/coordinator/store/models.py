"""Registered model versions: the versions cycles are pinned to."""
from __future__ import annotations

from segxal.errors import FailedPrecondition, NotFound
from services.coordinator.domain import ModelVersion
from services.coordinator.store.db import Database, Tx
from services.coordinator.store.rows import _model


class ModelVersionRepository:
    """Part of CoordinatorStore (each public method is one transaction)."""

    db: Database

    def register_model_version(self, model_name: str, version: int, uri: str) -> ModelVersion:
        def txn(tx: Tx) -> ModelVersion:
            want = version
            for _ in range(100):  # version 0 = next: loop only when a racing register took it
                if version == 0:
                    want = int(tx.scalar("SELECT COALESCE(MAX(version), 0) FROM model_versions "
                                         "WHERE model_name = ?", (model_name,))) + 1
                inserted = tx.one("""INSERT INTO model_versions (model_name, version, uri, registered_at)
                                     VALUES (?, ?, ?, {now}) ON CONFLICT (model_name, version) DO NOTHING
                                     RETURNING model_name""", (model_name, want, uri))
                row = tx.one("SELECT * FROM model_versions WHERE model_name = ? AND version = ?",
                             (model_name, want))
                if inserted or row["uri"] == uri:
                    return _model(row)
                if version != 0:
                    raise FailedPrecondition(
                        f"model {model_name} version {want} is already registered with uri "
                        f"{row['uri']!r}, not {uri!r}; register the new weights as a new version")
            raise FailedPrecondition(f"could not allocate a version for model {model_name}")
        return self.db.run(txn)

    def list_model_versions(self, model_name: str = "") -> list[ModelVersion]:
        def txn(tx: Tx) -> list[ModelVersion]:
            if model_name:
                rows = tx.all("SELECT * FROM model_versions WHERE model_name = ? ORDER BY version",
                              (model_name,))
            else:
                rows = tx.all("SELECT * FROM model_versions ORDER BY model_name, version")
            return [_model(r) for r in rows]
        return self.db.run(txn, write=False)

    def get_model_version(self, model_name: str, version: int = 0) -> ModelVersion:
        """A registered version; version 0 = the current (highest) one."""
        def txn(tx: Tx) -> ModelVersion:
            if version:
                r = tx.one("SELECT * FROM model_versions WHERE model_name = ? AND version = ?",
                           (model_name, version))
            else:
                r = tx.one("SELECT * FROM model_versions WHERE model_name = ? "
                           "ORDER BY version DESC LIMIT 1", (model_name,))
            if r is None:
                raise NotFound(f"model {model_name!r} has no registered version"
                               f"{f' {version}' if version else ''}")
            return _model(r)
        return self.db.run(txn, write=False)

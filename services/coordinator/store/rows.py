"""The store's rows as the coordinator's records, the SELECTs that read them, and ids."""
from __future__ import annotations

import base64
import hashlib
import json
import uuid

import numpy as np

from segxal.eem.options import EEMOptions
from segxal.labels import CLASS_NAMES
from segxal.selection import SelectionSpec
from services.coordinator.domain import (
    CYCLE_CLOSED, CYCLE_COMPLETE, CYCLE_LABELING, CYCLE_STARTED, Annotation, BudgetLimits, Cycle, Frame,
    ModelVersion, Pool, Task, regions_from_json)


_BATCH = 500  # rows per multi-row statement / IN list


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def frame_id_for(pool_id: str, uri: str) -> str:
    """Deterministic: the same URI in the same pool is the same frame, so ingest is idempotent."""
    return "f_" + hashlib.sha256(f"{pool_id}\0{uri}".encode()).hexdigest()[:24]


def vector_to_text(v: np.ndarray | None) -> str:
    """A float vector as stored (base64 of float32); '' for none."""
    return "" if v is None or len(v) == 0 else base64.b64encode(np.asarray(v, np.float32).tobytes()).decode()


def vector_from_text(text: str | None) -> np.ndarray | None:
    return np.frombuffer(base64.b64decode(text), np.float32).copy() if text else None


# ---------------------------------------------------------------- rows -> records

_POOL_SELECT = """
SELECT p.pool_id, p.name, p.max_frames, p.max_regions, p.max_pixels, p.created_at, p.class_names,
       (SELECT COUNT(*) FROM frames f WHERE f.pool_id = p.pool_id) AS frame_count,
       (SELECT COUNT(*) FROM frames f WHERE f.pool_id = p.pool_id
                                         AND f.retired = 0 AND f.fully_labeled = 0) AS queryable
FROM pools p"""

_CYCLE_SELECT = """
SELECT c.cycle_id, c.pool_id, c.number, c.selection, c.model_name, c.model_version, c.batch_size,
       c.dice_threshold, c.random_seed, c.started_at, c.ranked_at, c.closed_at, c.eem_options,
       c.selection_spec,
       m.uri AS model_uri, m.registered_at AS model_registered_at,
       (SELECT COUNT(*) FROM tasks t WHERE t.cycle_id = c.cycle_id
                                       AND t.state IN ('open', 'leased')) AS unfinished,
       (SELECT COUNT(*) FROM tasks t WHERE t.cycle_id = c.cycle_id) AS task_total
FROM cycles c LEFT JOIN model_versions m
  ON m.model_name = c.model_name AND m.version = c.model_version"""

_TASK_SELECT = """
SELECT t.task_id, t.cycle_id, t.pool_id, t.frame_id, f.uri AS frame_uri, f.width, f.height,
       f.label_uri, t.score, t.rank, t.regions, t.prediction_uri, t.state, t.lease_owner,
       t.lease_token, t.previous_lease_token, t.lease_expires_at, t.lease_count, c.model_name, c.model_version,
       t.reasons,
       c.dice_threshold
FROM tasks t JOIN frames f ON f.frame_id = t.frame_id JOIN cycles c ON c.cycle_id = t.cycle_id"""

_ANNOTATION_SELECT = """
SELECT a.*, f.uri AS frame_uri FROM annotations a JOIN frames f ON f.frame_id = a.frame_id"""


def _pool(r: dict) -> Pool:
    return Pool(pool_id=r["pool_id"], name=r["name"],
                budget=BudgetLimits(int(r["max_frames"]), int(r["max_regions"]), int(r["max_pixels"])),
                created_at=float(r["created_at"]), frame_count=int(r["frame_count"]),
                queryable_frame_count=int(r["queryable"]),
                class_names=tuple(json.loads(r["class_names"])) if r["class_names"] else tuple(CLASS_NAMES))


def _frame(r: dict) -> Frame:
    return Frame(frame_id=r["frame_id"], pool_id=r["pool_id"], uri=r["uri"], source=r["source"],
                 timestamp_ns=int(r["timestamp_ns"]), width=int(r["width"]), height=int(r["height"]),
                 label_uri=r["label_uri"], retired=bool(r["retired"]),
                 fully_labeled=bool(r["fully_labeled"]), annotation_count=int(r["annotation_count"]))


def _model(r: dict) -> ModelVersion:
    return ModelVersion(model_name=r["model_name"], version=int(r["version"]), uri=r["uri"],
                        registered_at=float(r["registered_at"]))


def _cycle(r: dict) -> Cycle:
    if r["closed_at"] is not None:
        state = CYCLE_CLOSED
    elif r["ranked_at"] is None or int(r["task_total"]) == 0:
        state = CYCLE_STARTED  # not ranked, or ranking found nothing to label (yet)
    elif int(r["unfinished"]) > 0:
        state = CYCLE_LABELING
    else:
        state = CYCLE_COMPLETE
    model = None
    if r["model_name"] is not None:
        model = ModelVersion(r["model_name"], int(r["model_version"]), r["model_uri"] or "",
                             float(r["model_registered_at"] or 0.0))
    return Cycle(cycle_id=r["cycle_id"], pool_id=r["pool_id"], number=int(r["number"]),
                 selection=r["selection"], model=model, batch_size=int(r["batch_size"]),
                 dice_threshold=float(r["dice_threshold"]), random_seed=int(r["random_seed"]),
                 started_at=float(r["started_at"]), ranked_at=r["ranked_at"], closed_at=r["closed_at"],
                 state=state,
                 eem=EEMOptions.from_dict(json.loads(r["eem_options"])) if r["eem_options"] else EEMOptions(),
                 selection_spec=(SelectionSpec.from_dict(json.loads(r["selection_spec"])) if r["selection_spec"]
                                 else SelectionSpec()))


def _task(r: dict, with_token: bool = False) -> Task:
    model = (ModelVersion(r["model_name"], int(r["model_version"]))
             if r["model_name"] is not None else None)
    return Task(task_id=r["task_id"], cycle_id=r["cycle_id"], pool_id=r["pool_id"],
                frame_id=r["frame_id"], frame_uri=r["frame_uri"], width=int(r["width"]),
                height=int(r["height"]), score=float(r["score"]), rank=int(r["rank"]),
                regions=regions_from_json(r["regions"]), model=model,
                prediction_uri=r["prediction_uri"], state=r["state"], lease_owner=r["lease_owner"],
                lease_token=r["lease_token"] if with_token else "",
                lease_expires_at=float(r["lease_expires_at"]), lease_count=int(r["lease_count"]),
                label_uri=r["label_uri"], dice_threshold=float(r["dice_threshold"]),
                previous_lease_token=r["previous_lease_token"] if with_token else "",
                reasons=json.loads(r["reasons"]) if r["reasons"] else None)


def _annotation(r: dict) -> Annotation:
    return Annotation(
        annotation_id=r["annotation_id"], task_id=r["task_id"], cycle_id=r["cycle_id"],
        pool_id=r["pool_id"], frame_id=r["frame_id"], frame_uri=r["frame_uri"],
        client_id=r["client_id"], scope=r["scope"], region_ids=tuple(json.loads(r["region_ids"])),
        mask_uri=r["mask_uri"], regions_count=int(r["regions_count"]),
        pixels_count=int(r["pixels_count"]), dice=None if r["dice"] is None else float(r["dice"]),
        frame_retired=bool(r["frame_retired"]), created_at=float(r["created_at"]),
        content_sha256=r["content_sha256"], idempotency_key=r["idempotency_key"])

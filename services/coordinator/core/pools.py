"""Pools, their frames and ingest (image folders, Cityscapes layouts, drive logs), inside the
allowed roots."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from segxal.errors import InvalidInput, NotFound, PermissionDenied
from segxal.labels import CLASS_NAMES, check_class_names
from segxal.ingest import (
    DEFAULT_NEAR_DUPLICATE_THRESHOLD, IngestCounters, IngestedFrame, extract_drive_log, iter_cityscapes,
    iter_image_folder)
from services.coordinator.config import CoordinatorConfig
from services.coordinator.domain import BudgetLimits, IngestSourceResult, Page, Pool
from services.coordinator.ranking import FrameScorer
from services.coordinator.store.store import CoordinatorStore


IMAGE_FOLDER, CITYSCAPES, DRIVE_LOG = "image_folder", "cityscapes", "drive_log"
_INGEST_BATCH = 500  # frames per insert transaction
_MAX_PAGE = 10_000
# Pool names: the one rule on every backend (PostgreSQL refuses NUL in text and fails on index
# rows over ~2.7 kB, SQLite takes anything): printable, at most this many characters.
MAX_POOL_NAME_CHARS = 200


def check_pool_name(name: str, what: str) -> str:
    """The pool name, stripped of surrounding spaces.

    Raises:
        InvalidInput: empty, longer than MAX_POOL_NAME_CHARS, or holding a control character
            (the message names the rule and the first offending character's position).
    """
    name = name.strip()
    if not name:
        raise InvalidInput(f"{what}: pool name is required")
    if len(name) > MAX_POOL_NAME_CHARS:
        raise InvalidInput(f"{what}: pool name has {len(name)} characters, over the limit of "
                           f"{MAX_POOL_NAME_CHARS}")
    for i, ch in enumerate(name):
        if unicodedata.category(ch) in ("Cc", "Cs"):  # C0/C1 controls (NUL, newline, DEL...), lone surrogates
            raise InvalidInput(f"{what}: pool name may not contain control characters; U+{ord(ch):04X} "
                               f"at position {i}")
    return name


@dataclass(frozen=True)
class IngestSource:
    kind: str  # IMAGE_FOLDER, CITYSCAPES or DRIVE_LOG
    path: str  # folder, Cityscapes root, or .mcap file
    recursive: bool = False                      # image folders
    split: str = ""                              # Cityscapes
    require_labels: bool = False                 # Cityscapes
    topics: tuple[str, ...] = ()                 # drive logs; empty = every image topic
    near_duplicate_threshold: float | None = None  # drive logs; None = the default
    min_gap_s: float = 0.0                       # drive logs: per topic, least time between kept frames


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidInput(f"page_size must be >= 0, got {requested}")
    return min(requested or 1000, _MAX_PAGE)


class PoolsAndIngest:
    """Part of Coordinator (services/coordinator/coordinator.py)."""

    store: CoordinatorStore
    cfg: CoordinatorConfig
    scorer: FrameScorer | None
    storage: Path

    def create_pool(self, name: str, limits: BudgetLimits, class_names: tuple[str, ...] = ()) -> Pool:
        """A new pool; `class_names` are its classes (index = class id), empty: Cityscapes.

        Raises:
            InvalidInput: no name, a name over MAX_POOL_NAME_CHARS or with a control character,
                negative limits, a bad class list. FailedPrecondition: the name is taken.
        """
        name = check_pool_name(name, "create pool")
        if min(limits.max_frames, limits.max_regions, limits.max_pixels) < 0:
            raise InvalidInput(f"create pool: budget limits must be >= 0 (0 = unlimited), got {limits}")
        classes = check_class_names(class_names, "create pool") if class_names else tuple(CLASS_NAMES)
        return self.store.create_pool(name, limits, classes)

    def get_pool(self, pool_id: str = "", name: str = "") -> Pool:
        if not pool_id and not name:
            raise InvalidInput("get pool: give pool_id or name")
        if not pool_id:  # a name that no pool can have is refused the same way on every backend
            name = check_pool_name(name, "get pool")
        return self.store.get_pool(pool_id=pool_id, name=name)

    def list_pools(self) -> list[Pool]:
        return self.store.list_pools()

    def list_frames(self, pool_id: str, page_token: str, page_size: int) -> Page:
        limit = _page_size(page_size)
        frames = self.store.list_frames(pool_id, page_token, limit)
        return Page(frames, frames[-1].frame_id if len(frames) == limit else "")

    def _allowed_path(self, path: str) -> Path:
        if not path:
            raise InvalidInput("ingest: source path is required")
        p = Path(path).resolve()
        roots = [Path(r).resolve() for r in self.cfg.ingest_roots]
        if roots and not any(p.is_relative_to(r) for r in roots):
            raise PermissionDenied(f"{p}: outside the ingest roots {[str(r) for r in roots]}")
        return p

    def _frames_of(self, source: IngestSource, counters: IngestCounters) -> Iterator[IngestedFrame]:
        path = self._allowed_path(source.path)
        if source.kind == IMAGE_FOLDER:
            return iter_image_folder(path, source.recursive, counters)
        if source.kind == CITYSCAPES:
            if not source.split:
                raise InvalidInput(f"{path}: Cityscapes source needs a split (e.g. 'train')")
            return iter_cityscapes(path, source.split, source.require_labels, counters)
        if source.kind == DRIVE_LOG:
            thr = (DEFAULT_NEAR_DUPLICATE_THRESHOLD if source.near_duplicate_threshold is None
                   else source.near_duplicate_threshold)
            return extract_drive_log(path, self.storage, source.topics or None, thr, counters, source.min_gap_s)
        raise InvalidInput(f"ingest: unknown source kind {source.kind!r}")

    def _ingest_one(self, pool_id: str, source: IngestSource) -> IngestSourceResult:
        counters = IngestCounters()
        added = present = 0
        batch: list[IngestedFrame] = []
        error = ""

        def flush() -> None:
            nonlocal added, present
            if batch:
                a, p = self.store.add_frames(pool_id, batch)
                added, present = added + a, present + p
                batch.clear()

        try:
            frames = self._frames_of(source, counters)
            for rec in frames:
                batch.append(rec)
                if len(batch) >= _INGEST_BATCH:
                    flush()
        # Only errors of reading this source end it (NotFound, InvalidInput, PermissionDenied);
        # a database that is down (NotReady) fails the whole call.
        except (NotFound, InvalidInput, PermissionDenied) as e:
            error = str(e)
        flush()  # the frames read before an error are kept
        return IngestSourceResult(source=source.path, frames_added=added, frames_already_present=present,
                                  frames_skipped_near_duplicate=counters.frames_skipped_near_duplicate,
                                  frames_skipped_min_gap=counters.frames_skipped_min_gap,
                                  frames_skipped_unreadable=counters.frames_skipped_unreadable,
                                  error=error)

    def ingest(self, pool_id: str, sources: Sequence[IngestSource]) -> tuple[list[IngestSourceResult], Pool]:
        """Add every source's frames to a pool; a failing source reports its error and the others
        (and its frames read before the failure) are kept.

        Raises:
            NotFound: no such pool.
            InvalidInput: no sources.
        """
        if not sources:
            raise InvalidInput("ingest: give at least one source")
        self.store.get_pool(pool_id)
        results = [self._ingest_one(pool_id, s) for s in sources]
        return results, self.store.get_pool(pool_id)

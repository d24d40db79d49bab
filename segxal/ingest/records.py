"""What an ingest yields: one record per frame, and the counters a source fills in as it goes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestedFrame:
    uri: str               # absolute local path of the image on shared storage
    source: str            # where it came from, e.g. "mcap:/logs/a.mcap#/camera/front"
    timestamp_ns: int = 0  # capture time (drive logs); 0 when the source has none
    width: int = 0         # 0 when not read at ingest (folders: read when the frame is first needed)
    height: int = 0
    label_uri: str = ""    # ground-truth labelIds PNG, when the source has one


@dataclass
class IngestCounters:
    """Filled in by a source while it is read (so the numbers survive an error part-way)."""
    frames_read: int = 0
    frames_skipped_near_duplicate: int = 0
    frames_skipped_min_gap: int = 0  # drive logs: closer in time than the sampling gap
    frames_skipped_unreadable: int = 0  # drive logs: an unsupported encoding, unreadable bytes, over the pixel limit

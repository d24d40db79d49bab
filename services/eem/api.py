"""The EEM scoring service's request and result types in Python, shared by the pipeline (which
fills them), the wire conversion (services.eem.wire) and the client (which returns them), so the
coordinator sees the same objects whether it scores in process or through the service.

No gRPC here; the EEM maths options are segxal.eem.options.EEMOptions, the very ones the
in-process loop uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.eem.health import CamHealth
from segxal.eem.regions import Region
from segxal.errors import InvalidInput, SegxalError

MAP_KINDS = ("ebu", "cam", "proximity", "eem")
MAP_BITS = (8, 16)


@dataclass
class ScoreOptions:
    """Per-request options: the EEM maths and what to send back.

    The defaults send back the score only: maps and label PNGs are the bulk of a reply, and a
    ranking pass over a pool needs none of them.
    """

    eem: EEMOptions = field(default_factory=EEMOptions)
    maps: tuple[str, ...] = ()  # subset of MAP_KINDS
    map_bits: int = 8  # PNG depth of the maps: 8 or 16
    regions: bool = False
    labels: bool = False  # the predicted trainId map as 8-bit PNG (the coordinator's DICE needs it)

    def validate(self) -> "ScoreOptions":
        """Raises:
            InvalidInput: bad EEM options (NaN or infinite numbers, alpha + beta != 1, a negative
                threshold...), an unknown map kind or bit depth.
        """
        self.eem.validate()  # before the frame is read and inferred, not after
        unknown = [m for m in self.maps if m not in MAP_KINDS]
        if unknown:
            raise InvalidInput(f"unknown map kinds {unknown}; expected some of {MAP_KINDS}")
        if self.map_bits not in MAP_BITS:
            raise InvalidInput(f"map bit depth must be 8 or 16, got {self.map_bits}")
        return self


@dataclass
class FrameRequest:
    """One frame to score: where it is, the caller's tag, the options."""
    uri: str
    frame_id: str = ""
    options: ScoreOptions = field(default_factory=ScoreOptions)
    rejected: SegxalError | None = None  # the request could not be decoded: fail with this


@dataclass
class Stats:
    """Counters since the server started; latencies over the most recent frames (bounded window)."""

    frames_scored: int
    frames_failed: int
    in_flight: int
    latency_ms_mean: float
    latency_ms_p50: float
    latency_ms_p95: float
    uptime_s: float
    # scored frames whose CAM was all zero or constant (segxal.eem.health): PAE = 0 for them, the
    # EEM fell back to alpha * EBU; a rising share means the explanation term has died
    frames_cam_degenerate: int = 0
    # CAM health per segmentation model version (segxal.eem.health: dead share, corr(CAM, EBU),
    # the two flags), most recently used last
    cam_health: list[CamHealth] = field(default_factory=list)


@dataclass
class ModelVersions:
    segmentation: str = ""  # "<model>:<version>" that produced labels, EBU and CAM
    depth: str = ""  # "<model>:<version>" that produced the proximity


@dataclass
class ScoredFrame:
    """One frame's result, or its error.

    Maps and labels stay PNG-encoded (as they travel); `map()` and `labels()` decode on demand
    through the one codec (segxal.imageio).
    """

    frame_id: str
    uri: str
    error: SegxalError | None = None  # set when this frame failed; the rest is then empty
    score: float = 0.0
    height: int = 0
    width: int = 0
    model_versions: ModelVersions = field(default_factory=ModelVersions)
    threshold: float = 0.0  # EEM threshold of the regions (fixed or Otsu's); 0 without regions
    maps_png: dict[str, bytes] = field(default_factory=dict)  # kind -> grey PNG
    map_bits: int = 8
    regions: list[Region] = field(default_factory=list)
    labels_png: bytes = b""
    latency_ms: float = 0.0
    cam_degenerate: bool = False  # the CAM carried no spatial information (all zero or constant)
    cam_layer: str = ""  # where the CAM came from; "none": no CAM, scored with EBU alone
    class_names: tuple[str, ...] = ()  # the segmentation model's classes (empty: not said)
    # float32 [D], L2-normalised: the segmentation graph's `embedding` output; empty when the model has none
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # float32 [C]: share of the frame's predicted pixels per class (sums to 1); empty on errors
    class_histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def ebu_only(self) -> bool:
        """True when the segmentation model has no CAM and the frame was scored with EBU alone."""
        return self.cam_layer == "none"

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> "ScoredFrame":
        """Raises the frame's error (our exception, e.g. InvalidInput), else returns self."""
        if self.error is not None:
            raise self.error
        return self

    def map(self, kind: str) -> np.ndarray:
        """A returned map as float32 [H, W] in [0, 1] (quantised to map_bits).

        Raises:
            InvalidInput: the map was not requested.
        """
        if kind not in self.maps_png:
            raise InvalidInput(f"{self.uri}: map {kind!r} was not returned; request it in ScoreOptions.maps")
        q = imageio.decode_image(self.maps_png[kind], where=f"{self.uri} {kind} map", mode=None)
        return (q.astype(np.float32) / np.float32(2 ** self.map_bits - 1))  # [H, W]

    def labels(self) -> np.ndarray:
        """Predicted trainIds uint8 [H, W].

        Raises:
            InvalidInput: labels were not requested.
        """
        if not self.labels_png:
            raise InvalidInput(f"{self.uri}: labels were not returned; set ScoreOptions.labels")
        return imageio.decode_image(self.labels_png, where=f"{self.uri} labels", mode=None)


def quantise_map(values: np.ndarray, bits: int) -> np.ndarray:
    """float map in [0, 1] -> uint8 (bits=8) or uint16 (bits=16), round to nearest."""
    top = 2 ** bits - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.rint(np.clip(values, 0.0, 1.0) * top).astype(dtype)  # [H, W]

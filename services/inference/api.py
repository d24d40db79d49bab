"""The inference core's request and result types: plain Python, no gRPC. The servicer's codec
(services.inference.protocol) fills them from protocol messages and turns them back; the model
manager (services.inference.model_manager) consumes and produces them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InferRequest:
    model: str
    version: int | None  # None: the version policy picks (latest)
    inputs: dict[str, np.ndarray]  # name -> [batch, ...], possibly read-only views on the message
    outputs: list[str] | None  # requested output names; None = all
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    request_id: str = ""


@dataclass
class InferResult:
    model: str
    version: int
    outputs: dict[str, np.ndarray]  # in response order
    request_id: str = ""


@dataclass
class ModelStatus:
    """One row of the repository index."""
    name: str
    version: str  # "" for a model with no version loaded
    state: str  # "READY" | "UNAVAILABLE"
    reason: str = ""

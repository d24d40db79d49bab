"""Admission by work, not bytes: a request is admitted by the pixels it asks the model to process.

A request's memory is set by its pixels (every activation of a convolutional network is a
multiple of height x width), not by its bytes on the wire: a uint8 2048 x 4096 frame is 24 MiB
on the wire and ~2 GB of activations. So the server counts pixels: one request may hold at most
`max_request_pixels`, and all requests being processed together at most `max_inflight_pixels`;
a request that fits waits (until its deadline) for room, one that can never fit is refused at
once with RESOURCE_EXHAUSTED. Both limits are a memory budget divided by the peak bytes per pixel
measured with bench/inference_memory.py (DEFAULT_BYTES_PER_PIXEL).
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

import numpy as np

from segxal.errors import InvalidInput, ResourceExhausted
from services.common.errors import DeadlineExceeded

# Peak RSS growth per pixel of one request over the server's RSS before it, measured with
# bench/inference_memory.py on the default U-Net (width 32, depth 4; the depth network needs
# ~110 B/px), at 256 x 512 to 1024 x 2048, the first request at a shape and the one after it:
# 842-1,138 B/px for the first, 1,181-1,244 B/px again (ONNX Runtime allocates the shape's
# memory-pattern block on the second run). An earlier 600 B/px left out both the second run and
# the arena's power-of-two growth, and a 1024 x 2048 request took ~1,200 B/px. Rounded up from
# the worst figure; runs over RuntimeConfig.arena_keep_pixels give their arena growth back, so
# the figure holds for every admitted request on a server that has served others before.
DEFAULT_BYTES_PER_PIXEL = 1400
# Activations of requests in flight, all models together: 3.07 Mpx at 1,400 B/px, so one
# 1024 x 2048 frame (2.1 Mpx) at a time, and no request over 3.07 Mpx (a 1216 x 2432 frame fits).
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 2**30
_NO_DEADLINE_WAIT_S = 60.0  # a request without a deadline waits this long for room at most


def request_pixels(inputs: dict[str, np.ndarray], layout: str) -> int:
    """The pixels a request asks for: batch x height x width of its image input (layout NHWC /
    NCHW, 4-D), else the element count of its largest input (a model without an image layout).

    Args:
        inputs: name -> array, already checked against the model.
        layout: the model's input_layout parameter ("NHWC", "NCHW" or "").

    Returns:
        The largest such count over the inputs.
    """
    pixels = 0
    for array in inputs.values():
        if array.ndim == 4 and layout in ("NHWC", "NCHW"):
            b, (h, w) = array.shape[0], (array.shape[1:3] if layout == "NHWC" else array.shape[2:4])
            pixels = max(pixels, b * h * w)
        else:
            pixels = max(pixels, int(array.size))
    return pixels


class PixelAdmission:
    """Counts the pixels in flight and admits requests while they fit. Thread-safe.

    Limits and the count are in pixels at `bytes_per_pixel`; a model with a figure of its own
    (its config's `bytes_per_pixel` parameter) weighs each pixel by its figure / this one, so a
    light model (the depth network, ~110 B/px) may take larger requests and a heavy one smaller.

    Args:
        max_request_pixels: the most one request may ask for (0 = no limit at all).
        max_inflight_pixels: the most all admitted requests may hold together (>= max_request_pixels).
        bytes_per_pixel: the measured figure the limits come from (named in refusals).
    """

    def __init__(self, max_request_pixels: int, max_inflight_pixels: int,
                 bytes_per_pixel: int = DEFAULT_BYTES_PER_PIXEL):
        self.max_request_pixels = max_request_pixels
        self.max_inflight_pixels = max(max_inflight_pixels, max_request_pixels)
        self.bytes_per_pixel = bytes_per_pixel
        self._inflight = 0
        self._cond = threading.Condition()

    @classmethod
    def from_budget(cls, memory_budget_bytes: int, bytes_per_pixel: int = DEFAULT_BYTES_PER_PIXEL
                    ) -> "PixelAdmission":
        """Limits from a memory budget: one request and all in flight may use all of it.

        Raises:
            InvalidInput: a budget with a bytes-per-pixel figure that is not positive.
        """
        if memory_budget_bytes > 0 and bytes_per_pixel <= 0:
            raise InvalidInput(f"bytes per pixel must be positive, got {bytes_per_pixel}")
        pixels = memory_budget_bytes // bytes_per_pixel if memory_budget_bytes > 0 else 0
        return cls(pixels, pixels, bytes_per_pixel)

    @property
    def inflight_pixels(self) -> int:
        return self._inflight

    @contextlib.contextmanager
    def admit(self, model: str, pixels: int, deadline: float | None,
              bytes_per_pixel: int | None = None) -> Iterator[None]:
        """Hold `pixels` of the budget while the block runs.

        Args:
            model: for messages.
            pixels: the request's pixels (request_pixels).
            deadline: time.monotonic() by which the request must have run (None: none).
            bytes_per_pixel: the model's own measured figure (None: the server's).

        Raises:
            ResourceExhausted: more pixels than one request may have (the message states the limit
                and the bytes per pixel it comes from), or no room before the deadline.
            DeadlineExceeded: the deadline passed while waiting for room.
        """
        if self.max_request_pixels <= 0:
            yield
            return
        bpp = bytes_per_pixel or self.bytes_per_pixel
        limit = self.max_request_pixels * self.bytes_per_pixel // bpp  # in this model's pixels
        if pixels > limit:
            raise ResourceExhausted(
                f"model {model!r}: the request has {pixels} pixels, over the limit of {limit} "
                f"pixels per request (memory budget / {bpp} bytes per pixel measured); "
                f"send smaller images or fewer per request")
        pixels = -(-pixels * bpp // self.bytes_per_pixel)  # in the server's pixels, rounded up
        wait_until = deadline if deadline is not None else time.monotonic() + _NO_DEADLINE_WAIT_S
        with self._cond:
            while self._inflight + pixels > self.max_inflight_pixels:
                left = wait_until - time.monotonic()
                if left <= 0:
                    if deadline is not None:
                        raise DeadlineExceeded(f"model {model!r}: deadline passed waiting for memory "
                                               f"({self._inflight} pixels in flight)")
                    raise ResourceExhausted(f"model {model!r}: busy, {self._inflight} of "
                                            f"{self.max_inflight_pixels} pixels in flight; retry")
                self._cond.wait(left)
            self._inflight += pixels
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= pixels
                self._cond.notify_all()

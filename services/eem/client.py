"""The client of the EEM scoring service (the coordinator's way to rank frames).

    with EemClient("localhost:50053") as eem:
        frame = eem.score("/data/leftImg8bit/train/x/x_000000_000001_leftImg8bit.png",
                          ScoreOptions(regions=True, labels=True))
        frame.score, frame.regions, frame.labels()
        for frame in eem.score_stream(uris, ScoreOptions()):
            if frame.ok: ...               # results come as they finish, tagged with frame_id/uri
            else: frame.error              # our exception for that frame; the stream goes on

Channels come from services.common.channel (message size, keepalive, TLS, token, round_robin over
replicas). Errors of a whole call are our exceptions (segxal.errors), mapped from the status code.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import grpc

from segxalpb.eem.v1 import eem_pb2, eem_pb2_grpc
from services.common.health import is_serving, wait_until_serving
from services.common.channel import ChannelConfig, make_channel
from services.common.errors import error_from_rpc
from services.eem import wire
from services.eem.api import ScoredFrame, ScoreOptions, Stats
from services.eem.wire import SERVICE_NAME

FrameRef = str | tuple[str, str]  # a URI, or (frame_id, uri)


def _ref(item: FrameRef) -> tuple[str, str]:
    return ("", item) if isinstance(item, str) else (item[0], item[1])


class EemClient:
    """Thread-safe client; a context manager that closes its channel.

    Args:
        target: "host:port", "h1:p1,h2:p2" or "dns:///svc:port" (services.common.channel).
        channel_cfg: message size, keepalive, TLS, token; defaults as ChannelConfig.
        timeout_s: deadline of a single-frame call and of stats calls (None: none).
    """

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None, *, timeout_s: float | None = 60.0):
        self.target = target
        self.timeout_s = timeout_s
        self._channel = make_channel(target, channel_cfg)
        self._stub = eem_pb2_grpc.EemScoringStub(self._channel)

    def __enter__(self) -> "EemClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def score(self, uri: str, options: ScoreOptions | None = None, *, frame_id: str = "",
              timeout_s: float | None = None) -> ScoredFrame:
        """Score one frame.

        Raises:
            InvalidInput: bad options, corrupt image, wrong size (message names the frame).
            NotFound / PermissionDenied: missing frame / outside the server's storage roots.
            NotReady: the service or an inference backend is down, or the deadline passed.
        """
        request = wire.request_to_proto(uri, frame_id, options or ScoreOptions())
        try:
            reply = self._stub.ScoreFrame(request, timeout=timeout_s if timeout_s is not None else self.timeout_s)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return wire.result_from_proto(reply)

    def score_stream(self, frames: Iterable[FrameRef], options: ScoreOptions | None = None, *,
                     timeout_s: float | None = None) -> Iterator[ScoredFrame]:
        """Score many frames over one stream; results as they finish (match them by frame_id/uri).

        Args:
            frames: URIs, or (frame_id, uri) pairs; consumed lazily as the server asks for more.
            options: the same options for every frame.
            timeout_s: deadline of the whole stream (None: no deadline).

        Yields:
            ScoredFrame per frame; a frame that failed has `.error` set and the stream goes on.

        Raises:
            NotReady etc.: the stream as a whole failed (service down, deadline passed).
        """
        opts = wire.options_to_proto(options or ScoreOptions())
        requests = (eem_pb2.ScoreRequest(frame_id=fid, uri=uri, options=opts)
                    for fid, uri in map(_ref, frames))
        call = self._stub.ScoreStream(requests, timeout=timeout_s)
        try:
            for reply in call:
                yield wire.result_from_proto(reply)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        finally:
            call.cancel()  # the caller stopped early: stop the server's work too (no-op when done)

    def stats(self) -> Stats:
        """Counters and latency of the server process."""
        try:
            return wire.stats_from_proto(self._stub.GetStats(eem_pb2.GetStatsRequest(), timeout=self.timeout_s))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def is_serving(self) -> bool:
        """grpc.health.v1 says SERVING."""
        return is_serving(self._channel, SERVICE_NAME, self.timeout_s)

    def wait_until_serving(self, timeout_s: float = 30.0) -> None:
        """Raises:
            NotReady: not SERVING within timeout_s.
        """
        wait_until_serving(self._channel, SERVICE_NAME, f"EEM scoring at {self.target}", timeout_s)

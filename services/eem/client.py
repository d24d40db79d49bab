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

from segxalpb.eem.v1 import eem_pb2, eem_pb2_grpc
from services.common.channel import ChannelConfig
from services.common.client import NO_DEADLINE, GrpcClient
from services.eem import wire
from services.eem.api import ScoredFrame, ScoreOptions, Stats
from services.eem.wire import SERVICE_NAME

FrameRef = str | tuple[str, str]  # a URI, or (frame_id, uri)


def _ref(item: FrameRef) -> tuple[str, str]:
    return ("", item) if isinstance(item, str) else (item[0], item[1])


class EemClient(GrpcClient):
    """Thread-safe client; a context manager that closes its channel (services.common.client.GrpcClient:
    deadlines, errors, health).

    Args:
        target: "host:port", "h1:p1,h2:p2" or "dns:///svc:port" (services.common.channel).
        channel_cfg: message size, keepalive, TLS, token; defaults as ChannelConfig.
        timeout_s: default deadline of each call (None: none); score_stream states its own.
    """

    stub_class = eem_pb2_grpc.EemScoringStub
    service_name = SERVICE_NAME
    what = "EEM scoring"

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None, *, timeout_s: float | None = 60.0):
        super().__init__(target, channel_cfg, timeout_s=timeout_s)

    def score(self, uri: str, options: ScoreOptions | None = None, *, frame_id: str = "",
              timeout_s: float | None = None) -> ScoredFrame:
        """Score one frame (timeout_s: None = the client's default).

        Raises:
            InvalidInput: bad options, corrupt image, wrong size (message names the frame).
            NotFound / PermissionDenied: missing frame / outside the server's storage roots.
            NotReady: the service or an inference backend is down, or the deadline passed.
        """
        request = wire.request_to_proto(uri, frame_id, options or ScoreOptions())
        return wire.result_from_proto(self._call("ScoreFrame", request, timeout_s))

    def score_stream(self, frames: Iterable[FrameRef], options: ScoreOptions | None = None, *,
                     timeout_s: float | None = NO_DEADLINE) -> Iterator[ScoredFrame]:
        """Score many frames over one stream; results as they finish (match them by frame_id/uri).

        Args:
            frames: URIs, or (frame_id, uri) pairs; consumed lazily as the server asks for more.
            options: the same options for every frame.
            timeout_s: deadline of the whole stream (default: none, a pool takes as long as it
                takes; None: the client's default).

        Yields:
            ScoredFrame per frame; a frame that failed has `.error` set and the stream goes on.

        Raises:
            NotReady etc.: the stream as a whole failed (service down, deadline passed).
        """
        opts = wire.options_to_proto(options or ScoreOptions())
        requests = (eem_pb2.ScoreRequest(frame_id=fid, uri=uri, options=opts)
                    for fid, uri in map(_ref, frames))
        for reply in self._stream("ScoreStream", requests, timeout_s):
            yield wire.result_from_proto(reply)

    def stats(self) -> Stats:
        """Counters and latency of the server process."""
        return wire.stats_from_proto(self._call("GetStats", eem_pb2.GetStatsRequest()))

"""The one client base (services.common.client.GrpcClient): every client applies deadlines by one
rule and maps errors one way. A real gRPC server answers any method of any service and records
the deadline each call arrived with."""
from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from segxal.errors import NotFound, NotReady
from segxalpb.trainer.v1 import trainer_pb2
from services.common.client import NO_DEADLINE, GrpcClient
from services.coordinator.client import CoordinatorClient
from services.eem.client import EemClient
from services.trainer.client import TrainerClient


class _AnyMethod(grpc.GenericRpcHandler):
    """Answers every method with an empty message (valid for any reply type), or NOT_FOUND for
    methods whose name contains 'Missing'; records (method, seconds left or None)."""

    def __init__(self):
        self.seen: list[tuple[str, float | None]] = []

    def service(self, details):
        method = details.method

        def unary(request, context):
            self.seen.append((method, context.time_remaining()))
            return b""

        def stream(request_or_iterator, context):
            self.seen.append((method, context.time_remaining()))
            return iter(())

        if method.endswith(("ScoreStream", "WatchJob")):
            handler = (grpc.stream_stream_rpc_method_handler if method.endswith("ScoreStream")
                       else grpc.unary_stream_rpc_method_handler)
            return handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture(scope="module")
def any_server():
    handler = _AnyMethod()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", handler
    server.stop(0).wait()


def _deadline_of(handler, call) -> float | None:
    handler.seen.clear()
    call()
    ((_, left),) = handler.seen
    return None if left is None or left > 1e6 else left  # no deadline: gRPC reports the far future


# (client class, a call that takes a per-call timeout_s, a stream that does)
CALLS = {
    "coordinator": (CoordinatorClient, lambda c, t: c.rank_cycle("c", timeout_s=t),
                    lambda c, t: c.ingest("p", [], timeout_s=t)),
    "eem": (EemClient, lambda c, t: c.score("/x.png", timeout_s=t),
            lambda c, t: list(c.score_stream(["/x.png"], timeout_s=t))),
    "trainer": (TrainerClient, lambda c, t: c._call("ListJobs", trainer_pb2.ListJobsRequest(), t),
                lambda c, t: list(c.watch("j", timeout_s=t))),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_client_reads_timeout_none_as_its_default_and_no_deadline_as_none(any_server, name):
    """For every client and call: timeout_s=None = the client's default, NO_DEADLINE = none, a
    number = that many seconds (the coordinator and EEM clients once read None differently)."""
    target, handler = any_server
    cls, call, stream = CALLS[name]
    with cls(target, timeout_s=40.0) as client:
        for fn in (call, stream):
            left = _deadline_of(handler, lambda: fn(client, None))
            assert left is not None and 0 < left <= 41.0  # the header rounds: allow a second
            left = _deadline_of(handler, lambda: fn(client, 50.0))
            assert left is not None and 41.0 < left <= 51.0
        assert _deadline_of(handler, lambda: stream(client, NO_DEADLINE)) is None
    with cls(target, timeout_s=None) as client:  # no default deadline
        assert _deadline_of(handler, lambda: call(client, None)) is None


def test_the_long_calls_default_to_no_deadline(any_server):
    target, handler = any_server
    with EemClient(target, timeout_s=40.0) as eem, TrainerClient(target, timeout_s=40.0) as trainer:
        assert _deadline_of(handler, lambda: list(eem.score_stream(["/x.png"]))) is None
        assert _deadline_of(handler, lambda: list(trainer.watch("j"))) is None


def test_errors_become_our_exceptions(any_server):
    class Missing(GrpcClient):
        stub_class = staticmethod(lambda ch: type("S", (), {"Get": ch.unary_unary("/x.v1.Missing/Get")})())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("x.v1.Missing", {
        "Get": grpc.unary_unary_rpc_method_handler(lambda r, ctx: ctx.abort(grpc.StatusCode.NOT_FOUND, "no x"))})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Missing(f"127.0.0.1:{port}", timeout_s=10) as client, pytest.raises(NotFound, match="no x"):
            client._call("Get", b"")
    finally:
        server.stop(0).wait()


def test_idempotent_calls_are_retried_on_unavailable_and_others_are_not():
    """The channel's service config: GetPool (a read) survives two UNAVAILABLE answers; CreatePool
    (not idempotent) fails at the first."""
    attempts: dict[str, int] = {}

    class Flaky(grpc.GenericRpcHandler):
        def service(self, details):
            def unary(request, context):
                n = attempts[details.method] = attempts.get(details.method, 0) + 1
                if n <= 2:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
                return b""
            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[Flaky()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            client.get_pool("p")
            with pytest.raises(NotReady, match="restarting"):
                client.create_pool("p")
    finally:
        server.stop(0).wait()
    assert attempts == {"/segxal.coordinator.v1.Coordinator/GetPool": 3,
                        "/segxal.coordinator.v1.Coordinator/CreatePool": 1}

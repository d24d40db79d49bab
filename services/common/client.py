"""The one base of the project's gRPC clients (coordinator, EEM, trainer): a channel from the one
channel factory (services.common.channel), the service's stub, a context manager that closes the
channel, one `_call` / `_stream` that apply the deadline and turn a grpc.RpcError into our
exception (services.common.errors.error_from_rpc), and grpc.health.v1 checks.

Deadlines, one rule for every client:
- the constructor's `timeout_s` is the default deadline, in seconds, of each call; None there
  means no deadline;
- a method's own `timeout_s` overrides it for that call: None means "the client's default", a
  number that many seconds, NO_DEADLINE none at all;
- a method whose work is long by nature states its own default in its signature (ranking a pool,
  ingesting, watching a training job, a scoring stream).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Iterator

import grpc

from segxal.errors import NotReady
from services.common.channel import ChannelConfig, make_channel
from services.common.errors import error_from_rpc
from services.common.health import is_serving, wait_until_serving

NO_DEADLINE = math.inf  # a call's timeout_s for "no deadline at all" (None means the client's default)


class GrpcClient:
    """Base class; subclasses set `stub_class`, `service_name` (its grpc.health.v1 name) and `what`
    (how errors name the service).

    Args:
        target: "host:port", "h1:p1,h2:p2" (round_robin over replicas) or "dns:///svc:port".
        channel_cfg: message size, keepalive, TLS, bearer token; defaults as ChannelConfig.
        timeout_s: the default deadline of each call (None: none). See the module docstring.
    """

    stub_class: ClassVar[type]
    service_name: ClassVar[str] = ""
    what: ClassVar[str] = "service"

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None, *, timeout_s: float | None = 30.0):
        self.target = target
        self.timeout_s = timeout_s
        self._channel = make_channel(target, channel_cfg)
        self._stub = self.stub_class(self._channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def deadline(self, timeout_s: float | None = None) -> float | None:
        """The gRPC `timeout` of a call given its `timeout_s` (None: the client's default)."""
        t = self.timeout_s if timeout_s is None else timeout_s
        return None if t is None or math.isinf(t) else t

    def _call(self, method: str, request, timeout_s: float | None = None) -> Any:
        """One unary call. Raises: our exception for the status (segxal.errors)."""
        try:
            return getattr(self._stub, method)(request, timeout=self.deadline(timeout_s))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def _stream(self, method: str, request, timeout_s: float | None = None) -> Iterator[Any]:
        """A server-streaming (or bidirectional: pass an iterator) call's replies. The deadline covers
        the whole stream; a caller that stops early cancels the server's work.

        Raises:
            our exception for the status, after the replies that did arrive.
        """
        call = getattr(self._stub, method)(request, timeout=self.deadline(timeout_s))
        try:
            yield from call
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        finally:
            call.cancel()  # no-op when the stream ended

    def is_serving(self) -> bool:
        """grpc.health.v1 says the service is SERVING."""
        return is_serving(self._channel, self.service_name, min(2.0, self.deadline() or 2.0))

    def wait_until_serving(self, timeout_s: float = 30.0) -> None:
        """Raises:
            NotReady: not SERVING within timeout_s.
        """
        wait_until_serving(self._channel, self.service_name, f"{self.what} at {self.target}", timeout_s)

    def wait_until_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the channel connects (the server is up, whatever its readiness).

        Raises:
            NotReady: not reachable within timeout_s.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise NotReady(f"{self.what} at {self.target} not reachable after {timeout_s:.0f} s") from None

"""Client side of grpc.health.v1: one way to ask "is it SERVING?" and to wait for it (service
clients and the stack launcher all use these)."""
from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segxal.errors import NotReady


def is_serving(channel: grpc.Channel, service: str = "", timeout_s: float | None = 2.0) -> bool:
    """True when the server reports `service` ("" = the whole server) SERVING; False when it says
    otherwise or cannot be reached."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout_s)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_serving(channel: grpc.Channel, service: str, what: str, timeout_s: float = 30.0,
                       poll_s: float = 0.1) -> None:
    """Block until `service` is SERVING.

    Raises:
        NotReady: not SERVING within timeout_s (the message names `what`).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_serving(channel, service, timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))):
            return
        time.sleep(poll_s)
    raise NotReady(f"{what} not SERVING after {timeout_s:.0f} s")

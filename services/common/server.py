"""The one gRPC server set-up: thread pool, message limits, keepalive, error interceptor,
grpc.health.v1, TLS / mutual TLS, bearer-token auth, and start/stop with a grace period
(GrpcServer); the one base of every service's server (ServiceServer: life cycle, health entry,
context manager); and the one set of server flags every main() takes (add_server_args)."""
from __future__ import annotations

import argparse
import logging
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.flags import EnvFlags
from services.common.errors import status_for

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a 1024x2048 float32 logit tensor is 160 MB
# Health entry that is SERVING from start() until stop(), whatever the service's readiness: the
# liveness probe's. Readiness probes ask for the service's own name (NOT_SERVING while a model
# loads or a backend is down: no traffic, but no restart either).
LIVENESS_SERVICE = "liveness"


@dataclass
class ServerConfig:
    address: str = "127.0.0.1:0"  # port 0 = ephemeral (tests); services pass a fixed one
    max_workers: int = 16
    max_message_bytes: int = MAX_MESSAGE_BYTES
    grace_s: float = 10.0  # in-flight RPCs get this long to finish on stop
    tls_cert: str | None = None  # PEM paths; cert+key enable TLS
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: mutual TLS, clients must present a cert it signed
    interceptors: list = field(default_factory=list)  # run inside the error interceptor, in order
    # "host:port" of a second, plaintext listener serving grpc.health.v1 only (the same statuses).
    # The kubelet's gRPC probe cannot speak TLS: with TLS on the serving port, probes go here.
    health_address: str | None = None
    # JSON {client identity: "sha256:<token hex>"} (services.common.auth): every call but health
    # must carry "authorization: Bearer <token>".
    auth_tokens_file: str | None = None


def _wrap(behavior: Callable, streaming_response: bool) -> Callable:
    """Run a handler; our exceptions abort with their status code."""
    if streaming_response:
        def stream(request, context):
            try:
                yield from behavior(request, context)
            except Exception as e:  # noqa: BLE001 - the one edge that maps every error
                if isinstance(e, grpc.RpcError) or context.code() is not None:
                    raise
                context.abort(*status_for(e))
        return stream

    def unary(request, context):
        try:
            return behavior(request, context)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, grpc.RpcError) or context.code() is not None:
                raise  # the handler (or an interceptor) already aborted with its own status
            context.abort(*status_for(e))
    return unary


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps segxal.errors exceptions to status codes; anything else is INTERNAL, logged."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap(handler.unary_unary, False))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap(handler.unary_stream, True))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap(handler.stream_unary, False))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap(handler.stream_stream, True))
        return handler


class GrpcServer:
    """A started gRPC server with health. `add` registers servicers before `start`."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),  # two servers must never share a port by accident
        ]
        auth = []
        if cfg.auth_tokens_file:
            from services.common.auth import BearerTokenAuth  # reads and checks the tokens file
            auth = [BearerTokenAuth.from_file(cfg.auth_tokens_file)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.max_workers),
                                  options=opts,
                                  interceptors=[ErrorInterceptor(), *auth, *cfg.interceptors])
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port: int | None = None
        self.health_port: int | None = None
        self._health_server: grpc.Server | None = None
        if cfg.health_address:
            self._health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                                              options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)

    def add(self, register: Callable, servicer) -> None:
        register(servicer, self.server)

    def set_serving(self, service: str, serving: bool) -> None:
        """Switch a service's health (and the overall "" entry) between SERVING and NOT_SERVING."""
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(service, status)
        self.health.set("", status)

    def start(self) -> int:
        cfg = self.cfg
        if cfg.tls_cert and cfg.tls_key:
            with open(cfg.tls_key, "rb") as k, open(cfg.tls_cert, "rb") as c:
                pair = [(k.read(), c.read())]
            ca = open(cfg.tls_client_ca, "rb").read() if cfg.tls_client_ca else None
            creds = grpc.ssl_server_credentials(pair, root_certificates=ca,
                                                require_client_auth=ca is not None)
            self.port = self.server.add_secure_port(cfg.address, creds)
        else:
            self.port = self.server.add_insecure_port(cfg.address)
        if not self.port:
            raise OSError(f"could not bind {cfg.address}")
        if self._health_server is not None:
            self.health_port = self._health_server.add_insecure_port(cfg.health_address)
            if not self.health_port:
                raise OSError(f"could not bind the health address {cfg.health_address}")
            self._health_server.start()
        self.server.start()
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server listening on port %d", self.port)
        return self.port

    @property
    def target(self) -> str:
        host = self.cfg.address.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within the grace period."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.cfg.grace_s if grace is None else grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


class ServiceServer:
    """The base of every service's server: one GrpcServer (ports, health, TLS, auth, grace period)
    and its life cycle. `start()` binds and returns the port, `stop()` turns the service's health
    NOT_SERVING, refuses new calls and lets in-flight ones finish; `wait()` blocks until stopped;
    a context manager starts and stops it.

    Subclasses set `service_name` (their grpc.health.v1 entry), register servicers on `self.grpc`
    in __init__, and override the hooks they need: `_starting()` (before binding), `_started()`
    (after; default: SERVING), `_stopping(grace)` (before the server stops: wake workers) and
    `_stopped()` (after: close what they own).
    """

    service_name: ClassVar[str] = ""

    def __init__(self, server_cfg: ServerConfig):
        self.grpc = GrpcServer(server_cfg)
        self.grpc.set_serving(self.service_name, False)

    def start(self) -> int:
        self._starting()
        port = self.grpc.start()
        self._started()
        return port

    def stop(self, grace: float | None = None) -> None:
        self.grpc.set_serving(self.service_name, False)
        self._stopping(grace)
        self.grpc.stop(grace)
        self._stopped()

    def wait(self) -> None:
        self.grpc.wait()

    @property
    def port(self) -> int | None:
        return self.grpc.port

    @property
    def target(self) -> str:
        return self.grpc.target

    def _starting(self) -> None:
        pass

    def _started(self) -> None:
        self.grpc.set_serving(self.service_name, True)

    def _stopping(self, grace: float | None) -> None:
        pass

    def _stopped(self) -> None:
        pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def add_server_args(p: argparse.ArgumentParser, env_prefix: str, default: ServerConfig) -> None:
    """The flags of a service's ServerConfig, each defaulting to its environment variable
    (<env_prefix>HOST, PORT, MAX_WORKERS, GRACE_S, TLS_CERT, TLS_KEY, TLS_CLIENT_CA,
    AUTH_TOKENS_FILE, HEALTH_PORT), then to `default`. Only main() functions call this."""
    f = EnvFlags(p, env_prefix)
    host, port = default.address.rsplit(":", 1)
    f.add("--host", host, help="address to listen on (0.0.0.0: every interface)")
    f.add("--port", int(port), type=int, help="0: any free port")
    f.add("--max-workers", default.max_workers, type=int, help="gRPC handler threads")
    f.add("--grace-s", default.grace_s, type=float, aliases=("--grace",),
          help="seconds in-flight calls get to finish on SIGTERM")
    f.add("--tls-cert", help="PEM certificate: serve TLS (with --tls-key)")
    f.add("--tls-key", help="PEM private key of --tls-cert")
    f.add("--tls-client-ca", help="PEM CA: require client certificates (mTLS)")
    f.add("--auth-tokens-file", help="JSON {identity: 'sha256:<token hex>'}: require bearer tokens (services.common.auth)")
    f.add("--health-port", type=int,
          help="also serve grpc.health.v1 alone, in plaintext, on this port (probes with TLS on)")


def server_config_from_args(args: argparse.Namespace, default: ServerConfig) -> ServerConfig:
    """The ServerConfig of the flags add_server_args made (other fields as in `default`)."""
    return replace(default, address=f"{args.host}:{args.port}", max_workers=args.max_workers, grace_s=args.grace_s,
                   tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                   auth_tokens_file=args.auth_tokens_file,
                   health_address=f"{args.host}:{args.health_port}" if args.health_port is not None else None)

"""The one channel factory: every client in the project (labeling -> coordinator, coordinator ->
EEM, EEM -> inference, trainer -> repository) gets its channel here.

Targets: "host:port", a comma-separated static list "h1:p1,h2:p2" (spread with round_robin; the
local rehearsal of several replicas), or "dns:///svc.ns:port" (Kubernetes headless Service;
round_robin over every pod IP, since one long-lived HTTP/2 connection to a ClusterIP would pin
all requests to one pod).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from services.common.flags import EnvFlags
from services.common.server import MAX_MESSAGE_BYTES


@dataclass
class ChannelConfig:
    max_message_bytes: int = MAX_MESSAGE_BYTES
    keepalive_ms: int = 30_000  # detect dead peers behind NATs / load balancers
    tls_ca: str | None = None  # PEM of the CA that signed the servers: enables TLS
    tls_cert: str | None = None  # client cert + key: mutual TLS
    tls_key: str | None = None
    tls_server_name: str | None = None  # override the name checked in the server certificate
    bearer_token: str | None = None  # sent as "authorization: Bearer <token>" on every call


# Unary calls that are cheap and safe to send twice: reads, and SubmitAnnotation (idempotent by
# its idempotency key). gRPC retries them itself on UNAVAILABLE (a replica restarting, a connection
# reset) with exponential backoff; every other call fails at once and the caller decides. Scoring
# and inference are left out: the EEM service answers UNAVAILABLE when its backend is down, and
# retrying there would multiply the wait at every hop (the pipeline has its own deadlines).
IDEMPOTENT_METHODS = {
    "segxal.coordinator.v1.Coordinator": ("GetPool", "ListPools", "ListFrames", "ListModelVersions",
                                          "GetCurrentModelVersion", "GetCycleReport", "ListAnnotations",
                                          "GetBudget", "SubmitAnnotation"),
    "segxal.eem.v1.EemScoring": ("GetStats",),
    "segxal.trainer.v1.Trainer": ("GetJob", "ListJobs", "ListVersions"),
    "inference.GRPCInferenceService": ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                       "ModelMetadata", "ModelConfig"),
}
RETRY_POLICY = {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}
SERVICE_CONFIG = json.dumps({"methodConfig": [
    {"name": [{"service": service, "method": m} for service, methods in IDEMPOTENT_METHODS.items() for m in methods],
     "retryPolicy": RETRY_POLICY}]})


def _options(target: str, cfg: ChannelConfig) -> list[tuple]:
    opts = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.keepalive_time_ms", cfg.keepalive_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
    ]
    if cfg.tls_server_name:
        opts.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
    return opts


def resolve_target(target: str) -> str:
    """'h1:p1,h2:p2' -> 'ipv4:h1:p1,h2:p2' (gRPC's static address list); others unchanged."""
    if "," in target and "://" not in target and not target.startswith(("ipv4:", "ipv6:")):
        return "ipv4:" + target
    return target


def _credentials(cfg: ChannelConfig) -> grpc.ChannelCredentials | None:
    creds = None
    if cfg.tls_ca:
        ca = open(cfg.tls_ca, "rb").read()
        key = open(cfg.tls_key, "rb").read() if cfg.tls_key else None
        cert = open(cfg.tls_cert, "rb").read() if cfg.tls_cert else None
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    if cfg.bearer_token:
        call = grpc.access_token_call_credentials(cfg.bearer_token)
        if creds is None:
            # token over plaintext: only for local tests/rehearsal; clusters use TLS
            creds = grpc.local_channel_credentials()
        creds = grpc.composite_channel_credentials(creds, call)
    return creds


def channel_options(target: str, cfg: ChannelConfig | None = None) -> list[tuple]:
    """The channel arguments make_channel uses, for clients that build their own channel
    (tritonclient's InferenceServerClient takes them as `channel_args`)."""
    return _options(resolve_target(target), cfg or ChannelConfig())


def channel_credentials(cfg: ChannelConfig | None = None) -> grpc.ChannelCredentials | None:
    """The credentials make_channel uses (None: plaintext), for clients that build their own
    channel (tritonclient's `creds`)."""
    return _credentials(cfg or ChannelConfig())


def make_channel(target: str, cfg: ChannelConfig | None = None) -> grpc.Channel:
    cfg = cfg or ChannelConfig()
    creds = _credentials(cfg)
    t = resolve_target(target)
    if creds is None:
        return grpc.insecure_channel(t, options=_options(t, cfg))
    return grpc.secure_channel(t, creds, options=_options(t, cfg))


def make_aio_channel(target: str, cfg: ChannelConfig | None = None) -> grpc.aio.Channel:
    cfg = cfg or ChannelConfig()
    creds = _credentials(cfg)
    t = resolve_target(target)
    if creds is None:
        return grpc.aio.insecure_channel(t, options=_options(t, cfg))
    return grpc.aio.secure_channel(t, creds, options=_options(t, cfg))


def add_channel_args(parser, flag: str, env_prefix: str, what: str) -> None:
    """Flags (and SEGXAL_* env defaults) for one outbound channel's TLS / mTLS / bearer token, e.g.
    flag="backend" -> --backend-tls-ca, --backend-tls-cert, --backend-tls-key, --backend-token-file.
    Only main() functions call this: configuration is read once at the edge."""
    f = EnvFlags(parser, env_prefix)
    f.add(f"--{flag}-tls-ca", help=f"PEM of the CA that signed {what}: enables TLS to it")
    f.add(f"--{flag}-tls-cert", help=f"client certificate for mutual TLS to {what}")
    f.add(f"--{flag}-tls-key", help="PEM private key of the client certificate (with the matching --*-tls-cert)")
    f.add(f"--{flag}-token-file", help=f"file holding the bearer token for {what} (a mounted Secret)")


def channel_config_from_args(args, flag: str) -> ChannelConfig:
    """The ChannelConfig of the flags add_channel_args made."""
    attr = flag.replace("-", "_")
    token_file = getattr(args, f"{attr}_token_file")
    token = open(token_file).read().strip() if token_file else None
    return ChannelConfig(tls_ca=getattr(args, f"{attr}_tls_ca"), tls_cert=getattr(args, f"{attr}_tls_cert"),
                         tls_key=getattr(args, f"{attr}_tls_key"), bearer_token=token)

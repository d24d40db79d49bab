"""Bearer-token authentication of gRPC callers: one server interceptor, used by the coordinator
(labeling clients, the trainer and fleet workers call it with `authorization: Bearer <token>`).

The server holds a tokens file (a Kubernetes Secret, mounted): JSON mapping each client identity
to the SHA-256 of its token, so the file never holds a usable token:

    {"labeler-1": "sha256:9f86d081884c7d65...", "fleet-worker": "sha256:..."}

`python -m services.common.auth new-token labeler-1` prints a fresh token for the client and the
line to add to the file. A call without a token, or with one that matches no identity, ends with
UNAUTHENTICATED before any handler runs; grpc.health.v1 stays open (the kubelet's probes and load
balancers carry no token). Handlers read the caller's identity with `current_identity()`; a
request that names a client id other than its authenticated identity is refused
(`authenticated_client_id`). Tokens are compared in constant time (hmac.compare_digest).

Tokens travel in metadata: only over TLS outside a trusted network (services.common.channel sends
them over plaintext only to local addresses).
"""
from __future__ import annotations

import argparse
import contextvars
import hashlib
import hmac
import json
import secrets
import sys
from pathlib import Path
from typing import Callable, Mapping

import grpc

from segxal.errors import InvalidInput, PermissionDenied

HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"
_HASH_PREFIX = "sha256:"
_IDENTITY: contextvars.ContextVar[str | None] = contextvars.ContextVar("segxal_identity", default=None)


def token_digest(token: str) -> str:
    """The form a token is stored in: "sha256:<hex>"."""
    return _HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def load_tokens_file(path: str | Path) -> dict[str, str]:
    """Read {identity: "sha256:<hex>"} from a tokens file.

    Raises:
        InvalidInput: unreadable, not a JSON object of strings, or an entry not in sha256 form.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"tokens file {path}: {e}") from None
    if not isinstance(data, dict) or not data:
        raise InvalidInput(f"tokens file {path}: expected a non-empty JSON object {{identity: 'sha256:<hex>'}}")
    for identity, digest in data.items():
        if not (isinstance(digest, str) and digest.startswith(_HASH_PREFIX)
                and len(digest) == len(_HASH_PREFIX) + 64):
            raise InvalidInput(f"tokens file {path}: the entry of {identity!r} is not 'sha256:<64 hex digits>'")
    return data


def current_identity() -> str | None:
    """The authenticated identity of the call this thread is handling (None: no authentication)."""
    return _IDENTITY.get()


def authenticated_client_id(claimed: str) -> str:
    """The client id a handler should act for: the authenticated identity when the server
    authenticates callers, else the id the request claims.

    Raises:
        PermissionDenied: the request claims another client's id than the one it authenticated as.
    """
    identity = current_identity()
    if identity is None:
        return claimed
    if claimed and claimed != identity:
        raise PermissionDenied(f"the request names client '{claimed}' but the caller authenticated "
                               f"as '{identity}'")
    return identity


def _with_identity(behavior: Callable, identity: str, streaming_response: bool) -> Callable:
    """Run a handler with the caller's identity visible through current_identity()."""
    if streaming_response:
        def stream(request, context):
            _IDENTITY.set(identity)
            try:
                yield from behavior(request, context)
            finally:
                _IDENTITY.set(None)  # the worker thread serves other calls next
        return stream

    def unary(request, context):
        _IDENTITY.set(identity)
        try:
            return behavior(request, context)
        finally:
            _IDENTITY.set(None)
    return unary


def _deny(message: str, streaming_response: bool) -> Callable:
    if streaming_response:
        def stream(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # a generator, like the handler it replaces
        return stream

    def unary(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
    return unary


_KINDS = (("unary_unary", False), ("unary_stream", True), ("stream_unary", False), ("stream_stream", True))


class BearerTokenAuth(grpc.ServerInterceptor):
    """Checks `authorization: Bearer <token>` on every call except grpc.health.v1.

    Args:
        digests: {identity: "sha256:<hex>"} (load_tokens_file).
    """

    def __init__(self, digests: Mapping[str, str]):
        self._digests = dict(digests)

    @classmethod
    def from_file(cls, path: str | Path) -> "BearerTokenAuth":
        return cls(load_tokens_file(path))

    def identify(self, metadata) -> str | None:
        """The identity whose token the call carries, or None."""
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return None
        digest = token_digest(header[len("Bearer "):].strip())
        found = None
        for identity, expected in self._digests.items():  # no early exit: time does not leak the match
            if hmac.compare_digest(digest, expected):
                found = identity
        return found

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_SERVICE_PREFIX):
            return handler
        identity = self.identify(handler_call_details.invocation_metadata)
        for kind, streaming in _KINDS:
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            if identity is None:
                return handler._replace(**{kind: _deny(
                    "a valid 'authorization: Bearer <token>' is required", streaming)})
            return handler._replace(**{kind: _with_identity(behavior, identity, streaming)})
        return handler


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.common.auth",
                                description="make a client token for a coordinator tokens file")
    sub = p.add_subparsers(dest="cmd", required=True)
    new = sub.add_parser("new-token", help="print a fresh token and its tokens-file entry")
    new.add_argument("identity")
    args = p.parse_args(argv)
    token = secrets.token_urlsafe(32)
    print(f"token (give it to the client, e.g. a Secret key): {token}")
    print(f"tokens-file entry: {json.dumps({args.identity: token_digest(token)})}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())

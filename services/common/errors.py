"""Our exceptions -> gRPC status codes, at one edge (the server interceptor), and back on the
client side (`raise_for_rpc_error`)."""
from __future__ import annotations

import logging

import grpc

from segxal import errors as E

log = logging.getLogger(__name__)


class DeadlineExceeded(E.NotReady):
    """The caller's deadline passed before the work ran (DEADLINE_EXCEEDED rather than UNAVAILABLE,
    so that a client racing its own deadline sees one code either way)."""


STATUS_FOR = {
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,  # before NotReady: the first match wins
    E.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    E.NotFound: grpc.StatusCode.NOT_FOUND,
    E.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    E.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    E.NotReady: grpc.StatusCode.UNAVAILABLE,
    E.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_ERROR_FOR = {v: k for k, v in STATUS_FOR.items()}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an exception; unknown exceptions are INTERNAL with a generic message
    and their traceback logged (never leak internals to callers)."""
    for cls, code in STATUS_FOR.items():
        if isinstance(exc, cls):
            return code, str(exc)
    log.exception("unhandled error in RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (see server log)"


def error_from_rpc(e: grpc.RpcError) -> E.SegxalError:
    """A client-side grpc.RpcError as our exception (UNAUTHENTICATED etc. become NotReady/InvalidInput
    only where a mapping exists; the rest is a plain SegxalError carrying code and details)."""
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return error_from_status(code, details)


def error_from_status(code: grpc.StatusCode | None, details: str) -> E.SegxalError:
    """Our exception for a status code and message (for clients such as tritonclient that report
    the status without a grpc.RpcError); the same mapping as error_from_rpc."""
    cls = _ERROR_FOR.get(code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        cls = E.NotReady
    err = (cls or E.SegxalError)(f"{details} [{code.name if code else 'UNKNOWN'}]")
    err.code = code
    return err

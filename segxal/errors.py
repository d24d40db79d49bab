"""Our exceptions. Core code raises these; one gRPC interceptor (services/common) and the CLI
map them to status codes / exit messages at the edge."""


class SegxalError(Exception):
    """Base class for every error the project raises on purpose."""


class InvalidInput(SegxalError):
    """The caller sent something malformed (shape, dtype, range, unknown ids...)."""


class NotFound(SegxalError):
    """A named thing (file, model, version, pool, task) does not exist."""


class PermissionDenied(SegxalError):
    """The caller may not touch this resource (e.g. a path outside the storage roots)."""


class FailedPrecondition(SegxalError):
    """The system is not in a state where the request can run (no annotations, stale lease...)."""


class NotReady(SegxalError):
    """A dependency is down or still loading; retrying later may succeed."""


class ResourceExhausted(SegxalError):
    """A size or queue limit was hit."""

"""The one table from domain exceptions to gRPC status codes.

Most specific class first; the first match wins. Anything not in the table is
a bug or an unexpected system failure: it becomes INTERNAL with its cause
logged, never UNKNOWN.
"""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from backends import errors as e

ERROR_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (e.InvalidArgument, Status.INVALID_ARGUMENT),
    (e.NotFound, Status.NOT_FOUND),
    (e.AlreadyExists, Status.ALREADY_EXISTS),
    (e.OutOfRange, Status.OUT_OF_RANGE),
    (e.CapacityExhausted, Status.RESOURCE_EXHAUSTED),
    (e.PreconditionFailed, Status.FAILED_PRECONDITION),
    (e.Busy, Status.ABORTED),
    (e.Unavailable, Status.UNAVAILABLE),
    (e.SystemFailure, Status.INTERNAL),
)


def status_for(exc: BaseException) -> Status:
    for kind, status in ERROR_TABLE:
        if isinstance(exc, kind):
            return status
    return Status.INTERNAL


def to_grpc_error(exc: BaseException) -> GRPCError:
    """The GRPCError a client sees for ``exc``."""
    if isinstance(exc, GRPCError):
        return exc
    status = status_for(exc)
    if isinstance(exc, e.BackendError):
        return GRPCError(status, exc.message)
    return GRPCError(status, f"internal error: {type(exc).__name__}: {exc}")

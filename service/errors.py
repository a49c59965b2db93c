"""Errors as values with a field and a reason, and the one place they become gRPC statuses.

Handlers raise :class:`RequestError` (or let :class:`sampling.SamplingError` and the
dispatcher's errors propagate); :func:`to_status` turns any of them into a ``grpc.Status``
with the right code, attaching ``google.rpc.BadRequest`` field violations to
INVALID_ARGUMENT and ``google.rpc.QuotaFailure`` to size-limit RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from samplerd.sampling import SamplingError
from samplerd.workers.region import RegionError


class DispatchError(Exception):
    """Base of the errors the dispatcher answers a job with (each maps to one gRPC status)."""


class QueueFullError(DispatchError):
    """The queue holds too many rows to accept the job (RESOURCE_EXHAUSTED)."""


class WorkersUnavailableError(DispatchError):
    """No sampler actor is alive, or the job's actor died and the retry failed (UNAVAILABLE)."""


class DeadlineExceededError(DispatchError):
    """The job's deadline passed before it ran; it was dropped unrun (DEADLINE_EXCEEDED)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: ``field`` is a path such as ``row_params[3].top_k``."""

    field: str
    description: str


class RequestError(Exception):
    """A request the service refuses: a status code, a message and the fields at fault."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: tuple[FieldViolation, ...] = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = violations


def invalid_argument(field: str, description: str) -> RequestError:
    """INVALID_ARGUMENT naming ``field``."""
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", (FieldViolation(field, description),)
    )


def over_limit(field: str, description: str) -> RequestError:
    """RESOURCE_EXHAUSTED for a request larger than a configured limit, naming ``field``."""
    return RequestError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"{field}: {description}", (FieldViolation(field, description),)
    )


def from_sampling_error(error: SamplingError, prefix: str = "") -> RequestError:
    """INVALID_ARGUMENT for a :class:`SamplingError`, its field path prefixed (e.g. ``params.``)."""
    return invalid_argument(prefix + error.field, str(error))


def classify(error: BaseException) -> RequestError:
    """The :class:`RequestError` an exception answers as; unknown errors are INTERNAL (and logged)."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, SamplingError):
        return from_sampling_error(error)
    if isinstance(error, QueueFullError):
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"queue full, retry later: {error}")
    if isinstance(error, WorkersUnavailableError):
        return RequestError(grpc.StatusCode.UNAVAILABLE, f"no sampler worker available: {error}")
    if isinstance(error, DeadlineExceededError):
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed before the work ran: {error}")
    if isinstance(error, RegionError):  # a client's shared-memory region changed under the server
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"logits.shared_memory: {error}")
    if isinstance(error, DecodeError):  # a streamed message that does not parse (unary ones: samplerd.service.security)
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {error}")
    log.exception("internal error", exc_info=error)
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")


def to_status(error: RequestError) -> grpc.Status:
    """The ``grpc.Status`` (code, message, rich details) of ``error``."""
    details = []
    if error.violations:
        if error.code is grpc.StatusCode.INVALID_ARGUMENT:
            detail = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        else:
            detail = error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


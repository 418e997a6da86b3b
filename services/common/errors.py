"""The project's exception family and its mapping onto gRPC status codes.

Domain code raises these; exactly one place (the server interceptor in ``server.py``) turns them
into a gRPC status carrying ``google.rpc`` details: an ``ErrorInfo`` with a machine-readable
``reason`` and, for invalid input, a ``BadRequest`` listing each field violation. Anything that
is not one of these is a bug and becomes INTERNAL with no detail sent to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "llamafleet.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: ``field`` is a path such as ``spec.lora.rank`` or ``data.jsonl:12:messages``."""

    field: str
    description: str


@dataclass(eq=False)
class LlamafleetError(Exception):
    """Base of every error a caller is meant to see. ``reason`` is UPPER_SNAKE and stable."""

    message: str
    reason: str = "ERROR"
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    code = grpc.StatusCode.UNKNOWN

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        if not self.violations:
            return self.message
        fields = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        return f"{self.message} ({fields})"


class InvalidArgument(LlamafleetError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LlamafleetError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LlamafleetError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(LlamafleetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(LlamafleetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(LlamafleetError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(LlamafleetError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(LlamafleetError):
    code = grpc.StatusCode.UNIMPLEMENTED


def invalid(field_path: str, description: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    """Shorthand for the common single-field case."""
    return InvalidArgument(
        f"invalid {field_path}: {description}",
        reason=reason,
        violations=[FieldViolation(field_path, description)],
    )


def to_rpc_status(error: LlamafleetError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``error``, with ErrorInfo and (if any) BadRequest details."""
    details = []
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details.append(info)
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    return status_pb2.Status(code=error.code.value[0], message=str(error), details=packed)


def internal_status(request_id: str) -> status_pb2.Status:
    """What a caller sees for a bug: a request id to quote, never a traceback."""
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (request id {request_id}); the service log has the details",
    )

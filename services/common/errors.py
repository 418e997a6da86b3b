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


class PermissionDenied(LlamafleetError):
    """The caller named something outside what the service's owner allowed (a path outside the
    configured roots, a device file); the message names the field and the allowed roots."""

    code = grpc.StatusCode.PERMISSION_DENIED


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


def shorten(value: object, limit: int = 48) -> str:
    """``repr`` of at most ``limit`` characters of ``value``, saying how long it really was: an
    error message quotes a short prefix of a bad value, never the value (a 4 KB id must not make
    kilobytes of trailers)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


# What one error may put in the trailers. gRPC refuses trailers past its metadata limit (8 KiB
# by default on the receiving side) and the client then sees RESOURCE_EXHAUSTED instead of the
# real code; the message is sent twice (grpc-message and inside grpc-status-details-bin, base64).
MAX_MESSAGE_CHARS = 1024
MAX_DETAIL_BYTES = 2048
MAX_FIELD_CHARS = 200
MAX_DESCRIPTION_CHARS = 300


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 30] + f"... ({len(text)} characters)"


def to_rpc_status(error: LlamafleetError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``error``, with ErrorInfo and (if any) BadRequest details.

    Sizes are capped here, whatever the raising code put in: the message to ``MAX_MESSAGE_CHARS``,
    each violation's strings and the ErrorInfo metadata values, and the violations to as many as
    fit in ``MAX_DETAIL_BYTES`` (the count of the ones left out is added).
    """
    details = []
    info = error_details_pb2.ErrorInfo(
        reason=_clip(error.reason, MAX_FIELD_CHARS),
        domain=ERROR_DOMAIN,
        metadata={
            _clip(k, MAX_FIELD_CHARS): _clip(v, MAX_DESCRIPTION_CHARS)
            for k, v in list(error.metadata.items())[:8]
        },
    )
    details.append(info)
    if error.violations:
        bad = error_details_pb2.BadRequest()
        for i, v in enumerate(error.violations):
            item = error_details_pb2.BadRequest.FieldViolation(
                field=_clip(v.field, MAX_FIELD_CHARS),
                description=_clip(v.description, MAX_DESCRIPTION_CHARS),
            )
            if bad.ByteSize() + item.ByteSize() > MAX_DETAIL_BYTES - 80:
                bad.field_violations.add(
                    field="...", description=f"{len(error.violations) - i} more not shown"
                )
                break
            bad.field_violations.append(item)
        details.append(bad)
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    message = _clip(str(error), MAX_MESSAGE_CHARS)
    return status_pb2.Status(code=error.code.value[0], message=message, details=packed)


def internal_status(request_id: str) -> status_pb2.Status:
    """What a caller sees for a bug: a request id to quote, never a traceback."""
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (request id {request_id}); the service log has the details",
    )

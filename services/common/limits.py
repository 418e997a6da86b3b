"""Bounds on what one request may carry, checked before any work is done for it.

The numbers are configuration with safe defaults: the shared ones are ``ServerConfig`` fields
(``max_id_chars``, ``max_name_chars``, ``max_path_chars``, ``max_list_items``), each service adds
its own (rollout ``max_prompt_chars``, data ``max_record_bytes``, training ``max_world_size``).
This module holds the checks, so the four services refuse the same things the same way: an
over-long string, a control character in an id, a list with too many items, a number that is
not finite or out of its range. Each refusal is INVALID_ARGUMENT naming the field, and quotes at
most a short prefix of the bad value (``errors.shorten``).

It knows no RPC and no field of any message: callers pass the value and its field path, or a
whole message for ``message_violations`` (a walk over its descriptor: unknown enum numbers,
non-finite floats, over-long strings, over-long lists, anywhere in it).
"""

from __future__ import annotations

import math
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import FieldViolation, InvalidArgument, invalid, shorten

_CONTROL = {*range(0x00, 0x20), 0x7F}


@dataclass(frozen=True)
class Limits:
    """The shared request bounds of one service (its ``ServerConfig`` fields)."""

    id_chars: int = 128  # job, dataset, adapter ids, request ids
    name_chars: int = 256  # scorer, template, module names
    path_chars: int = 1024  # file and folder paths
    list_items: int = 256  # items of a repeated field (paths, target modules, states)

    @classmethod
    def of(cls, config: Any) -> Limits:
        """The limits a service's config sets (defaults for a config without the fields)."""
        default = cls()
        return cls(
            id_chars=getattr(config, "max_id_chars", default.id_chars),
            name_chars=getattr(config, "max_name_chars", default.name_chars),
            path_chars=getattr(config, "max_path_chars", default.path_chars),
            list_items=getattr(config, "max_list_items", default.list_items),
        )


DEFAULT_LIMITS = Limits()


def check_length(value: str, field_path: str, max_chars: int, config_key: str = "") -> str:
    """``value`` unless it is longer than ``max_chars`` characters."""
    if len(value) > max_chars:
        where = f" (the service's {config_key})" if config_key else ""
        raise invalid(
            field_path,
            f"{shorten(value)} is longer than {max_chars} characters{where}",
            "TOO_LONG",
        )
    return value


def check_text(value: str, field_path: str, max_chars: int, config_key: str = "") -> str:
    """A length-bounded string without NUL bytes (free text: names, messages, stop strings)."""
    check_length(value, field_path, max_chars, config_key)
    if "\x00" in value:
        raise invalid(field_path, f"{shorten(value)} contains a NUL byte", "BAD_CHARACTER")
    return value


def check_id(value: str, field_path: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """An identifier: at most ``limits.id_chars`` characters and no control characters."""
    check_length(value, field_path, limits.id_chars, "max_id_chars")
    bad = next((c for c in value if ord(c) in _CONTROL), None)
    if bad is not None:
        raise invalid(
            field_path,
            f"{shorten(value)} contains the control character {bad!r}",
            "BAD_CHARACTER",
        )
    return value


def check_name(value: str, field_path: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """A name (scorer, template, module): like an id, up to ``limits.name_chars``."""
    check_length(value, field_path, limits.name_chars, "max_name_chars")
    if any(ord(c) in _CONTROL for c in value):
        raise invalid(field_path, f"{shorten(value)} contains a control character", "BAD_CHARACTER")
    return value


def check_items(values: Sized, field_path: str, limits: Limits = DEFAULT_LIMITS, maximum: int = 0):
    """A repeated field with at most ``maximum`` (default ``limits.list_items``) items."""
    most = maximum or limits.list_items
    if len(values) > most:
        key = "" if maximum else " (the service's max_list_items)"
        raise invalid(field_path, f"{len(values)} items; at most {most}{key}", "TOO_MANY_ITEMS")
    return values


def check_number(
    value: float,
    field_path: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> float:
    """A finite number, > 0 when ``positive``, within [``minimum``, ``maximum``] when given."""
    problem = ""
    if isinstance(value, float) and not math.isfinite(value):
        problem = f"must be a finite number, got {value}"
    elif positive and value <= 0:
        problem = f"must be > 0, got {value}"
    elif minimum is not None and value < minimum:
        problem = f"must be >= {minimum}, got {value}"
    elif maximum is not None and value > maximum:
        problem = f"must be <= {maximum}, got {value}"
    if problem:
        raise invalid(field_path, problem, "OUT_OF_RANGE")
    return value


def violations_of(*checks) -> list:
    """Run zero-argument ``checks``; collect the field violations of those that refuse, so a
    request with several bad fields hears about all of them at once."""
    found = []
    for check in checks:
        try:
            check()
        except InvalidArgument as err:
            found.extend(err.violations)
    return found


def message_violations(
    message: Message,
    prefix: str,
    limits: Limits = DEFAULT_LIMITS,
    string_chars: dict[str, int] | None = None,
    max_violations: int = 20,
) -> list[FieldViolation]:
    """Every field of ``message`` (walked through its descriptor, nested messages included) that
    no service may accept, whatever the field means: an enum number the enum does not define
    (proto3 keeps them), a float that is NaN or infinite, a string longer than its bound or
    holding a NUL byte, a repeated field with more than ``limits.list_items`` items.

    Strings are bounded by ``string_chars[name]`` when the field's name is there (``job_id`` ->
    ``limits.id_chars``, for instance), else by ``limits.path_chars``. Field paths start with
    ``prefix`` (``spec.hyperparameters.learning_rate``). Range checks that depend on a field's
    meaning (positive, at most the configured maximum) are the caller's.
    """
    found: list[FieldViolation] = []
    bounds = string_chars or {}

    def add(path: str, why: str) -> None:
        if len(found) < max_violations:
            found.append(FieldViolation(path, why))

    def scalar(field: FieldDescriptor, value: Any, path: str) -> None:
        if field.type == FieldDescriptor.TYPE_ENUM:
            if field.enum_type.values_by_number.get(value) is None:
                names = ", ".join(v.name for v in field.enum_type.values if v.number)[:200]
                add(path, f"unknown value {value}; use one of {names}")
        elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if not math.isfinite(value):
                add(path, f"must be a finite number, got {value}")
        elif field.type == FieldDescriptor.TYPE_STRING:
            most = bounds.get(field.name, limits.path_chars)
            if len(value) > most:
                add(path, f"{shorten(value)} is longer than {most} characters")
            elif "\x00" in value:
                add(path, f"{shorten(value)} contains a NUL byte")

    def walk(msg: Message, path: str, depth: int) -> None:
        if depth > 32:  # protobuf parses at most 100 levels; ours have under 10
            return
        for field, value in msg.ListFields():
            where = f"{path}.{field.name}" if path else field.name
            if (
                field.type == FieldDescriptor.TYPE_MESSAGE
                and field.message_type.GetOptions().map_entry
            ):
                if len(value) > limits.list_items:
                    add(where, f"{len(value)} entries; at most {limits.list_items}")
                continue
            if field.is_repeated:
                if len(value) > limits.list_items:
                    add(where, f"{len(value)} items; at most {limits.list_items}")
                    continue
                for i, item in enumerate(value):
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        walk(item, f"{where}[{i}]", depth + 1)
                    else:
                        scalar(field, item, f"{where}[{i}]")
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                walk(value, where, depth + 1)
            else:
                scalar(field, value, where)

    walk(message, prefix, 0)
    return found

"""Chat templates: named templates equal to LLaMA-Factory's, function-calling formats, extraction.

* ``base``: what a template is (slots of text and special-token segments) and the table;
* ``families``: the named templates (importing it registers them);
* ``render``: an ``Example`` through a template -> segments per turn (LLaMA-Factory's roles,
  system and tool blocks, reasoning templates' thinking rules);
* ``tools``: the tool formats (tool list -> system text, calls -> assistant text);
* ``extract``: generated assistant text -> tool calls, for every tool format.

The ``tokenizer`` template is the tokenizer's own Jinja ``chat_template`` (``jinja_messages``
builds its input). This package knows nothing about tokenizers: ``encode.py`` turns segments into
ids and labels.
"""

from __future__ import annotations

from services.common.config import nearest
from services.common.errors import FieldViolation, InvalidArgument
from services.data.templates import families  # noqa: F401  (registers the templates)
from services.data.templates.base import BOS, EOS, TEMPLATES, Segment, Special, Template
from services.data.templates.extract import extract_tool_calls
from services.data.templates.render import (
    RenderOptions,
    jinja_message,
    jinja_messages,
    render_oneturn,
    render_turns,
)
from services.data.templates.tools import TOOL_FORMATS

TOKENIZER_TEMPLATE = "tokenizer"
TEMPLATE_NAMES = (*sorted(TEMPLATES), TOKENIZER_TEMPLATE)

__all__ = [
    "BOS",
    "EOS",
    "TEMPLATES",
    "TEMPLATE_NAMES",
    "TOKENIZER_TEMPLATE",
    "TOOL_FORMATS",
    "RenderOptions",
    "Segment",
    "Special",
    "Template",
    "check_tool_format",
    "extract_tool_calls",
    "get_template",
    "jinja_message",
    "jinja_messages",
    "render_oneturn",
    "render_turns",
]


def get_template(name: str, field: str = "tokenization.template.name") -> Template | None:
    """The named template, ``None`` for ``tokenizer``; INVALID_ARGUMENT listing valid names."""
    if name in ("", TOKENIZER_TEMPLATE):
        return None
    if name not in TEMPLATES:
        raise _unknown(field, "template", name, TEMPLATE_NAMES)
    return TEMPLATES[name]


def check_tool_format(name: str, field: str = "tokenization.template.tool_format") -> None:
    if name and name not in TOOL_FORMATS:
        raise _unknown(field, "tool format", name, TOOL_FORMATS)


def _unknown(field: str, what: str, name: str, valid: tuple[str, ...]) -> InvalidArgument:
    close = nearest(name, valid)
    hint = f"; did you mean {close!r}?" if close else ""
    choices = f"valid choices: {', '.join(valid)}"
    return InvalidArgument(
        f"unknown {what} {name!r}{hint} ({choices})",
        reason=f"UNKNOWN_{what.upper().replace(' ', '_')}",
        violations=[FieldViolation(field, choices)],
    )

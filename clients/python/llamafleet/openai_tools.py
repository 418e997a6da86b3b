"""A forced tool call (``tool_choice`` ``"required"`` or a named function) as vLLM's OpenAI
server does it: the output is constrained by a JSON Schema (the engine's structured outputs, the
path ``response_format`` takes), and the JSON it writes is turned into ``tool_calls``.

* a named function: the schema is that function's ``parameters``; the output is the arguments of
  one call to it;
* ``"required"``: the schema is an array (at least one item; at most one when
  ``parallel_tool_calls`` is false) of ``{"name": <one tool's name>, "parameters": <its
  parameters>}``, one ``anyOf`` branch per tool; each item is a call.

The template's own tool-call text format plays no part, so no tool parser is needed. Output that
is not the whole JSON (cut by ``max_tokens``) becomes no call: the text stays the content.
"""

from __future__ import annotations

import json
from typing import Any

from llamafleet.openai_requests import ApiError, NamedToolChoice

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def is_forced(tool_choice: Any) -> bool:
    return tool_choice == "required" or isinstance(tool_choice, NamedToolChoice)


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> parameters schema of each function tool."""
    out = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(
                400,
                f"Invalid 'tools[{i}]': a function tool needs 'type': 'function' and "
                "'function.name'.",
                f"tools[{i}]",
                "invalid_value",
            )
        parameters = function.get("parameters") or EMPTY_PARAMETERS
        if not isinstance(parameters, dict):
            raise ApiError(
                400,
                f"Invalid 'tools[{i}].function.parameters': must be a JSON Schema object.",
                f"tools[{i}].function.parameters",
                "invalid_value",
            )
        out[function["name"]] = parameters
    return out


def forced_schema(
    tools: list[dict[str, Any]], tool_choice: Any, parallel_tool_calls: bool | None
) -> dict[str, Any]:
    """The JSON Schema the output must follow for ``tool_choice`` (a forced one)."""
    functions = _functions(tools)
    if isinstance(tool_choice, NamedToolChoice):
        name = tool_choice.function.name
        if name not in functions:
            raise ApiError(
                400,
                f"Invalid value for 'tool_choice': tool choice {name!r} is not found in the "
                f"'tools' list ({', '.join(functions)}).",
                "tool_choice",
                "invalid_value",
            )
        return functions[name]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters},
            "required": ["name", "parameters"],
        }
        for name, parameters in functions.items()
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    return schema


def forced_calls(tool_choice: Any, text: str) -> list[tuple[str, str]]:
    """``(name, arguments JSON)`` of each call in the constrained output; none when the output
    is not the whole JSON the schema asks for."""
    try:
        value = json.loads(text)
    except ValueError:
        return []
    if isinstance(tool_choice, NamedToolChoice):
        return [(tool_choice.function.name, text.strip())]  # the arguments, as generated
    if not isinstance(value, list):
        return []
    return [
        (item["name"], json.dumps(item["parameters"], ensure_ascii=False))
        for item in value
        if isinstance(item, dict) and isinstance(item.get("name"), str) and "parameters" in item
    ]

"""Tool-call extraction: a generated assistant text -> the function calls it makes.

The inverse of ``tools.calls_text`` for every tool format, in the spirit of LLaMA-Factory's tool
formatters' ``extract``: ``extract_tool_calls(fmt, text)`` returns the ``ToolCall``s (arguments
as JSON text) or ``None`` when the text makes no well-formed call in that format (then the text
is an ordinary answer). Where LLaMA-Factory has no working inverse (``glm4_moe`` reuses the qwen
extractor, which cannot read ``<arg_key>`` pairs) this module parses what the format writes.
Arguments written as text in the XML-like formats are read back as JSON when they parse as JSON
and kept as strings otherwise, as the formats write them. ``seed_oss`` reads both
``<function=name>`` (what Seed-OSS's prompt shows and the model writes) and ``<function=name``
(what LLaMA-Factory's writer, and so llamafleet's training text, writes).

It knows nothing about templates or tokenizers.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from typing import Any

from services.data.formats import ToolCall
from services.data.templates.tools import GEMMA_QUOTE


def _call(name: str, arguments: Any) -> ToolCall:
    return ToolCall(name.strip(), json.dumps(arguments, ensure_ascii=False))


def _loose(value: str) -> Any:
    """A parameter written as text: JSON when it parses, else the text itself."""
    try:
        return json.loads(value.strip())
    except json.JSONDecodeError:
        return value.strip()


def _json_objects(text: str, key: str) -> list[ToolCall] | None:
    """Calls from a JSON object or list of objects with ``name`` and ``key``."""
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or key not in item:
            return None
        calls.append(_call(item["name"], item[key]))
    return calls or None


_ACTION = re.compile(
    r"Action:\s*([A-Za-z0-9_.\-]+)\s*Action Input:\s*(.+?)(?=\s*Action:|\s*$)", re.S
)


def _default(text: str) -> list[ToolCall] | None:
    calls = []
    for name, raw in _ACTION.findall(text):
        raw = raw.strip().strip('"').strip("`")
        try:
            calls.append(_call(name, json.loads(raw)))
        except json.JSONDecodeError:
            return None
    return calls or None


_QWEN = re.compile(r"<tool_call>(.+?)</tool_call>", re.S)


def _qwen(text: str) -> list[ToolCall] | None:
    calls = []
    for body in _QWEN.findall(text):
        found = _json_objects(body, "arguments")
        if not found or len(found) != 1:
            return None
        calls += found
    return calls or None


_FUNCTION_BLOCK = re.compile(
    r"<tool_call>\s*<function=\s*([^\s<>]+)\s*(.*?)\s*</function>\s*</tool_call>", re.S
)
_PARAMETER_EQ = re.compile(r"<parameter=(.*?)>(.*?)</parameter>", re.S)


def _qwen3_5(text: str) -> list[ToolCall] | None:
    calls = [
        _call(name, {k.strip(): _loose(v) for k, v in _PARAMETER_EQ.findall(body)})
        for name, body in _FUNCTION_BLOCK.findall(text)
    ]
    return calls or None


def _llama3(text: str) -> list[ToolCall] | None:
    return _json_objects(text, "parameters")


def _mistral(text: str) -> list[ToolCall] | None:
    body = text.strip()
    if body.startswith("[TOOL_CALLS]"):
        body = body[len("[TOOL_CALLS]") :]
    return _json_objects(body, "arguments")


def _glm4(text: str) -> list[ToolCall] | None:
    name, sep, rest = text.strip().partition("\n")
    if not sep or not name.strip() or " " in name.strip():
        return None
    try:
        arguments = json.loads(rest.strip())
    except json.JSONDecodeError:
        return None
    return [_call(name, arguments)] if isinstance(arguments, dict) else None


_GLM4_MOE = re.compile(
    r"<tool_call>([^\n<]+)((?:\s*<arg_key>.*?</arg_key>\s*<arg_value>.*?</arg_value>)*)", re.S
)
_ARG_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _glm4_moe(text: str) -> list[ToolCall] | None:
    calls = [
        _call(name, {k.strip(): _loose(v) for k, v in _ARG_PAIR.findall(pairs)})
        for name, pairs in _GLM4_MOE.findall(text)
    ]
    return calls or None


_MINIMAX1 = re.compile(r"<tool_calls>\s*(.+?)\s*</tool_calls>", re.S)


def _minimax1(text: str) -> list[ToolCall] | None:
    match = _MINIMAX1.search(text)
    if not match:
        return None
    calls = []
    for line in match.group(1).splitlines():
        if line.strip():
            found = _json_objects(line, "arguments")
            if not found:
                return None
            calls += found
    return calls or None


_INVOKE = re.compile(r'<invoke name="(.*?)">(.*?)</invoke>', re.S)
_PARAMETER_NAME = re.compile(r'<parameter name="(.*?)">(.*?)</parameter>', re.S)


def _minimax2(text: str) -> list[ToolCall] | None:
    calls = [
        _call(name, {k: _loose(v) for k, v in _PARAMETER_NAME.findall(body)})
        for name, body in _INVOKE.findall(text)
    ]
    return calls or None


_SEED = re.compile(
    r"<seed:tool_call>\s*<function=\s*([^\s<>]+)>?\s*(.*?)\s*</function>\s*</seed:tool_call>", re.S
)


def _seed(text: str) -> list[ToolCall] | None:
    calls = [
        _call(name, {k.strip(): _loose(v) for k, v in _PARAMETER_EQ.findall(body)})
        for name, body in _SEED.findall(text)
    ]
    return calls or None


def _python_value(node: ast.AST) -> Any:
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[node.id]
    return ast.literal_eval(node)


def _lfm2(text: str) -> list[ToolCall] | None:
    start = text.find("<|tool_call_start|>")
    end = text.find("<|tool_call_end|>", start)
    if start < 0 or end < 0:
        return None
    try:
        tree = ast.parse(text[start + len("<|tool_call_start|>") : end].strip(), mode="eval")
    except SyntaxError:
        return None
    nodes = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            return None
        try:
            arguments = {k.arg: _python_value(k.value) for k in node.keywords}
        except (ValueError, SyntaxError):
            return None
        calls.append(_call(node.func.id, arguments))
    return calls or None


_GEMMA_CALL = re.compile(r"<\|tool_call>call:([^{\s]+)\{(.*?)\}<tool_call\|>", re.S)


def _gemma_json(body: str) -> Any:
    quoted = re.sub(
        re.escape(GEMMA_QUOTE) + "(.*?)" + re.escape(GEMMA_QUOTE),
        lambda m: json.dumps(m.group(1), ensure_ascii=False),
        "{" + body + "}",
        flags=re.S,
    )
    keyed = re.sub(r"(^|[{\s,\[])([A-Za-z_][A-Za-z0-9_]*)(\s*:)", r'\1"\2"\3', quoted)
    return json.loads(keyed)


def _gemma4(text: str) -> list[ToolCall] | None:
    calls = []
    for name, body in _GEMMA_CALL.findall(text):
        try:
            calls.append(_call(name, _gemma_json(body) if body.strip() else {}))
        except json.JSONDecodeError:
            return None
    return calls or None


EXTRACTORS: dict[str, Callable[[str], list[ToolCall] | None]] = {
    "default": _default,
    "gemma4": _gemma4,
    "glm4": _glm4,
    "glm4_moe": _glm4_moe,
    "lfm2": _lfm2,
    "ling": _qwen,
    "llama3": _llama3,
    "minimax1": _minimax1,
    "minimax2": _minimax2,
    "mistral": _mistral,
    "qwen": _qwen,
    "qwen3_5": _qwen3_5,
    "seed_oss": _seed,
}


def extract_tool_calls(fmt: str, text: str) -> list[ToolCall] | None:
    """The calls ``text`` makes in tool format ``fmt``, or None when it makes none."""
    return EXTRACTORS[fmt](text)

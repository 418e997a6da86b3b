"""Record formats -> one normalised ``Example``.

Knows the shapes LLaMA-Factory users bring (alpaca, sharegpt with its role tags, OpenAI
``messages`` with ``tool_calls`` and ``tool`` results, preference pairs in both shapes, plain
text, prompt-only sets, KTO feedback sets whose ``kto_tag`` column rates each response) and the
column/tag renames of ``dataset_info.json``. It checks each record and raises ``RowError`` naming
the field and a snake_case reason; the caller adds file and row.

Nothing is dropped silently: a record with images, videos or audios (multimodal training is not
supported; their placeholders would be trained as text) and a ``kto_tag`` outside a feedback
dataset (an undesirable response would become an SFT target) are ``RowError``s naming the column.

It knows nothing about templates, tokenizers or files.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

FORMATS = (
    "alpaca",
    "sharegpt",
    "openai",
    "preference_alpaca",
    "preference_sharegpt",
    "text",
    "prompt",
)
KINDS = ("pretrain", "sft", "preference", "prompt", "feedback")
KIND_OF_FORMAT = {
    "alpaca": "sft",
    "sharegpt": "sft",
    "openai": "sft",
    "preference_alpaca": "preference",
    "preference_sharegpt": "preference",
    "text": "pretrain",
    "prompt": "prompt",
}

SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}
DEFAULT_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "messages": "conversations",
    "system": "system",
    "tools": "tools",
    "chosen": "chosen",
    "rejected": "rejected",
    "kto_tag": "kto_tag",
    "images": "images",
    "videos": "videos",
    "audios": "audios",
}
MEDIA_COLUMNS = ("images", "videos", "audios")


class RowError(ValueError):
    """A record that cannot become an example: ``field`` is its path inside the record."""

    def __init__(self, reason: str, field_path: str, description: str) -> None:
        super().__init__(f"{field_path}: {description}")
        self.reason = reason
        self.field = field_path
        self.description = description


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text


@dataclass
class Message:
    """One turn. ``role`` is user | assistant | tool; assistant turns may carry tool calls."""

    role: str
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class Example:
    """A normalised record: a conversation (sft/preference/prompt/feedback) or a text (pretrain)."""

    kind: str
    messages: list[Message] = field(default_factory=list)
    system: str | None = None
    tools: list[dict] = field(default_factory=list)
    text: str = ""
    chosen: Message | None = None
    rejected: Message | None = None
    reference: str = ""
    response: Message | None = None  # feedback: the rated response
    desirable: bool | None = None  # feedback: its rating (LLaMA-Factory's kto_tag)


@dataclass(frozen=True)
class FormatSpec:
    """Record shape plus LLaMA-Factory ``columns`` and ``tags`` overrides (empty = default)."""

    format: str
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def column(self, key: str) -> str:
        if self.columns.get(key):
            return self.columns[key]
        if key == "messages" and self.format == "openai":
            return "messages"
        if key == "prompt" and self.format == "text":
            return "text"
        return DEFAULT_COLUMNS[key]

    @functools.cached_property
    def roles(self) -> dict[str, str]:
        """Role value in the data -> user | assistant | tool | function | system."""
        return {
            self.tag("user_tag"): "user",
            self.tag("assistant_tag"): "assistant",
            self.tag("observation_tag"): "tool",
            self.tag("function_tag"): "function",
            self.tag("system_tag"): "system",
        }

    def tag(self, key: str) -> str:
        if self.tags.get(key):
            return self.tags[key]
        return (OPENAI_TAGS if self.format == "openai" else SHAREGPT_TAGS)[key]


def to_example(record: Any, spec: FormatSpec, kind: str) -> Example:
    """Turn one raw record into an ``Example`` of ``kind``, or raise ``RowError``."""
    if not isinstance(record, dict):
        raise RowError("not_an_object", "", f"a record must be an object, got {_type(record)}")
    _check_unsupported(record, spec, kind)
    fmt = spec.format
    if fmt == "text":
        text = _text(record, spec.column("prompt"), required=True)
        if _blank(text):
            raise RowError("empty_text", spec.column("prompt"), "the text is empty")
        return Example(kind="pretrain", text=text)
    if fmt in ("alpaca", "prompt", "preference_alpaca"):
        example = _alpaca(record, spec, kind)
    else:
        example = _sharegpt(record, spec, kind)
    example.tools = _tools(record, spec.column("tools"))
    if kind == "feedback":
        _feedback(record, spec, example)
    check_order(example, spec.column("messages"))
    return example


def _check_unsupported(record: dict, spec: FormatSpec, kind: str) -> None:
    """Columns this service would otherwise misread: media, and a KTO label outside KTO."""
    for key in MEDIA_COLUMNS:
        col = spec.column(key)
        value = record.get(col)
        if value not in (None, "", [], {}):
            raise RowError(
                "multimodal_not_supported",
                col,
                f"the {key} column {col!r} holds {key}: multimodal training is not supported "
                f"(the {key} would be dropped and their placeholders trained as text)",
            )
    col = spec.column("kto_tag")
    if kind != "feedback" and record.get(col) is not None:
        raise RowError(
            "kto_tag_outside_feedback",
            col,
            f"the kto_tag column {col!r} rates responses for KTO: only a FEEDBACK dataset reads "
            f"it (a {kind} dataset would train on responses marked undesirable); prepare it with "
            "kind FEEDBACK, or drop the column",
        )


def _feedback(record: dict, spec: FormatSpec, example: Example) -> None:
    """LLaMA-Factory's KTO reading: the last turn is the rated response, the rest the prompt."""
    col = spec.column("kto_tag")
    tag = record.get(col)
    if not isinstance(tag, bool):
        raise RowError("invalid_kto_tag", col, f"must be true or false, got {_type(tag)}")
    if not example.messages or example.messages[-1].role != "assistant":
        raise RowError(
            "missing_response", spec.column("messages"), "a feedback example ends with a response"
        )
    example.response = example.messages.pop()
    if _blank(example.response.content) and not example.response.tool_calls:
        raise RowError("empty_response", spec.column("messages"), "the response is empty")
    example.desirable = tag


def _alpaca(record: dict, spec: FormatSpec, kind: str) -> Example:
    messages: list[Message] = []
    hist_col = spec.column("history")
    history = record.get(hist_col)
    if history:
        if not isinstance(history, list):
            raise RowError("invalid_history", hist_col, "must be a list of [user, assistant]")
        for i, pair in enumerate(history):
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            if not ok or not all(isinstance(p, str) for p in pair):
                raise RowError("invalid_history", f"{hist_col}[{i}]", "must be [user, assistant]")
            messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    instruction = _text(record, spec.column("prompt"), required=True)
    query = _text(record, spec.column("query"), required=False)
    prompt = "\n".join(p for p in (instruction, query) if p)
    if _blank(prompt):
        raise RowError("empty_prompt", spec.column("prompt"), "the instruction is empty")
    messages.append(Message("user", prompt))
    example = Example(kind=kind, messages=messages, system=_system(record, spec))
    response_col = spec.column("response")
    if kind == "preference":
        example.chosen = Message("assistant", _response(record, spec.column("chosen")))
        example.rejected = Message("assistant", _response(record, spec.column("rejected")))
    elif kind == "prompt":
        reference = record.get(response_col)
        example.reference = reference if isinstance(reference, str) else ""
    else:
        messages.append(Message("assistant", _response(record, response_col)))
    return example


def _sharegpt(record: dict, spec: FormatSpec, kind: str) -> Example:
    col = spec.column("messages")
    turns = record.get(col)
    if turns is None:
        raise RowError("missing_column", col, "missing")
    if not isinstance(turns, list):
        raise RowError("invalid_messages", col, f"must be a list of turns, got {_type(turns)}")
    system = _system(record, spec)
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        path = f"{col}[{i}]"
        message = _turn(turn, spec, path)
        if message is None:  # a system turn
            if messages:
                raise RowError("invalid_role_order", path, "a system turn must come first")
            system = _turn_content(turn, spec, path)
            continue
        messages.append(message)
    if not messages:
        raise RowError("empty_conversation", col, "the conversation has no turns")
    example = Example(kind=kind, messages=messages, system=system)
    if kind == "preference":
        example.chosen = _pair_turn(record, spec, "chosen")
        example.rejected = _pair_turn(record, spec, "rejected")
    elif kind == "prompt" and messages[-1].role == "assistant":
        example.reference = messages.pop().content
    return example


def _turn(turn: Any, spec: FormatSpec, path: str) -> Message | None:
    if not isinstance(turn, dict):
        raise RowError("invalid_turn", path, f"a turn must be an object, got {_type(turn)}")
    role_tag = spec.tag("role_tag")
    role = turn.get(role_tag)
    if role is None:
        raise RowError("missing_field", f"{path}.{role_tag}", "missing")
    roles = spec.roles
    if role not in roles:
        valid = ", ".join(repr(r) for r in roles)
        raise RowError(
            "unknown_role", f"{path}.{role_tag}", f"unknown role {role!r}; valid: {valid}"
        )
    mapped = roles[role]
    if mapped == "system":
        return None
    if mapped == "assistant" and turn.get("tool_calls"):
        calls = _openai_calls(turn["tool_calls"], f"{path}.tool_calls")
        content = turn.get(spec.tag("content_tag")) or ""
        if not isinstance(content, str):
            raise RowError("invalid_content", f"{path}.{spec.tag('content_tag')}", "not a string")
        return Message("assistant", content, calls)
    content = _turn_content(turn, spec, path)
    if mapped == "function":
        return Message(
            "assistant", "", _function_calls(content, f"{path}.{spec.tag('content_tag')}")
        )
    return Message(mapped, content)


def _turn_content(turn: dict, spec: FormatSpec, path: str) -> str:
    tag = spec.tag("content_tag")
    content = turn.get(tag)
    if content is None:
        raise RowError("missing_field", f"{path}.{tag}", "missing")
    if isinstance(content, list):  # OpenAI content parts
        texts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        content = "".join(texts)
    if not isinstance(content, str):
        raise RowError(
            "invalid_content", f"{path}.{tag}", f"must be a string, got {_type(content)}"
        )
    return content


def _pair_turn(record: dict, spec: FormatSpec, key: str) -> Message:
    col = spec.column(key)
    turn = record.get(col)
    if turn is None:
        raise RowError("missing_column", col, "missing")
    message = _turn(turn, spec, col)
    if message is None or message.role != "assistant":
        raise RowError("invalid_role_order", col, "must be an assistant turn")
    if _blank(message.content) and not message.tool_calls:
        raise RowError("empty_response", col, "the response is empty")
    return message


def _function_calls(text: str, path: str) -> list[ToolCall]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise RowError("invalid_tool_call", path, "a function call must be JSON") from None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RowError("invalid_tool_call", path, 'expected {"name": ..., "arguments": ...}')
        calls.append(ToolCall(item["name"], _args_json(item.get("arguments", {}), path)))
    return calls


def _openai_calls(value: Any, path: str) -> list[ToolCall]:
    if not isinstance(value, list):
        raise RowError("invalid_tool_call", path, "must be a list")
    calls = []
    for i, call in enumerate(value):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RowError("invalid_tool_call", f"{path}[{i}]", "needs function.name")
        calls.append(ToolCall(fn["name"], _args_json(fn.get("arguments", {}), f"{path}[{i}]")))
    return calls


def _args_json(arguments: Any, path: str) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise RowError("invalid_tool_call", path, "arguments must be a JSON object") from None
    return json.dumps(arguments, ensure_ascii=False)


def check_order(example: Example, col: str) -> None:
    """Turns alternate: user, assistant, (user | tool+), assistant, ...; tool follows a call."""
    previous = None
    for i, message in enumerate(example.messages):
        path = f"{col}[{i}]"
        role = message.role
        if previous is None and role != "user":
            raise RowError(
                "invalid_role_order", path, f"the first turn must be a user turn, not {role}"
            )
        if role == "user" and previous == "user":
            raise RowError("invalid_role_order", path, "two user turns in a row")
        if role == "assistant" and previous == "assistant":
            raise RowError("invalid_role_order", path, "two assistant turns in a row")
        if role == "tool" and previous not in ("assistant", "tool"):
            raise RowError(
                "invalid_role_order", path, "a tool result must follow an assistant turn"
            )
        if _blank(message.content) and not message.tool_calls:
            reason = "empty_response" if role == "assistant" else "empty_prompt"
            raise RowError(reason, path, f"the {role} turn is empty")
        previous = role
    last = example.messages[-1].role if example.messages else None
    if example.kind == "sft" and last != "assistant":
        raise RowError("missing_response", col, "the conversation must end with an assistant turn")
    if example.kind in ("preference", "prompt", "feedback") and last == "assistant":
        raise RowError("invalid_role_order", col, "the prompt must end with a user or tool turn")


def _text(record: dict, col: str, required: bool) -> str:
    value = record.get(col)
    if value is None:
        if required:
            raise RowError("missing_column", col, "missing")
        return ""
    if not isinstance(value, str):
        raise RowError("invalid_content", col, f"must be a string, got {_type(value)}")
    return value


def _response(record: dict, col: str) -> str:
    value = record.get(col)
    if isinstance(value, list) and len(value) == 1:  # LLaMA-Factory's one-element output lists
        value = value[0]
    if value is None:
        raise RowError("missing_column", col, "missing")
    if not isinstance(value, str):
        raise RowError("invalid_content", col, f"must be a string, got {_type(value)}")
    if _blank(value):
        raise RowError("empty_response", col, "the response is empty")
    return value


def _system(record: dict, spec: FormatSpec) -> str | None:
    value = record.get(spec.column("system"))
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowError("invalid_content", spec.column("system"), "must be a string")
    return value


def _tools(record: dict, col: str) -> list[dict]:
    value = record.get(col)
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("invalid_tools", col, "tools must be JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowError("invalid_tools", col, "tools must be a list of objects")
    return value


def _blank(text: str) -> bool:
    """Empty or whitespace only (without copying the text as ``strip`` would)."""
    return not text or text.isspace()


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__

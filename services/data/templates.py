"""Named chat templates and function-calling formats: an ``Example`` -> text pieces.

A named template renders a conversation as (prompt, response) text pairs, the way LLaMA-Factory's
templates do: the prompt part holds the prefix (bos), the system prompt (with the tool
descriptions of the tool format), user turns and tool results, each closed by the assistant
header; the response part is one assistant turn with its end-of-turn token. ``{bos}`` and
``{eos}`` stand for the tokenizer's own tokens. The ``tokenizer`` template instead hands OpenAI
style messages to the tokenizer's Jinja ``chat_template`` (``jinja_messages``).

Templates: default, alpaca, chatml, qwen, llama2, llama3, mistral, gemma, glm4, tokenizer.
Tool formats: default (ReAct-style "Action:" lines), qwen (<tool_call> JSON), llama3 (JSON with
"parameters"), mistral ([TOOL_CALLS]), glm4 (each tool as a "## name" section of indented JSON;
a call is its name, a newline and the arguments; one call per turn).

An "efficient eos" template (glm4) closes no assistant turn with a token of its own: the row ends
with one eos, and the first token of each later prompt is labelled eos (encode.py does this).

It knows nothing about tokenizers (encode.py turns the pieces into ids and labels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.common.config import nearest
from services.common.errors import FieldViolation, InvalidArgument
from services.data.formats import Example, Message, RowError, ToolCall

TOKENIZER_TEMPLATE = "tokenizer"

# GLM-4's own tool preamble (as its chat template and LLaMA-Factory's glm4 tool format write it):
# "You are an AI assistant named ChatGLM, built on the GLM-4 language model trained by Zhipu AI;
# your task is to give appropriate answers and support for users' questions and requests.
# Available tools", and after each tool "When calling the function above, give its arguments
# as JSON."
GLM4_TOOLS_HEADER = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
)
GLM4_CALL_HINT = "在调用上述函数时，请使用 Json 格式表示调用的参数。"


@dataclass(frozen=True)
class Template:
    """Slots take ``{content}`` (and ``{bos}``/``{eos}``); ``system_in_user`` merges the system
    block into the first user turn (llama2, mistral, gemma have no system role); ``function``
    renders an assistant turn that calls tools (default: the ``assistant`` slot);
    ``efficient_eos``: see the module docstring."""

    name: str
    user: str
    assistant: str
    observation: str
    system: str = "{content}"
    prefix: str = ""
    default_system: str = ""
    system_in_user: bool = False
    tool_format: str = "default"
    function: str = ""
    efficient_eos: bool = False


_CHATML = dict(
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    assistant="{content}<|im_end|>\n",
)
_L3_HEAD = "<|start_header_id|>{role}<|end_header_id|>\n\n"

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "default",
            system="System: {content}\n",
            user="Human: {content}\nAssistant: ",
            assistant="{content}{eos}\n",
            observation="Observation: {content}\nAssistant: ",
        ),
        Template(
            "alpaca",
            default_system=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.\n\n"
            ),
            user="### Instruction:\n{content}\n\n### Response:\n",
            assistant="{content}{eos}\n\n",
            observation="### Observation:\n{content}\n\n### Response:\n",
        ),
        Template(
            "chatml",
            observation="<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n",
            **_CHATML,
        ),
        Template(
            "qwen",
            default_system="You are a helpful assistant.",
            observation="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
            tool_format="qwen",
            **_CHATML,
        ),
        Template(
            "llama2",
            system="<<SYS>>\n{content}\n<</SYS>>\n\n",
            system_in_user=True,
            user="{bos}[INST] {content} [/INST]",
            assistant=" {content} {eos}",
            observation="{bos}[INST] {content} [/INST]",
        ),
        Template(
            "llama3",
            prefix="{bos}",
            system=_L3_HEAD.replace("{role}", "system") + "{content}<|eot_id|>",
            user=_L3_HEAD.replace("{role}", "user")
            + "{content}<|eot_id|>"
            + _L3_HEAD.replace("{role}", "assistant"),
            assistant="{content}<|eot_id|>",
            observation=_L3_HEAD.replace("{role}", "ipython")
            + "{content}<|eot_id|>"
            + _L3_HEAD.replace("{role}", "assistant"),
            tool_format="llama3",
        ),
        Template(
            "mistral",
            prefix="{bos}",
            system="{content}\n\n",
            system_in_user=True,
            user="[INST] {content}[/INST]",
            assistant="{content}{eos}",
            observation="[TOOL_RESULTS] {content}[/TOOL_RESULTS]",
            tool_format="mistral",
        ),
        Template(
            "gemma",
            prefix="{bos}",
            system="{content}\n\n",
            system_in_user=True,
            user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
            assistant="{content}<end_of_turn>\n",
            observation="<start_of_turn>tool\n{content}<end_of_turn>\n<start_of_turn>model\n",
        ),
        Template(
            "glm4",
            prefix="[gMASK]<sop>",
            system="<|system|>\n{content}",
            user="<|user|>\n{content}<|assistant|>",
            assistant="\n{content}",
            function="{content}",
            observation="<|observation|>\n{content}<|assistant|>",
            tool_format="glm4",
            efficient_eos=True,
        ),
    )
}
TEMPLATE_NAMES = (*TEMPLATES, TOKENIZER_TEMPLATE)
TOOL_FORMATS = ("default", "qwen", "llama3", "mistral", "glm4")


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


# --- named templates -----------------------------------------------------------------------


def _fill(slot: str, content: str) -> str:
    return slot.replace("{content}", content)


def render_pairs(
    t: Template, example: Example, default_system: str | None, tool_format: str = ""
) -> tuple[list[tuple[str, str]], str]:
    """(prompt, response) pairs of the conversation, and the trailing prompt ("" for SFT).

    Preference and prompt examples end with a user/tool turn: it is the trailing prompt, which
    ``render_response`` completes with the chosen or rejected turn.
    """
    fmt = tool_format or t.tool_format
    system = example.system if example.system is not None else default_system
    if system is None:
        system = t.default_system
    tools_text = _tools_text(fmt, example.tools)
    if tools_text:  # glm4's tool text opens with its own sentence, appended as it is
        joiner = "" if fmt == "glm4" else "\n\n"
        system = f"{system}{joiner}{tools_text}" if system else tools_text
    head = t.prefix
    pending_system = ""
    if system:
        if t.system_in_user:
            pending_system = _fill(t.system, system)
        else:
            head += _fill(t.system, system)
    pairs: list[tuple[str, str]] = []
    prompt = head
    i = 0
    msgs = example.messages
    while i < len(msgs):
        message = msgs[i]
        if message.role == "user":
            prompt += _fill(t.user, pending_system + message.content)
            pending_system = ""
            i += 1
        elif message.role == "tool":
            results = []
            while i < len(msgs) and msgs[i].role == "tool":
                results.append(msgs[i].content)
                i += 1
            prompt += _fill(t.observation, _observation_text(fmt, results))
        else:
            pairs.append((prompt, render_response(t, message, fmt)))
            prompt = ""
            i += 1
    return pairs, prompt


def render_response(t: Template, message: Message, tool_format: str = "") -> str:
    """One assistant turn; ``RowError`` when the tool format cannot express its calls."""
    content = message.content
    if message.tool_calls:
        calls = _calls_text(tool_format or t.tool_format, message.tool_calls)
        content = f"{content}\n{calls}" if content else calls
        return _fill(t.function or t.assistant, content)
    return _fill(t.assistant, content)


def _tool_function(tool: dict) -> dict:
    return tool["function"] if isinstance(tool.get("function"), dict) else tool


def _tools_text(fmt: str, tools: list[dict]) -> str:
    if not tools:
        return ""
    fns = [_tool_function(t) for t in tools]
    if fmt == "qwen":
        lines = "\n".join(
            json.dumps({"type": "function", "function": f}, ensure_ascii=False) for f in fns
        )
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{lines}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )
    if fmt == "llama3":
        body = "\n\n".join(json.dumps(f, indent=4, ensure_ascii=False) for f in fns)
        return (
            "You have access to the following functions. To call a function, please respond "
            'with JSON for a function call. Respond in the format {"name": function name, '
            '"parameters": dictionary of argument name and its value}. Do not use variables.\n\n'
            + body
        )
    if fmt == "mistral":
        wrapped = [{"type": "function", "function": f} for f in fns]
        return f"[AVAILABLE_TOOLS] {json.dumps(wrapped, ensure_ascii=False)}[/AVAILABLE_TOOLS]"
    if fmt == "glm4":
        sections = "".join(
            f"\n\n## {f.get('name', '')}\n\n{json.dumps(f, indent=4, ensure_ascii=False)}\n"
            + GLM4_CALL_HINT
            for f in fns
        )
        return GLM4_TOOLS_HEADER + sections
    parts = []
    for f in fns:
        params = (f.get("parameters") or {}).get("properties", {})
        required = set((f.get("parameters") or {}).get("required", []))
        args = "".join(
            f"  - {k} ({v.get('type', '')}{', required' if k in required else ''}): "
            f"{v.get('description', '')}\n"
            for k, v in params.items()
        )
        parts.append(
            f"> Tool Name: {f.get('name', '')}\nTool Description: {f.get('description', '')}\n"
            f"Tool Args:\n{args}"
        )
    names = ", ".join(str(f.get("name", "")) for f in fns)
    return (
        "You have access to the following tools:\n"
        + "\n".join(parts)
        + "\nUse the following format if using a tool:\n```\n"
        f"Action: tool name (one of [{names}])\n"
        "Action Input: the input to the tool, in a JSON format representing the kwargs\n```\n"
    )


def _calls_text(fmt: str, calls: list[ToolCall]) -> str:
    if fmt == "glm4":
        if len(calls) > 1:
            raise RowError(
                "parallel_tool_calls",
                "",
                f"the glm4 tool format takes one tool call per turn, got {len(calls)}",
            )
        return f"{calls[0].name}\n{calls[0].arguments}"
    if fmt == "qwen":
        return "\n".join(
            f'<tool_call>\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n</tool_call>'
            for c in calls
        )
    if fmt == "llama3":
        return "\n".join(
            f'{{"name": {json.dumps(c.name)}, "parameters": {c.arguments}}}' for c in calls
        )
    if fmt == "mistral":
        items = ", ".join(
            f'{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}' for c in calls
        )
        return f"[TOOL_CALLS] [{items}]"
    return "".join(f"Action: {c.name}\nAction Input: {c.arguments}\n" for c in calls)


def _observation_text(fmt: str, results: list[str]) -> str:
    if fmt == "qwen":
        return "\n".join(f"<tool_response>\n{r}\n</tool_response>" for r in results)
    if fmt == "mistral":
        return " ".join(json.dumps({"content": r}, ensure_ascii=False) for r in results)
    return "\n".join(results)


# --- the tokenizer's own Jinja template ---------------------------------------------------------


def jinja_messages(example: Example, default_system: str | None) -> list[dict]:
    """OpenAI-style messages for ``apply_chat_template`` (system first when there is one)."""
    out: list[dict] = []
    system = example.system if example.system is not None else default_system
    if system:
        out.append({"role": "system", "content": system})
    out += [jinja_message(m) for m in example.messages]
    return out


def jinja_message(m: Message) -> dict:
    item: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        item["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
            for c in m.tool_calls
        ]
    return item

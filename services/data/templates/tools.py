"""Function-calling formats: the tool list as system text, and tool calls as assistant text.

Each format writes exactly what LLaMA-Factory's tool format of the same name writes (its
``tool_formatter`` and ``function_formatter``), so a model fine-tuned here sees what it would see
there: ``default`` (ReAct-style "Action:" lines), ``qwen`` (<tool_call> JSON, Qwen 2.5 / 3),
``qwen3_5`` (<function=...> parameter blocks), ``llama3`` (JSON with "parameters", dated prompt),
``mistral`` ([AVAILABLE_TOOLS] JSON), ``glm4`` (a "## name" section per tool; one call per turn),
``glm4_moe`` (<arg_key>/<arg_value> pairs), ``minimax1``, ``minimax2``, ``seed_oss``, ``ling``,
``lfm2`` (Python-call syntax) and ``gemma4``. The prompts are the model families' own texts; the
inverse direction (generated text -> calls) is ``extract.py``.

``llama3``'s prompt carries today's date, as LLaMA-Factory's does; ``today`` is the one clock
(tests pin it).

It knows nothing about templates or tokenizers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from services.data.formats import RowError, ToolCall

TOOL_FORMATS = (
    "default",
    "gemma4",
    "glm4",
    "glm4_moe",
    "lfm2",
    "ling",
    "llama3",
    "minimax1",
    "minimax2",
    "mistral",
    "qwen",
    "qwen3_5",
    "seed_oss",
)


def today() -> str:
    """The date written into the llama3 tool prompt ("06 Dec 2026")."""
    return datetime.now().strftime("%d %b %Y")


def _dumps(value, **kwargs) -> str:
    return json.dumps(value, ensure_ascii=False, **kwargs)


def _function(tool: dict) -> dict:
    """The function description of an OpenAI-style tool ({"type": "function", "function": ...})."""
    if tool.get("type") == "function":
        inner = tool.get("function")
        return inner if isinstance(inner, dict) else {}
    return tool


def _wrapped(tool: dict) -> dict:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _args(call: ToolCall):
    return json.loads(call.arguments)


def _text_value(value) -> str:
    return value if isinstance(value, str) else _dumps(value)


# --- the tool list -----------------------------------------------------------------------------


def _default_tools(tools: list[dict]) -> str:
    sections, names = [], []
    for tool in map(_function, tools):
        params = tool.get("parameters") or {}
        required = params.get("required", [])
        lines = []
        for name, param in (params.get("properties") or {}).items():
            extra = ", required" if name in required else ""
            hint = ""
            if param.get("enum"):
                hint += ", should be one of [{}]".format(", ".join(map(str, param["enum"])))
            if param.get("items"):
                hint += ", where each item should be {}".format(param["items"].get("type", ""))
            lines.append(
                f"  - {name} ({param.get('type', '')}{extra}): {param.get('description', '')}{hint}\n"
            )
        sections.append(
            f"> Tool Name: {tool.get('name', '')}\nTool Description: "
            f"{tool.get('description', '')}\nTool Args:\n{''.join(lines)}\n"
        )
        names.append(str(tool.get("name", "")))
    return (
        "You have access to the following tools:\n" + "".join(sections)
        + "Use the following format if using a tool:\n```\n"
        f"Action: tool name (one of [{', '.join(names)}])\n"
        "Action Input: the input to the tool, in a JSON format representing the kwargs "
        '(e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
    )  # fmt: skip


_QWEN_CALL_HINT = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call>'
)
_QWEN_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)


def _qwen_tools(tools: list[dict]) -> str:
    listed = "".join("\n" + _dumps(_wrapped(t)) for t in tools)
    return "\n\n" + _QWEN_TOOLS_HEAD + listed + _QWEN_CALL_HINT


def _ling_tools(tools: list[dict]) -> str:
    listed = "".join("\n" + _dumps(_wrapped(t)) for t in tools)
    return _QWEN_TOOLS_HEAD + listed + _QWEN_CALL_HINT + "\ndetailed thinking off"


def _qwen3_5_tools(tools: list[dict]) -> str:
    listed = "".join("\n" + _dumps(_function(t)) for t in tools)
    return (
        "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>" + listed
        + "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format "
        "with NO suffix:\n\n<tool_call>\n<function=example_function_name>\n"
        "<parameter=example_parameter_1>\nvalue_1\n</parameter>\n<parameter=example_parameter_2>\n"
        "This is the value for the second parameter\nthat can span\nmultiple lines\n</parameter>\n"
        "</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the "
        "specified format: an inner <function=...></function> block must be nested within "
        "<tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may "
        "provide optional reasoning for your function call in natural language BEFORE the "
        "function call, but NOT after\n- If there is no function call available, answer the "
        "question like normal with your current knowledge and do not tell the user about "
        "function calls\n</IMPORTANT>"
    )  # fmt: skip


def _llama3_tools(tools: list[dict]) -> str:
    listed = "".join(_dumps(_wrapped(t), indent=4) + "\n\n" for t in tools)
    return (
        f"Cutting Knowledge Date: December 2023\nToday Date: {today()}\n\n"
        "You have access to the following functions. To call a function, please respond with "
        'JSON for a function call. Respond in the format {"name": function name, "parameters": '
        "dictionary of argument name and its value}. Do not use variables.\n\n" + listed
    )


def _mistral_tools(tools: list[dict]) -> str:
    return "[AVAILABLE_TOOLS] " + _dumps([_wrapped(t) for t in tools]) + "[/AVAILABLE_TOOLS]"


GLM4_TOOLS_HEADER = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
)
GLM4_CALL_HINT = "在调用上述函数时，请使用 Json 格式表示调用的参数。"


def _glm4_tools(tools: list[dict]) -> str:
    sections = "".join(
        f"\n\n## {f.get('name', '')}\n\n{_dumps(f, indent=4)}\n{GLM4_CALL_HINT}"
        for f in map(_function, tools)
    )
    return GLM4_TOOLS_HEADER + sections


def _glm4_moe_tools(tools: list[dict]) -> str:
    listed = "".join("\n" + _dumps(_wrapped(t)) for t in tools)
    return (
        "\n\n" + _QWEN_TOOLS_HEAD + listed + "\n</tools>\n\nFor each function call, output the "
        "function name and arguments within the following XML format:\n<tool_call>{function-name}"
        "\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>"
        "\n<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>\n"
    )  # fmt: skip


def _minimax1_tools(tools: list[dict]) -> str:
    listed = "".join(_dumps(_function(t)) + "\n" for t in tools)
    return (
        f"You are provided with these tools:\n<tools>\n{listed}</tools>\n\n"
        "If you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and "
        "provide tool-name and json-object of arguments, following the format below:\n"
        '<tool_calls>\n{"name": <tool-name-1>, "arguments": <args-json-object-1>}\n...\n'
        "</tool_calls>"
    )


def _minimax2_tools(tools: list[dict]) -> str:
    listed = "".join("<tool>" + _dumps(_function(t)) + "</tool>\n" for t in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more tools to assist with the user query.\n"
        f"Here are the tools available in JSONSchema format:\n\n<tools>\n{listed}</tools>\n\n"
        "When making tool calls, use XML format to invoke tools and pass parameters:\n"
        '\n<minimax:tool_call>\n<invoke name="tool-name-1">\n<parameter name="param-key-1">'
        'param-value-1</parameter>\n<parameter name="param-key-2">param-value-2</parameter>\n'
        "...\n</invoke>\n</minimax:tool_call>"
    )


def _seed_tools(tools: list[dict]) -> str:
    return (
        "system\nYou are Doubao, a helpful AI assistant. You may call one or more functions to "
        "assist with the user query.Tool List:\nYou are authorized to use the following tools "
        "(described in JSON Schema format). Before performing any task, you must decide how to "
        "call them based on the descriptions and parameters of these tools."
        f"\n{_dumps(tools)}\n工具调用请遵循如下格式:\n<seed:tool_call>\n<function=example_function_name>"
        "\n<parameter=example_parameter_1>value_1</parameter>\n<parameter=example_parameter_2>This "
        "is the value for the second parameter\nthat can span\nmultiple lines</parameter>\n"
        "</function>\n</seed:tool_call>\n"
    )  # fmt: skip


def _lfm2_tools(tools: list[dict]) -> str:
    listed = _dumps([_function(t) for t in tools])
    return f"List of tools: <|tool_list_start|>{listed}<|tool_list_end|>"


GEMMA_QUOTE = '<|"|>'


def _gemma_str(text) -> str:
    return f"{GEMMA_QUOTE}{text}{GEMMA_QUOTE}"


def _gemma4_tools(tools: list[dict]) -> str:
    declarations = []
    for fn in map(_function, tools):
        text = f"declaration:{fn['name']}{{description:{_gemma_str(fn.get('description', ''))}"
        params = fn.get("parameters")
        if params:
            parts = []
            if params.get("properties"):
                props = []
                for key, schema in params["properties"].items():
                    items = []
                    if schema.get("description"):
                        items.append(f"description:{_gemma_str(schema['description'])}")
                    if schema.get("type"):
                        items.append(f"type:{_gemma_str(str(schema['type']).upper())}")
                    props.append(f"{key}:{{{','.join(items)}}}")
                parts.append(f"properties:{{{','.join(props)}}}")
            if params.get("required"):
                parts.append(f"required:[{','.join(_gemma_str(r) for r in params['required'])}]")
            if params.get("type"):
                parts.append(f"type:{_gemma_str(str(params['type']).upper())}")
            text += f",parameters:{{{','.join(parts)}}}"
        response = fn.get("response")
        if response:
            parts = []
            if response.get("description"):
                parts.append(f"description:{_gemma_str(response['description'])}")
            if str(response.get("type", "")).upper() == "OBJECT":
                parts.append(f"type:{_gemma_str('OBJECT')}")
            text += f",response:{{{','.join(parts)}}}"
        declarations.append(text + "}")
    return "\n".join(declarations)


# --- tool calls --------------------------------------------------------------------------------


def _default_calls(calls: list[ToolCall]) -> str:
    return "\n".join(f"Action: {c.name}\nAction Input: {c.arguments}" for c in calls)


def _qwen_calls(calls: list[ToolCall]) -> str:
    return "\n".join(
        f"<tool_call>\n{_dumps({'name': c.name, 'arguments': _args(c)})}\n</tool_call>"
        for c in calls
    )


def _qwen3_5_calls(calls: list[ToolCall]) -> str:
    texts = []
    for c in calls:
        params = "".join(
            f"\n<parameter={k}>\n{_text_value(v)}\n</parameter>" for k, v in _args(c).items()
        )
        texts.append(f"<tool_call>\n<function={c.name}>{params}\n</function>\n</tool_call>")
    return "\n".join(texts)


def _llama3_calls(calls: list[ToolCall]) -> str:
    objects = [{"name": c.name, "parameters": _args(c)} for c in calls]
    return _dumps(objects[0] if len(objects) == 1 else objects)


def _mistral_calls(calls: list[ToolCall]) -> str:
    return _dumps([{"name": c.name, "arguments": _args(c)} for c in calls])


def _glm4_calls(calls: list[ToolCall]) -> str:
    if len(calls) > 1:
        raise RowError(
            "parallel_tool_calls",
            "",
            f"the glm4 tool format takes one tool call per turn, got {len(calls)}",
        )
    return f"{calls[0].name}\n{calls[0].arguments}"


def _glm4_moe_calls(calls: list[ToolCall]) -> str:
    texts = []
    for c in calls:
        pairs = "".join(
            f"\n<arg_key>{k}</arg_key>\n<arg_value>{_text_value(v)}</arg_value>"
            for k, v in _args(c).items()
        )
        texts.append(f"\n<tool_call>{c.name}{pairs}")
    return "\n".join(texts)


def _minimax1_calls(calls: list[ToolCall]) -> str:
    lines = "\n".join(_dumps({"name": c.name, "arguments": _args(c)}) for c in calls)
    return f"<tool_calls>\n{lines}\n</tool_calls>"


def _minimax2_calls(calls: list[ToolCall]) -> str:
    texts = []
    for c in calls:
        params = "".join(
            f'\n<parameter name="{k}">{_text_value(v)}</parameter>' for k, v in _args(c).items()
        )
        texts.append(f'<invoke name="{c.name}">{params}\n</invoke>')
    return "\n".join(texts)


def _seed_calls(calls: list[ToolCall]) -> str:
    texts = []
    for c in calls:
        params = "".join(
            f"\n<parameter={k}>{_text_value(v)}</parameter>" for k, v in _args(c).items()
        )
        texts.append(
            f"\n<seed:tool_call>\n<function={c.name}{params}\n</function>\n</seed:tool_call>"
        )
    return "\n".join(texts)


def _lfm2_calls(calls: list[ToolCall]) -> str:
    texts = []
    for c in calls:
        kwargs = ", ".join(
            f'{k}="{v}"' if isinstance(v, str) else f"{k}={_dumps(v)}" for k, v in _args(c).items()
        )
        texts.append(f"{c.name}({kwargs})")
    return f"<|tool_call_start|>[{', '.join(texts)}]<|tool_call_end|>"


def _gemma_value(value, quote_keys: bool) -> str:
    if isinstance(value, str):
        return _gemma_str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = []
        for key in sorted(value):
            shown = _gemma_str(key) if quote_keys else str(key)
            items.append(f"{shown}:{_gemma_value(value[key], quote_keys)}")
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_gemma_value(v, quote_keys) for v in value) + "]"
    if value is None:
        return "null"
    return str(value)


def _gemma4_calls(calls: list[ToolCall]) -> str:
    texts = []
    for c in calls:
        args = _args(c)
        if isinstance(args, dict):
            body = ",".join(f"{k}:{_gemma_value(args[k], False)}" for k in sorted(args))
        else:
            body = _gemma_value(args, False)
        texts.append(f"<|tool_call>call:{c.name}{{{body}}}<tool_call|>")
    return "".join(texts)


TOOL_PROMPTS: dict[str, Callable[[list[dict]], str]] = {
    "default": _default_tools,
    "gemma4": _gemma4_tools,
    "glm4": _glm4_tools,
    "glm4_moe": _glm4_moe_tools,
    "lfm2": _lfm2_tools,
    "ling": _ling_tools,
    "llama3": _llama3_tools,
    "minimax1": _minimax1_tools,
    "minimax2": _minimax2_tools,
    "mistral": _mistral_tools,
    "qwen": _qwen_tools,
    "qwen3_5": _qwen3_5_tools,
    "seed_oss": _seed_tools,
}
CALL_WRITERS: dict[str, Callable[[list[ToolCall]], str]] = {
    "default": _default_calls,
    "gemma4": _gemma4_calls,
    "glm4": _glm4_calls,
    "glm4_moe": _glm4_moe_calls,
    "lfm2": _lfm2_calls,
    "ling": _qwen_calls,
    "llama3": _llama3_calls,
    "minimax1": _minimax1_calls,
    "minimax2": _minimax2_calls,
    "mistral": _mistral_calls,
    "qwen": _qwen_calls,
    "qwen3_5": _qwen3_5_calls,
    "seed_oss": _seed_calls,
}


def tools_text(fmt: str, tools: list[dict]) -> str:
    """The tool list as the format writes it into the system prompt ("" for no tools)."""
    if not tools:
        return ""
    try:
        return TOOL_PROMPTS[fmt](tools)
    except (KeyError, TypeError, AttributeError) as exc:
        if fmt not in TOOL_PROMPTS:
            raise
        raise RowError(
            "invalid_tools", "tools", f"the {fmt} tool format cannot describe these tools: {exc}"
        ) from None


def calls_text(fmt: str, calls: list[ToolCall]) -> str:
    """Tool calls as the assistant writes them in this format."""
    return CALL_WRITERS[fmt](calls)

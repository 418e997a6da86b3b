"""Tool-call extraction for every tool format (generated assistant text -> calls).

Two references: the format's own writer (``tools.calls_text``, pinned to LLaMA-Factory by the
goldens) must round-trip through ``extract_tool_calls``, and hand-written texts in the shape the
model families generate (a thought or preamble before the call, whitespace around it) must give
the calls written in them. Text that makes no call gives None.
"""

from __future__ import annotations

import json

import pytest

from services.data.formats import ToolCall
from services.data.templates import TOOL_FORMATS, extract_tool_calls
from services.data.templates.tools import calls_text

ONE = [ToolCall("get_weather", json.dumps({"city": "Paris", "days": [1, 2], "metric": True}))]
TWO = [
    ToolCall("add", json.dumps({"a": 2, "b": 3})),
    ToolCall("lookup", json.dumps({"query": "Köln café", "limit": 5, "exact": False})),
]


def _parsed(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


ROUND_TRIPS = [(fmt, "one", ONE) for fmt in TOOL_FORMATS] + [
    (fmt, "parallel", TWO)
    for fmt in TOOL_FORMATS
    if fmt != "glm4"  # glm4: one call per turn
]


@pytest.mark.parametrize(
    ("fmt", "case", "calls"), ROUND_TRIPS, ids=[f"{f}-{c}" for f, c, _ in ROUND_TRIPS]
)
def test_extraction_inverts_the_writer(fmt, case, calls):
    text = calls_text(fmt, calls)
    assert _parsed(extract_tool_calls(fmt, text)) == _parsed(calls)


@pytest.mark.parametrize("fmt", TOOL_FORMATS)
def test_plain_answers_make_no_call(fmt):
    assert extract_tool_calls(fmt, "The weather in Paris is sunny, 22 degrees.") is None


GENERATED = [
    ("qwen", 'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
             "\n</tool_call>"),
    ("default", "Thought: I need the weather.\nAction: get_weather\nAction Input: "
                '{"city": "Paris"}'),
    ("llama3", '  {"name": "get_weather", "parameters": {"city": "Paris"}}\n'),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    ("glm4", 'get_weather\n{"city": "Paris"}'),
    ("glm4_moe", "<think>weather</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
                 "<arg_value>Paris</arg_value>\n</tool_call>"),
    ("qwen3_5", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                "</function>\n</tool_call>"),
    ("minimax2", '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris'
                 "</parameter>\n</invoke>\n</minimax:tool_call>"),
    ("seed_oss", "<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n"
                 "</function>\n</seed:tool_call>"),
    ("lfm2", '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>'),
    ("gemma4", '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'),
    ("minimax1", '<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                 "</tool_calls>"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "text"), GENERATED, ids=[g[0] for g in GENERATED])
def test_generated_text_in_the_familys_shape(fmt, text):
    assert _parsed(extract_tool_calls(fmt, text)) == [("get_weather", {"city": "Paris"})]


def test_malformed_json_is_no_call():
    assert (
        extract_tool_calls("qwen", '<tool_call>\n{"name": "f", "arguments": {</tool_call>') is None
    )
    assert extract_tool_calls("default", "Action: f\nAction Input: {not json}") is None
    assert extract_tool_calls("llama3", '{"name": "f"}') is None  # no parameters


@pytest.mark.parametrize("fmt", TOOL_FORMATS)
def test_the_parse_tool_calls_rpc_reads_what_each_format_writes(fmt):
    """``DataService.ParseToolCalls`` (what the OpenAI API asks): the writer's text back to calls,
    by tool format or by a named template's tool format."""
    from llamafleet.data.v1 import data_service_pb2 as pb

    from services.data.servicer import parse_tool_calls

    calls = TWO if fmt != "glm4" else ONE
    request = pb.ParseToolCallsRequest(text=calls_text(fmt, calls), tool_format=fmt)
    reply = parse_tool_calls(request, 1 << 20)
    assert reply.tool_format == fmt
    assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == _parsed(calls)
    plain = parse_tool_calls(pb.ParseToolCallsRequest(text="Just text.", tool_format=fmt), 1 << 20)
    assert list(plain.calls) == []


def test_the_parse_tool_calls_rpc_refuses_what_it_cannot_read():
    from llamafleet.data.v1 import data_service_pb2 as pb

    from services.common.errors import InvalidArgument
    from services.data.servicer import parse_tool_calls
    from services.data.templates import TEMPLATES

    by_template = parse_tool_calls(
        pb.ParseToolCallsRequest(text=calls_text("qwen", ONE), template="qwen"), 1 << 20
    )
    assert by_template.tool_format == TEMPLATES["qwen"].tool_format == "qwen"
    cases = [
        ({"tool_format": "qwen9"}, "tool_format"),
        ({"template": "tokenizer"}, "template"),
        ({}, "tool_format"),
        ({"tool_format": "qwen", "text": "x" * 100}, "text"),
    ]
    for fields, where in cases:
        with pytest.raises(InvalidArgument) as err:
            parse_tool_calls(pb.ParseToolCallsRequest(**{"text": "x", **fields}), 50)
        assert err.value.violations[0].field == where

"""Named templates against the model families' own Jinja chat templates (independent references).

The references are the families' published ``chat_template``s, stored as fixtures in
``chat_templates/`` with their source named, rendered by transformers' ``apply_chat_template``
and tokenized whole by the same real tokenizer. For each conversation the ids must be equal, and
the trained tokens must be exactly the assistant turns as the Jinja template writes them (each
turn's text after its role header, up to and including its end-of-turn token).

Where LLaMA-Factory's template (which llamafleet follows, see ``test_lf_golden.py``) and the
family's Jinja template disagree by design, the conversations below avoid the disagreement and
the difference is pinned by a test of its own:

* qwen3 (Qwen3-4B-Thinking-2507's template): the Jinja template drops thoughts from turns before
  the last user query and gives only the last turn an empty thought; LLaMA-Factory keeps history
  thoughts and gives every turn one unless ``mask_history`` (then the two agree, tools included);
* llama3 (Llama-3.1-8B-Instruct's template): the Jinja template always writes a system block with
  "Cutting Knowledge Date ... Today Date: 26 Jul 2024" and puts the tool list in the first user
  turn; LLaMA-Factory writes the system prompt alone and the tool list in the system block. Turns,
  tool calls and tool results agree (the system prompt below carries the date lines);
* gemma3 (Gemma 3's template): agrees on system-in-first-turn and turns; its Jinja template has no
  tool role, so no tools are compared.

No reference could be had here for the other families (see the README's template table).
"""

from __future__ import annotations

import functools
import json

import pytest

from services.data.encode import IGNORE, EncodeOptions, Encoder
from services.data.formats import FormatSpec, to_example
from tests.data import real_tokenizers

LLAMA_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city"}},
                "required": ["city"],
            },
        },
    }
]
CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? Réponds en français, s'il te plaît."},
    {"role": "assistant", "content": "Rome, bien sûr. 🇮🇹"},
]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "content": {"temperature": 22, "sky": "clear"}},
    {"role": "assistant", "content": "22 degrees and clear."},
]
THINK = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."},
]


@functools.cache
def _tokenizer(name: str, fixture: str | None = None):
    tok = real_tokenizers.load(name)
    if fixture:
        path = real_tokenizers.CHAT_TEMPLATES / f"{fixture}.json"
        tok.chat_template = json.loads(path.read_text())["chat_template"]
    return tok


def _needs(name: str) -> None:
    reason = real_tokenizers.missing(name)
    if reason:
        pytest.skip(reason)


def _ours_messages(messages: list[dict]) -> list[dict]:
    """The record we feed llamafleet: tool results as the JSON text a data set holds."""
    out = []
    for m in messages:
        m = dict(m)
        if not isinstance(m["content"], str):
            m["content"] = json.dumps(m["content"])
        out.append(m)
    return out


def _reference(tok, messages: list[dict], tools, header: str, end: str, only_last: bool):
    """(ids, trained flags) from the Jinja template: the whole rendering tokenized once; trained
    are the characters of each assistant turn after its role ``header`` up to and including its
    ``end`` token."""
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    spans, start = [], 0
    while (found := text.find(header, start)) >= 0:
        begin = found + len(header)
        stop = text.index(end, begin) + len(end)
        spans.append((begin, stop))
        start = stop
    assert len(spans) == sum(m["role"] == "assistant" for m in messages)
    if only_last:
        spans = spans[-1:]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [any(a < e and b > s for s, e in spans) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), trained


def _ours(tok, template: str, messages: list[dict], tools, **options):
    record = {"messages": _ours_messages(messages)}
    if tools:
        record["tools"] = tools
    example = to_example(record, FormatSpec("openai"), "sft")
    (result,) = Encoder(tok, EncodeOptions(template=template, cutoff_len=4096, **options)).encode(
        [example]
    )
    seq = result.sequences[0]
    return seq.ids, [label != IGNORE for label in seq.labels]


QWEN_TURN = ("<|im_start|>assistant\n", "<|im_end|>\n")
QWEN3_CASES = [
    ("thought kept in the last turn", THINK, None, {}),
    ("empty thought added to the last turn", [THINK[0], {"role": "assistant", "content": "4."}],
     None, {}),
    ("history thoughts dropped with mask_history", THINK + CHAT, None, {"mask_history": True}),
    ("tools, a call and its result", [{"role": "system", "content": "Be brief."}] + TOOL_CHAT,
     TOOLS, {"mask_history": True}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "messages", "tools", "options"), QWEN3_CASES,
                         ids=[c[0] for c in QWEN3_CASES])  # fmt: skip
def test_qwen3_equals_qwen3_jinja(case, messages, tools, options):
    _needs("qwen")
    tok = _tokenizer("qwen", "qwen3")
    only_last = options.get("mask_history", False)
    # Qwen's template writes a tool result only when it is text (the JSON a data set holds)
    theirs = _ours_messages(messages)
    ref_ids, ref_trained = _reference(tok, theirs, tools, *QWEN_TURN, only_last)
    ids, trained = _ours(tok, "qwen3", messages, tools, **options)
    assert ids == ref_ids
    assert trained == ref_trained


def test_qwen3_history_thoughts_differ_from_jinja_without_mask_history():
    """LLaMA-Factory (and llamafleet) keep history thoughts and add empty ones to every turn;
    the Jinja template does neither: the known, deliberate-by-LLaMA-Factory difference."""
    _needs("qwen")
    tok = _tokenizer("qwen", "qwen3")
    ref_ids, _ = _reference(tok, THINK + CHAT, None, *QWEN_TURN, False)
    ids, _ = _ours(tok, "qwen3", THINK + CHAT, None)
    assert ids != ref_ids
    assert tok.decode(ids).count("<think>") == 3 and tok.decode(ref_ids).count("<think>") == 1


LLAMA_TURN = ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")
LLAMA_CASES = [("multi-turn with system", CHAT), ("tool call and result", TOOL_CHAT)]


@pytest.mark.parametrize(("case", "messages"), LLAMA_CASES, ids=[c[0] for c in LLAMA_CASES])
def test_llama3_equals_llama3_1_jinja(case, messages):
    """The Jinja template writes the date lines before the system prompt; llamafleet's record
    carries them in its system prompt."""
    _needs("llama3")
    tok = _tokenizer("llama3", "llama3_1")
    system = "Use tools when they help."
    theirs = [{"role": "system", "content": system}] + messages
    ours = [{"role": "system", "content": LLAMA_DATE + system}] + messages
    ref_ids, ref_trained = _reference(tok, theirs, None, *LLAMA_TURN, False)
    ids, trained = _ours(tok, "llama3", ours, None)
    assert ids == ref_ids
    assert trained == ref_trained


def test_llama3_system_block_differs_from_jinja_without_the_date_lines():
    _needs("llama3")
    tok = _tokenizer("llama3", "llama3_1")
    messages = [{"role": "system", "content": "Be brief."}] + CHAT
    ref_ids, _ = _reference(tok, messages, None, *LLAMA_TURN, False)
    ids, _ = _ours(tok, "llama3", messages, None)
    assert "Today Date" in tok.decode(ref_ids) and "Today Date" not in tok.decode(ids)


GEMMA_TURN = ("<start_of_turn>model\n", "<end_of_turn>\n")
GEMMA_CASES = [
    ("multi-turn", CHAT),
    (
        "system prompt opens the first user turn",
        [{"role": "system", "content": "Be brief."}] + CHAT,
    ),
]


@pytest.mark.parametrize(("case", "messages"), GEMMA_CASES, ids=[c[0] for c in GEMMA_CASES])
def test_gemma3_equals_gemma3_jinja(case, messages):
    _needs("family")
    tok = _tokenizer("family", "gemma3")
    ref_ids, ref_trained = _reference(tok, messages, None, *GEMMA_TURN, False)
    ids, trained = _ours(tok, "gemma3", messages, None)
    assert ids == ref_ids
    assert trained == ref_trained

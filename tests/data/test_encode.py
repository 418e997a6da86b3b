"""Templates + tokenization: ids, loss masks, function calling, truncation.

The reference for the ``tokenizer`` template is transformers itself: ``apply_chat_template`` for
the ids and ``return_assistant_tokens_mask`` (the templates below mark assistant turns with
``{% generation %}``) for the trained positions. The two must match exactly.
"""

from __future__ import annotations

import copy
import functools

import pytest
from transformers import AutoTokenizer

from services.common.errors import InvalidArgument
from services.data.encode import IGNORE, EncodeOptions, Encoder
from services.data.formats import FormatSpec, RowError, to_example
from services.data.templates import TEMPLATE_NAMES
from tests.data import real_tokenizers

LLAMA3_LIKE = (
    "{{- bos_token -}}"
    "{%- if messages[0].role == 'system' -%}{%- set sys = messages[0].content -%}"
    "{%- set msgs = messages[1:] -%}{%- else -%}{%- set sys = none -%}{%- set msgs = messages -%}"
    "{%- endif -%}"
    "{%- if sys is not none or tools -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}{%- if sys -%}{{- sys -}}{%- endif -%}"
    "{%- if tools -%}{{- '\\n\\nTools: ' + (tools | tojson) -}}{%- endif -%}{{- '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- for m in msgs -%}"
    "{{- '<|start_header_id|>' + ('ipython' if m.role == 'tool' else m.role) -}}"
    "{{- '<|end_header_id|>\\n\\n' -}}"
    "{%- if m.role == 'assistant' -%}{%- generation -%}{{- m.content -}}"
    "{%- for c in m.tool_calls or [] -%}"
    "{{- {'name': c.function.name, 'parameters': c.function.arguments} | tojson -}}"
    "{%- endfor -%}{{- '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- m.content + '<|eot_id|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# No system role: the system prompt is merged into the first user turn; no generation prompt.
MISTRAL_LIKE = (
    "{{- bos_token -}}{%- set ns = namespace(sys='') -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}{%- set ns.sys = m.content + '\\n\\n' -%}"
    "{%- elif m.role == 'user' -%}{{- '[INST] ' + ns.sys + m.content + ' [/INST]' -}}"
    "{%- set ns.sys = '' -%}"
    "{%- elif m.role == 'assistant' -%}{%- generation -%}{{- ' ' + m.content + eos_token -}}"
    "{%- endgeneration -%}"
    "{%- else -%}{{- raise_exception('unsupported role ' + m.role) -}}{%- endif -%}"
    "{%- endfor -%}"
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calc",
            "description": "evaluate arithmetic",
            "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}},
        },
    }
]
CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]
SYSTEM = [{"role": "system", "content": "You answer in one sentence."}]
TOOL_CHAT = [
    {"role": "user", "content": "What is 12 * 7?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "calc", "arguments": {"expr": "12*7"}}}
        ],
    },
    {"role": "tool", "content": "84"},
    {"role": "assistant", "content": "It is 84."},
]

CASES = [
    ("chatml", None, CHAT, None),
    ("chatml", None, SYSTEM + CHAT, None),
    ("chatml", None, SYSTEM + TOOL_CHAT, TOOLS),
    ("chatml", None, TOOL_CHAT, TOOLS),
    ("llama3", LLAMA3_LIKE, CHAT, None),
    ("llama3", LLAMA3_LIKE, SYSTEM + CHAT, None),
    ("llama3", LLAMA3_LIKE, TOOL_CHAT, TOOLS),
    ("mistral", MISTRAL_LIKE, CHAT, None),
    ("mistral", MISTRAL_LIKE, SYSTEM + CHAT, None),
]


def _tokenizer(model_dir: str, template: str | None):
    tok = AutoTokenizer.from_pretrained(model_dir)
    if template is not None:
        tok.chat_template = template
    return tok


def _encode(tok, record: dict, fmt: str = "openai", kind: str = "sft", **options):
    options.setdefault("cutoff_len", 4096)
    (result,) = Encoder(tok, EncodeOptions(**options)).encode(
        [to_example(record, FormatSpec(fmt), kind)]
    )
    if isinstance(result, RowError):
        raise result
    return result.sequences[0]


@pytest.mark.parametrize(("name", "template", "messages", "tools"), CASES)
def test_tokenizer_template_equals_apply_chat_template(model_dir, name, template, messages, tools):
    tok = _tokenizer(model_dir, template)
    record = {"messages": copy.deepcopy(messages)}
    if tools:
        record["tools"] = tools
    seq = _encode(tok, record)
    ref = tok.apply_chat_template(
        messages, tools=tools, return_dict=True, return_assistant_tokens_mask=True
    )
    assert seq.ids == list(ref["input_ids"])
    trained = [label != IGNORE for label in seq.labels]
    assert trained == [bool(m) for m in ref["assistant_masks"]]
    assert any(trained)
    assert all(label in (IGNORE, i) for label, i in zip(seq.labels, seq.ids, strict=True))


def test_tokenizer_template_mask_history_and_train_on_prompt(model_dir):
    tok = _tokenizer(model_dir, LLAMA3_LIKE)
    ref = tok.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    mask = list(ref["assistant_masks"])
    last_start = max(i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))
    seq = _encode(tok, {"messages": CHAT}, mask_history=True)
    assert [label != IGNORE for label in seq.labels] == [
        bool(m) and i >= last_start for i, m in enumerate(mask)
    ]
    seq = _encode(tok, {"messages": CHAT}, train_on_prompt=True)
    assert seq.labels == seq.ids


def _trained_texts(tok, seq) -> list[str]:
    spans, start = [], None
    for i, label in enumerate([*seq.labels, IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            spans.append(tok.decode(seq.ids[start:i]))
            start = None
    return spans


def test_qwen_multiturn_trains_every_assistant_turn_and_its_end_token(tokenizer):
    seq = _encode(tokenizer, {"messages": CHAT}, template="qwen")
    assert _trained_texts(tokenizer, seq) == [
        "Paris is the capital.<|im_end|>\n",
        "Rome.<|im_end|>\n",
    ]
    text = tokenizer.decode(seq.ids)
    assert text.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n"
    )
    masked = _encode(tokenizer, {"messages": CHAT}, template="qwen", mask_history=True)
    assert _trained_texts(tokenizer, masked) == ["Rome.<|im_end|>\n"]
    everything = _encode(tokenizer, {"messages": CHAT}, template="qwen", train_on_prompt=True)
    assert everything.labels == everything.ids


def test_qwen_function_calling(tokenizer):
    seq = _encode(tokenizer, {"messages": TOOL_CHAT, "tools": TOOLS}, template="qwen")
    text = tokenizer.decode(seq.ids)
    assert '<tools>\n{"type": "function", "function": {"name": "calc"' in text
    assert "<tool_response>\n84\n</tool_response>" in text
    assert _trained_texts(tokenizer, seq) == [
        '<tool_call>\n{"name": "calc", "arguments": {"expr": "12*7"}}\n</tool_call><|im_end|>\n',
        "It is 84.<|im_end|>\n",
    ]


def test_sharegpt_function_call_and_observation_roles(tokenizer):
    record = {
        "conversations": [
            {"from": "human", "value": "What is 12 * 7?"},
            {"from": "function_call", "value": '{"name": "calc", "arguments": {"expr": "12*7"}}'},
            {"from": "observation", "value": "84"},
            {"from": "gpt", "value": "It is 84."},
        ],
        "tools": '[{"name": "calc", "description": "evaluate arithmetic"}]',
    }
    seq = _encode(tokenizer, record, fmt="sharegpt", template="llama3")
    trained = _trained_texts(tokenizer, seq)
    assert trained == [
        '{"name": "calc", "parameters": {"expr": "12*7"}}<|eot_id|>',
        "It is 84.<|eot_id|>",
    ]
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n84" in tokenizer.decode(seq.ids)


@pytest.mark.parametrize("name", [n for n in TEMPLATE_NAMES if n != "tokenizer"])
def test_every_named_template_masks_prompts(name):
    """On the real Qwen vocabulary with every family's control tokens (tests/data/real_tokenizers)."""
    reason = real_tokenizers.missing("family")
    if reason:
        pytest.skip(reason)
    tokenizer = _family()
    record = {"instruction": "QUESTION zebra", "output": "ANSWER giraffe", "system": "SYSTEM owl"}
    seq = _encode(tokenizer, record, fmt="alpaca", template=name)
    trained = "".join(_trained_texts(tokenizer, seq))
    assert "ANSWER giraffe" in trained
    assert "QUESTION" not in trained and "SYSTEM" not in trained
    assert "SYSTEM owl" in tokenizer.decode(seq.ids)


@functools.cache
def _family():
    return real_tokenizers.load("family")


def test_truncation_keeps_whole_turns(tokenizer):
    record = {"messages": CHAT + [{"role": "user", "content": "x " * 200}, CHAT[1]]}
    full = _encode(tokenizer, {"messages": CHAT}, template="chatml")
    seq = _encode(tokenizer, record, template="chatml", cutoff_len=len(full.ids) + 5)
    assert seq.truncated and seq.ids == full.ids and seq.labels == full.labels


def test_truncation_cuts_a_first_turn_response_and_drops_a_too_long_prompt(tokenizer):
    record = {"instruction": "short question", "output": "word " * 300}
    seq = _encode(tokenizer, record, fmt="alpaca", template="chatml", cutoff_len=64)
    assert seq.truncated and len(seq.ids) == 64 and seq.labels[-1] != IGNORE
    record = {"instruction": "word " * 300, "output": "yes"}
    with pytest.raises(RowError) as info:
        _encode(tokenizer, record, fmt="alpaca", template="chatml", cutoff_len=64)
    assert info.value.reason == "too_long_prompt"


def test_jinja_truncation_keeps_whole_turns(model_dir):
    tok = _tokenizer(model_dir, LLAMA3_LIKE)
    first = _encode(tok, {"messages": CHAT[:2]})
    seq = _encode(tok, {"messages": CHAT}, cutoff_len=len(first.ids) + 3)
    assert seq.truncated and seq.ids == first.ids and seq.labels == first.labels


def test_preference_and_prompt_kinds(tokenizer):
    record = {"instruction": "Pick one", "chosen": "good", "rejected": "bad"}
    (result,) = Encoder(tokenizer, EncodeOptions(template="chatml")).encode(
        [to_example(record, FormatSpec("preference_alpaca"), "preference")]
    )
    chosen, rejected = result.sequences
    assert _trained_texts(tokenizer, chosen) == ["good<|im_end|>\n"]
    assert _trained_texts(tokenizer, rejected) == ["bad<|im_end|>\n"]
    record = {"instruction": "2+2?", "output": "4"}
    (result,) = Encoder(tokenizer, EncodeOptions(template="chatml")).encode(
        [to_example(record, FormatSpec("prompt"), "prompt")]
    )
    assert result.reference == "4"
    assert tokenizer.decode(result.sequences[0].ids).endswith("<|im_start|>assistant\n")


def test_pretrain_text_is_chunked_and_all_trained(tokenizer):
    (result,) = Encoder(tokenizer, EncodeOptions(cutoff_len=16)).encode(
        [to_example({"text": "word " * 40}, FormatSpec("text"), "pretrain")]
    )
    assert len(result.sequences) > 1
    assert all(len(s.ids) <= 16 and s.labels == s.ids for s in result.sequences)
    assert result.sequences[0].ids[0] == tokenizer.bos_token_id
    assert result.sequences[-1].ids[-1] == tokenizer.eos_token_id


def test_unknown_template_lists_the_valid_choices(tokenizer):
    with pytest.raises(InvalidArgument) as info:
        Encoder(tokenizer, EncodeOptions(template="qwen2"))
    assert "did you mean 'qwen'" in str(info.value)
    assert "llama3" in info.value.violations[0].description
    with pytest.raises(InvalidArgument):
        Encoder(tokenizer, EncodeOptions(template="qwen", tool_format="glm5"))


def test_template_placeholders_in_content_stay_text(tokenizer):
    record = {"instruction": "write {bos} and {eos}", "output": "{eos} is a placeholder"}
    seq = _encode(tokenizer, record, fmt="alpaca", template="default")
    text = tokenizer.decode(seq.ids)
    assert "write {bos} and {eos}" in text and "{eos} is a placeholder<|end_of_text|>" in text

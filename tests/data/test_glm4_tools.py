"""The glm4 template and its function-calling format, against LLaMA-Factory's.

The reference texts below were produced by LLaMA-Factory 0.9.5 (``template="glm4"``, its
``GLM4ToolUtils``) for the same conversation: ``Template.encode_multiturn`` gave the
(prompt, response) pairs, and ``SupervisedDatasetProcessor._encode_data_example`` the labels,
whose trained runs were ``calc\\n{"expr": "12*7"}``, ``\\nIt is 84.`` and
``\\nYou are welcome.<eos>``, with the label of the first token of each later prompt set to the
eos id while its input stays the prompt's token ("efficient eos"). LLaMA-Factory adds
``<|user|>``/``<|observation|>`` to the tokenizer as special tokens, so the comparison is on
text and label positions, not on raw ids of the tiny tokenizer.
"""

from __future__ import annotations

import json

import pytest

from services.data.encode import IGNORE, EncodeOptions, Encoder, trained_spans
from services.data.formats import FormatSpec, RowError, to_example

TOOLS = [
    {
        "name": "calc",
        "description": "evaluate arithmetic",
        "parameters": {
            "type": "object",
            "properties": {"expr": {"type": "string", "description": "the expression"}},
            "required": ["expr"],
        },
    }
]
CONVERSATION = {
    "conversations": [
        {"from": "human", "value": "What is 12 * 7?"},
        {"from": "function_call", "value": '{"name": "calc", "arguments": {"expr": "12*7"}}'},
        {"from": "observation", "value": "84"},
        {"from": "gpt", "value": "It is 84."},
        {"from": "human", "value": "Thanks"},
        {"from": "gpt", "value": "You are welcome."},
    ],
    "system": "Be brief.",
    "tools": json.dumps(TOOLS),
}
TOOL_JSON = json.dumps(TOOLS[0], indent=4, ensure_ascii=False)
LF_PAIRS = [
    (
        "[gMASK]<sop><|system|>\nBe brief.你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI "
        "公司训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。"
        f"\n\n# 可用工具\n\n## calc\n\n{TOOL_JSON}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
        "<|user|>\nWhat is 12 * 7?<|assistant|>",
        'calc\n{"expr": "12*7"}',
    ),
    ("<|observation|>\n84<|assistant|>", "\nIt is 84."),
    ("<|user|>\nThanks<|assistant|>", "\nYou are welcome."),
]


def _encode(tokenizer, record, fmt="sharegpt", **options):
    example = to_example(record, FormatSpec(fmt), "sft")
    (result,) = Encoder(tokenizer, EncodeOptions(**options)).encode([example])
    if isinstance(result, RowError):
        raise result
    (seq,) = result.sequences
    return seq


def _trained_runs(tokenizer, seq):
    """Decoded runs of positions whose label is their own input id."""
    runs, start = [], None
    for i, (tok, lab) in enumerate([*zip(seq.ids, seq.labels, strict=True), (None, IGNORE)]):
        if lab != IGNORE and lab == tok and start is None:
            start = i
        elif (lab == IGNORE or lab != tok) and start is not None:
            runs.append(tokenizer.decode(seq.ids[start:i]))
            start = None
    return runs


def test_glm4_tool_conversation_matches_llamafactory(tokenizer):
    seq = _encode(tokenizer, CONVERSATION, template="glm4")
    eos = tokenizer.eos_token
    expected = "".join(p + r for p, r in LF_PAIRS) + eos
    assert tokenizer.decode(seq.ids) == expected
    assert seq.text == expected
    assert _trained_runs(tokenizer, seq) == [r for _, r in LF_PAIRS[:-1]] + [LF_PAIRS[-1][1] + eos]
    # efficient eos: the first token of each later prompt is labelled eos, nothing else differs
    pairs = zip(seq.ids, seq.labels, strict=True)
    swapped = [i for i, (t, lab) in enumerate(pairs) if lab not in (IGNORE, t)]
    assert [seq.labels[i] for i in swapped] == [tokenizer.eos_token_id] * 2
    for i, (prompt, _) in zip(swapped, LF_PAIRS[1:], strict=True):
        assert prompt.startswith(tokenizer.decode(seq.ids[i : i + 1]))
        assert tokenizer.decode(seq.ids[i:]).startswith(prompt)
    assert seq.ids[-1] == seq.labels[-1] == tokenizer.eos_token_id
    assert seq.ids.count(tokenizer.eos_token_id) == 1  # no per-turn end token


def test_glm4_mask_history_and_train_on_prompt(tokenizer):
    seq = _encode(tokenizer, CONVERSATION, template="glm4", mask_history=True)
    eos = tokenizer.eos_token
    assert _trained_runs(tokenizer, seq) == ["\nYou are welcome." + eos]
    assert len(trained_spans(seq.labels)) == 1  # no eos labels left for the masked turns
    everything = _encode(tokenizer, CONVERSATION, template="glm4", train_on_prompt=True)
    assert everything.labels == everything.ids


def test_glm4_truncation_keeps_room_for_the_final_eos(tokenizer):
    full = _encode(tokenizer, CONVERSATION, template="glm4")
    first_two = len(full.ids) - len(tokenizer(LF_PAIRS[-1][0] + LF_PAIRS[-1][1])["input_ids"])
    seq = _encode(tokenizer, CONVERSATION, template="glm4", cutoff_len=first_two + 3)
    assert seq.truncated and len(seq.ids) <= first_two + 3
    assert seq.ids[-1] == seq.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(seq.ids).endswith("\nIt is 84." + tokenizer.eos_token)


def test_glm4_openai_tool_calls_without_system(tokenizer):
    record = {
        "messages": [
            {"role": "user", "content": "What is 12 * 7?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "calc", "arguments": '{"expr":"12*7"}'},
                    }
                ],
            },
            {"role": "tool", "content": "84"},
            {"role": "assistant", "content": "It is 84."},
        ],
        "tools": [{"type": "function", "function": TOOLS[0]}],
    }
    seq = _encode(tokenizer, record, fmt="openai", template="glm4")
    text = tokenizer.decode(seq.ids)
    assert text.startswith("[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。")
    assert '<|assistant|>calc\n{"expr": "12*7"}<|observation|>\n84<|assistant|>\nIt is 84.' in text


def test_glm4_refuses_parallel_calls_and_works_as_a_tool_format_of_another_template(tokenizer):
    record = {
        "conversations": [
            {"from": "human", "value": "Add and multiply 2 and 3"},
            {
                "from": "function_call",
                "value": json.dumps(
                    [
                        {"name": "add", "arguments": {"a": 2, "b": 3}},
                        {"name": "mul", "arguments": {"a": 2, "b": 3}},
                    ]
                ),
            },
            {"from": "observation", "value": "5"},
            {"from": "gpt", "value": "5 and 6"},
        ]
    }
    with pytest.raises(RowError) as info:
        _encode(tokenizer, record, template="glm4")
    assert info.value.reason == "parallel_tool_calls"
    seq = _encode(tokenizer, CONVERSATION, template="chatml", tool_format="glm4")
    text = tokenizer.decode(seq.ids)
    assert "Be brief.你是一个名为 ChatGLM" in text and "\n## calc\n\n{\n" in text
    # LLaMA-Factory's tool_format override: the plain function slot, content + eos
    assert 'calc\n{"expr": "12*7"}<|im_end|>' in _trained_runs(tokenizer, seq)

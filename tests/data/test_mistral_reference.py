"""``mistral`` and ``ministral`` against Mistral AI's own encoder (``mistral-common``).

Mistral publishes no Jinja template as its reference: ``mistral_common``'s
``MistralTokenizer.encode_chat_completion`` is how Mistral-7B-Instruct-v0.3 conversations are
tokenized (fine-tuning validation mode, so a conversation may end with the assistant): the v3
sentencepiece model for ``mistral`` (Mistral-7B-Instruct-v0.3) and the v3 tekken vocabulary for
``ministral`` (Mistral Nemo / Ministral). Each runs on the file the test tokenizer is converted
from, so ids compare directly; the trained tokens must be each assistant turn after its
``[/INST]`` through its ``</s>``.

Where LLaMA-Factory's ``mistral`` template (which llamafleet follows) differs from Mistral's
encoder, the difference is pinned below: Mistral puts the system prompt and the tool list in the
*last* user turn (the tool list before its ``[INST]``) and writes call ids in tool calls and
results; LLaMA-Factory puts both in the *first* user turn and writes no ids.
"""

from __future__ import annotations

import functools

import pytest

from services.data.encode import IGNORE, EncodeOptions, Encoder
from services.data.formats import FormatSpec, to_example
from tests.data import real_tokenizers

pytestmark = pytest.mark.skipif(
    real_tokenizers.missing("mistral") is not None,
    reason=str(real_tokenizers.missing("mistral")),
)


FILES = {"mistral": "mistral_instruct_tokenizer_240323.model.v3", "tekken": "tekken_240911.json"}
VOCABULARY = {"mistral": "mistral", "ministral": "tekken"}


@functools.cache
def _mistral(vocabulary: str):
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    model = real_tokenizers._package_dir("mistral-common") / "data" / FILES[vocabulary]
    return MistralTokenizer.from_file(str(model), mode=ValidationMode.finetuning)


def _reference(messages: list[dict], vocabulary: str = "mistral") -> list[int]:
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(
        messages=[kinds[m["role"]](content=m["content"]) for m in messages]
    )
    return _mistral(vocabulary).encode_chat_completion(request).tokens


def _ours(messages: list[dict], template: str = "mistral"):
    tok = real_tokenizers.load(VOCABULARY[template])
    example = to_example({"messages": messages}, FormatSpec("openai"), "sft")
    (result,) = Encoder(tok, EncodeOptions(template=template, cutoff_len=4096)).encode([example])
    seq = result.sequences[0]
    return seq.ids, seq.labels


def _assistant_positions(ids: list[int]) -> list[bool]:
    """Trained per Mistral's format: after each [/INST] (id 4) up to and including </s> (2)."""
    out, inside = [], False
    for token in ids:
        out.append(inside)
        if token == 4:
            inside = True
        elif token == 2:
            inside = False
    return out


CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Et de l'Italie ? Réponds en français."},
    {"role": "assistant", "content": "Rome, bien sûr."},
]
CASES = [
    ("multi-turn", CHAT),
    ("single turn with a system prompt", [{"role": "system", "content": "Be brief."}, *CHAT[:2]]),
]


@pytest.mark.parametrize("template", ["mistral", "ministral"])
@pytest.mark.parametrize(("case", "messages"), CASES, ids=[c[0] for c in CASES])
def test_equals_mistral_common(case, messages, template):
    reference = _reference(messages, VOCABULARY[template])
    ids, labels = _ours(messages, template)
    assert ids == reference
    assert [label != IGNORE for label in labels] == _assistant_positions(reference)


def test_mistral_system_prompt_goes_to_the_first_turn_not_the_last():
    messages = [{"role": "system", "content": "Be brief."}, *CHAT]
    tok = real_tokenizers.load("mistral")
    ours = tok.decode(_ours(messages)[0])
    theirs = tok.decode(_reference(messages))
    assert "[INST] Be brief.\n\nWhat is the capital" in ours
    assert "[INST] Be brief.\n\nEt de l'Italie" in theirs

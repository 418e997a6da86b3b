"""The tiktoken engine gives the Hugging Face tokenizer's ids, and is refused where it would not.

The reference is the tokenizer's own ``tokenizers`` backend (``encode_batch_fast``). Every
tokenizer the test suite builds (the tiny model's at its default 3072 tokens, and 512, which the
CLI test builds) and tokenizers trained here with the GPT-2 and Llama-3 split regexes are compared
on hand-picked awkward text, every ASCII character in a few contexts, and seeded random strings.
"""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from services.data import fast_bpe
from services.data.encode import EncodeOptions, Encoder
from services.data.fast_bpe import HFEngine, select_engine
from services.data.formats import FormatSpec, to_example
from services.training.tiny.model import build_tokenizer, synthetic_corpus

SPECIALS = ["<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
TRICKY = [
    "",
    " ",
    "   ",
    "\n",
    "\r\n\r\n",
    "\t\t x",
    "hello  world   ",
    "  leading and trailing  ",
    "a\n\n\nb\n \n c",
    "digits 1234567890 and 3.14159, 1,000,000 and 007",
    "I'M HERE, we'll see; they'Re it's 'S 'll 'LL'd",
    "!!!???... ---=== (x) [y] {z} <a> ~`@#$%^&*_+|\\/",
    "\x00\x01\x07\x0b\x0c\x1c\x1f\x7f control bytes",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>glued<|im_start|>",
    "<|im_start <|im_end| |im_end|> <|im_end|><|im_end|>",
    '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>',
    "x" * 2000,
    " " * 300 + "y",
    "héllo wörld",
    "你好，世界 🙂🙂",
    "\u00a0nbsp\u2009thin\u3000ideographic space\u2028",
    "Ǆ ǅ ǆ ſ K Å ß ﬃ",
    "mixed ascii then ünïcödé and 12٣٤",
]


# every ASCII character in the contexts the split regexes care about
ASCII_CONTEXTS = [
    form.format(c=chr(i))
    for i in range(128)
    for form in ("{c}", "a{c}b", "{c}{c} {c}", " {c}\n", "1{c}2", "'{c}", "{c}  x", "x \n{c}")
]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = [*"abcXYZ019 '.,!?\n\r\t-_<>|", "  ", "'s", "'LL", "<|im_end|>", "<|im_start|>", "ab"]
    pieces += ["the", " model", "\n\n", "12345", "\x00", "\x7f"]
    return ["".join(rng.choices(pieces, k=rng.randint(0, 40))) for _ in range(n)]


def _assert_same_ids(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> None:
    texts = texts + ASCII_CONTEXTS
    engine = select_engine(tokenizer)
    assert engine.name == "tiktoken", engine.reason
    reference = HFEngine(tokenizer.backend_tokenizer, "reference").encode_batch(texts)
    assert engine.encode_batch(texts) == reference
    assert engine.fallback_texts == sum(not t.isascii() for t in texts)


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _train(pre_tokenizer, vocab_size: int = 1200) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(synthetic_corpus(3000), trainer=trainer)
    return _wrap(backend)


def _split(pattern: str):
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


LLAMA3 = next(p for p, name in fast_bpe.KNOWN_PATTERNS.items() if name == "llama3")
QWEN2 = next(p for p, name in fast_bpe.KNOWN_PATTERNS.items() if name == "qwen2")


def test_the_tiny_model_tokenizer_gets_tiktoken_with_the_same_ids(tokenizer):
    _assert_same_ids(tokenizer, TRICKY + _random_texts(3000, seed=1))


@pytest.mark.parametrize("vocab_size", [512, 8192])
def test_other_vocabulary_sizes_of_the_tiny_tokenizer(vocab_size):
    _assert_same_ids(build_tokenizer(vocab_size), TRICKY + _random_texts(1000, seed=vocab_size))


@pytest.mark.parametrize(
    "pre_tokenizer",
    [pre_tokenizers.ByteLevel(add_prefix_space=False), _split(LLAMA3)],
    ids=["gpt2", "llama3"],
)
def test_tokenizers_with_the_gpt2_and_llama3_split_regexes(pre_tokenizer):
    _assert_same_ids(_train(pre_tokenizer), TRICKY + _random_texts(1000, seed=7))


def test_a_tokenizer_with_ignore_merges_as_llama3_sets_it():
    data = json.loads(_train(_split(LLAMA3)).backend_tokenizer.to_str())
    data["model"]["ignore_merges"] = True
    _assert_same_ids(_wrap(Tokenizer.from_str(json.dumps(data))), TRICKY + _random_texts(1000, 8))


def test_encoder_outputs_do_not_depend_on_the_engine(tokenizer):
    convs = [
        {"conversations": [{"from": "human", "value": "q" + a}, {"from": "gpt", "value": b + "."}]}
        for a, b in zip(TRICKY[1:], TRICKY[2:] + TRICKY[:1], strict=True)
    ]
    examples = [to_example(c, FormatSpec("sharegpt"), "sft") for c in convs]
    encoder = Encoder(tokenizer, EncodeOptions(template="qwen", cutoff_len=4096))
    assert encoder.engine.name == "tiktoken"
    fast = encoder.encode(examples)
    encoder.engine = HFEngine(tokenizer.backend_tokenizer, "reference")
    reference = encoder.encode(examples)
    assert [s.ids for e in fast for s in e.sequences] == [
        s.ids for e in reference for s in e.sequences
    ]
    assert [s.labels for e in fast for s in e.sequences] == [
        s.labels for e in reference for s in e.sequences
    ]


def _hand_made(merges: list[tuple[str, str]], tokens: list[str], **options) -> Tokenizer:
    """A byte-level BPE over all 256 bytes plus ``tokens`` (ids in that order) and ``merges``."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab.update({t: 256 + i for i, t in enumerate(tokens)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, **options))
    backend.pre_tokenizer = _split(QWEN2)
    return backend


def test_a_token_its_merges_cannot_reach_is_refused_because_tiktoken_would_differ():
    # "abc" is made by (ab, c), but (b, c) ranks first, so HF stops at [a, bc]; tiktoken joins
    # any two tokens whose bytes form a token, so it would give [abc].
    backend = _hand_made([("b", "c"), ("a", "b"), ("ab", "c")], ["bc", "ab", "abc"])
    engine = select_engine(_wrap(backend))
    assert engine.name == "huggingface"
    assert "'abc'" in engine.reason and "two tokens" in engine.reason
    data = json.loads(backend.to_str())
    _, ranks, specials = fast_bpe._tiktoken_parts(data)
    import tiktoken

    raw = tiktoken.Encoding("unchecked", pat_str=QWEN2, mergeable_ranks=ranks, special_tokens={})
    assert backend.encode("abcx").ids != raw.encode("abcx")


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda b: setattr(b, "normalizer", normalizers.Lowercase()), "normalizer"),
        (
            lambda b: setattr(b, "pre_tokenizer", _split(r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+")),
            "split regex",
        ),
        (
            lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)),
            "pre-tokenizer",
        ),
        (lambda b: b.add_special_tokens(["<x>", "<x>y"]), "prefix"),
        (lambda b: setattr(b, "encode_special_tokens", True), "encode_special_tokens"),
        (lambda b: b.enable_truncation(8), "truncates"),
    ],
    ids=["normalizer", "regex", "prefix-space", "added-prefix", "split-specials", "truncation"],
)
def test_what_the_proof_does_not_cover_keeps_the_hf_tokenizer(change, reason, caplog):
    tokenizer = _wrap(_hand_made([("a", "b")], ["ab"]))  # no added tokens at all
    _assert_same_ids(tokenizer, TRICKY)
    change(tokenizer.backend_tokenizer)
    with caplog.at_level("INFO", logger="services.data.fast_bpe"):
        engine = select_engine(tokenizer)
    assert engine.name == "huggingface"
    assert reason in engine.reason
    assert reason in caplog.text  # the choice is logged with its reason


def test_merge_results_must_rise_with_rank_and_come_from_one_merge():
    backend = _hand_made([("a", "b"), ("c", "d")], ["cd", "ab"])  # ids fall with rank
    assert "rise" in select_engine(_wrap(backend)).reason
    backend = _hand_made([("a", "bc"), ("ab", "c"), ("b", "c"), ("a", "b")], ["bc", "ab", "abc"])
    assert select_engine(_wrap(backend)).name == "huggingface"


def test_with_ignore_merges_an_added_token_a_piece_could_spell_is_refused():
    # HF looks a whole piece up in the model's vocabulary, where " foo" spells "Ġfoo", the added
    # token's entry; tiktoken keeps added tokens apart from the mergeable ones.
    backend = _hand_made([], ["Ġfoo"], ignore_merges=True)
    backend.add_special_tokens(["Ġfoo"])
    engine = select_engine(_wrap(backend))
    assert engine.name == "huggingface"
    assert "ignore_merges" in engine.reason
    assert backend.encode(" foo").ids == [256]

"""Which engine turns text into ids: tiktoken where it provably gives the HF tokenizer's ids.

``select_engine(tokenizer)`` returns the Hugging Face ``tokenizers`` backend (``encode_batch_fast``,
the reference) or, when the tokenizer passes every check below, a tiktoken ``Encoding`` built from
the same vocabulary, merges, split regex and added tokens (about 5x faster on the benchmark's
conversations: tiktoken runs the split regex and the merges with less per-token work). The choice
and its reason are logged once per tokenizer and kept on the engine (``name``, ``reason``).

Why the two give identical ids, under the checks (``_refusal`` returns the first that fails):

* Text handling. No normalizer, or one that is the identity on ASCII text (NFC, as Qwen's: every
  ASCII character is already in NFC and none composes with another; an empty ``Sequence``); no
  truncation or padding on the backend; added tokens matched
  literally (no lstrip/rstrip/single_word, one ``normalized`` flag for all, no added token a prefix
  of another, so HF's leftmost-longest match and tiktoken's leftmost match find the same ones;
  ``encode_special_tokens`` off). The pre-tokenizer is ``Split(<pattern>, Isolated)`` +
  ``ByteLevel(add_prefix_space=False, use_regex=False)``, or ``ByteLevel(add_prefix_space=False)``
  with its own GPT-2 regex; the pattern must be one of ``KNOWN_PATTERNS``: each matches at every
  position (so neither engine leaves text between matches, which tiktoken would drop) and uses only
  constructs that Oniguruma (HF) and fancy-regex (tiktoken) read alike. Only ASCII texts take the
  tiktoken path: on them ``\\s``, ``\\p{L}``, ``\\p{N}`` and ``(?i)`` mean the same in both engines,
  while for other characters the two libraries may carry different Unicode versions; any text with
  a non-ASCII character goes to the HF tokenizer (counted in ``fallback_texts``).
* BPE. HF merges the adjacent pair of lowest merge rank, leftmost first (``word.rs``: a min-heap on
  (rank, position), stale entries dropped by comparing the merge's result id); tiktoken merges the
  adjacent pair whose concatenated bytes have the lowest rank, leftmost first, and first returns a
  whole piece that is itself a token. With the token ids as tiktoken's ranks, the two pick the same
  pair whenever tiktoken's pick is a real merge, given: a plain byte-level BPE (no dropout, unk,
  prefixes, byte fallback), all 256 bytes in the vocabulary, no pair listed twice, no token made by
  two merges (so HF's stale-entry test is exact), and merge results whose ids rise with their rank.
  They can differ only where tiktoken joins two adjacent tokens x, y whose bytes form a token t
  that is not made by the merge (x, y). Take the first such step on any input: everything merged
  inside t's bytes so far was merged inside them alone (tokens only grow, and t's bytes are exactly
  x + y), and each of those merges was the lowest pair inside them, so running HF on t's bytes by
  themselves reaches the same [x, y] and stops there. So if no token's bytes, encoded by HF's own
  BPE model with merges only, give exactly two tokens, the merging agrees on every input; the check
  runs HF's model over every token. Without ``ignore_merges`` HF also has to give every token back
  as itself (tiktoken's whole-piece lookup); with it, both look the piece up first.

Written here rather than taken from a library: no library converts a tokenizer.json to tiktoken
with these checks (transformers converts only the other way).

It knows nothing about templates, files or packing.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
from typing import Any

logger = logging.getLogger(__name__)

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_LIKE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|{digits}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Each alternative set covers every character class (letters, digits, other, whitespace), so a
# match starts wherever the previous one ended.
KNOWN_PATTERNS = {
    GPT2_PATTERN: "gpt2",
    _LLAMA3_LIKE.replace("{digits}", r"\p{N}{1,3}"): "llama3",
    _LLAMA3_LIKE.replace("{digits}", r"\p{N}"): "qwen2",
}
_BPE_KEYS = {
    "type",
    "dropout",
    "unk_token",
    "continuing_subword_prefix",
    "end_of_word_suffix",
    "fuse_unk",
    "byte_fallback",
    "ignore_merges",
    "vocab",
    "merges",
}
_ADDED_KEYS = {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}


class HFEngine:
    """The tokenizer's own backend: the reference every other engine must equal."""

    name = "huggingface"

    def __init__(self, backend: Any, reason: str) -> None:
        self._backend = backend
        self.reason = reason

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]


class TiktokenEngine:
    """tiktoken for ASCII texts, the HF backend for the rest; ids equal to ``HFEngine``'s."""

    name = "tiktoken"

    def __init__(self, backend: Any, encoding: Any, specials: frozenset[str], reason: str) -> None:
        self._backend = backend
        self._encoding = encoding
        self._specials = specials
        self.reason = reason
        self.fast_texts = 0
        self.fallback_texts = 0

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encode, specials = self._encoding.encode, self._specials
        out = [
            encode(t, allowed_special=specials, disallowed_special=()) if t.isascii() else None
            for t in texts
        ]
        rest = [i for i, t in enumerate(texts) if not t.isascii()]
        if rest:
            done = self._backend.encode_batch_fast(
                [texts[i] for i in rest], add_special_tokens=False
            )
            for i, e in zip(rest, done, strict=True):
                out[i] = e.ids
        self.fast_texts += len(texts) - len(rest)
        self.fallback_texts += len(rest)
        return out


def select_engine(tokenizer: Any) -> HFEngine | TiktokenEngine:
    """The fastest engine that gives ``tokenizer``'s ids; the choice is logged once per tokenizer."""
    backend = tokenizer.backend_tokenizer
    spec = backend.to_str()
    key = (hashlib.sha256(spec.encode()).hexdigest(), backend.encode_special_tokens)
    built = _BUILT.get(key)
    if built is None:  # two threads may both build it: the same result, logged twice
        built = _BUILT[key] = _build(spec, backend.encode_special_tokens)
        while len(_BUILT) > _KEEP:  # as many as ``pipeline.load_tokenizer`` keeps loaded
            _BUILT.pop(next(iter(_BUILT)), None)
    if isinstance(built, str):
        return HFEngine(backend, built)
    encoding, specials, pattern = built
    return TiktokenEngine(
        backend,
        encoding,
        specials,
        f"byte-level BPE with the {pattern} split regex passed the equivalence checks "
        "(texts with non-ASCII characters go to the HF tokenizer)",
    )


# (sha256 of the tokenizer's JSON, encode_special_tokens) -> what ``_build`` made of it
_BUILT: dict[tuple[str, bool], str | tuple] = {}
_KEEP = 8


def _build(spec: str, encode_special_tokens: bool) -> str | tuple:
    """(Encoding, special token strings, pattern name), or why the HF tokenizer is kept."""
    data = json.loads(spec)
    refusal = _refusal(data, encode_special_tokens)
    if refusal is None:
        try:
            import tiktoken
        except ImportError:
            refusal = "tiktoken is not installed (pip install tiktoken)"
    if refusal is not None:
        logger.info("tokenizer engine: huggingface tokenizers (%s)", refusal)
        return refusal
    pattern, ranks, specials = _tiktoken_parts(data)
    encoding = tiktoken.Encoding(
        "llamafleet", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )
    name = KNOWN_PATTERNS[pattern]
    logger.info(
        "tokenizer engine: tiktoken (%d tokens, %s split regex; proven equal to the HF tokenizer "
        "on ASCII text, which the other texts keep)",
        len(ranks) + len(specials),
        name,
    )
    return encoding, frozenset(specials), name


def _ascii_identity(normalizer: dict | None) -> bool:
    """Whether the normalizer leaves every ASCII text unchanged (None, NFC, sequences of them)."""
    if normalizer is None:
        return True
    if normalizer.get("type") == "NFC":
        return True
    if normalizer.get("type") == "Sequence":
        return all(_ascii_identity(n) for n in normalizer.get("normalizers", []))
    return False


def _split_pattern(pre: dict | None) -> str | None:
    """The split regex of a supported byte-level pre-tokenizer, else None."""
    if pre is None:
        return None
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space") is False and pre.get("use_regex", True):
            return GPT2_PATTERN
        return None
    if pre.get("type") != "Sequence" or len(pre.get("pretokenizers", [])) != 2:
        return None
    split, byte_level = pre["pretokenizers"]
    if (
        split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert") is not False
        or set(split.get("pattern", {})) != {"Regex"}
        or byte_level.get("type") != "ByteLevel"
        or byte_level.get("add_prefix_space") is not False
        or byte_level.get("use_regex") is not False
    ):
        return None
    return split["pattern"]["Regex"]


def _refusal(data: dict, encode_special_tokens: bool) -> str | None:
    """Why tiktoken cannot be proven to give this tokenizer's ids; None when it can."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        return f"the model is {model.get('type')!r}, not BPE"
    if set(model) - _BPE_KEYS:
        return (
            f"the BPE model has options this check does not know: {sorted(set(model) - _BPE_KEYS)}"
        )
    if model.get("dropout") not in (None, 0.0):
        return "BPE dropout is on"
    for key in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return f"the BPE model sets {key}"
    if model.get("byte_fallback"):
        return "the BPE model uses byte fallback"
    if not _ascii_identity(data.get("normalizer")):
        return "the tokenizer has a normalizer that may change ASCII text"
    if data.get("truncation") is not None or data.get("padding") is not None:
        return "the tokenizer truncates or pads"
    if encode_special_tokens:
        return "the tokenizer splits special tokens (encode_special_tokens)"
    pattern = _split_pattern(data.get("pre_tokenizer"))
    if pattern is None:
        return "the pre-tokenizer is not a byte-level split this check knows"
    if pattern not in KNOWN_PATTERNS:
        return "the split regex is not one whose behaviour is known to match in both regex engines"
    added = data.get("added_tokens") or []
    return _added_refusal(added) or _merge_refusal(model, {a["id"]: a["content"] for a in added})


def _added_refusal(added: list[dict]) -> str | None:
    contents = [a.get("content", "") for a in added]
    for a in added:
        if set(a) - _ADDED_KEYS or a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            return f"added token {a.get('content')!r} strips, matches single words or is unknown"
        if not a.get("content"):
            return "an added token is empty"
    if len({bool(a.get("normalized")) for a in added}) > 1:
        return "added tokens mix normalized and raw matching"
    for a in contents:
        for b in contents:
            if a != b and b.startswith(a):
                return f"added token {a!r} is a prefix of {b!r}"
    if len(set(contents)) != len(contents):
        return "an added token is listed twice"
    return None


def _merge_refusal(model: dict, added: dict[int, str]) -> str | None:
    from tokenizers import models

    vocab: dict[str, int] = model["vocab"]
    byte_of = _byte_of()
    added_ids = set(added)
    if model.get("ignore_merges"):  # HF looks a piece up in the whole vocabulary, added ids too
        for token, i in vocab.items():
            if i in added and all(c in byte_of for c in token):
                if bytes(byte_of[c] for c in token) != added[i].encode():
                    return f"with ignore_merges, a piece could be the added token {added[i]!r}"
    if any(c not in vocab or vocab[c] in added_ids for c in byte_of):
        return "not every byte is in the vocabulary"
    if len(set(vocab.values())) != len(vocab):
        return "two vocabulary entries share an id"
    ordinary = {t: i for t, i in vocab.items() if i not in added_ids}
    if any(c not in byte_of for t in ordinary for c in t):
        return "a vocabulary entry is not byte-level"
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if len(set(merges)) != len(merges):
        return "a merge is listed twice"
    results = [a + b for a, b in merges]
    if len(set(results)) != len(results):
        return "a token is made by two different merges"
    if any(r not in ordinary for r in results):
        return "a merge makes an added token or a token outside the vocabulary"
    ids = [vocab[r] for r in results]
    if any(x >= y for x, y in itertools.pairwise(ids)):
        return "merge results' ids do not rise with their merge rank"
    reference = models.BPE(vocab=vocab, merges=merges, ignore_merges=False)
    exact = not model.get("ignore_merges")
    for token, token_id in ordinary.items():
        if len(token) < 2:
            continue
        got = [t.id for t in reference.tokenize(token)]
        if len(got) == 2:
            return f"token {token!r}: HF's merges give two tokens that tiktoken would join"
        if exact and got != [token_id]:
            return f"token {token!r} is not made by merging its bytes (and ignore_merges is off)"
    return None


def _tiktoken_parts(data: dict) -> tuple[str, dict[bytes, int], dict[str, int]]:
    model = data["model"]
    specials = {a["content"]: a["id"] for a in data.get("added_tokens") or []}
    special_ids = set(specials.values())
    byte_of = _byte_of()
    ranks = {
        bytes(byte_of[c] for c in token): i
        for token, i in model["vocab"].items()
        if i not in special_ids
    }
    return _split_pattern(data["pre_tokenizer"]), ranks, specials


@functools.cache
def _byte_of() -> dict[str, int]:
    """Printable character -> byte: the inverse of the GPT-2 map ``ByteLevel`` applies."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}

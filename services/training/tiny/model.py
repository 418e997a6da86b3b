"""Small models built locally, for tests, demos and benchmarks: Llama, and the families users bring.

No machine here reaches a model hub, so the project makes its own models: a random-initialised
``LlamaForCausalLM`` (or, with ``arch``, a model of one of ``families.FAMILIES``: Llama 3, Qwen2,
Qwen3, Qwen3-MoE, Gemma 3, Mistral, Phi-3, built from transformers' config classes with the
family's control tokens and chat template) plus a byte-level BPE tokenizer trained on a synthetic
corpus generated in code, saved as an ordinary Hugging Face model folder (``config.json``, ``model.safetensors``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json`` with a ChatML
``chat_template``, ``special_tokens_map.json``). The rest of the project loads it through the same
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` path a downloaded
model takes, offline.

The tokenizer depends only on the vocabulary size, never on the seed or the model size, so models
of every size built with the default vocabulary share one tokenizer (a tiny reward model can score
a small policy's tokens). The seed only decides the weights: the same seed gives bit-identical
weights.

Run as ``python -m services.training.tiny.model OUT_DIR --size tiny|small|medium [--arch A]
[--seed N] [--vocab-size N] [--force]``; the ``llamafleet tiny-model`` command calls exactly that. This
module knows nothing about training: the weights are random and the model says nothing useful
until a recipe trains it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from services.training.tiny.corpus import synthetic_corpus
from services.training.tiny.families import FAMILIES, Family

DEFAULT_ARCH = "llama"  # llamafleet's own Llama with the ChatML template (the demos' model)
ARCHS = (DEFAULT_ARCH, *FAMILIES)

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn: generation stops here
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"

# Special tokens (skipped by ``decode(skip_special_tokens=True)``) take ids 0..4 in this order.
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START, IM_END)
# The tool-call markers are single added tokens but not special: a decoded completion keeps them,
# so a rollout can still find the call after ``skip_special_tokens=True``.
TOOL_TOKENS = (TOOL_CALL_START, TOOL_CALL_END)

DEFAULT_VOCAB_SIZE = 3072
MIN_VOCAB_SIZE = 512  # 256 byte tokens, the added tokens, and enough merges to be a real BPE
MAX_VOCAB_SIZE = 32768  # what the built-in corpus can fill with merges

# Pre-tokenisation as Llama 3 does it, except digits are split one by one (so arithmetic has a
# per-digit vocabulary). ByteLevel then maps bytes to printable characters without its own regex.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class ModelSize:
    """The shape of one named size. ``num_key_value_heads < num_attention_heads`` means GQA."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rope_theta: float
    purpose: str


# Parameter counts are with the default vocabulary (3072), embeddings and lm_head untied.
SIZES: dict[str, ModelSize] = {
    # ~1.5M parameters: for tests; builds in seconds, forward is instant on a CPU.
    "tiny": ModelSize(128, 352, 4, 4, 2, 1024, 10_000.0, "tests"),
    # ~10.4M parameters: for demos that should learn something in minutes on a CPU.
    "small": ModelSize(256, 704, 12, 8, 4, 2048, 10_000.0, "demos"),
    # ~31.3M parameters: for benchmarks on a GPU.
    "medium": ModelSize(512, 1408, 10, 8, 2, 2048, 500_000.0, "benchmarks"),
}

# ChatML with a Llama-style bos. Assistant turns (content, tool calls and the closing <|im_end|>,
# which the model must learn to emit) sit inside {% generation %} so that
# ``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks exactly them.
CHAT_TEMPLATE = """\
{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is mapping -%}
        {{- content | tojson -}}
    {%- elif content is iterable -%}
        {%- for part in content -%}
            {%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
    {%- set system_message = render_content(messages[0].content) -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = none -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- if system_message is not none or tools -%}
    {{- '<|im_start|>system\\n' -}}
    {%- if system_message is not none -%}{{- system_message -}}{%- endif -%}
    {%- if tools -%}
        {%- if system_message -%}{{- '\\n\\n' -}}{%- endif -%}
        {{- '# Tools\\n\\nYou may call one or more functions. Their signatures:\\n<tools>\\n' -}}
        {%- for tool in tools -%}{{- (tool | tojson) + '\\n' -}}{%- endfor -%}
        {{- '</tools>\\n\\nTo call a function, reply with <tool_call>{"name": <function-name>, ' -}}
        {{- '"arguments": <args-json-object>}</tool_call>' -}}
    {%- endif -%}
    {{- '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message.role == 'assistant' -%}
        {{- '<|im_start|>assistant\\n' -}}
        {%- generation -%}
            {%- set content = render_content(message.content) if message.content is defined
                else '' -%}
            {{- content -}}
            {%- if message.tool_calls is defined and message.tool_calls -%}
                {%- for tool_call in message.tool_calls -%}
                    {%- if tool_call.function is defined -%}
                        {%- set tool_call = tool_call.function -%}
                    {%- endif -%}
                    {%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}
                    {{- '<tool_call>{"name": ' + (tool_call.name | tojson) + ', "arguments": ' -}}
                    {%- if tool_call.arguments is string -%}
                        {{- tool_call.arguments -}}
                    {%- else -%}
                        {{- tool_call.arguments | tojson -}}
                    {%- endif -%}
                    {{- '}</tool_call>' -}}
                {%- endfor -%}
            {%- endif -%}
            {{- '<|im_end|>' -}}
        {%- endgeneration -%}
        {{- '\\n' -}}
    {%- elif message.role in ['system', 'user', 'tool'] -%}
        {{- '<|im_start|>' + message.role + '\\n' + render_content(message.content) -}}
        {{- '<|im_end|>\\n' -}}
    {%- else -%}
        {{- raise_exception('unknown chat role: ' + message.role) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""


# --- tokenizer ---------------------------------------------------------------------------------


def build_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of exactly ``vocab_size`` tokens on the built-in corpus.

    Any UTF-8 text round-trips (all 256 bytes are in the vocabulary); digits are single tokens.
    ``tokenizer(text)`` prepends ``<|begin_of_text|>`` as Llama does; the chat template writes it
    itself and ``apply_chat_template`` does not add it twice.
    """
    _check_vocab_size(vocab_size)
    added = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    added += [AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS]

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=added,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    num_texts = max(20_000, 12 * vocab_size)
    backend.train_from_iterator(synthetic_corpus(num_texts), trainer=trainer, length=num_texts)
    if backend.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the built-in corpus filled only {backend.get_vocab_size()} of {vocab_size} tokens; "
            f"use a --vocab-size up to {MAX_VOCAB_SIZE}"
        )
    # The trainer registers every token it is given as special; re-adding the tool markers
    # keeps their ids and clears the flag.
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )


@functools.lru_cache(maxsize=2)
def _plain_bpe(vocab_size: int) -> str:
    """A byte-level BPE of exactly ``vocab_size`` tokens with no added token (its JSON), trained
    once per process: the text vocabulary every family's tokenizer shares."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    num_texts = max(20_000, 12 * vocab_size)
    backend.train_from_iterator(synthetic_corpus(num_texts), trainer=trainer, length=num_texts)
    if backend.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the built-in corpus filled only {backend.get_vocab_size()} of {vocab_size} tokens; "
            f"use a --vocab-size up to {MAX_VOCAB_SIZE}"
        )
    return backend.to_str()


def build_family_tokenizer(family: Family, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """The shared BPE text vocabulary plus ``family``'s control tokens (ids after the text
    vocabulary, as real tokenizers place them), its bos / eos / pad and its chat template."""
    _check_vocab_size(vocab_size)
    t = family.tokens
    backend = Tokenizer.from_str(_plain_bpe(vocab_size))
    backend.add_special_tokens([AddedToken(x, special=True, normalized=False) for x in t.special])
    backend.add_tokens([AddedToken(x, special=False, normalized=False) for x in t.plain])
    if t.add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{t.bos} $A",
            pair=f"{t.bos} $A {t.bos} $B",
            special_tokens=[(t.bos, backend.token_to_id(t.bos))],
        )
    named = {t.bos, t.eos, t.pad, "<unk>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=t.bos,
        eos_token=t.eos,
        pad_token=t.pad,
        unk_token="<unk>" if "<unk>" in t.special else None,
        extra_special_tokens=[x for x in t.special if x not in named],
        chat_template=family.jinja,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )


def _check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab size {vocab_size} is out of range; use {MIN_VOCAB_SIZE} to {MAX_VOCAB_SIZE}"
        )


# --- model -------------------------------------------------------------------------------------


def model_config(
    size: str = "tiny",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    bos_token_id: int = 0,
    eos_token_id: int = 1,
    pad_token_id: int = 2,
) -> LlamaConfig:
    """The ``LlamaConfig`` of a named size; the default token ids are the built tokenizer's."""
    shape = _size(size)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
    )


def family_config(arch: str, size: str, tokenizer) -> PretrainedConfig:
    """The config of ``arch`` (a ``families.FAMILIES`` name) at a named size, with the token ids
    of ``tokenizer`` (its vocabulary size included)."""
    family = _family(arch)
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }
    return family.config(_size(size), len(tokenizer), ids)


def _model_class(config: PretrainedConfig):
    return LlamaForCausalLM if type(config) is LlamaConfig else None


def count_parameters(config: PretrainedConfig) -> int:
    """Parameters of a model with ``config``, counted on the meta device (allocates nothing)."""
    with torch.device("meta"):
        cls = _model_class(config)
        model = cls(config) if cls else AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def init_model(config: PretrainedConfig, seed: int):
    """A random-initialised model; the same seed gives bit-identical weights.

    The global RNG is forked, so building a model does not disturb the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = _model_class(config)
        model = cls(config) if cls else AutoModelForCausalLM.from_config(config)
    return model.eval()


def _family(arch: str) -> Family:
    if arch not in FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    return FAMILIES[arch]


def _size(size: str) -> ModelSize:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
    return SIZES[size]


# --- the folder --------------------------------------------------------------------------------


def build_tiny_model(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int | None = None,
    *,
    force: bool = False,
    arch: str = DEFAULT_ARCH,
) -> Path:
    """Build a model folder at ``out_dir`` and return its path (``arch``: ``ARCHS``).

    The folder appears complete or not at all (it is written beside ``out_dir`` and renamed).
    An existing non-empty ``out_dir`` is an error unless ``force``, which replaces it.
    """
    out = Path(out_dir)
    _size(size)  # fail on a bad size or arch before any work
    if arch != DEFAULT_ARCH:
        _family(arch)
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    _check_vocab_size(vocab_size)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; --force (force=True) replaces it")

    started = time.perf_counter()
    if arch == DEFAULT_ARCH:
        tokenizer = build_tokenizer(vocab_size)
        config = model_config(
            size,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        end_of_turn = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
    else:
        tokenizer = build_family_tokenizer(FAMILIES[arch], vocab_size)
        config = family_config(arch, size, tokenizer)
        end_of_turn = tokenizer.convert_tokens_to_ids(list(FAMILIES[arch].tokens.end_of_turn))
    model = init_model(config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_of_turn,
        pad_token_id=tokenizer.pad_token_id,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        model.save_pretrained(staging)
        # save_jinja_files=False keeps the template in tokenizer_config.json, where every
        # loader (older transformers, vLLM) looks for it.
        tokenizer.save_pretrained(staging, save_jinja_files=False)
        if arch == DEFAULT_ARCH:
            _write_special_tokens_map(staging, tokenizer)
        _make_readable(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    params = sum(p.numel() for p in model.parameters())
    logger.info(
        "built %s %s model (%.2fM parameters, vocab %d, seed %d) at %s in %.1fs",
        size,
        arch,
        params / 1e6,
        len(tokenizer),
        seed,
        out,
        time.perf_counter() - started,
    )
    return out


def _make_readable(folder: Path) -> None:
    # transformers writes model.safetensors owner-only (0600); a model folder is shared with
    # service containers running as other users, so give files the usual umask permissions.
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _write_special_tokens_map(folder: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    # transformers 5 keeps special tokens in tokenizer_config.json; older readers want this file.
    special = {
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "additional_special_tokens": [IM_START, IM_END],
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# --- command line ------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build a model folder, print its path; 2 and a one-line message on bad input."""
    parser = _Parser(
        prog="python -m services.training.tiny.model",
        description="Build a random-initialised model and a locally trained tokenizer.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to create")
    parser.add_argument("--size", default="tiny", help=f"one of: {', '.join(SIZES)}")
    parser.add_argument("--arch", default=DEFAULT_ARCH, help=f"one of: {', '.join(ARCHS)}")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument(
        "--vocab-size", type=int, default=None, help=f"default {DEFAULT_VOCAB_SIZE}"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty out_dir")
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = build_tiny_model(
            args.out_dir, args.size, args.seed, args.vocab_size, force=args.force, arch=args.arch
        )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

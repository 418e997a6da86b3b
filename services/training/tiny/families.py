"""The model families ``llamafleet tiny-model --arch`` builds, each as small as ``--size`` says.

A family is what a user's downloaded model of that kind brings: the transformers config class and
the architecture's own features (Qwen2's attention biases and tied embeddings, Qwen3's q/k norms,
Qwen3-MoE's routed experts, Gemma 3's alternating sliding-window and global layers with their
own RoPE bases, scaled embeddings, ``1 + weight`` norms and GELU MLP, Mistral's and Phi-3's
sliding window, Phi-3's fused ``qkv_proj`` / ``gate_up_proj``), the family's control tokens in
the tokenizer with its bos / eos / pad as the real tokenizer sets them, its end-of-turn tokens in
``generation_config.json``, and a chat template. ``template`` names the data service's template
for the family (the name a job's ``tokenization.template.name`` takes).

The ``chat_template`` in ``tokenizer_config.json`` is the family's own Jinja template where a
verified copy is in the repository (``chat_templates/*.jinja``: Qwen3-4B's, Llama-3.1-8B-
Instruct's, Gemma 3's, the same text as ``tests/data/chat_templates/``, whose sources they name).
For Qwen2, Mistral and Phi-3 no copy of the family's template could be had here: their
``chat_template`` is llamafleet's own Jinja rendering of LLaMA-Factory's template of that name
(system, user and assistant turns; no tools), written here and tested to give the data service's
ids; ``jinja_source`` says which is which.

The default ``llama`` is not here: it is ``model.py``'s own Llama with the ChatML template the
rest of the project's tests and demos use. This module knows no weights and no training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import (
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

TEMPLATES_DIR = Path(__file__).with_name("chat_templates")

# --- llamafleet's renderings of LLaMA-Factory's templates (no family Jinja available) ------------

QWEN2_JINJA = """\
{%- if messages and messages[0].role == 'system' -%}
    {%- set system_message = messages[0].content -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{{- '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' -}}
{%- for message in loop_messages -%}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""

MISTRAL_JINJA = """\
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
    {%- set system_prefix = messages[0].content + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {{- '[INST] ' + (system_prefix if loop.first else '') + message.content + '[/INST]' -}}
    {%- elif message.role == 'assistant' -%}
        {{- ' ' + message.content + eos_token -}}
    {%- else -%}
        {{- raise_exception('this template renders user and assistant turns only') -}}
    {%- endif -%}
{%- endfor -%}
"""

PHI3_JINJA = """\
{%- for message in messages -%}
    {%- if message.role in ['system', 'user', 'assistant'] -%}
        {{- '<|' + message.role + '|>\\n' + message.content + '<|end|>\\n' -}}
    {%- else -%}
        {{- raise_exception('this template renders system, user and assistant turns only') -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}
"""


@dataclass(frozen=True)
class Tokens:
    """The control tokens of a family's tokenizer, as its real tokenizer sets them."""

    special: tuple[str, ...]  # added, special (skipped by decode(skip_special_tokens=True))
    bos: str | None
    eos: str
    pad: str | None
    add_bos: bool  # ``tokenizer(text)`` prepends bos (Llama 3, Gemma, Mistral do)
    end_of_turn: tuple[str, ...]  # generation stops at these (generation_config eos_token_id)
    plain: tuple[str, ...] = ()  # added, not special (Qwen's <think>, <tool_call>: kept in text)


@dataclass(frozen=True)
class Family:
    arch: str  # the --arch name
    model_type: str  # transformers' model_type of the config
    description: str
    template: str  # the data service's template for this family
    tokens: Tokens
    jinja: str  # the chat_template text
    jinja_source: str  # "family" (a verified copy) or "llamafleet" (our rendering of LF's)
    sliding_window: bool = False  # the tiny model has a window shorter than its context

    def config(self, shape, vocab_size: int, ids: dict[str, int | None]) -> PretrainedConfig:
        return _CONFIGS[self.arch](shape, vocab_size, ids, self)


def _jinja(name: str) -> str:
    return (TEMPLATES_DIR / f"{name}.jinja").read_text()


QWEN_TOKENS = Tokens(
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    add_bos=False,
    end_of_turn=("<|im_end|>", "<|endoftext|>"),
    plain=(
        "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>",
        "</think>",
    ),
)  # fmt: skip

FAMILIES: dict[str, Family] = {
    f.arch: f
    for f in (
        Family(
            "llama3", "llama", "Llama 3 / 3.1 / 3.2 (LlamaConfig, Llama 3 control tokens)",
            "llama3",
            Tokens(
                special=(
                    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
                    "<|finetune_right_pad_id|>",
                ),
                bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                add_bos=True, end_of_turn=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
            ),
            _jinja("llama3_1"), "family",
        ),
        Family(
            "qwen2", "qwen2", "Qwen 2 / 2.5 (q/k/v biases, tied embeddings)", "qwen",
            QWEN_TOKENS, QWEN2_JINJA, "llamafleet",
        ),
        Family(
            "qwen3", "qwen3", "Qwen3 dense (q/k RMSNorm, head_dim apart from hidden/heads)",
            "qwen3", QWEN_TOKENS, _jinja("qwen3"), "family",
        ),
        Family(
            "qwen3_moe", "qwen3_moe", "Qwen3-MoE (4 routed experts, top-2, router aux loss)",
            "qwen3", QWEN_TOKENS, _jinja("qwen3"), "family",
        ),
        Family(
            "gemma3", "gemma3_text",
            "Gemma 3 text (sliding-window and global layers, scaled embeddings, GELU)", "gemma3",
            Tokens(
                special=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
                end_of_turn=("<end_of_turn>", "<eos>"),
            ),
            _jinja("gemma3"), "family", sliding_window=True,
        ),
        Family(
            "mistral", "mistral", "Mistral 7B v0.1-style (sliding-window attention)", "mistral",
            Tokens(
                special=(
                    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]",
                    "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
                ),
                bos="<s>", eos="</s>", pad=None, add_bos=True, end_of_turn=("</s>",),
            ),
            MISTRAL_JINJA, "llamafleet", sliding_window=True,
        ),
        Family(
            "phi3", "phi3", "Phi-3 (fused qkv_proj and gate_up_proj, sliding window)", "phi",
            Tokens(
                special=(
                    "<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>",
                    "<|end|>", "<|user|>",
                ),
                bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", add_bos=False,
                end_of_turn=("<|end|>", "<|endoftext|>", "<|assistant|>"),
            ),
            PHI3_JINJA, "llamafleet", sliding_window=True,
        ),
    )
}  # fmt: skip


def window(shape) -> int:
    """The sliding window of a family model: 1/32 of its context (32 tokens at ``tiny``), so
    that the examples of packed training rows are longer than the window."""
    return shape.max_position_embeddings // 32


def _common(shape, vocab_size: int, ids: dict, **extra) -> dict:
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        dtype="float32",
    )
    fields.update(extra)
    return fields


def _rope(theta: float) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}


def _llama3(shape, vocab, ids, family) -> LlamaConfig:
    return LlamaConfig(**_common(shape, vocab, ids, tie_word_embeddings=False, **_rope(5e5)))


def _qwen2(shape, vocab, ids, family) -> Qwen2Config:
    return Qwen2Config(**_common(shape, vocab, ids, tie_word_embeddings=True, **_rope(1e6)))


def _qwen3(shape, vocab, ids, family) -> Qwen3Config:
    head_dim = 2 * shape.hidden_size // shape.num_attention_heads  # wider than hidden / heads
    return Qwen3Config(
        **_common(shape, vocab, ids, tie_word_embeddings=False, head_dim=head_dim, **_rope(1e6))
    )


def _qwen3_moe(shape, vocab, ids, family) -> Qwen3MoeConfig:
    return Qwen3MoeConfig(
        **_common(
            shape, vocab, ids, tie_word_embeddings=False,
            head_dim=shape.hidden_size // shape.num_attention_heads,
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=shape.intermediate_size // 2,
            norm_topk_prob=True, router_aux_loss_coef=0.001, **_rope(1e6),
        )
    )  # fmt: skip


def _gemma3(shape, vocab, ids, family) -> Gemma3TextConfig:
    layers = shape.num_hidden_layers
    # Gemma 3 has five local layers per global one; a tiny model alternates them
    types = ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(layers)]
    head_dim = shape.hidden_size // shape.num_attention_heads
    fields = _common(
        shape, vocab, ids, tie_word_embeddings=True, head_dim=head_dim,
        query_pre_attn_scalar=head_dim, sliding_window=window(shape), layer_types=types,
        hidden_activation="gelu_pytorch_tanh",
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )  # fmt: skip
    return Gemma3TextConfig(**fields)


def _mistral(shape, vocab, ids, family) -> MistralConfig:
    return MistralConfig(
        **_common(
            shape, vocab, ids, tie_word_embeddings=False, sliding_window=window(shape),
            head_dim=shape.hidden_size // shape.num_attention_heads, **_rope(1e6),
        )
    )  # fmt: skip


def _phi3(shape, vocab, ids, family) -> Phi3Config:
    return Phi3Config(
        **_common(
            shape, vocab, ids, tie_word_embeddings=False, sliding_window=window(shape),
            original_max_position_embeddings=shape.max_position_embeddings, **_rope(1e4),
        )
    )  # fmt: skip


_CONFIGS = {
    "llama3": _llama3,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gemma3": _gemma3,
    "mistral": _mistral,
    "phi3": _phi3,
}

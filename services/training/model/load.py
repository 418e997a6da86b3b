"""Loading the base model for training: device, dtypes and attention implementation.

Precision policy (mixed precision, the way Transformers' Trainer does it):
- Trained weights stay float32 (full fine-tuning keeps float32 master weights; LoRA adapters are
  float32). The forward and backward passes run under ``torch.autocast`` in the compute dtype.
- A frozen LoRA base is loaded directly in the compute dtype (half the memory), since it is never
  updated.
- float16 uses a gradient scaler (``torch.amp.GradScaler``). A model pre-trained in bfloat16 is
  refused in float16 by ``spec.validation`` (its activations exceed float16's range).
- The attention softmax runs in float32 under float16: Transformers' eager attention computes
  ``softmax(..., dtype=float32)``, and the SDPA / flash-attn kernels accumulate the softmax in
  float32. Nothing here lowers that.

Attention: ``sdpa`` on packed rows runs as "varlen SDPA" (``model.attention``): all rows of a
micro-batch are concatenated into one (no padding) and
``torch.nn.functional.scaled_dot_product_attention`` runs causally on each example separately
(``cu_seq_lens_q`` from ``collate``), sliding windows and soft-capping as the family computes
them. That is exactly the block-diagonal causal attention the contract asks for, without
materialising a T x T mask, so PyTorch's fused kernels apply. ``eager`` keeps the explicit 4-D
block-diagonal mask (one per layer type where layers slide); ``flash_attention_2`` uses
flash-attn's own varlen kernel.

``load_trained`` is the model the shared loop trains by default: the base, lean layers, and LoRA
(fused) when asked. This module does not know about recipes or data.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)

from services.common.scored_position import folder_eos_ids
from services.common.weight_files import require_safetensors_model
from services.training.losses import causal_lm as losses
from services.training.model import lean_layers, lora, moe
from services.training.model.attention import (  # noqa: F401 (re-exported)
    VARLEN_SDPA,
    model_attention,
    varlen_sdpa_attention,
)
from services.training.model.methods import freeze, llama_pro, lora_fused, quantize, rope
from services.training.spec.settings import Settings

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` when a GPU is present, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def base_config(settings: Settings):
    """The base model's config, RoPE-scaled for ``settings.max_context_length`` when asked."""
    config = AutoConfig.from_pretrained(
        settings.base_model, trust_remote_code=settings.trust_remote_code
    )
    if settings.rope_scaling:
        rope.rope_scaling(config, settings.rope_scaling, settings.max_context_length)
    return config


def load_base(settings: Settings, device: torch.device) -> PreTrainedModel:
    """The base model on ``device``, with the chosen attention implementation, its RoPE scaled
    and LLaMA-Pro blocks inserted when asked; FREEZE's trained subset marked. Weights load from
    ``*.safetensors`` only (a pickle is never unpickled)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_safetensors_model(Path(settings.base_model), "base_model")
    compute = TORCH_DTYPES[settings.compute_dtype]
    # A frozen LoRA base may live in the compute dtype; trained weights stay float32.
    load_dtype = compute if settings.method == "lora" and compute != torch.float32 else None
    quantized = {}
    if settings.quantization_bits:  # QLoRA: the frozen linear layers in 4 or 8 bits
        quantized = {
            "quantization_config": quantize.quantization_config(
                settings.quantization_bits,
                compute,
                quant_type=settings.quantization_type,
                double_quant=settings.double_quantization,
            ),
            "device_map": {"": device},
        }
    model = AutoModelForCausalLM.from_pretrained(
        settings.base_model,
        config=base_config(settings),
        use_safetensors=True,
        dtype=load_dtype or torch.float32,
        attn_implementation=model_attention(settings.attention),
        trust_remote_code=settings.trust_remote_code,
        **quantized,
    )
    model.config.use_cache = False
    moe.switch_off_own_router_loss(model)
    if quantized:  # norms and embeddings to float32, inputs requiring grad for checkpointing
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing
        )
        quantize.keep_cpu_layout(model)
    new_blocks = None
    if settings.llama_pro_expand and settings.llama_pro_expanded:  # LLaMA-Factory's use_llama_pro
        new_blocks = llama_pro.mark_expanded(model, settings.llama_pro_expand)
    elif settings.llama_pro_expand:  # FREEZE trains the new blocks, LoRA adapts only them
        new_blocks = llama_pro.expand(model, settings.llama_pro_expand)
    if settings.method == "freeze":
        freeze.apply_freeze(model, settings.freeze, layers=new_blocks)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    logger.info(
        "loaded %s (%.1fM parameters, %s weights, %s compute, %s attention)",
        settings.base_model,
        sum(p.numel() for p in model.parameters()) / 1e6,
        str(load_dtype or torch.float32).removeprefix("torch."),
        settings.compute_dtype,
        settings.attention,
    )
    return model if quantized else model.to(device)  # bitsandbytes placed it already


def load_trained(settings: Settings, device: torch.device) -> torch.nn.Module:
    """The trained model on ``device``: the base, with LoRA when ``method == "lora"``.

    RMSNorm and SwiGLU modules keep less for the backward (``lean_layers``), and LoRA layers run
    as one fused function (``methods.lora_fused``: no (tokens, out) temporaries for the scaled
    low-rank term) except under DeepSpeed, whose ZeRO-3 gathers weights in the hooks of the very
    submodules the fused function does not call. Both compute what the plain modules compute."""
    model = load_base(settings, device)
    lean_layers.use_lean_layers(model)
    if settings.method == "lora":
        model = lora.start_lora(model, settings)
        if settings.backend != "deepspeed":
            lora_fused.fuse_lora_layers(model)
    return model


def load_tokenizer(settings: Settings):
    """The base model's tokenizer (saved with full fine-tuned models)."""
    return AutoTokenizer.from_pretrained(
        settings.base_model, trust_remote_code=settings.trust_remote_code
    )


def end_token_ids(settings: Settings, data_ids: Iterable[int] = ()) -> frozenset[int]:
    """The ids a response ends with (``services.common.scored_position``): those the data names
    for its template (``Dataset.end_token_ids``), the eos ids the base folder declares (its
    config and generation config: what the rollout engines stop at) and its tokenizer's eos."""
    ids = set(data_ids) | folder_eos_ids(settings.base_model)
    eos = load_tokenizer(settings).eos_token_id
    if eos is not None:
        ids.add(int(eos))
    return frozenset(ids)


def autocast(settings: Settings, device: torch.device) -> AbstractContextManager:
    """The autocast context of the compute dtype (a no-op for float32)."""
    dtype = TORCH_DTYPES[settings.compute_dtype]
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(settings: Settings, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for float16, else None."""
    if settings.compute_dtype != "float16":
        return None
    return torch.amp.GradScaler(device.type)


def mask_dtype(settings: Settings) -> torch.dtype:
    """dtype of eager attention's additive mask: the dtype attention scores are computed in."""
    return TORCH_DTYPES[settings.compute_dtype]


# Config fields that make a causal LM's logits more than ``lm_head(last hidden state)``.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def split_lm_head(model: torch.nn.Module) -> tuple[torch.nn.Module | None, int]:
    """(the LM head, positions per loss chunk) when the loss can be computed from the last hidden
    states; (None, 0) when it cannot: a forward without ``logits_to_keep``, a head that is not a
    linear layer, logits soft-capped or scaled after the head (Gemma 2/3, Cohere, Granite), or
    the last hidden state returned before the final norm. Tied and LoRA-wrapped heads split off
    (the module is called as it is)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    config = getattr(inner, "config", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if config is None or head is None or not hasattr(head, "weight"):
        return None, 0
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return None, 0
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None, 0
    if getattr(config, "tie_last_hidden_states", True) is False:
        return None, 0
    vocab = getattr(config, "vocab_size", None) or head.weight.shape[0]
    return head, losses.chunk_rows(vocab)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_full_model(
    model: PreTrainedModel,
    settings: Settings,
    job_dir: Path,
    output_dir: Path,
    *,
    state_dict: dict | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """A full (or freeze) fine-tuned model as ``<job_dir>/model`` (safetensors + tokenizer + the
    ``files``), written beside and renamed into place, linked from ``<output_dir>/model``.
    ``state_dict`` overrides the weights (gathered from ZeRO-3 shards)."""
    dest = Path(job_dir) / "model"
    tmp = Path(job_dir) / f".model.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict or None)
    # the chat template stays in tokenizer_config.json, where vLLM and older readers look
    load_tokenizer(settings).save_pretrained(tmp, save_jinja_files=False)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    link = Path(output_dir) / "model"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(dest.resolve(), target_is_directory=True)
    return dest

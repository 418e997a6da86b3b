"""QLoRA: load the frozen base quantised to 4 or 8 bits through ``bitsandbytes``.

4-bit uses NF4 (or FP4) blocks of 64 weights with one absmax each; double quantisation stores
those absmax values in 8 bits too. 8-bit is LLM.int8(). Only the linear layers of the decoder are
quantised (transformers keeps the embeddings and the output head in the compute dtype); the LoRA
adapters on top stay float32. ``bitsandbytes`` runs on CPUs since 0.45 (slower than on a GPU).

``bitsandbytes`` is imported lazily: it is the ``methods`` extra
(``pip install 'llamafleet[methods]'``).
"""

from __future__ import annotations

import importlib.util

import torch

QUANT_TYPES = ("nf4", "fp4")


def require_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "QLoRA needs bitsandbytes, which is not installed: pip install 'llamafleet[methods]'"
        )


def quantization_config(bits: int, compute_dtype: torch.dtype, quant_type: str = "nf4",
                        double_quant: bool = True):  # fmt: skip
    """The ``transformers.BitsAndBytesConfig`` of ``bits`` (4 or 8)."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits != 4:
        raise ValueError(f"quantization_bits must be 4 or 8, got {bits}")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"4-bit quantisation type must be one of {QUANT_TYPES}, got {quant_type}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def quantized_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The bitsandbytes linear layers of ``model`` by name."""
    require_bitsandbytes()
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def module_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes a (possibly quantised) linear layer holds for its weight: packed data plus the
    quantisation state (absmax, nested absmax and code book for 4-bit; row scales for 8-bit)."""
    weight = module.weight
    total = weight.numel() * weight.element_size()
    state = getattr(weight, "quant_state", None)
    if state is not None:
        tensors = [state.absmax, getattr(state, "code", None)]
        nested = getattr(state, "state2", None)
        if nested is not None:
            tensors += [nested.absmax, getattr(nested, "code", None)]
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    scales = getattr(weight, "SCB", None)
    if scales is not None:
        total += scales.numel() * scales.element_size()
    return total


def keep_cpu_layout(model: torch.nn.Module) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights.

    On AVX512-BF16 CPUs a ``Linear4bit`` in eval mode rewrites its weight in place into a CPU
    layout on the first no-grad forward; that fails for input sizes that are not a multiple of
    the 64-weight block (e.g. 352) and changes the stored bytes between steps. Training keeps
    the portable layout, so evaluation does too.
    """
    for module in quantized_modules(model).values():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False

"""Fine-tuning methods beyond plain full and LoRA training, one module each.

- ``freeze``: partial fine-tuning, only the last (or first) N decoder layers and named modules.
- ``llama_pro``: LLaMA-Pro block expansion (identity copies of decoder blocks, trained alone).
- ``rope``: RoPE scaling of a model config (linear, dynamic NTK, YaRN, llama3) for a longer context.
- ``quantize``: QLoRA's 4/8-bit frozen base through ``bitsandbytes`` (CPU included).
- ``galore``: GaLore-AdamW, low-rank projected Adam moments for full fine-tuning.
- ``lora_fused``: a LoRA linear layer with a fused, cheap-order backward (the trainer switches
  eligible layers to it; see BENCHMARKS.md "## SFT training").

Each works on a loaded ``transformers`` model or its config; none knows about recipes or data.
"""

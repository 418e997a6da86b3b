"""LoRA through ``peft``: target-module expansion, set-up, and adapter folders.

``apply_lora`` wraps a base model in a ``PeftModel`` whose only trainable weights are the adapters
(and ``additional_target_modules``, trained in full and saved with the adapter). ``"all"`` (or an
empty list) expands to every ``nn.Linear`` of the model except the output head, by module name
suffix (``q_proj``, ``k_proj``, ..., ``down_proj``), which is also what vLLM's LoRA loader expects.
On a mixture of experts ``"all"`` leaves the routed experts alone (transformers 5 keeps them as
fused 3-D weights, not ``nn.Linear``s); naming ``experts`` among the targets adapts them through
peft's ``target_parameters`` (one low-rank update per fused weight, ``model.moe``).
Scaling is ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA. On a model expanded with
LLaMA-Pro blocks, adapters go on the new blocks only (peft's ``layers_to_transform``); the
original blocks stay bit-identical.

Stages chain through adapters (LLaMA-Factory's ``adapter_name_or_path``): ``start_lora`` either
continues training a saved adapter (its own ``LoraConfig``: rank, alpha and targets come from the
folder, as in LLaMA-Factory; the spec's ``lora_*`` keys are then not used) or, with
``create_new_adapter``, merges it into the base and adds a fresh adapter on top.
``add_reference_adapter`` loads the starting adapter a second time, frozen, under the name
``reference`` on the same backbone: base + that adapter is the reference of DPO, KTO and PPO
without a second model in memory (``model.reference``).

``publish_adapter`` writes a folder that ``peft.PeftModel.from_pretrained`` loads
(``adapter_config.json`` + ``adapter_model.safetensors``): first to a temporary sibling, then
renamed, so a reader never sees half an adapter.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from services.common.weight_files import ADAPTER_BASE_FILE, base_shape
from services.training.model import moe
from services.training.model.methods import llama_pro
from services.training.spec.settings import LoraSettings

logger = logging.getLogger(__name__)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Suffix names of every ``nn.Linear`` except the output head, sorted."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    if head is not None:
        head_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head}
        names -= head_names
    return sorted(names)


def expand_target_modules(model: torch.nn.Module, requested: tuple[str, ...]) -> list[str]:
    """Resolve the requested target modules; ``()`` or ``("all",)`` = every linear but the head."""
    if not requested or "all" in requested:
        names = linear_module_names(model)
        if moe.expert_parameters(model):
            logger.info(
                "LoRA 'all' adapts %s; the routed experts are left alone (add '%s' to the "
                "targets to adapt them)", ",".join(names), moe.EXPERTS,
            )  # fmt: skip
        return names + [moe.EXPERTS] * (moe.EXPERTS in requested)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in requested if m not in present]
    if missing:
        raise ValueError(
            f"LoRA target modules {missing} are not in the model; linear layers are "
            f"{linear_module_names(model)}"
        )
    return list(requested)


def lora_config(model: torch.nn.Module, cfg: LoraSettings) -> LoraConfig:
    """The ``peft.LoraConfig`` for ``cfg`` on ``model``."""
    init: bool | str = True
    if cfg.pissa_init:
        init = "pissa" if cfg.pissa_iters < 0 else f"pissa_niter_{cfg.pissa_iters}"
    blocks = llama_pro.new_blocks(model)
    targets = expand_target_modules(model, cfg.target_modules)
    experts = moe.expert_parameters(model) if moe.EXPERTS in targets else []
    if moe.EXPERTS in targets and not experts:
        raise ValueError(
            f"LoRA target '{moe.EXPERTS}': the model has no fused expert weights to adapt"
        )
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=[t for t in targets if t != moe.EXPERTS],
        target_parameters=experts or None,
        modules_to_save=list(cfg.additional_target_modules) or None,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        init_lora_weights=init,
        layers_to_transform=list(blocks) or None,
        layers_pattern="layers" if blocks else None,
    )


def apply_lora(model: torch.nn.Module, cfg: LoraSettings, seed: int) -> PeftModel:
    """Freeze ``model`` and add adapters initialised from ``seed`` (float32 adapter weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, lora_config(model, cfg), autocast_adapter_dtype=True)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    logger.info(
        "LoRA rank %d alpha %g on %s: %d trainable parameters",
        cfg.rank,
        cfg.alpha,
        ",".join(peft_model.peft_config["default"].target_modules),
        trainable,
    )
    return peft_model


REFERENCE_ADAPTER = "reference"  # the frozen copy of the starting adapter (the reference)
TRAINED_ADAPTER = "default"  # peft's name of the adapter being trained


def adapter_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a PEFT adapter folder (``adapter_model.safetensors`` only: never a pickle)."""
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise ValueError(f"{folder} is not a PEFT adapter folder: no adapter_model.safetensors")
    return load_file(path)


def load_weights_into(model: PeftModel, folder: str | Path, adapter_name: str) -> None:
    """Load the folder's adapter weights into ``adapter_name`` of ``model``; every LoRA weight of
    that adapter must come from the folder and every tensor of the folder must find its place."""
    from peft import set_peft_model_state_dict
    from peft.utils.other import AuxiliaryTrainingWrapper

    state = adapter_weights(folder)
    current = None
    for name, module in model.named_modules():  # heads the folder lacks keep their own weights
        if isinstance(module, AuxiliaryTrainingWrapper):  # (an SFT adapter under a new RM head)
            for key, stored in module.adapter_state_dict_load_map(adapter_name).items():
                if f"{name}.{key}" not in state:
                    current = current if current is not None else model.state_dict()
                    state[f"{name}.{key}"] = current[f"{name}.{stored}"]
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [
        k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{adapter_name}" in k
    ]
    if unexpected or missing:
        raise ValueError(
            f"adapter {folder} does not fit this model: "
            f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:2]}), "
            f"{len(missing)} LoRA weights missing (e.g. {missing[:2]})"
        )


def adapter_config(folder: str | Path) -> LoraConfig:
    config = LoraConfig.from_pretrained(str(folder))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{folder}: a {type(config).__name__} adapter, not LoRA")
    config.init_lora_weights = True  # the weights are loaded: no PiSSA re-initialisation
    config.inference_mode = False
    return config


def merge_adapter(model: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """``model`` with the folder's adapter merged into its weights (create_new_adapter)."""
    config = adapter_config(folder)
    merged = get_peft_model(model, config, autocast_adapter_dtype=True)
    load_weights_into(merged, folder, TRAINED_ADAPTER)
    logger.info("merged the adapter %s into the base", folder)
    return merged.merge_and_unload()


def continue_adapter(
    model: torch.nn.Module,
    folder: str | Path,
    task_type: str = "CAUSAL_LM",
    modules_to_save: tuple[str, ...] = (),
) -> PeftModel:
    """Freeze ``model`` and train the folder's adapter further (float32 adapter weights)."""
    config = adapter_config(folder)
    config.task_type = task_type
    if modules_to_save:
        config.modules_to_save = sorted({*(config.modules_to_save or ()), *modules_to_save})
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    load_weights_into(peft_model, folder, TRAINED_ADAPTER)
    logger.info(
        "LoRA continues the adapter %s (rank %d alpha %g on %s; the folder's settings)",
        folder, config.r, config.lora_alpha, ",".join(sorted(config.target_modules or ())),
    )  # fmt: skip
    return peft_model


def start_lora(model: torch.nn.Module, settings) -> PeftModel:
    """The trained LoRA model: fresh, or from ``settings.init_adapter`` (continued, or merged
    into the base under a fresh adapter with ``create_new_adapter``)."""
    folder = settings.init_adapter
    if folder and settings.create_new_adapter:
        model = merge_adapter(model, folder)
    elif folder:
        return continue_adapter(model, folder)
    return apply_lora(model, settings.lora, settings.seed)


def add_reference_adapter(model: PeftModel, folder: str | Path) -> None:
    """Load the folder's adapter again, frozen, as ``REFERENCE_ADAPTER`` (not active)."""
    config = adapter_config(folder)
    config.inference_mode = True
    config.modules_to_save = None  # a reference reads the trained model's heads as they start
    model.add_adapter(REFERENCE_ADAPTER, config)
    load_weights_into(model, folder, REFERENCE_ADAPTER)
    for name, param in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            param.requires_grad_(False)


def folder_size(path: Path) -> int:
    """Sum of the sizes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def save_adapter(
    model: PeftModel,
    dest: Path,
    state_dict: dict | None = None,
    files: Mapping[str, str] | None = None,
) -> int:
    """Write the adapter folder at ``dest`` atomically (tmp + rename); returns its size in bytes.

    ``state_dict`` overrides the weights (e.g. gathered from ZeRO-3 shards); ``files`` are more
    text files (name -> content) that belong with the weights (a reward model's scored position).
    """
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(  # the trained adapter only, never the frozen reference copy
        tmp, state_dict=state_dict, safe_serialization=True, selected_adapters=[TRAINED_ADAPTER]
    )
    # the base it trained on (LLaMA-Pro blocks, RoPE scaling): loaders refuse another base
    shape = base_shape(model.get_base_model().config.to_dict())
    (tmp / ADAPTER_BASE_FILE).write_text(json.dumps(shape, indent=1) + "\n")
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return folder_size(dest)

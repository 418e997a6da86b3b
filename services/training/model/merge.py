"""A LoRA adapter merged into the base model it was trained over, saved as a full model folder.

Runs in the child process of an ``ExportModel`` (``adapters.export`` names this module; the
training service itself never loads torch). The base is rebuilt as the job trained on it
(``spec.base_model`` with its RoPE scaling in the config and its LLaMA-Pro blocks inserted: the
adapter only reproduces the trained model over that base), the adapter applied with peft's
``PeftModel.from_pretrained`` and folded in with ``merge_and_unload``, and the result saved with
``save_pretrained`` (safetensors) beside the base model's tokenizer; a value head
(``value_head.safetensors``, reward models and PPO) and a reward model's scored position
(``services.common.scored_position``) are copied along. A reward model's adapter (``rm`` jobs: a
``SEQ_CLS`` adapter with its trained ``score`` head) merges into the base loaded as the one-label
sequence classifier it was trained on, so the export scores as the job did.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as pb
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from services.common.scored_position import SCORED_POSITION_FILE
from services.training.model.load import base_config
from services.training.model.methods import llama_pro
from services.training.spec.settings import settings as spec_settings

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"


def merge_lora(spec_bytes: bytes, adapter_dir: str, staging: str) -> None:
    """Rebuild the job's base, apply the adapter, fold it in (``merge_and_unload``), save into
    ``staging``. QLoRA adapters merge into the unquantized base, as LLaMA-Factory's export does."""
    spec = pb.TrainingJobSpec.FromString(spec_bytes)
    s = spec_settings(spec, "cpu")
    reward = spec.stage == pb.STAGE_RM
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    config = base_config(s)  # RoPE scaled as in training; saved with the model
    if reward:
        config.num_labels = 1
    base = cls.from_pretrained(
        s.base_model,
        config=config,
        dtype="auto",
        use_safetensors=True,
        trust_remote_code=s.trust_remote_code,
    )
    if reward and base.config.pad_token_id is None:  # as the rm recipe sets it
        base.config.pad_token_id = base.config.eos_token_id
    if s.llama_pro_expand:  # the blocks the adapter was trained on (deterministic from the base)
        llama_pro.expand(base, s.llama_pro_expand)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(staging, safe_serialization=True)
    _save_tokenizer(s.base_model, Path(staging), s.trust_remote_code)
    for name in (VALUE_HEAD_FILE, SCORED_POSITION_FILE):  # what the adapter's readers need
        if (Path(adapter_dir) / name).is_file():
            shutil.copy2(Path(adapter_dir) / name, Path(staging) / name)


def _save_tokenizer(base_model: str, staging: Path, trust_remote_code: bool) -> None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        logger.warning(
            "base model %s has no loadable tokenizer (%s); exported without", base_model, exc
        )
        return
    # The chat template stays in tokenizer_config.json, where every loader looks (as tiny.model).
    tokenizer.save_pretrained(staging, save_jinja_files=False)

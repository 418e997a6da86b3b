"""Every recipe on every family: architecture x recipe x method (``arch_matrix`` runs and checks
one cell; see its docstring for what each cell proves).

The default run holds a fast subset: per family, SFT with LoRA on packed rows (export merged
and reloaded, the adapter served by the rollout service's HF engine), plus one more recipe and
method rotating over the families, so every recipe and both methods run on some family in every
run, and GRPO with LoRA on the MoE family (a GRPO cell takes 2-3 s here). The other cells are
marked heavy: ``scripts/test_heavy.sh`` runs them (not CI's default run). A refused cell
(``arch_matrix.REFUSED``) is a test that the job is refused with its reason. vLLM per family:
``tests/rollout/test_vllm_families.py``. The packed-vs-unpacked equality per family:
``test_arch_packing.py``.
"""

from __future__ import annotations

import pytest
from arch_matrix import (
    METHODS,
    RECIPES,
    REFUSED,
    STAGES,
    check_export,
    check_hf_rollout,
    check_reward_service,
    run_cell,
)
from llamafleet.training.v1 import training_pb2 as tpb

from services.common.errors import Unimplemented
from services.training.spec.validation import validate
from services.training.tiny.families import FAMILIES

# One more cell per family in the default run: every recipe and both methods are covered.
ROTATION = {
    "llama3": ("dpo", "lora"),
    "qwen2": ("rm", "lora"),
    "qwen3": ("pt", "full"),
    "qwen3_moe": ("sft", "full"),
    "gemma3": ("ppo", "lora"),
    "mistral": ("rm", "full"),
    "phi3": ("dpo", "full"),
}
FAST = (
    {(arch, "sft", "lora") for arch in FAMILIES}
    | {(a, *c) for a, c in ROTATION.items()}
    | {("qwen3_moe", "grpo", "lora")}
)
ALL = [(a, r, m) for a in FAMILIES for r in RECIPES for m in METHODS if (r, m) not in REFUSED]


def params(cells, slow: bool):
    marks = [pytest.mark.slow, pytest.mark.heavy] if slow else []
    return [pytest.param(*c, id="-".join(c), marks=marks) for c in cells]


def check_cell(family_models, tmp_path, arch: str, recipe: str, method: str) -> None:
    rl = recipe in ("ppo", "grpo")  # the MoE router loss is refused for the RL stages
    extra = {"moe_aux_loss_coef": 0.01} if arch == "qwen3_moe" and not rl else {}
    cell = run_cell(arch, recipe, method, family_models[arch], tmp_path / "job", **extra)
    if not rl or method == "lora":
        check_export(cell, tmp_path / "export")
    if recipe == "rm":
        check_reward_service(cell)
    if recipe == "sft" and method == "lora":
        check_hf_rollout(cell)


@pytest.mark.parametrize(("arch", "recipe", "method"), params(sorted(FAST), slow=False))
def test_cell(family_models, tmp_path, arch, recipe, method):
    check_cell(family_models, tmp_path, arch, recipe, method)


@pytest.mark.parametrize(
    ("arch", "recipe", "method"), params([c for c in ALL if c not in FAST], slow=True)
)
def test_cell_slow(family_models, tmp_path, arch, recipe, method):
    check_cell(family_models, tmp_path, arch, recipe, method)


@pytest.mark.parametrize("arch", list(FAMILIES))
@pytest.mark.parametrize(("recipe", "method"), list(REFUSED))
def test_refused_cell(family_models, arch, recipe, method):
    spec = tpb.TrainingJobSpec(base_model=str(family_models[arch]), stage=STAGES[recipe])
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = (
        tpb.FINETUNING_TYPE_FULL if method == "full" else tpb.FINETUNING_TYPE_LORA
    )
    with pytest.raises(Unimplemented, match=REFUSED[(recipe, method)]):
        validate(spec)

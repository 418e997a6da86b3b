"""Packed rows give, for every family, the logits each example gets alone in plain transformers.

Four examples of 50, 9, 70 and 33 tokens (longer and shorter than the tiny families' 32-token
sliding window, so Mistral's, Phi-3's and Gemma 3's local layers hide keys inside an example) are
packed into two rows and run through ``collate`` + the training attention: ``sdpa`` (varlen SDPA:
one concatenated row, per-example kernels with the window) and ``eager`` (padded rows, the 4-D
block-diagonal mask, windowed per layer type). The reference is transformers' own eager model
on each example alone (batch 1, no padding, no mask: the model builds its causal and sliding
masks itself). Tolerance 1e-5 on float32 logits.

Soft-capping: Gemma 3 in transformers ignores ``attn_logit_softcapping`` (its attention never
passes it) and applies ``final_logit_softcapping`` in the head; Gemma 2 passes both, and the
varlen kernel must compute capped scores itself (SDPA has no soft-capping). The caps are 0.5
(Gemma 2 publishes 50 and 30, which a random tiny model's scores never reach: with 0.5 the caps
change the logits, checked, so the test can fail).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from transformers import AutoConfig, AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig

from services.training.loop.collate import collate
from services.training.model.attention import (
    FULL,
    SLIDING,
    VARLEN_SDPA,
    MaskPlan,
    PackingUnsupported,
    mask_plan,
)
from services.training.tiny.families import FAMILIES

TOL = 1e-5
LENGTHS = (50, 9, 70, 33)


def rows_for(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    examples = [torch.randint(8, vocab - 1, (n,), generator=g).tolist() for n in LENGTHS]
    rows = []
    for group in (examples[:2], examples[2:]):
        ids = [t for e in group for t in e]
        cu = [0]
        for e in group:
            cu.append(cu[-1] + len(e))
        rows.append(
            data_pb2.TokenRow(
                input_ids=ids, labels=ids, cu_seqlens=cu,
                position_ids=[p for e in group for p in range(len(e))],
                example_ids=[f"e{i}" for i in range(len(group))],
            )
        )  # fmt: skip
    return examples, rows


def packed_logits(model, rows, attention: str, plan: MaskPlan) -> list[torch.Tensor]:
    """Per-example logits (n, V) from the packed forward."""
    x = collate(rows, pad_id=0, attention=attention, masks=plan)
    with torch.no_grad():
        logits = model(**x.model_kwargs()).logits
    out = []
    if attention == "sdpa":
        flat, start = logits[0], 0
        for n in LENGTHS:
            out.append(flat[start : start + n])
            start += n
        return out
    for r, row in enumerate(rows):
        cu = list(row.cu_seqlens)
        out += [logits[r, s:e] for s, e in zip(cu, cu[1:], strict=False)]
    return out


def check_packed(folder_or_config, attention: str) -> MaskPlan:
    if isinstance(folder_or_config, (str, bytes)) or hasattr(folder_or_config, "is_dir"):
        config = AutoConfig.from_pretrained(folder_or_config)
        load = dict(pretrained_model_name_or_path=folder_or_config)
        model = AutoModelForCausalLM.from_pretrained(
            **load, attn_implementation=VARLEN_SDPA if attention == "sdpa" else "eager"
        ).eval()
        plain = AutoModelForCausalLM.from_pretrained(**load, attn_implementation="eager").eval()
    else:
        config = folder_or_config
        torch.manual_seed(0)
        plain = AutoModelForCausalLM.from_config(
            copy.deepcopy(config), attn_implementation="eager"
        ).eval()
        model = AutoModelForCausalLM.from_config(
            copy.deepcopy(config),
            attn_implementation=VARLEN_SDPA if attention == "sdpa" else "eager",
        ).eval()
        model.load_state_dict(plain.state_dict())
    assert plain.config._attn_implementation == "eager"
    assert model.config._attn_implementation == (VARLEN_SDPA if attention == "sdpa" else "eager")
    plan = mask_plan(config)
    examples, rows = rows_for(config.vocab_size)
    got = packed_logits(model, rows, attention, plan)
    with torch.no_grad():
        for ids, logits in zip(examples, got, strict=True):
            reference = plain(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(logits, reference, atol=TOL, rtol=0)
    return plan


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", list(FAMILIES))
def test_packed_logits_equal_each_example_alone(family_models, arch, attention):
    plan = check_packed(family_models[arch], attention)
    expected = {"gemma3": MaskPlan(32, True), "mistral": MaskPlan(32), "phi3": MaskPlan(32)}
    assert plan == expected.get(arch, MaskPlan())


def test_the_window_matters_in_these_examples(family_models):
    """Without the window, Mistral's packed logits differ from its own: the test can fail."""
    folder = family_models["mistral"]
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    examples, rows = rows_for(model.config.vocab_size)
    got = packed_logits(model, rows, "eager", MaskPlan())  # the window left out
    with torch.no_grad():
        reference = plain(input_ids=torch.tensor([examples[2]])).logits[0]  # 70 > 32 tokens
    assert (got[2] - reference).abs().max() > 1e-3


def _gemma_softcap(cls, cap: float | None = 0.5):
    layers = ["sliding_attention", "full_attention"] * 2
    return cls(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=32, layer_types=layers, attn_logit_softcapping=cap,
        final_logit_softcapping=cap, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        initializer_range=0.2,
    )  # fmt: skip


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("cls", [Gemma2Config, Gemma3TextConfig], ids=["gemma2", "gemma3"])
def test_soft_capped_attention_and_logits_packed(cls, attention):
    plan = check_packed(_gemma_softcap(cls), attention)
    assert plan == MaskPlan(32, True)


def test_the_attention_cap_matters_in_these_examples():
    """Gemma 2 with its attention cap and without (same weights, final cap kept): different."""
    ids = torch.tensor([rows_for(512)[0][2]])
    torch.manual_seed(0)
    capped = AutoModelForCausalLM.from_config(
        _gemma_softcap(Gemma2Config), attn_implementation="eager"
    ).eval()
    uncapped_config = _gemma_softcap(Gemma2Config)
    uncapped_config.attn_logit_softcapping = None
    uncapped = AutoModelForCausalLM.from_config(uncapped_config, attn_implementation="eager").eval()
    uncapped.load_state_dict(capped.state_dict())
    with torch.no_grad():
        assert (capped(input_ids=ids).logits - uncapped(input_ids=ids).logits).abs().max() > 1e-3


def test_masks_per_layer_type_for_eager_rows():
    rows = rows_for(100)[1]
    x = collate(rows, pad_id=0, attention="eager", masks=MaskPlan(4, True))
    assert set(x.attention_mask) == {FULL, SLIDING}
    full, sliding = (x.attention_mask[k][0, 0] == 0 for k in (FULL, SLIDING))
    assert full[40, 0] and not sliding[40, 0] and sliding[40, 37] and not sliding[40, 36]


def test_attention_that_is_not_causal_per_example_is_refused():
    config = Gemma3TextConfig(use_bidirectional_attention=True)
    with pytest.raises(PackingUnsupported, match="bidirectional"):
        mask_plan(config)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("use_bidirectional_attention", True, "bidirectional"),
     ("attention_chunk_size", 8192, "chunked attention")],
)  # fmt: skip
def test_a_job_on_such_a_model_is_refused_before_launch(tmp_path, key, value, message):
    from llamafleet.training.v1 import training_pb2 as tpb

    from services.common.errors import InvalidArgument
    from services.training.spec.validation import validate

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", key: value}))
    spec = tpb.TrainingJobSpec(base_model=str(tmp_path), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    with pytest.raises(InvalidArgument, match=message):
        validate(spec)
    spec.stage = tpb.STAGE_PPO  # PPO's padded rollouts use the model's own masks
    spec.ppo.reward_scorer = "exact_match"
    validate(spec)

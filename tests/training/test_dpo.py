"""The ``dpo`` recipe: the loss against TRL's ``DPOTrainer``, learning, and DPO-ftx.

Preference pairs are rendered the way the data service renders them: prompt + response with the
tiny tokenizer's chat template, labels -100 outside the assistant turn, chosen and rejected rows
unpacked. The synthetic preference task: "Increment the digits of 3819" prefers "4920" (each
digit plus one) over "3819" (the digits copied back).
"""

from __future__ import annotations

import copy

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task, make_settings, render
from test_recipes import job_spec

from services.common.errors import InvalidArgument, Unimplemented
from services.training.loop.batches import InMemoryPairSource
from services.training.loop.pairs import collate_pairs
from services.training.recipes import dpo
from services.training.spec.settings import LoraSettings, PreferenceSettings, settings
from services.training.spec.validation import validate


def preference_pairs(tokenizer, pairs, rejected=lambda prompt, answer: prompt.split()[-1]):
    """Digit-task (prompt, answer) pairs as ``PreferencePair``s: chosen = the answer, rejected =
    ``rejected(prompt, answer)`` (the input digits copied back by default)."""
    out = []
    for i, (prompt, answer) in enumerate(pairs):
        user = {"role": "user", "content": prompt}
        chosen = render(tokenizer, [user, {"role": "assistant", "content": answer}], i)
        worse = rejected(prompt, answer)
        rejected_row = render(tokenizer, [user, {"role": "assistant", "content": worse}], i)
        out.append(data_pb2.PreferencePair(chosen=chosen, rejected=rejected_row))
    return out


STEPS = 150  # optimizer steps of the learning tests


def dpo_settings(base, loss_type="sigmoid", **overrides):
    preference = PreferenceSettings(
        beta=overrides.pop("beta", 0.1),
        loss_type=loss_type,
        pref_ftx=overrides.pop("pref_ftx", 0.0),
        label_smoothing=overrides.pop("label_smoothing", 0.0),
    )
    return make_settings(base, recipe="dpo", preference=preference, **overrides)


def trainer_for(settings, pairs, tmp_path):
    trainer = dpo.build_trainer(settings, InMemoryPairSource(pairs), tmp_path)
    trainer.setup()
    return trainer


# --- the spec ---------------------------------------------------------------------------------


def test_preference_config_is_validated_and_resolved(tiny_random):
    spec = job_spec(tiny_random)
    spec.stage = tpb.STAGE_DPO
    validate(spec)
    assert settings(spec).recipe == "dpo"
    assert settings(spec).preference == PreferenceSettings(beta=0.1, loss_type="sigmoid")
    spec.preference.loss_type = tpb.PREFERENCE_LOSS_SIMPO
    spec.preference.pref_ftx = 0.5
    resolved = settings(spec).preference
    assert (resolved.loss_type, resolved.pref_ftx, resolved.simpo_gamma) == ("simpo", 0.5, 0.5)
    spec.preference.beta = 0
    spec.preference.label_smoothing = 0.2  # SIGMOID only
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    fields = sorted(v.field for v in info.value.violations)
    assert fields == ["spec.preference.beta", "spec.preference.label_smoothing"]
    rm_spec = job_spec(tiny_random)
    rm_spec.stage = tpb.STAGE_RM
    validate(rm_spec)
    assert settings(rm_spec).recipe == "rm"
    rm_spec.distributed.world_size = 2  # DDP (test_preference_distributed), not DeepSpeed
    validate(rm_spec)
    rm_spec.distributed.backend = tpb.DISTRIBUTED_BACKEND_DEEPSPEED
    with pytest.raises(Unimplemented, match="DeepSpeed"):
        validate(rm_spec)
    rm_spec.distributed.world_size = 1
    rm_spec.finetuning.quantization_bits = 4  # the reward model is not loaded quantized
    with pytest.raises(Unimplemented, match="quantization_bits"):
        validate(rm_spec)


# --- the loss on a fixed batch against TRL -----------------------------------------------------


@pytest.fixture(scope="module")
def fixed_pairs(tokenizer):
    # different lengths on both sides, so padding and the concatenated layout matter
    return preference_pairs(
        tokenizer,
        digit_task(5, 4),
        rejected=lambda p, a: [a[::-1], "no", a + " " + a, "0"][int(a[0]) % 4],
    )


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move the policy away from the reference so the DPO log-ratios are not zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=generator))


def trl_loss(policy, reference, tokenizer, pairs, beta, loss_type, tmp_path) -> float:
    """TRL's ``DPOTrainer.compute_loss`` on the same pairs, padded (chosen rows first)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    data = datasets.Dataset.from_dict(
        {"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]}
    )  # required by the constructor; the batch below is built by hand
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=beta,
        loss_type=[loss_type],
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
    )
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
    )
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        attention[i, :n] = 1
        completion[i, :n] = torch.tensor([int(x != -100) for x in row.labels])
    inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, inputs))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_dpo_loss_equals_trl_dpo_trainer(
    tiny_random, tokenizer, fixed_pairs, tmp_path, loss_type, attention
):
    """TRL 1.16 ``DPOTrainer.compute_loss`` on the same policy, reference, pairs and beta. IPO:
    TRL divides each log-ratio by its response's token count before the square (so do we)."""
    settings = dpo_settings(tiny_random, loss_type, beta=0.5, attention=attention, batch_rows=4)
    trainer = trainer_for(settings, fixed_pairs, tmp_path)
    perturb(trainer.model)
    trainer.model.eval()
    x = trainer._collate(data_pb2.Batch(pairs=fixed_pairs))
    with torch.no_grad():
        ours = float(trainer.loss.objective.pair_losses(trainer.models, x)[0].mean())

    policy = copy.deepcopy(trainer.model)
    policy.config._attn_implementation = "eager"
    reference = copy.deepcopy(trainer.models.reference.copy)
    reference.config._attn_implementation = "eager"
    theirs = trl_loss(policy, reference, tokenizer, fixed_pairs, 0.5, loss_type, tmp_path)
    print(f"\n{loss_type}/{attention}: ours {ours:.8f} TRL {theirs:.8f} diff {ours - theirs:.2e}")
    assert abs(ours - theirs) < 1e-5
    at_zero = {"sigmoid": 0.6931, "hinge": 1.0, "ipo": 1.0}[loss_type]  # (1 / (2 * 0.5))^2
    assert abs(ours - at_zero) > 1e-3  # not the h = 0 value


def test_lora_reference_is_the_base_with_adapters_disabled(tiny_random, fixed_pairs, tmp_path):
    settings = dpo_settings(tiny_random, method="lora", lora=LoraSettings(rank=4, alpha=8.0))
    trainer = trainer_for(settings, fixed_pairs, tmp_path)
    assert trainer.models.reference.copy is None  # no second copy
    x = trainer._collate(data_pb2.Batch(pairs=fixed_pairs))
    base = copy.deepcopy(trainer.model.get_base_model())  # LoRA B = 0: the base's outputs
    perturb(trainer.model)
    with torch.no_grad():
        expected = x.response_logps(base(**x.inputs.model_kwargs()).logits)[0]
        policy = x.response_logps(trainer.model(**x.inputs.model_kwargs()).logits)[0]
    reference = trainer.loss.objective.reference_logps(trainer.models, x)
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)
    assert (policy - expected).abs().max() > 1e-3  # the adapters do change the policy


def test_orpo_and_simpo_match_a_hand_derivation(tiny_random, fixed_pairs, tmp_path):
    """ORPO per pair: ``-a_c + beta * -log sigmoid(log odds(c) - log odds(r))`` with
    ``log odds(y) = a_y - log(1 - exp(a_y))``; SimPO: ``-log sigmoid(beta (a_c - a_r) - gamma)``,
    ``a`` = response log-prob / response tokens. The per-sequence log-probs are recomputed here
    from each row alone (its own forward, no concatenation)."""
    trainer = trainer_for(dpo_settings(tiny_random, "orpo", beta=0.25), fixed_pairs, tmp_path)
    assert trainer.models.reference is None
    model = trainer.model.eval()
    averages = []
    with torch.no_grad():
        for row in [p.chosen for p in fixed_pairs] + [p.rejected for p in fixed_pairs]:
            ids = torch.tensor([list(row.input_ids)])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            labels = list(row.labels)[1:]
            picked = [logps[t, y] for t, y in enumerate(labels) if y != -100]
            averages.append(sum(picked) / len(picked))
    b = len(fixed_pairs)
    a = torch.stack(averages)
    ac, ar = a[:b], a[b:]
    odds = (ac - torch.log(1 - torch.exp(ac))) - (ar - torch.log(1 - torch.exp(ar)))
    orpo_expected = (-ac + 0.25 * -torch.log(torch.sigmoid(odds))).mean()
    simpo_expected = (-torch.log(torch.sigmoid(2.0 * (ac - ar) - 0.5))).mean()

    x = trainer._collate(data_pb2.Batch(pairs=fixed_pairs))
    with torch.no_grad():
        orpo = trainer.loss.objective.pair_losses(trainer.models, x)[0].mean()
        simpo_pairs = dpo.DpoPairs(dpo_settings(tiny_random, "simpo", beta=2.0).preference)
        simpo = simpo_pairs.pair_losses(trainer.models, x)[0].mean()
    assert abs(float(orpo) - float(orpo_expected)) < 1e-5
    assert abs(float(simpo) - float(simpo_expected)) < 1e-5


def test_collate_pairs_reads_the_last_end_token_never_padding(tokenizer, fixed_pairs):
    """Rows end ``<|im_end|> \n`` (the tiny chat template): with the end tokens given, each is
    read at its ``<|im_end|>``; with none, at its last token. Never at padding."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = [p.chosen for p in fixed_pairs] + [p.rejected for p in fixed_pairs]
    assert {tokenizer.decode(r.input_ids[-2:]) for r in rows} == {"<|im_end|>\n"}
    for attention in ("sdpa", "eager"):
        x = collate_pairs(fixed_pairs, pad_id=tokenizer.pad_token_id, attention=attention)
        flat = x.inputs.input_ids.flatten()
        assert flat[x.scored_index].tolist() == [r.input_ids[-1] for r in rows]
        ends = {im_end, tokenizer.eos_token_id}
        x = collate_pairs(fixed_pairs, pad_id=tokenizer.pad_token_id, attention=attention,
                          end_ids=ends)  # fmt: skip
        flat = x.inputs.input_ids.flatten()
        assert flat[x.scored_index].tolist() == [im_end] * len(rows)
        lengths = torch.tensor([len(r.input_ids) for r in rows])
        if attention == "sdpa":  # back to back: each is read at its own second-to-last position
            assert x.scored_index.tolist() == (lengths.cumsum(0) - 2).tolist()
        counts = x.sequence_sums((x.inputs.shift_labels != -100).long())
        assert counts.tolist() == [sum(1 for y in r.labels[1:] if y != -100) for r in rows]


# --- learning ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task(tokenizer):
    held_out = digit_task(21, 40)
    train = digit_task(22, 400, exclude={p.split()[-1] for p, _ in held_out})
    return preference_pairs(tokenizer, train), preference_pairs(tokenizer, held_out)


def chosen_sft_loss(trainer, pairs) -> float:
    """Token-mean NLL of the chosen responses under the trained policy."""
    trainer.model.eval()
    with torch.no_grad():
        x = trainer._collate(data_pb2.Batch(pairs=pairs))
        logps, counts = trainer.loss.objective.policy_logps(trainer.models, x)
    b = len(pairs)
    return float(-logps[:b].sum() / counts[:b].sum())


def train_dpo(base, pairs, job, steps, **overrides):
    settings = dpo_settings(
        base,
        beta=overrides.pop("beta", 0.5),
        method="lora",
        lora=LoraSettings(rank=16, alpha=32.0),
        learning_rate=overrides.pop("learning_rate", 1e-3),
        lr_scheduler="linear",
        warmup_steps=10,
        max_steps=steps,
        batch_rows=8,
        eval_steps=steps,
        **overrides,
    )
    trainer = dpo.build_trainer(settings, InMemoryPairSource(*pairs), job)
    trainer.setup()
    trainer.evaluate()
    before = dict(trainer.last_eval_metrics)
    result = trainer.train()
    assert result.state == "SUCCEEDED"
    return trainer, before, trainer.last_eval_metrics


@pytest.fixture(scope="module")
def plain_dpo(pretrained_base, task, tmp_path_factory):
    """One DPO run shared by the learning and the ftx tests."""
    return train_dpo(pretrained_base, task, tmp_path_factory.mktemp("dpo"), steps=STEPS)


@pytest.mark.slow
@pytest.mark.timeout(600)  # its fixture trains for minutes on a loaded box
def test_dpo_learns_the_preference_on_held_out_pairs(plain_dpo):
    trainer, before, after = plain_dpo
    print(
        f"\nDPO (LoRA): held-out implicit reward accuracy {before['eval_rewards/accuracy']:.2f} -> "
        f"{after['eval_rewards/accuracy']:.2f}, margin {before['eval_rewards/margin']:.3f} -> "
        f"{after['eval_rewards/margin']:.3f}"
    )
    assert before["eval_rewards/margin"] == 0  # policy = reference at the start
    assert after["eval_rewards/accuracy"] >= 0.9
    assert after["eval_rewards/margin"] > before["eval_rewards/margin"] + 0.5
    assert (trainer.job_dir / "adapters" / "v1" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_pref_ftx_keeps_the_sft_loss_on_chosen_responses_lower(
    pretrained_base, task, plain_dpo, tmp_path
):
    ftx, _, _ = train_dpo(pretrained_base, task, tmp_path, steps=STEPS, pref_ftx=1.0)
    held_out = task[1]
    without, with_ftx = chosen_sft_loss(plain_dpo[0], held_out), chosen_sft_loss(ftx, held_out)
    print(f"\nSFT loss on held-out chosen responses: DPO {without:.3f}, DPO-ftx {with_ftx:.3f}")
    assert with_ftx < without

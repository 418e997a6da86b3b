"""The ``kto`` recipe: the loss against TRL's ``KTOTrainer`` on a fixed batch, and learning.

Rated responses are the digit task rendered with the tiny chat template: "Increment the digits of
3819" answered "4920" (desirable) or "3819" (the digits copied back: undesirable), as the data
service's FEEDBACK examples carry them (the row, the prompt's length, the rating).
"""

from __future__ import annotations

import copy

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task, make_settings, render
from test_dpo import perturb

from services.common.errors import InvalidArgument, Unimplemented
from services.training.loop.batches import InMemoryFeedbackSource
from services.training.loop.feedback import mismatched_rows
from services.training.recipes import kto
from services.training.spec.settings import LoraSettings, PreferenceSettings


def feedback_examples(tokenizer, pairs, desirable=lambda i: i % 2 == 0):
    """Digit-task examples: the right answer when ``desirable(i)``, else the digits copied."""
    out = []
    for i, (prompt, answer) in enumerate(pairs):
        good = desirable(i)
        response = answer if good else prompt.split()[-1]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        row = render(tokenizer, messages, i)
        start = next(t for t, y in enumerate(row.labels) if y != -100)
        out.append(data_pb2.FeedbackExample(row=row, prompt_length=start, desirable=good))
    return out


def kto_settings(base, **overrides):
    preference = PreferenceSettings(
        beta=overrides.pop("beta", 0.1),
        kto_chosen_weight=overrides.pop("chosen", 1.0),
        kto_rejected_weight=overrides.pop("rejected", 1.0),
    )
    return make_settings(base, recipe="kto", preference=preference, **overrides)


@pytest.fixture(scope="module")
def fixed(tokenizer):
    return feedback_examples(tokenizer, digit_task(7, 6), desirable=lambda i: i in (0, 2, 3))


def trl_kto_loss(
    policy, reference, tokenizer, examples, beta, w_d, w_u, tmp_path, after_init=None
) -> float:
    """TRL 1.16 ``KTOTrainer._compute_loss`` on the same rows, right-padded, with the KL pairs
    built here as TRL's dataset map builds them (completions rotated by one within the batch)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    data = datasets.Dataset.from_dict(
        {"prompt": ["a", "b"], "completion": [" c", " d"], "label": [True, False]}
    )  # required by the constructor; the batch below is built by hand
    args = trl.KTOConfig(
        output_dir=str(tmp_path / "trl"), beta=beta, desirable_weight=w_d,
        undesirable_weight=w_u, report_to="none", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=len(examples), train_sampling_strategy="sequential",
    )  # fmt: skip
    trainer = trl.KTOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data,
                             processing_class=tokenizer)  # fmt: skip
    if after_init is not None:
        after_init(trainer.model)
    prompts = [list(e.row.input_ids[: e.prompt_length]) for e in examples]
    completions = [list(e.row.input_ids[e.prompt_length :]) for e in examples]
    trained = [[int(y != -100) for y in e.row.labels[e.prompt_length :]] for e in examples]
    kl_completions = [completions[-1]] + completions[:-1]  # TRL's add_kl_completion_ids
    kl_trained = [trained[-1]] + trained[:-1]

    def padded(parts, masks):
        width = max(len(p) + len(c) for p, c in parts)
        ids = torch.full((len(parts), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(parts), width), dtype=torch.long)
        completion = torch.zeros((len(parts), width), dtype=torch.long)
        for i, ((p, c), m) in enumerate(zip(parts, masks, strict=True)):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attention[i, : len(p) + len(c)] = 1
            completion[i, len(p) : len(p) + len(c)] = torch.tensor(m)
        return ids, attention, completion

    ids, attention, completion = padded(list(zip(prompts, completions, strict=True)), trained)
    kl_ids, kl_attention, kl_completion = padded(
        list(zip(prompts, kl_completions, strict=True)), kl_trained
    )
    inputs = {
        "input_ids": ids, "attention_mask": attention, "completion_mask": completion,
        "label": torch.tensor([e.desirable for e in examples]),
        "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention,
        "KL_completion_mask": kl_completion,
    }  # fmt: skip
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer._compute_loss(trainer.model, inputs, False))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kto_loss_equals_trl_kto_trainer(tiny_random, tokenizer, fixed, tmp_path, method):
    """Weights 1.5 / 0.7 and beta 0.5 on a batch of 3 desirable and 3 undesirable responses; the
    policy moved away from the reference so that both the log-ratios and the KL estimate are not
    zero. LoRA: TRL reads the reference with the adapters disabled, as the loop does."""
    settings = kto_settings(tiny_random, beta=0.5, chosen=1.5, rejected=0.7, batch_rows=6,
                            attention="eager", method=method,
                            lora=LoraSettings(rank=4, alpha=8.0))  # fmt: skip
    trainer = kto.build_trainer(settings, InMemoryFeedbackSource(fixed), tmp_path)
    trainer.setup()
    trainer.model.eval()
    x = trainer._collate(data_pb2.Batch(feedback=fixed))
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for seed in range(40):  # a perturbation under which the KL estimate is positive (not clamped)
        with torch.no_grad():
            for n, p in trainer.model.named_parameters():
                p.copy_(start[n])
        for step in range(5):
            perturb(trainer.model, 100 * seed + step)
        with torch.no_grad():
            losses, _, kl = trainer.loss.per_example(trainer.models, x)
        if kl > 1e-2:
            break
    ours = float(losses.mean())
    policy = copy.deepcopy(trainer.model)
    reference = None if method == "lora" else copy.deepcopy(trainer.models.reference.copy)
    moved = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    def perturbed(model):  # TRL copies a PeftModel's adapter as its "ref" in its constructor
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in moved:
                    p.copy_(moved[n])

    if method == "lora":  # hand TRL the adapter as it started: its "ref" copy is then the base
        with torch.no_grad():
            for n, p in policy.named_parameters():
                p.copy_(start[n])
    theirs = trl_kto_loss(policy, reference, tokenizer, fixed, 0.5, 1.5, 0.7, tmp_path,
                          after_init=perturbed)  # fmt: skip
    print(f"\nKTO/{method}: ours {ours:.8f} TRL {theirs:.8f} diff {ours - theirs:.2e}, kl {kl:.4f}")
    assert abs(ours - theirs) < 1e-5
    assert float(kl) > 1e-3  # the KL term takes part
    at_zero = (3 * 1.5 * 0.5 + 3 * 0.7 * 0.5) / 6  # 1 - sigmoid(0) = 0.5 each
    assert abs(ours - at_zero) > 1e-3


def test_mismatched_rows_pair_each_prompt_with_the_previous_response(fixed):
    rows = mismatched_rows(fixed)
    for i, row in enumerate(rows):
        other = fixed[i - 1]
        p, q = fixed[i].prompt_length, other.prompt_length
        assert list(row.input_ids) == list(fixed[i].row.input_ids[:p]) + list(
            other.row.input_ids[q:]
        )
        assert list(row.labels[:p]) == [-100] * p


def test_the_kto_spec_is_validated(tiny_random):
    from test_recipes import job_spec

    from services.training.spec.settings import settings
    from services.training.spec.validation import validate

    spec = job_spec(tiny_random)
    spec.stage = tpb.STAGE_KTO
    spec.preference.kto_chosen_weight = 2.0
    validate(spec)
    resolved = settings(spec)
    assert resolved.recipe == "kto"
    assert (resolved.preference.kto_chosen_weight, resolved.preference.kto_rejected_weight) == (
        2.0,
        1.0,
    )
    spec.preference.kto_rejected_weight = 0
    spec.preference.loss_type = tpb.PREFERENCE_LOSS_IPO
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    fields = sorted(v.field for v in info.value.violations)
    assert fields == ["spec.preference.kto_rejected_weight", "spec.preference.loss_type"]
    spec = job_spec(tiny_random)
    spec.stage = tpb.STAGE_KTO
    spec.distributed.world_size = 2
    with pytest.raises(Unimplemented, match="several ranks"):
        validate(spec)


def response_logps(trainer, examples) -> torch.Tensor:
    trainer.model.eval()
    with torch.no_grad():
        x = trainer._collate(data_pb2.Batch(feedback=examples))
        return x.matched.response_logps(trainer.model(**x.matched.inputs.model_kwargs()).logits)


@pytest.mark.slow
def test_kto_makes_desirable_responses_likelier(tiny_random, tokenizer, tmp_path):
    """Held-out prompts, each with its desirable and its undesirable response: after KTO the
    desirable ones are likelier than before, the undesirable ones less likely."""
    held_out = digit_task(31, 16)
    train = digit_task(32, 256, exclude={p.split()[-1] for p, _ in held_out})
    examples = feedback_examples(tokenizer, train, desirable=lambda i: i % 2 == 0)
    good = feedback_examples(tokenizer, held_out, desirable=lambda i: True)
    bad = feedback_examples(tokenizer, held_out, desirable=lambda i: False)
    settings = kto_settings(tiny_random, beta=0.5, method="lora", lora=LoraSettings(rank=16,
                            alpha=32.0), learning_rate=2e-3, max_steps=60, batch_rows=8,
                            logging_steps=10)  # fmt: skip
    trainer = kto.build_trainer(settings, InMemoryFeedbackSource(examples), tmp_path)
    trainer.setup()
    good_before, bad_before = response_logps(trainer, good), response_logps(trainer, bad)
    assert trainer.train().state == "SUCCEEDED"
    good_after, bad_after = response_logps(trainer, good), response_logps(trainer, bad)
    print(
        f"\nKTO: held-out log p desirable {good_before.mean():.2f} -> {good_after.mean():.2f}, "
        f"undesirable {bad_before.mean():.2f} -> {bad_after.mean():.2f}; "
        f"loss {trainer.history[0][1]:.4f} -> {trainer.history[-1][1]:.4f}"
    )
    assert good_after.mean() > good_before.mean() + 1.0
    assert bad_after.mean() < bad_before.mean()
    assert (good_after > good_before).float().mean() >= 0.9
    assert trainer.history[-1][1] < trainer.history[0][1]

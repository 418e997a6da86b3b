"""One cell of the architecture x recipe x method matrix, run as a job runs it, and its checks.

The data is made by the data service's own encoder with the family's template (``Encoder`` +
``packing.pack``: the rows a job of that family would stream), on the synthetic digit task
("Increment the digits of 3819" -> "4920"); preference pairs prefer the answer to the digits
copied back; PPO prompts are the same questions, rendered up to the assistant's turn.

``run_cell`` trains ``STEPS`` optimizer steps with the recipe's own loop and loss (``pt``, ``sft``:
``TokenLoss``; ``rm``: ``RewardPairs`` over the sequence classifier; ``dpo``: ``DpoPairs`` with
its reference; ``ppo`` and ``grpo``: the recipe with the rollout service's HF engine in process
(``inline_fleet``) and a rule reward), saves the outputs as the job does, and checks:

- the loss of every step is finite, and what must train moved (LoRA: the adapters, never the
  base; full: the weights);
- ``ppo``/``grpo``: the trainer's log-probs of the sampled tokens are the engine's (ratio 1 within
  1e-3: same weights, float32); ``grpo`` trains the LoRA matrices alone, or for ``full`` every
  weight, its versions then loaded by the engine as full weights (no value head, none saved), on
  groups of ``GROUP`` samples per prompt;
- the export reloads to the same outputs: a LoRA adapter merged by ``model.merge`` (what
  ``ExportModel`` MERGED runs) gives the logits (scores for ``rm``) of the base + adapter in
  peft; a full model's folder gives the trained model's; tolerance 1e-4 (float32, a merged
  weight is summed in another order);
- ``rm``: the reward service's scorer (``RewardModels.score_responses``, each item read at its
  scored token) scores with the trained model, full folder or adapter over the base, as the
  trainer does (1e-4);
- ``sft`` LoRA: the rollout service's HF engine serves the adapter and reports log-probs equal
  to a teacher-forced peft forward (1e-4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from inline_fleet import InlineFleet, PromptSource
from llamafleet.data.v1 import data_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from peft import PeftModel
from synthetic import digit_task, make_settings
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from services.data.encode import EncodeOptions, Encoder
from services.data.formats import FormatSpec, to_example
from services.data.packing import pack
from services.reward.scorers.model import LocalAdapterDir, RewardModels
from services.rollout.engines import GenerationRequest, Sampling, collect
from services.rollout.engines.hf import HFEngine
from services.training.loop.batches import InMemoryPairSource, InMemorySource
from services.training.loop.pairs import PairLoss
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.merge import merge_lora
from services.training.recipes import dpo, grpo, ppo, rm
from services.training.spec.settings import GrpoSettings, LoraSettings, PpoSettings
from services.training.tiny.corpus import synthetic_corpus
from services.training.tiny.families import FAMILIES

STEPS = 2
TOL = 1e-4
GROUP = 2  # grpo: samples per prompt (num_generations)
RECIPES = ("pt", "sft", "rm", "dpo", "ppo", "grpo")
METHODS = ("lora", "full")
# Cells refused by design, with the reason the job gets (spec.validation: UNIMPLEMENTED)
REFUSED = {
    ("ppo", "full"): "STAGE_PPO with FINETUNING_TYPE_FULL",
}
STAGES = {"pt": tpb.STAGE_PT, "sft": tpb.STAGE_SFT, "rm": tpb.STAGE_RM, "dpo": tpb.STAGE_DPO,
          "ppo": tpb.STAGE_PPO, "grpo": tpb.STAGE_GRPO}  # fmt: skip


def encoder(folder: Path, arch: str) -> Encoder:
    tok = AutoTokenizer.from_pretrained(folder)
    return Encoder(tok, EncodeOptions(template=FAMILIES[arch].template, cutoff_len=256))


def _encode(folder: Path, arch: str, records: list[dict], fmt: str, kind: str):
    examples = [to_example(r, FormatSpec(fmt), kind) for r in records]
    out = encoder(folder, arch).encode(examples)
    bad = [e for e in out if isinstance(e, Exception)]
    assert not bad, bad[:1]
    return out


def sft_rows(folder: Path, arch: str, count: int = 16) -> list[data_pb2.TokenRow]:
    records = [
        {"instruction": p, "output": a, **({"system": "Answer with digits."} if i % 3 else {})}
        for i, (p, a) in enumerate(digit_task(21, count))
    ]
    encoded = _encode(folder, arch, records, "alpaca", "sft")
    items = [(f"e{i}", e.sequences[0].ids, e.sequences[0].labels) for i, e in enumerate(encoded)]
    rows = [data_pb2.TokenRow(**row) for row in pack(items, 160)]
    assert any(len(r.cu_seqlens) > 2 for r in rows)  # packed
    return rows


def pt_rows(folder: Path, arch: str, count: int = 24) -> list[data_pb2.TokenRow]:
    records = [{"text": t} for t in synthetic_corpus(count)]
    encoded = _encode(folder, arch, records, "text", "pretrain")
    items = [(f"t{i}", s.ids, s.ids) for i, e in enumerate(encoded) for s in e.sequences]
    return [data_pb2.TokenRow(**row) for row in pack(items, 160)]


def pairs(folder: Path, arch: str, count: int = 8) -> list[data_pb2.PreferencePair]:
    records = [
        {"instruction": p, "chosen": a, "rejected": p.split()[-1]} for p, a in digit_task(22, count)
    ]
    out = []
    for i, e in enumerate(_encode(folder, arch, records, "preference_alpaca", "preference")):
        chosen, rejected = (
            data_pb2.TokenRow(
                input_ids=s.ids, labels=s.labels, position_ids=range(len(s.ids)),
                cu_seqlens=[0, len(s.ids)], example_ids=[f"p{i}"],
            )
            for s in e.sequences
        )  # fmt: skip
        out.append(data_pb2.PreferencePair(chosen=chosen, rejected=rejected))
    return out


def prompts(folder: Path, arch: str, count: int = 4) -> list[data_pb2.PromptExample]:
    records = [{"instruction": p, "output": a} for p, a in digit_task(23, count)]
    encoded = _encode(folder, arch, records, "alpaca", "prompt")
    return [
        data_pb2.PromptExample(example_id=f"q{i}", prompt_ids=e.sequences[0].ids)
        for i, e in enumerate(encoded)
    ]


@dataclass
class Cell:
    arch: str
    recipe: str
    method: str
    folder: Path  # the base model
    job: Path
    losses: list[float]
    trainer: Trainer | None = None


def settings_for(folder: Path, recipe: str, method: str, **extra):
    fields = dict(
        recipe=recipe, method=method, lora=LoraSettings(rank=4, alpha=8), max_steps=STEPS,
        batch_rows=2, logging_steps=1, learning_rate=1e-3, save_steps=STEPS,
    )  # fmt: skip
    fields.update(extra)
    return make_settings(folder, **fields)


def run_cell(arch: str, recipe: str, method: str, folder: Path, job: Path, **extra) -> Cell:
    """Train one cell; checks that the losses are finite and the right weights moved."""
    if recipe == "ppo":
        return _run_ppo(arch, method, folder, job)
    if recipe == "grpo":
        return _run_grpo(arch, method, folder, job)
    s = settings_for(folder, recipe, method, **extra)
    if recipe in ("pt", "sft"):
        rows = pt_rows(folder, arch) if recipe == "pt" else sft_rows(folder, arch)
        trainer = Trainer(s, InMemorySource(rows), job, loss=TokenLoss(recipe == "pt"))
    elif recipe == "rm":
        trainer = rm.build_trainer(s, InMemoryPairSource(pairs(folder, arch)), job)
    else:
        trainer = Trainer(
            s, InMemoryPairSource(pairs(folder, arch)), job,
            loss=PairLoss(dpo.DpoPairs(s.preference), "dpo"),
        )  # fmt: skip
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    trainer.save_outputs()
    assert result.state == "SUCCEEDED" and result.step == STEPS
    losses = [loss for _, loss in trainer.history]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved, "nothing trained"
    if method == "lora":
        assert all("lora_" in n or ".score." in n or "modules_to_save" in n for n in moved), moved
    else:
        assert any(".layers.0." in n for n in moved)
    return Cell(arch, recipe, method, folder, job, losses, trainer)


def _run_ppo(arch: str, method: str, folder: Path, job: Path) -> Cell:
    # a rule a random model meets about half the time: the reward varies, so the policy moves
    fleet = InlineFleet(folder, job, lambda ids: float(bool(ids) and ids[0] % 2 == 0))
    sampling = rollout_pb2.SamplingParams(max_tokens=4, temperature=1.0, seed=1)
    s = settings_for(
        folder, "ppo", method, batch_rows=2,
        ppo=PpoSettings(
            sampling=sampling.SerializeToString(), samples_per_prompt=2, reward_scorer="even",
            rollout_batch_size=2, ppo_epochs=1,
        ),
    )  # fmt: skip
    result = ppo.run(s, PromptSource(prompts(folder, arch)), job, exchange=fleet, job_id=f"p{arch}")
    assert result.state == "SUCCEEDED" and result.step == STEPS
    records = [json.loads(x) for x in (job / "output" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), records
    # the trainer recomputes what the engine reported: same weights, float32
    assert all(abs(r["ppo/engine_ratio"] - 1.0) < 1e-3 for r in records if "ppo/engine_ratio" in r)
    assert (job / "output" / "adapter" / "adapter_model.safetensors").is_file()
    return Cell(arch, "ppo", method, folder, job, losses)


def _run_grpo(arch: str, method: str, folder: Path, job: Path) -> Cell:
    # a rule whose value differs for nearly any two completions: a group's rewards differ, so
    # its advantages are not all zero and the policy moves
    fleet = InlineFleet(folder, job, lambda ids: (sum(ids) % 97) / 97.0)
    sampling = rollout_pb2.SamplingParams(max_tokens=4, temperature=1.0, seed=1)
    s = settings_for(
        folder, "grpo", method, batch_rows=2,
        ppo=PpoSettings(
            sampling=sampling.SerializeToString(), samples_per_prompt=GROUP,
            reward_scorer="sum97", rollout_batch_size=2, ppo_epochs=1,
        ),
        grpo=GrpoSettings(),
    )  # fmt: skip
    trainer = grpo.GrpoTrainer(
        s, PromptSource(prompts(folder, arch)), job, exchange=fleet, job_id=f"g{arch}"
    )
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    trainer.save_outputs()
    assert result.state == "SUCCEEDED" and result.step == STEPS, result
    records = [json.loads(x) for x in (job / "output" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), records
    assert all(abs(r["grpo/engine_ratio"] - 1.0) < 1e-3 for r in records), records
    assert all(r["grpo/groups"] == 2 for r in records), records
    named = dict(trainer.model.named_parameters())
    assert not any("value_head" in n for n in named)
    trainable = {n for n, p in named.items() if p.requires_grad}
    if method == "lora":
        assert trainable and all("lora_" in n for n in trainable), trainable
    else:  # full: every weight, published to the engine as full-weights versions
        assert trainable == set(named), set(named) - trainable
    moved = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable, moved - trainable
    final = "adapter/adapter_model.safetensors" if method == "lora" else "model/config.json"
    assert (job / "output" / final).is_file()
    assert not (job / "output" / ppo.VALUE_HEAD_FILE).exists()
    return Cell(arch, "grpo", method, folder, job, losses, trainer)


def spec_of(cell: Cell) -> bytes:
    spec = tpb.TrainingJobSpec(base_model=str(cell.folder), stage=STAGES[cell.recipe])
    spec.finetuning.type = tpb.FINETUNING_TYPE_LORA
    return spec.SerializeToString()


def sample_ids(folder: Path, arch: str) -> torch.Tensor:
    return torch.tensor([sft_rows(folder, arch, 3)[0].input_ids[:60]])


def check_export(cell: Cell, out: Path) -> None:
    """The exported model reloads to the outputs of the trained one (see the module doc)."""
    reward = cell.recipe == "rm"
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    ids = sample_ids(cell.folder, cell.arch)

    def outputs(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    if cell.method == "lora":
        adapter = cell.job / "output" / "adapter"
        merge_lora(spec_of(cell), str(adapter), str(out))
        base = cls.from_pretrained(cell.folder, **({"num_labels": 1} if reward else {}))
        if reward and base.config.pad_token_id is None:
            base.config.pad_token_id = base.config.eos_token_id
        expected = outputs(PeftModel.from_pretrained(base, str(adapter)))
    else:
        out = cell.job / "model"
        expected = outputs(cell.trainer.model)
    untrained = cls.from_pretrained(cell.folder, **({"num_labels": 1} if reward else {}))
    if not reward:  # training changed the outputs: the comparison can fail
        assert (outputs(untrained) - expected).abs().max() > 10 * TOL
    reloaded = cls.from_pretrained(out)
    assert type(reloaded).__name__.endswith(
        "ForSequenceClassification" if reward else "ForCausalLM"
    )
    assert AutoTokenizer.from_pretrained(out).chat_template == FAMILIES[cell.arch].jinja
    torch.testing.assert_close(outputs(reloaded), expected, rtol=0, atol=TOL)


def response(row: data_pb2.TokenRow) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a row: the completion starts at the first trained label."""
    start = next(i for i, y in enumerate(row.labels) if y != -100)
    return list(row.input_ids[:start]), list(row.input_ids[start:])


def check_reward_service(cell: Cell) -> None:
    """The reward service's scorer serves the trained reward model as the trainer scores."""
    trainer = cell.trainer
    some = pairs(cell.folder, cell.arch, 3)
    trainer.model.eval()
    with torch.no_grad():
        x = trainer._collate(data_pb2.Batch(pairs=some))
        expected = trainer.loss.objective.scores(trainer.models, x)
    if cell.method == "lora":
        root = cell.job / "served"
        (root / "rm").mkdir(parents=True)
        (root / "rm" / "1").symlink_to(cell.job / "output" / "adapter", target_is_directory=True)
        served = RewardModels(base_model=str(cell.folder), adapters=LocalAdapterDir(root))
        adapter = ("rm", 1)
    else:
        served, adapter = RewardModels(reward_model=str(cell.job / "model")), None
    rows = [p.chosen for p in some] + [p.rejected for p in some]
    got = torch.tensor(served.score_responses([response(r) for r in rows], adapter))
    torch.testing.assert_close(got, expected.float().cpu(), rtol=0, atol=TOL)


def check_hf_rollout(cell: Cell) -> None:
    """The rollout service's HF engine serves the trained adapter: its log-probs are a
    teacher-forced peft forward's, and the adapter changes what is generated or its log-probs."""
    adapter = cell.job / "output" / "adapter"
    engine = HFEngine(cell.folder, device="cpu", dtype="float32")
    engine.load_adapter("policy", adapter)
    prompt = tuple(prompts(cell.folder, cell.arch, 1)[0].prompt_ids)
    greedy = Sampling(temperature=0.0, max_tokens=6)
    tuned = collect(engine.generate(GenerationRequest(prompt, greedy, "policy")), 1)[0]
    base = collect(engine.generate(GenerationRequest(prompt, greedy, None)), 1)[0]
    assert len(tuned.token_ids) >= 1
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cell.folder), adapter)
    ids = torch.tensor([list(prompt) + list(tuned.token_ids)])
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    reference = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt) :, None])[:, 0]
    torch.testing.assert_close(torch.tensor(tuned.logprobs), reference, rtol=0, atol=TOL)
    assert tuned.token_ids != base.token_ids or tuned.logprobs != base.logprobs

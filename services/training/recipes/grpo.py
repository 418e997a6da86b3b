"""Critic-free online RL (``STAGE_GRPO``): GRPO, Dr. GRPO, DAPO, RLOO and REINFORCE++ across the
rollout and reward fleets.

The fleets' side is the ``ppo`` recipe's, reused as is: ``ppo.rollouts.RolloutPlanner`` plans and
admits steps (``max_staleness``), publishes one group task per prompt (``num_samples`` n: one
engine request, n rollouts) and collects the scored rollouts through
``ppo.exchange.RolloutExchange`` (exactly once: consumed ids are checkpointed before the ack; a
dead-lettered task fails the job with its reason). What differs is the trainer:

- **No critic.** The policy is the LoRA model, or the whole model for full and freeze
  fine-tuning, alone (no value head, no value loss, no critic optimizer state); the advantage is
  one number per sequence from its group, by a composed ``ppo.advantages`` estimator
  (``GroupRelative`` for ``grpo``/``dr_grpo``, ``Rloo``, ``ReinforcePP``).
- **Groups.** A group is the ``n`` samples of one prompt of one step; its id is the sample ids'
  common prefix ``job:version:step:prompt`` (``group_of``), so the grouping lives on the trainer's
  side whatever way the tasks are published (one group task per prompt today). Groups are atomic: a
  step is trained only once every sample of every one of its groups is scored (a sample whose
  worker died is redelivered by the queues; the trainer waits for it), ``assemble_groups`` checks
  each group is whole and used once, and a dead-lettered sample fails the job.
- **Dynamic sampling** (DAPO): groups whose rewards are all equal carry no gradient; with
  ``dynamic_sampling`` they are dropped and more prompts are drawn from the prompt stream and
  published for the same step until ``rollout_batch_size`` groups remain (at most
  ``max_refill_rounds`` rounds); extra groups past the batch are left out. Everything is counted
  (``grpo_counts.json`` and the metrics), and every collected rollout is acked by the checkpoint.
- **Loss.** ``losses.grpo.per_token_loss``: the clipped ratio with ``epsilon`` and DAPO's
  ``epsilon_high``, times the truncated engine importance weight (off-policy within
  ``max_staleness``, as in ``ppo``), plus ``beta`` x the k1/k2/k3 KL to the reference; aggregated
  by ``loss_type`` over each optimizer step's sequences. With ``beta = 0`` there is no reference
  and no reference forward at all; with one pass and one optimizer step per step as well (and no
  dropout) there is no separate scoring forward either (``single_pass``): the old log-probs are
  the update's own, detached.
- **Overlong.** ``mask_truncated_completions`` drops completions cut by ``max_tokens`` from the
  loss; ``overlong_buffer_length`` adds DAPO's soft overlong punishment to their scores.
- **Policies.** LoRA (as ``ppo``: each version is an adapter folder), or full / freeze fine-tuning:
  each version is then ``model.full_weights``' folder (the trained tensors as safetensors + a
  sha256 manifest: every parameter for full, the trainable ones for freeze), served by the same
  ``FetchAdapter`` stream (``ADAPTER_FORMAT_FULL_SAFETENSORS``); rollout workers fetch a version
  once and load it over their copy of the base. The reference is then a frozen copy of the
  initial model, loaded only when ``beta > 0``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from llamafleet.rollout.v1 import rollout_pb2
from transformers import set_seed

from services.training.loop import checkpoints
from services.training.loop.batches import BatchSource
from services.training.loop.distributed import World, build_engine
from services.training.loop.metrics import MetricsWriter, plot_loss_curve
from services.training.loop.trainer import Reporter, TrainResult
from services.training.losses import grpo as loss_math
from services.training.losses.ppo import KlController
from services.training.model import load as models
from services.training.model import lora, optim
from services.training.model.full_weights import publish_full_weights
from services.training.model.reference import build_reference, lora_reference
from services.training.ppo.advantages import StepTokens, critic_free
from services.training.ppo.batch import (
    Rollouts,
    collate_rollouts,
    completion_gather,
    selected_logprobs,
)
from services.training.ppo.exchange import Received, RolloutExchange, parse_task_id
from services.training.ppo.rollouts import RolloutPlanner, prompt_request
from services.training.recipes.ppo import IS_CAP, PpoTrainer, reward_components
from services.training.spec.settings import Settings


def group_of(item_id: str) -> str:
    """The group id of a task id ``job:version:step:prompt:sample``: ``job:version:step:prompt``."""
    parsed = parse_task_id(item_id)
    if parsed is None:
        raise ValueError(f"{item_id!r} is not a rollout task id (job:version:step:prompt:sample)")
    return item_id.rsplit(":", 1)[0]


def assemble_groups(received: list[Received], n: int, used: set[str]) -> list[list[Received]]:
    """``received`` (whole groups, in task order) -> groups of ``n`` samples each. Raises on a
    partial group, a sample twice, or a group already in ``used`` (which it extends)."""
    groups: dict[str, list[Received]] = {}
    for r in received:
        groups.setdefault(group_of(r.item_id), []).append(r)
    out = []
    for gid, members in groups.items():
        samples = sorted(parse_task_id(r.item_id)[4] for r in members)
        if samples != list(range(n)):
            raise RuntimeError(f"group {gid} is not whole: samples {samples} of {n}")
        if gid in used:
            raise RuntimeError(f"group {gid} would be used twice")
        used.add(gid)
        out.append(members)
    return out


@dataclass
class GroupCounts:
    trained_groups: int = 0  # groups the policy was updated on
    zero_variance_groups: int = 0  # collected groups whose rewards were all equal
    dropped_groups: int = 0  # of those, left out by dynamic sampling
    surplus_groups: int = 0  # kept groups past rollout_batch_size, left out
    refill_rounds: int = 0  # dynamic sampling: times more prompts were drawn
    refill_prompts: int = 0  # and how many


class GrpoTrainer(PpoTrainer):
    """The ``ppo`` recipe's loop with a critic-free policy, group advantages and the GRPO loss;
    setup, forward, scoring, update and logging are its own, planning/saving are ``ppo``'s."""

    def __init__(self, settings: Settings, source: BatchSource, job_dir, **kwargs) -> None:
        g = settings.grpo
        estimator = critic_free(
            g.advantage_estimator, scale=g.scale_rewards, baseline=g.reinforce_pp_baseline
        )
        super().__init__(settings, source, job_dir, estimator=estimator, **kwargs)
        self.groups = GroupCounts()
        self.used_groups: set[str] = set()  # this run's (a resumed run skips consumed ids)
        sampling = rollout_pb2.SamplingParams.FromString(settings.ppo.sampling)
        self.max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else None

    # --- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        s, p, g = self.settings, self.settings.ppo, self.settings.grpo
        if s.method not in ("lora", "full", "freeze"):
            raise NotImplementedError(
                f"STAGE_GRPO with method {s.method!r}: use lora, full or freeze"
            )
        if g.dynamic_sampling and p.max_staleness != 1:
            raise ValueError("grpo.dynamic_sampling needs ppo.max_staleness 1")
        if p.samples_per_prompt < 2:
            raise ValueError("STAGE_GRPO needs sampling.n >= 2 (the group of each prompt)")
        set_seed(s.seed)
        self.device = models.pick_device(self.world.local_rank)
        base = models.load_base(s, self.device)
        self.pad_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
        self.end_ids = models.end_token_ids(s, self.source.end_token_ids())
        if s.method == "lora":
            # fresh, or the starting (SFT) adapter (init_adapter / adapter_name_or_path), as PPO
            self.policy = lora.start_lora(base, s).to(self.device)
            # beta = 0: no reference at all (never run, never loaded); else the base with the
            # adapter disabled, or base + the starting adapter as a frozen second adapter
            self.reference = lora_reference(s, self.policy) if g.beta > 0 else None
        else:  # full / freeze: the model itself (load_base marked freeze's trained subset)
            self.policy = base
            # beta = 0: none; else a frozen copy of the initial model, loaded once
            self.reference = build_reference(s, base, self.device) if g.beta > 0 else None
        self.model = self.policy  # no value head
        self.publish_seconds = 0.0  # the last version's serialisation (full weights: + sha256)
        batches_per_step = p.rollout_batch_size // s.batch_rows
        batches_per_epoch = self.source.count(prompt_request(s, 0))
        if batches_per_epoch == 0:
            raise ValueError("the prompt dataset yields no batch; add prompts")
        self.total_steps = s.max_steps or math.ceil(
            s.num_epochs * batches_per_epoch / batches_per_step
        )
        sequences = p.rollout_batch_size * p.samples_per_prompt
        micro = math.ceil(sequences / s.batch_rows)
        self.updates_per_step = p.ppo_epochs * math.ceil(micro / s.gradient_accumulation_steps)
        # One pass, one optimizer step, no reference, no dropout: the policy the update starts
        # from IS the old policy, so its log-probs come from the update's own forward (detached)
        # instead of a separate scoring forward (TRL does the same for num_iterations 1).
        dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules())
        self.single_pass = (
            p.ppo_epochs == 1 and self.updates_per_step == 1 and self.reference is None
            and not dropout
        )  # fmt: skip
        optimizer = optim.build_optimizer(self.model, s)
        scheduler = optim.build_scheduler(optimizer, s, self.total_steps * self.updates_per_step)
        self.engine = build_engine(
            self.model, optimizer, scheduler, models.grad_scaler(s, self.device), s, self.world
        )
        self.kl = KlController(g.beta)  # fixed: beta is a loss coefficient, not a controller
        sampling = rollout_pb2.SamplingParams.FromString(p.sampling)
        self.temperature = sampling.temperature if sampling.HasField("temperature") else 1.0
        self.rollouts = RolloutPlanner(
            s, self.source, self.exchange, job_id=self.job_id, batches_per_step=batches_per_step,
            total_steps=self.total_steps, should_stop=self.should_stop,
            stop_token_ids=self.end_ids,
        )  # fmt: skip
        latest = checkpoints.latest_checkpoint(self.job_dir) if s.resume else None
        if latest is not None:
            self._resume(latest)
            state = checkpoints.load_state(latest)
            self.groups = GroupCounts(**state.get("group_counts", {}))
        highest = self._highest_version_on_disk()
        lost_versions = list(range(highest, self.adapter_version, -1))
        self.next_version = max(self.next_version, highest + 1)
        fresh = latest is None and not s.resume
        self.rollouts.open(self.step, lost_versions, fresh=fresh)
        self.writer = MetricsWriter(self.output_dir, s.report_to)
        if self.adapter_version == 0:
            self._publish_adapter()

    # --- one step -----------------------------------------------------------------------------

    def _forward(self, x: Rollouts, rows: torch.Tensor, *, reference: bool = False, raw=False):
        """Log-probs of the completion tokens at the sampling temperature ``(n, T)`` for ``rows``;
        with ``raw`` also the temperature-1 ones (what the engine reports)."""
        ids, attention = x.input_ids[rows], x.attention_mask[rows]
        width = int(attention.sum(dim=1).max())
        ids, attention = ids[:, :width], attention[:, :width]
        steps = x.mask.shape[1]
        with models.autocast(self.settings, self.device):
            if reference:
                logits = self.reference.logits(input_ids=ids, attention_mask=attention)
            else:
                logits = self.engine.module(input_ids=ids, attention_mask=attention).logits
        starts = x.starts[rows]
        tempered = selected_logprobs(logits[:, :-1] / self.temperature, ids[:, 1:])
        logprobs = completion_gather(tempered, starts, steps)
        if not raw:
            return logprobs
        untempered = (
            selected_logprobs(logits[:, :-1], ids[:, 1:]) if self.temperature != 1 else tempered
        )
        return logprobs, completion_gather(untempered, starts, steps)

    def _shape(self, x: Rollouts, received: list[Received]) -> tuple[Rollouts, dict]:
        """Overlong shaping of the scores and masking of truncated completions."""
        g = self.settings.grpo
        ends = set(self.end_ids)
        completions = [list(r.scored.rollout.completion_ids) for r in received]
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.float32)
        truncated = torch.tensor([not any(t in ends for t in c) for c in completions])
        scores = x.scores
        if g.overlong_buffer_length and self.max_tokens:
            scores = scores + loss_math.overlong_penalty(
                lengths, self.max_tokens, g.overlong_buffer_length, g.overlong_penalty_factor
            ).to(scores.device)
        mask = x.mask
        if g.mask_truncated_completions:
            mask = mask * (~truncated).float().to(mask.device)[:, None]
        shaped = Rollouts(
            x.input_ids, x.attention_mask, x.starts, mask, x.engine_logprobs, scores, x.raw_scores
        )
        return shaped, {"lengths": lengths, "truncated": truncated}

    @torch.no_grad()
    def _score(self, x: Rollouts, groups: torch.Tensor | None = None) -> dict:
        """Old log-probs, the reference's (only when beta > 0), advantages, engine ratios. With
        ``single_pass`` only the advantages: ``_update`` takes the old log-probs and the engine
        ratios from its own forward (``old`` None; ``engine_ratio`` filled in there)."""
        if self.single_pass:
            zeros = torch.zeros_like(x.mask)
            tokens = StepTokens(x.scores, zeros, None, None, x.mask, groups)
            estimate = self.estimator.estimate(tokens, self.kl.coef)
            return {"old": None, "ref": None, "advantages": estimate.advantages, "weights": None,
                    "engine_ratio": torch.ones_like(x.mask)}  # fmt: skip
        self.model.eval()
        old, raw, ref = [], [], []
        for rows in self._rows(x.mask.shape[0]):
            logp, untempered = self._forward(x, rows, raw=True)
            old.append(logp)
            raw.append(untempered)
            if self.reference is not None:
                ref.append(self._forward(x, rows, reference=True))
        old_t, raw_t = torch.cat(old), torch.cat(raw)
        ref_t = torch.cat(ref) if ref else None
        tokens = StepTokens(x.scores, old_t, ref_t, None, x.mask, groups)
        estimate = self.estimator.estimate(tokens, self.kl.coef)
        engine_ratio = torch.exp(raw_t - x.engine_logprobs)
        return {
            "old": old_t, "ref": ref_t, "advantages": estimate.advantages,
            "weights": engine_ratio.clamp(max=IS_CAP) * x.mask, "engine_ratio": engine_ratio,
        }  # fmt: skip

    def _update(self, x: Rollouts, t: dict) -> dict[str, float]:
        s, p, g = self.settings, self.settings.ppo, self.settings.grpo
        self.model.train()
        n = x.mask.shape[0]
        sums = {"loss": 0.0, "clip_low": 0.0, "clip_high": 0.0, "kl": 0.0, "tokens": 0.0}
        grad_norm = float("nan")
        updates = 0
        generator = torch.Generator().manual_seed(s.seed + self.step)
        for _ in range(p.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            micro = [order[i : i + s.batch_rows] for i in range(0, n, s.batch_rows)]
            for start in range(0, len(micro), s.gradient_accumulation_steps):
                group = micro[start : start + s.gradient_accumulation_steps]
                rows_all = torch.cat(group).to(self.device)
                denominator = loss_math.normaliser(x.mask[rows_all], g.loss_type, self.max_tokens)
                total = 0.0
                for k, rows in enumerate(group):
                    rows_d = rows.to(self.device)
                    mask = x.mask[rows_d]
                    if t["old"] is None:  # single pass: the policy now is the old policy
                        logp, raw = self._forward(x, rows_d, raw=True)
                        old = logp.detach()
                        ratio = torch.exp(raw.detach() - x.engine_logprobs[rows_d])
                        t["engine_ratio"][rows_d] = ratio
                        weights = ratio.clamp(max=IS_CAP) * mask
                    else:
                        logp = self._forward(x, rows_d)
                        old, weights = t["old"][rows_d], t["weights"][rows_d]
                    per_token, stats = loss_math.per_token_loss(
                        logp, old, t["advantages"][rows_d], g.epsilon,
                        g.epsilon_high, weights=weights,
                        ref_logprobs=None if t["ref"] is None else t["ref"][rows_d],
                        beta=g.beta, kl_estimator=g.kl_estimator,
                    )  # fmt: skip
                    loss = loss_math.aggregate(per_token, mask, g.loss_type, denominator)
                    self.engine.backward(loss, last=k == len(group) - 1)
                    total += float(loss.detach())
                    for name in ("clip_low", "clip_high", "kl"):
                        if name in stats:
                            sums[name] += float((stats[name] * mask).sum())
                    sums["tokens"] += float(mask.sum())
                grad_norm = self.engine.step()
                sums["loss"] += total
                updates += 1
        tokens = max(sums["tokens"], 1.0)
        return {
            "loss": sums["loss"] / max(updates, 1),
            "grpo/clip_ratio/low": sums["clip_low"] / tokens,
            "grpo/clip_ratio/high": sums["clip_high"] / tokens,
            "grpo/kl": sums["kl"] / tokens if g.beta > 0 else 0.0,
            "grad_norm": grad_norm,
        }

    def _gather(self, step: int) -> tuple[list[list[Received]], list[Received], dict] | None:
        """The step's groups: collected whole; with dynamic sampling, zero-variance groups
        dropped and more prompts drawn until ``rollout_batch_size`` groups remain. Returns
        ``(groups to train, every received rollout, step counts)``; None on a stop."""
        p, g = self.settings.ppo, self.settings.grpo
        n = p.samples_per_prompt
        received = self.rollouts.collect(step)
        if received is None:
            return None
        everything = list(received)
        kept: list[list[Received]] = []
        counts = {"groups": 0, "zero_variance": 0, "dropped": 0, "refill_rounds": 0,
                  "refill_prompts": 0, "surplus": 0}  # fmt: skip
        rounds = 0
        while True:
            for members in assemble_groups(received, n, self.used_groups):
                counts["groups"] += 1
                scores = {r.scored.normalized_score for r in members}
                if len(scores) == 1:
                    counts["zero_variance"] += 1
                    if g.dynamic_sampling:
                        counts["dropped"] += 1
                        continue
                kept.append(members)
            missing = p.rollout_batch_size - len(kept)
            if not g.dynamic_sampling or missing <= 0:
                break
            if rounds == g.max_refill_rounds:
                raise RuntimeError(
                    f"step {step}: dynamic sampling still has {len(kept)} of "
                    f"{p.rollout_batch_size} groups with distinct rewards after "
                    f"{rounds} refill rounds (grpo.max_refill_rounds): the rewards are constant "
                    "for nearly every prompt; check the reward function or the task's difficulty"
                )
            rounds += 1
            added = self.rollouts.refill(step, math.ceil(missing / self.settings.batch_rows))
            counts["refill_rounds"] += 1
            counts["refill_prompts"] += len(added)
            received = self.rollouts.collect(step, added)
            if received is None:
                return None
            everything.extend(received)
        if g.dynamic_sampling and len(kept) > p.rollout_batch_size:
            counts["surplus"] = len(kept) - p.rollout_batch_size
            kept = kept[: p.rollout_batch_size]
        return kept, everything, counts

    def train(self) -> TrainResult:
        s = self.settings
        last_saved = self.step if s.resume else -1
        every = s.save_steps or 1
        while self.step < self.total_steps:
            started = time.perf_counter()
            self.rollouts.admit(self.step, self.adapter_version)
            gathered = self._gather(self.step)
            if gathered is None:
                return self._stopped(last_saved)
            kept, everything, counts = gathered
            waited = time.perf_counter() - started
            flat = [r for members in kept for r in members]
            x = collate_rollouts(flat, self.pad_id, self.end_ids)
            x, shape = self._shape(x, flat)
            x = x.to(self.device)
            group_index = torch.arange(len(kept)).repeat_interleave(
                self.settings.ppo.samples_per_prompt
            )
            t = self._score(x, group_index.to(self.device))
            stats = self._update(x, t)
            trained = time.perf_counter() - started - waited
            self.rollouts.consumed(self.step, everything)
            self.groups.trained_groups += len(kept)
            self.groups.zero_variance_groups += counts["zero_variance"]
            self.groups.dropped_groups += counts["dropped"]
            self.groups.surplus_groups += counts["surplus"]
            self.groups.refill_rounds += counts["refill_rounds"]
            self.groups.refill_prompts += counts["refill_prompts"]
            self.step += 1
            self._publish_adapter()
            self._log_step(x, t, stats, flat, shape, counts, waited, trained)
            self._log_groups(kept, everything)
            if self.step % every == 0 or self.step == self.total_steps:
                self.save()
                last_saved = self.step
            if self.should_stop():
                return self._stopped(last_saved)
        return TrainResult("SUCCEEDED", self.step, f"trained {self.step} GRPO steps")

    def _stopped(self, last_saved: int) -> TrainResult:
        if last_saved != self.step and self.step > 0:
            self.save()
        return TrainResult("CANCELLED", self.step, f"cancelled at GRPO step {self.step}")

    def _log_step(self, x, t, stats, received, shape, counts, waited, trained) -> None:
        mask = x.mask
        raw = x.raw_scores
        lengths = shape["lengths"]
        elapsed = max(waited + trained, 1e-9)
        record = {
            "step": self.step,
            "epoch": self.step / max(self.total_steps, 1),
            "loss": stats.pop("loss"),
            "learning_rate": self.engine.learning_rate(),
            "grad_norm": stats.pop("grad_norm"),
            "tokens_per_second": float(mask.sum()) / elapsed,
            "grpo/trained_tokens": float(mask.sum()),
            "eta_seconds": (self.total_steps - self.step) * elapsed,
            "reward/mean": float(raw.mean()),
            "reward/std": float(raw.std()) if raw.numel() > 1 else 0.0,
            "reward/shaped_mean": float(x.scores.mean()),
            "grpo/zero_variance_fraction": counts["zero_variance"] / max(counts["groups"], 1),
            "grpo/groups": float(counts["groups"]),
            "grpo/dropped_groups": float(counts["dropped"]),
            "grpo/refill_rounds": float(counts["refill_rounds"]),
            "grpo/refill_prompts": float(counts["refill_prompts"]),
            "grpo/surplus_groups": float(counts["surplus"]),
            "grpo/engine_ratio": float((t["engine_ratio"] * mask).sum() / mask.sum().clamp(min=1)),
            "completion/length_mean": float(lengths.mean()),
            "completion/length_max": float(lengths.max()),
            "completion/truncated_fraction": float(shape["truncated"].float().mean()),
            "grpo/policy_version": float(self.adapter_version),
            "time/publish_version": self.publish_seconds,
            "time/wait_rollouts": waited,
            "time/train": trained,
            "time/wait_share": waited / elapsed,
            **{f"queue/{k}": float(v) for k, v in self.rollouts.counts.totals().items()},
            **reward_components(received),
            **stats,
        }
        self.history.append((self.step, record["loss"]))
        self.writer.write(record)
        self.report.metrics(record)

    def _log_groups(self, kept: list[list[Received]], everything: list[Received]) -> None:
        """``output/groups.jsonl``: per step, each trained group's id and sample indices, and
        the ids of the groups collected but left out (a step redone after a crash appears again;
        its last line is the one whose update the checkpoint kept)."""
        trained = {group_of(m[0].item_id): [parse_task_id(r.item_id)[4] for r in m] for m in kept}
        left_out = sorted({group_of(r.item_id) for r in everything} - set(trained))
        line = {"step": self.step, "trained": trained, "left_out": left_out}
        with (self.output_dir / "groups.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")

    def _publish_adapter(self) -> None:
        """The next policy version: ``ppo``'s adapter folder, or the full weights."""
        started = time.perf_counter()
        if self.settings.method == "lora":
            super()._publish_adapter()
        else:
            version = self.next_version
            dest = self.job_dir / "adapters" / f"v{version}"
            size = publish_full_weights(self.policy, dest, self.settings.method)
            self.adapter_version, self.next_version = version, version + 1
            self.report.adapter(version, self.step, dest, size)
        self.publish_seconds = time.perf_counter() - started

    def save(self) -> Path:
        """``ppo``'s checkpoint with the group counts in its state."""
        original = self.rollouts.checkpoint_state

        def with_groups() -> dict:
            return {**original(), "group_counts": asdict(self.groups)}

        self.rollouts.checkpoint_state = with_groups
        try:
            return super().save()
        finally:
            self.rollouts.checkpoint_state = original

    def save_outputs(self) -> None:
        """The final adapter, or model for full / freeze (no value head), and the counts, with
        the metrics."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.method == "lora":
            lora.save_adapter(self.policy, self.output_dir / "adapter")
        else:
            models.save_full_model(self.policy, self.settings, self.job_dir, self.output_dir)
        counts = {
            **self.rollouts.counts.totals(),
            **asdict(self.groups),
            "final_adapter_version": self.adapter_version,
        }
        (self.output_dir / "grpo_counts.json").write_text(json.dumps(counts) + "\n")
        self.writer.close()
        plot_loss_curve(self.output_dir)


def run(
    settings: Settings,
    source: BatchSource,
    job_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    world: World | None = None,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    exchange: RolloutExchange,
    job_id: str = "",
) -> TrainResult:
    """GRPO-family RL on the prompts of ``source`` with rollouts and rewards from the fleets."""
    trainer = GrpoTrainer(
        settings, source, job_dir, exchange=exchange, job_id=job_id or Path(job_dir).name,
        output_dir=output_dir, world=world, reporter=reporter, should_stop=should_stop,
    )  # fmt: skip
    trainer.setup()
    result = trainer.train()
    trainer.save_outputs()
    return result

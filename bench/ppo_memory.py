"""The ``memory`` section of ``bench_ppo.py``: peak RSS of one PPO update step per layout.

Each layout runs in a fresh subprocess (this file, ``_memory-child``) so that one layout's
allocations never inflate another's peak; see ``bench_ppo.py``'s docstring for the layouts.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYOUTS = ("llamafleet", "classic", "classic-lora-policy", "classic-lora", "llamafleet-grpo")
MiB = 1 << 20


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def memory_child(layout: str, model_dir: str, seqs: int, prompt_len: int, gen_len: int) -> dict:
    """One update step of ``layout`` in this (fresh) process; returns its memory figures."""
    import resource
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    extra: dict = {}
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from services.training.losses import ppo as ppo_math
    from services.training.model import lora
    from services.training.recipes import ppo
    from services.training.spec.settings import LoraSettings, PpoSettings, Settings

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    gc.collect()
    baseline = _proc_kib("VmRSS")

    config = AutoConfig.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    width = prompt_len + gen_len
    ids = torch.randint(10, config.vocab_size, (seqs, width), generator=g)
    attention = torch.ones_like(ids)
    starts = torch.full((seqs,), prompt_len, dtype=torch.long)
    mask = torch.ones(seqs, gen_len)
    engine = torch.full((seqs, gen_len), -8.0)  # log-probs the engine reported
    scores = torch.randn(seqs, generator=g)
    rollouts = ppo.Rollouts(ids, attention, starts, mask, engine, scores, scores.clone())
    lora_cfg = LoraSettings(rank=8, alpha=16)
    p = PpoSettings(rollout_batch_size=seqs, samples_per_prompt=1, ppo_epochs=1)
    dtype = torch.float32

    if layout in ("llamafleet", "llamafleet-grpo"):
        grpo_layout = layout == "llamafleet-grpo"
        if grpo_layout:  # the same sequences as groups of 2 (GRPO needs n >= 2), beta 0
            p = PpoSettings(rollout_batch_size=seqs // 2, samples_per_prompt=2, ppo_epochs=1)
        settings = Settings(
            recipe="grpo" if grpo_layout else "ppo", base_model=model_dir, method="lora", lora=lora_cfg, learning_rate=1e-5,
            lr_scheduler="constant", num_epochs=1.0, batch_rows=seqs, logging_steps=1, seed=0,
            max_steps=1, ppo=p,
        )  # fmt: skip

        class OneBatch:
            def count(self, request):
                return 1

            def stream(self, request):  # pragma: no cover - no prompts are read
                return iter(())

            def has_eval(self):
                return False

            def end_token_ids(self):
                return ()  # the base model's eos only

        class NoExchange:  # the memory step never reaches the queues
            def ensure_group(self):
                pass

            def leftovers(self):
                return ""

        job = Path(tempfile.mkdtemp(prefix="bench-ppo-mem-"))
        if grpo_layout:  # no value head, no reference (beta 0): the policy alone
            from services.training.recipes import grpo

            trainer = grpo.GrpoTrainer(
                settings, OneBatch(), job, exchange=NoExchange(), job_id="mem"
            )
        else:
            trainer = ppo.PpoTrainer(settings, OneBatch(), job, exchange=NoExchange(), job_id="mem")
        trainer.setup()  # base + LoRA (+ value head for PPO), AdamW, adapter v1 written

        def step():
            if grpo_layout:
                groups = torch.arange(seqs) // 2
                t = trainer._score(rollouts, groups)
            else:
                t = trainer._score(rollouts)
            trainer._update(rollouts, t)

        trainable = sum(q.numel() for q in trainer.model.parameters() if q.requires_grad)
        from services.training.adapters import store as adapter_store

        _, info = adapter_store.archive_info(job / "adapters" / "v1")
        extra = {"adapter_archive_bytes": info.total_size}
    else:

        def causal():
            return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)

        def seq_cls():  # TRL/OpenRLHF value and reward models: backbone + a 1-output head
            return AutoModelForSequenceClassification.from_pretrained(
                model_dir, num_labels=1, dtype=dtype
            )

        if layout == "classic":
            policy = causal()
        else:
            policy = lora.apply_lora(causal(), lora_cfg, 0)
        reference = causal().requires_grad_(False).eval()
        value = seq_cls()
        if layout == "classic-lora":
            targets = lora.expand_target_modules(reference, ())  # plain copy
            value.requires_grad_(False)
            value.model = get_peft_model(
                value.model, LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha,
                                        target_modules=targets)
            )  # fmt: skip
            value.score.requires_grad_(True)
        reward = seq_cls().requires_grad_(False).eval()
        params = [q for m in (policy, value) for q in m.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        trainable = sum(q.numel() for q in params)

        def logprobs(model, x):
            logits = model(input_ids=x.input_ids, attention_mask=x.attention_mask).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token = logp.gather(2, x.input_ids[:, 1:, None]).squeeze(-1)
            return ppo.completion_gather(token, x.starts, gen_len)  # (N, T)

        def head(model, x):
            hidden = model.model(
                input_ids=x.input_ids, attention_mask=x.attention_mask
            ).last_hidden_state
            return model.score(hidden).squeeze(-1)  # (N, L)

        def step():
            x = rollouts
            with torch.no_grad():
                policy.eval(), value.eval()
                old = logprobs(policy, x)
                ref = logprobs(reference, x)
                old_values = ppo.completion_gather(head(value, x)[:, :-1], x.starts, gen_len)
                score = head(reward, x)[:, -1]  # the reward model's score at the last token
                del score  # a fixed score is used, as in the llamafleet layout (same arithmetic)
                rewards, _ = ppo_math.kl_penalised_rewards(x.scores, old, ref, mask, p.kl_coef)
                adv, returns = ppo_math.gae(rewards, old_values, mask, p.gamma, p.lam)
                adv = ppo_math.masked_whiten(adv, mask)
            policy.train(), value.train()
            logp = logprobs(policy, x)
            values = ppo.completion_gather(head(value, x)[:, :-1], x.starts, gen_len)
            pg, _ = ppo_math.policy_loss(logp, old, adv, mask, p.clip_range)
            vf, _ = ppo_math.value_loss(values, old_values, returns, mask, p.value_clip_range)
            (pg + p.value_loss_coef * vf).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    gc.collect()
    loaded = _proc_kib("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    step()
    seconds = time.perf_counter() - started
    peak = _proc_kib("VmHWM")
    return {
        "layout": layout,
        "baseline_mib": baseline / 1024,
        "loaded_mib": loaded / 1024,
        "step_peak_mib": peak / 1024,
        "step_peak_above_baseline_mib": (peak - baseline) / 1024,
        "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
        "step_s": seconds,
        **extra,
    }


def bench_memory(args, model: Path) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    weights = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    print(
        f"\n== memory: {args.size} model ({weights / MiB:.1f} MiB of float32 weights, "
        f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers), batch {args.seqs} x "
        f"({args.prompt_len} prompt + {args.gen_len} completion) tokens, {args.repeats} repeats"
    )
    runs: dict[str, list[dict]] = {k: [] for k in LAYOUTS}
    for rep in range(args.repeats):
        for layout in LAYOUTS if rep % 2 == 0 else reversed(LAYOUTS):  # alternate the order
            out = subprocess.run(
                [sys.executable, __file__, "_memory-child", layout, str(model),
                 str(args.seqs), str(args.prompt_len), str(args.gen_len)],
                capture_output=True, text=True, check=False, env=os.environ.copy(),
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"{layout} child failed:\n{out.stderr[-3000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            runs[layout].append(got)
            print(
                f"  rep {rep} {layout:20s} step peak {got['step_peak_mib']:7.1f} MiB "
                f"(above imports {got['step_peak_above_baseline_mib']:7.1f}), "
                f"step {got['step_s']:.1f}s"
            )
    summary = {}
    for layout, rs in runs.items():
        summary[layout] = {k: median([r[k] for r in rs]) for k in rs[0] if k != "layout"}
    archive = summary["llamafleet"]["adapter_archive_bytes"]
    print(
        f"  LoRA adapter archive of this model (what FetchAdapter sends per version): "
        f"{int(archive):,d} B = {archive / weights:.4f} of the base weights ({weights:,d} B)"
    )
    ours = summary["llamafleet"]
    print(
        f"\n  {'layout':20s} {'baseline':>9s} {'loaded':>9s} {'step peak':>10s} "
        f"{'above base':>10s} {'ratio':>6s} {'ratio*':>7s} {'trainable':>11s}"
    )
    for layout, s in summary.items():
        ratio = ours["step_peak_mib"] / s["step_peak_mib"]
        ratio_above = ours["step_peak_above_baseline_mib"] / s["step_peak_above_baseline_mib"]
        s["llamafleet_over_this"] = ratio
        s["llamafleet_over_this_above_baseline"] = ratio_above
        print(
            f"  {layout:20s} {s['baseline_mib']:9.1f} {s['loaded_mib']:9.1f} "
            f"{s['step_peak_mib']:10.1f} {s['step_peak_above_baseline_mib']:10.1f} "
            f"{ratio:6.3f} {ratio_above:7.3f} {int(s['trainable_params']):11,d}"
        )
    print("  ratio = llamafleet's step peak / this layout's; ratio* = the same above the imports")
    return {"weights_bytes": weights, "runs": runs, "median": summary}


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "_memory-child":
        _, _, layout, model, seqs, prompt_len, gen_len = sys.argv
        print(json.dumps(memory_child(layout, model, int(seqs), int(prompt_len), int(gen_len))))
        sys.exit(0)
    sys.exit("run bench/bench_ppo.py --only memory")

"""Benchmark: multi-adapter PPO (DESIGN.md section 3) -- memory, step-time split, adapter sync,
rollout throughput. Results go to BENCHMARKS.md ("PPO").

Sections (``--only`` picks some; the default runs all, about 10 minutes on the 2-core dev box):

- ``memory``: peak RSS of one PPO update step (forward of policy, reference and value, the
  clipped losses, backward, AdamW step), each layout in a fresh subprocess, same built model,
  same batch. ``llamafleet`` is the recipe's own ``PpoTrainer._score`` + ``_update`` (one base,
  LoRA policy, value head on the policy's last hidden state, reference = ``disable_adapter()``,
  reward score given: the reward model lives in the reward service). ``classic`` holds four full
  models as TRL's ``PPOTrainer`` (policy, ref_policy, value_model, reward_model) and OpenRLHF
  (actor, initial model, critic, reward model) do: policy and value trained in full with AdamW,
  reference and reward frozen copies. ``classic-lora-policy``: the same four copies, the policy
  trained by LoRA, the value model in full. ``classic-lora``: four copies, policy and value both
  trained by LoRA (so ``classic-lora`` vs ``llamafleet`` is the cost of the copies alone). The
  step's peak is ``VmHWM`` after resetting it (``/proc/self/clear_refs``) once the models are
  loaded; the import baseline and the load are reported beside it.
- ``fleet``: the real services (``llamafleet.cluster.up``: Redis, data, training, 1 rollout
  worker, 1 reward worker) on the built tiny model; per repeat: rollout throughput with 1 worker,
  a PPO job of ``--steps`` steps, the same PPO steps in-process (``tests/training/inline_fleet``:
  generate + score + train in one process) as the peer, then a second rollout worker joins and
  throughput is measured with 2; the adapter versions of the last job are fetched with
  ``FetchAdapter`` (bytes and time) and their publish-to-loaded time is read from the rollouts.

    .venv/bin/python bench/bench_ppo.py [--only memory,fleet] [--repeats 3] [--steps 4]
        [--size medium] [--threads 1] [--work /tmp/bench-ppo] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "training"))  # inline_fleet: the in-process peer
from ppo_memory import bench_memory, median  # noqa: E402 - after the path set-up

MiB = 1 << 20
YES = r"^\s*yes"


def set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def build_model(work: Path, size: str) -> Path:
    from services.training.tiny.model import build_tiny_model

    out = work / "models" / size
    if not (out / "config.json").exists():
        build_tiny_model(out, size, seed=0, force=True)
    return out


# --- 2-4. across the services ----------------------------------------------------------------


def prompts_file(path: Path) -> Path:
    rows = [{"instruction": f"Is {n} a good number?", "output": "yes"} for n in range(3000, 3200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ppo_spec(job: str, model: Path, data: Path, args):
    from llamafleet.common.v1 import common_pb2
    from llamafleet.data.v1 import data_pb2
    from llamafleet.rollout.v1 import rollout_pb2
    from llamafleet.training.v1 import training_pb2 as pb

    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[str(data)]),
        format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_ALPACA),
    )
    spec = pb.TrainingJobSpec(
        job_id=job, base_model=str(model), stage=pb.STAGE_PPO,
        compute_dtype=pb.COMPUTE_DTYPE_FLOAT32,
    )  # fmt: skip
    spec.dataset.spec.CopyFrom(
        data_pb2.DatasetSpec(sources=[source], kind=data_pb2.EXAMPLE_KIND_PROMPT)
    )
    spec.finetuning.type = pb.FINETUNING_TYPE_LORA
    spec.finetuning.lora.rank = 8
    hp = spec.hyperparameters
    hp.learning_rate, hp.per_device_batch_size, hp.max_steps, hp.seed = 1e-3, args.prompts, 0, 0
    hp.max_steps = args.steps
    hp.logging_steps = 1
    p = spec.ppo
    p.sampling.CopyFrom(
        rollout_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=1.0, n=args.samples,
                                   seed=5)
    )  # fmt: skip
    p.reward_scorer = "regex"
    p.reward_settings.CopyFrom(common_pb2.RewardSettings(regex_pattern=YES))
    p.kl_coef = 0.05
    return spec


def _ts(stamp: str) -> float:
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.FromJsonString(stamp)
    return t.ToNanoseconds() / 1e9


def _dur(d) -> float:
    return d.ToNanoseconds() / 1e9


def _entry_s(entry_id: bytes | str) -> float:
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return int(entry_id.split("-")[0]) / 1000.0


def regex_cost_s(texts: list[str], repeats: int = 20) -> float:
    """Seconds the reward service's regex scorer spends on ``texts`` (in-process, per call)."""
    from services.reward.scorers import ScoreInput
    from services.reward.scorers.rules import PatternLimits, RegexMatch

    scorer = RegexMatch.from_settings(YES, PatternLimits(512, 100.0))
    items = [ScoreInput(item_id=str(i), completion_text=t) for i, t in enumerate(texts)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        scorer.score(items)
        best = min(best, time.perf_counter() - started)
    return best


def run_fleet_job(client, run: Path, r, job: str, spec, workers: int) -> dict:
    """One PPO job across the services; the per-step split from its own records."""
    from llamafleet.reward.v1 import reward_pb2
    from llamafleet.training.v1 import training_pb2 as pb
    from llamafleet.training.v1 import training_service_pb2 as api

    from services.common import queues

    started = time.time()
    client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    terminal = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
    while True:
        state = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=job)).job
        if state.state in terminal:
            break
        if time.time() - started > 900:
            raise RuntimeError(f"PPO job {job} did not finish in 15 minutes")
        time.sleep(0.5)
    if state.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"PPO job {job} ended {pb.JobState.Name(state.state)}: {state.message}")
    job_dir = run / "jobs" / job
    metrics = [json.loads(x) for x in (job_dir / "output" / "metrics.jsonl").read_text().split()]
    published, checkpoints = {}, {}
    for line in (job_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if "adapterPublished" in event:
            a = event["adapterPublished"]
            published[int(a["version"])] = (_ts(a["createTime"]), int(a.get("sizeBytes", 0)))
        if "checkpointSaved" in event:
            c = event["checkpointSaved"]
            checkpoints[int(c.get("step", 0))] = _ts(c["createTime"])
    rollout_commit = {
        f[b"id"].decode(): _entry_s(eid)
        for eid, f in r.xrange(queues.ROLLOUT_RESULTS)
        if f[b"id"].decode().startswith(job + ":")
    }
    scored = []
    for eid, f in r.xrange(queues.reward_results_stream(job)):
        s = reward_pb2.ScoredRollout.FromString(f[b"payload"])
        scored.append((_entry_s(eid), s))
    steps = []
    for k in range(len(metrics)):
        m = metrics[k]
        rows = [(t, s.rollout) for t, s in scored if s.rollout.task.step == k]
        ro = [x for _, x in rows]
        begin = checkpoints.get(k, published.get(1, (None,))[0])  # step 0: after adapter v1
        end = checkpoints[k + 1]
        wall = end - begin
        gen = sum(_dur(x.timings.generation_time) for x in ro) / workers
        load = sum(_dur(x.timings.adapter_load_time) for x in ro) / workers
        created = [x.task.create_time.ToNanoseconds() / 1e9 for x in ro]
        picked = [c + _dur(x.timings.queue_time) for c, x in zip(created, ro, strict=True)]
        last_rollout = max(rollout_commit[x.task.item_id] for x in ro)
        last_scored = max(t for t, _ in rows)
        scoring = regex_cost_s([x.completion_text for x in ro])
        train = m["time/train"]
        waited_until = begin + m["time/wait_rollouts"]
        overhead = wall - gen - scoring - train
        steps.append({
            "step": k, "wall": wall, "generation": gen, "scoring": scoring, "train": train,
            "overhead": overhead, "overhead_frac": overhead / wall,
            "split": {
                "publish_and_dispatch": min(picked) - begin,  # admit + serialise + XREADGROUP
                "adapter_fetch_load": load,
                "rollout_worker_gaps": (last_rollout - min(picked)) - gen - load,
                # of which: end of generation -> its Rollout in the results stream (Lua commit;
                # stream ids have ms resolution) -- the rest is fetching the next task
                "rollout_commit": sum(
                    rollout_commit[x.task.item_id] - p - _dur(x.timings.adapter_load_time)
                    - _dur(x.timings.generation_time)
                    for p, x in zip(picked, ro, strict=True)
                ) / workers,
                "reward_stage": last_scored - last_rollout - scoring,
                "trainer_pickup": waited_until - last_scored,
                "save_publish_log": wall - m["time/wait_rollouts"] - train,
            },
            "rollouts": len(ro),
        })  # fmt: skip
    return {"job": job, "steps": steps, "published": published, "scored": scored,
            "job_dir": str(job_dir)}  # fmt: skip


class _Clock:
    """Reporter of the in-process peer: when each checkpoint was saved."""

    def __init__(self):
        self.checkpoints: dict[int, float] = {}
        self.adapters: dict[int, float] = {}

    def metrics(self, record):
        pass

    def checkpoint(self, step, path, adapter_version):
        self.checkpoints[step] = time.time()

    def adapter(self, version, step, path, size_bytes):
        self.adapters[version] = time.time()


def run_inline(spec, model: Path, work: Path, args) -> dict:
    """The same PPO steps in this process: the rollout service's HF engine, the regex rule,
    the recipe; no Redis, no gRPC, no other process."""
    import re

    from inline_fleet import InlineFleet, PromptSource, yes_no_prompts
    from transformers import AutoTokenizer

    from services.training.recipes import ppo
    from services.training.spec.settings import settings as settings_of

    tokenizer = AutoTokenizer.from_pretrained(model)
    pattern = re.compile(YES)
    timing = {"score": 0.0, "load": 0.0}

    def score(ids):
        t = time.perf_counter()
        out = float(bool(pattern.match(tokenizer.decode(ids, skip_special_tokens=True))))
        timing["score"] += time.perf_counter() - t
        return out

    class TimedFleet(InlineFleet):
        def __init__(self, *a):
            super().__init__(*a)
            self.publish_s: dict[int, float] = {}
            self.score_s: dict[int, float] = {}

            self.load_s: dict[int, float] = {}
            load = self.engine.load_adapter

            def timed_load(*a, **kw):
                t = time.perf_counter()
                load(*a, **kw)
                timing["load"] += time.perf_counter() - t

            self.engine.load_adapter = timed_load

        def publish_tasks(self, tasks):
            t, score0, load0 = time.perf_counter(), timing["score"], timing["load"]
            added = super().publish_tasks(tasks)
            if tasks:
                k = tasks[0].step
                self.publish_s[k] = self.publish_s.get(k, 0) + time.perf_counter() - t
                self.score_s[k] = self.score_s.get(k, 0) + timing["score"] - score0
                self.load_s[k] = self.load_s.get(k, 0) + timing["load"] - load0
            return added

    job = work / f"inline-{spec.job_id}"
    fleet = TimedFleet(model, job, score)
    prompts = PromptSource(yes_no_prompts(tokenizer, range(3000, 3200)))
    clock = _Clock()
    started = time.time()
    result = ppo.run(settings_of(spec), prompts, job, exchange=fleet, job_id=spec.job_id,
                     reporter=clock)  # fmt: skip
    assert result.state == "SUCCEEDED", result
    metrics = [json.loads(x) for x in (job / "output" / "metrics.jsonl").read_text().split()]
    steps = []
    for k, m in enumerate(metrics):
        begin = clock.checkpoints.get(k, clock.adapters.get(1, started))
        wall = clock.checkpoints[k + 1] - begin
        published = fleet.publish_s.get(k, 0.0)  # generate + score + adapter load, in process
        scoring, load = fleet.score_s.get(k, 0.0), fleet.load_s.get(k, 0.0)
        gen = published - scoring - load
        train = m["time/train"]
        overhead = wall - gen - scoring - train
        steps.append({
            "step": k, "wall": wall, "generation": gen, "scoring": scoring, "train": train,
            "overhead": overhead, "overhead_frac": overhead / wall,
            "split": {
                "adapter_load": load,
                "save_publish_log": wall - m["time/wait_rollouts"] - train,
                "rest": m["time/wait_rollouts"] - published,
            },
        })  # fmt: skip
    return {"steps": steps}


def throughput(r, tokenizer, tag: str, n: int, max_tokens: int) -> dict:
    """Publish ``n`` RolloutTasks for the base model; seconds until all are in the results."""
    from llamafleet.common.v1 import common_pb2
    from llamafleet.rollout.v1 import rollout_pb2

    from services.common import queues
    from services.training.ppo.exchange import task_id

    job = f"bench-tput-{tag}"
    last = r.xrevrange(queues.ROLLOUT_RESULTS, count=1)
    after = last[0][0].decode() if last else "0-0"
    tasks = []
    for i in range(n):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Is {4000 + i} a good number?"}],
            tokenize=True, add_generation_prompt=True, return_dict=True,
        )["input_ids"]  # fmt: skip
        task = rollout_pb2.RolloutTask(
            item_id=task_id(job, 0, 0, i, 0), job_id=job, policy_version=0, step=0, shard=i,
            prompt_ids=list(ids), scorer="regex",
            sampling=rollout_pb2.SamplingParams(max_tokens=max_tokens, temperature=1.0,
                                                seed=100 + i),
        )  # fmt: skip
        task.reward_settings.CopyFrom(common_pb2.RewardSettings(regex_pattern=YES))
        tasks.append(task)
    started = time.time()
    for task in tasks:
        task.create_time.GetCurrentTime()
        queues.publish(r, queues.ROLLOUT_TASKS, task.item_id, task.SerializeToString())
    done: dict[str, tuple[float, bytes]] = {}
    deadline = started + 600
    while len(done) < n:
        if time.time() > deadline:
            raise RuntimeError(f"throughput {tag}: {len(done)} of {n} rollouts in 10 minutes")
        for eid, f in r.xrange(queues.ROLLOUT_RESULTS, min=f"({after}"):
            after = eid.decode()
            item = f[b"id"].decode()
            if item.startswith(job + ":"):
                done[item] = (_entry_s(eid), f[b"payload"])
        time.sleep(0.05)
    end = max(t for t, _ in done.values())
    rollouts = [rollout_pb2.Rollout.FromString(p) for _, p in done.values()]
    seconds = end - started
    return {
        "tag": tag, "n": n, "seconds": seconds, "rollouts_per_s": n / seconds,
        "tokens": sum(len(x.completion_ids) for x in rollouts),
        "generation_sum": sum(_dur(x.timings.generation_time) for x in rollouts),
        "by_worker": {w: sum(1 for x in rollouts if x.worker == w)
                      for w in sorted({x.worker for x in rollouts})},
    }  # fmt: skip


def adapter_sync(client, job_result: dict, base_model: Path) -> dict:
    """FetchAdapter bytes and time per version, and publish-to-loaded from the rollouts."""
    from llamafleet.common.v1 import common_pb2
    from llamafleet.training.v1 import training_service_pb2 as api

    from services.training.model import lora

    job, job_dir = job_result["job"], Path(job_result["job_dir"])
    versions = []
    for v in sorted(job_result["published"]):
        started = time.perf_counter()
        data = message = chunks = 0
        total = None
        for resp in client.training.FetchAdapter(
            api.FetchAdapterRequest(adapter=common_pb2.AdapterRef(id=job, version=v)), timeout=60
        ):
            chunks += 1
            data += len(resp.chunk.data)
            message += resp.ByteSize()
            if resp.chunk.HasField("info"):
                total = resp.chunk.info.total_size
        seconds = time.perf_counter() - started
        loads = [
            (s.rollout.task.create_time.ToNanoseconds() / 1e9
             + _dur(s.rollout.timings.queue_time) + _dur(s.rollout.timings.adapter_load_time),
             _dur(s.rollout.timings.adapter_load_time), s.rollout.worker)
            for _, s in job_result["scored"]
            if s.rollout.adapter_version == v and _dur(s.rollout.timings.adapter_load_time) > 1e-3
        ]  # fmt: skip
        first = min(loads, default=None)
        published_at = job_result["published"][v][0]
        versions.append({
            "version": v, "fetch_data_bytes": data, "fetch_message_bytes": message,
            "archive_total_size": total, "folder_bytes": lora.folder_size(job_dir / "adapters" /
                                                                         f"v{v}"),
            "fetch_s": seconds, "chunks": chunks,
            "published_to_loaded_s": (first[0] - published_at) if first else None,
            "fetch_and_load_s": first[1] if first else None,
        })  # fmt: skip
    base = sum(f.stat().st_size for f in base_model.glob("*.safetensors"))
    return {"versions": versions, "base_model_bytes": base}


def bench_fleet(args, work: Path) -> dict:
    from llamafleet import cluster
    from transformers import AutoTokenizer

    from services.common import queues

    model = build_model(work, args.fleet_size)
    tokenizer = AutoTokenizer.from_pretrained(model)
    data = prompts_file(work / "prompts.jsonl")
    run = work / f"cluster-{os.getpid()}"
    print(
        f"\n== fleet: {args.fleet_size} model, PPO {args.steps} steps x {args.prompts} prompts x "
        f"{args.samples} samples, max_tokens {args.max_tokens}; throughput {args.tasks} tasks x "
        f"{args.tput_tokens} tokens; {args.repeats} repeats"
    )
    started = time.perf_counter()
    state = cluster.up(
        run, base_model=model, roots=[str(work)], rollout_workers=1, reward_workers=1,
        settings={"reward": {"worker_threads": "1"}}, timeout=300,
    )  # fmt: skip
    print(f"  cluster up in {time.perf_counter() - started:.0f}s ({run})")
    out = {"throughput": {1: [], 2: []}, "fleet": [], "inline": []}
    try:
        client = cluster.connect(run, timeout=60)
        r = queues.connect(state.redis_url)
        throughput(r, tokenizer, f"warm-{os.getpid()}", 2, 4)  # the worker's first generate
        # Throughput first, while the first worker has no adapter resident (a worker that
        # served a PPO job generates the base model much more slowly: measured at the end).
        for rep in range(args.repeats):
            t1 = throughput(r, tokenizer, f"{os.getpid()}-{rep}-1", args.tasks, args.tput_tokens)
            out["throughput"][1].append(t1)
            print(f"  rep {rep} throughput 1 worker: {t1['rollouts_per_s']:.2f} rollouts/s")
            joined = cluster.add_worker(run, "rollout", timeout=300)
            for attempt in range(5):  # until the joiner has generated (its first is slow)
                warm = throughput(r, tokenizer, f"warm2-{os.getpid()}-{rep}-{attempt}", 4, 4)
                if len(warm["by_worker"]) == 2:
                    break
            t2 = throughput(r, tokenizer, f"{os.getpid()}-{rep}-2", args.tasks, args.tput_tokens)
            out["throughput"][2].append(t2)
            print(f"  rep {rep} throughput 2 workers: {t2['rollouts_per_s']:.2f} rollouts/s "
                  f"{t2['by_worker']}")  # fmt: skip
            os.kill(joined.pid, signal.SIGTERM)  # back to one worker
            for _ in range(300):
                if not cluster.pid_alive(joined.pid):
                    break
                time.sleep(0.1)
        last_job = None
        for rep in range(args.repeats):  # a PPO job across the services, then the same in-process
            job = f"bench-ppo-{os.getpid()}-{rep}"
            spec = ppo_spec(job, model, data, args)
            last_job = run_fleet_job(client, run, r, job, spec, workers=1)
            out["fleet"].append(last_job["steps"])
            inline = run_inline(spec, model, work, args)
            out["inline"].append(inline["steps"])
            fw = median([s["wall"] for s in last_job["steps"][1:]])
            iw = median([s["wall"] for s in inline["steps"][1:]])
            print(f"  rep {rep} PPO step wall (median of steps 1..): services {fw:.2f}s, "
                  f"in-process {iw:.2f}s")  # fmt: skip
        after = throughput(r, tokenizer, f"{os.getpid()}-after", args.tasks, args.tput_tokens)
        out["throughput_after_ppo"] = after
        print(f"  throughput 1 worker after the PPO jobs (adapter versions resident): "
              f"{after['rollouts_per_s']:.2f} rollouts/s, generation sum "
              f"{after['generation_sum']:.2f}s for {after['tokens']} tokens")  # fmt: skip
        out["sync"] = adapter_sync(client, last_job, model)
    finally:
        cluster.down(run)
    return out


def report_fleet(res: dict) -> None:
    def agg(rows, key, sub=None):
        vals = [(s[sub][key] if sub else s[key]) for rep in rows for s in rep[1:]]
        return median(vals)

    print("\n  per-step medians (steps 1.. of every repeat; step 0 includes warm-up):")
    keys = ("wall", "generation", "scoring", "train", "overhead", "overhead_frac")
    print(f"  {'':12s}" + "".join(f"{k:>14s}" for k in keys))
    for name in ("fleet", "inline"):
        print(f"  {name:12s}" + "".join(f"{agg(res[name], k):14.4f}" for k in keys))
    ratio = agg(res["fleet"], "wall") / agg(res["inline"], "wall")
    ratios = [
        median([s["wall"] for s in f[1:]]) / median([s["wall"] for s in i[1:]])
        for f, i in zip(res["fleet"], res["inline"], strict=True)
    ]
    print(f"  step wall services / in-process: {ratio:.3f} (per repeat: "
          f"{', '.join(f'{x:.3f}' for x in ratios)})")  # fmt: skip
    print("  where the services' overhead goes (s, median per step):")
    for key in res["fleet"][0][0]["split"]:
        print(f"    {key:22s} {agg(res['fleet'], key, 'split'):8.4f}")
    print("  in-process peer, same split:")
    for key in res["inline"][0][0]["split"]:
        print(f"    {key:22s} {agg(res['inline'], key, 'split'):8.4f}")
    for name in ("fleet", "inline"):
        rows = [s for rep in res[name] for s in rep[1:]]
        frac = median([(s["overhead"] - s["split"]["save_publish_log"]) / s["wall"] for s in rows])
        print(
            f"  {name}: overhead without the adapter save + checkpoint tail: {frac:.4f} of the step"
        )
    print("  step 0 (first fetch of v1, warm-up): services wall "
          f"{median([f[0]['wall'] for f in res['fleet']]):.2f}s, in-process "
          f"{median([i[0]['wall'] for i in res['inline']]):.2f}s")  # fmt: skip
    t1 = median([t["rollouts_per_s"] for t in res["throughput"][1]])
    t2 = median([t["rollouts_per_s"] for t in res["throughput"][2]])
    g1 = median([t["generation_sum"] for t in res["throughput"][1]])
    g2 = median([t["generation_sum"] for t in res["throughput"][2]])
    print(
        f"\n  rollout throughput: 1 worker {t1:.2f}/s, 2 workers {t2:.2f}/s, ratio {t2 / t1:.2f}"
        f" (2 workers share the same 2 cores); generation sum {g1:.2f}s vs {g2:.2f}s"
    )
    after = res["throughput_after_ppo"]
    print(
        f"  1 worker after the PPO jobs: {after['rollouts_per_s']:.2f}/s, generation sum "
        f"{after['generation_sum']:.2f}s ({after['generation_sum'] / g1:.1f}x the fresh worker's)"
    )
    sync = res["sync"]
    print(f"\n  adapter sync (base model {sync['base_model_bytes']:,d} bytes):")
    for v in sync["versions"]:
        p2l = v["published_to_loaded_s"]
        fl = v["fetch_and_load_s"]
        print(
            f"    v{v['version']:<3d} FetchAdapter data {v['fetch_data_bytes']:,d} B "
            f"(archive {v['archive_total_size']:,d} B, folder {v['folder_bytes']:,d} B, "
            f"{v['chunks']} msgs {v['fetch_message_bytes']:,d} B) in {v['fetch_s'] * 1000:.1f} ms;"
            f" published->loaded {'-' if p2l is None else f'{p2l:.3f}s'}, fetch+load "
            f"{'-' if fl is None else f'{fl:.3f}s'}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="memory,fleet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/tmp/bench-ppo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    parser.add_argument("--size", default="medium", help="model size of the memory section")
    parser.add_argument("--seqs", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--gen-len", type=int, default=16)
    parser.add_argument("--fleet-size", default="tiny", help="model size of the fleet section")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=96, help="tasks per throughput run")
    parser.add_argument("--tput-tokens", type=int, default=16)
    parser.add_argument("--json", default="", help="write all figures here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start (shared machine)")
    results: dict = {"load_start": load}
    only = set(args.only.split(","))
    if "memory" in only:
        results["memory"] = bench_memory(args, build_model(work, args.size))
    if "fleet" in only:
        res = bench_fleet(args, work)
        report_fleet(res)
        res["sync"]["versions"] = res["sync"]["versions"]
        results["fleet"] = res
    results["load_end"] = os.getloadavg()
    print(f"load average {results['load_end'][0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

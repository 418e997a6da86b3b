"""Reward modelling and DPO end to end through the real services.

The data service prepares a preference dataset from a ``preference_alpaca`` JSONL file (train and
a held-out eval file); the training service runs an ``rm`` and a ``dpo`` LoRA job, each in its own
runner process (``launch.runner_command``) streaming batches from the data service; the reward
service then fetches the reward adapter from the training service (``FetchAdapter`` through its
adapter cache) and scores held-out (prompt, completion) pairs, and the DPO adapter is fetched with
``FetchAdapter`` and loaded with PEFT to check its implicit reward on the same pairs.

The task: "Increment the digits of 3819" prefers "4920" (each digit plus one) to "3819" (the
digits copied back); held-out prompts use numbers never trained on. The base is the freshly built
tiny model (random weights): LoRA + score head still learn this preference in ~100 steps.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import threading

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from llamafleet.client import Client
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2, data_service_pb2
from llamafleet.reward.v1 import reward_pb2, reward_service_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from synthetic import digit_task
from training_harness import kill_runners

from services.common.server import ServiceHost
from services.data.config import DataConfig
from services.data.server import make_register as data_register
from services.reward.config import RewardConfig
from services.reward.server import build_app as reward_app
from services.training.config import TrainingConfig
from services.training.server import make_register as training_register
from services.training.tiny.model import build_tiny_model

COMMON = {"shutdown_delay_s": 0.0, "grace_s": 0.5}


class Fleet:
    """Data, training (real runners) and reward services on one asyncio loop thread."""

    def __init__(self, work, base, **reward_options) -> None:
        self.work, self.base = work, base
        self.reward_options = {"worker_threads": 0, **reward_options}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.hosts: list[ServiceHost] = []
        self.reward = None
        self._run(self._start())
        self.client = Client(self.addresses, timeout=60)

    def _run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _host(self, name, config, register) -> str:
        host = ServiceHost(name, config, register)
        await host.start()
        self.hosts.append(host)
        return host.address

    async def _start(self) -> None:
        w = self.work
        data = DataConfig(
            datasets_dir=str(w / "datasets"), registry_dir=str(w), **COMMON,
            dataset_roots=str(w), model_roots=str(self.base.parent),
        )  # fmt: skip
        self.addresses = {"data": await self._host("data", data, data_register(data))}
        training = TrainingConfig(
            jobs_dir=str(w / "jobs"), data_address=self.addresses["data"], poll_interval_s=0.1,
            cancel_grace_s=5.0, model_roots=str(self.base.parent), **COMMON,
        )  # fmt: skip
        self.addresses["training"] = await self._host(
            "training", training, training_register(training)
        )
        reward = RewardConfig(
            base_model=str(self.base), training_address=self.addresses["training"],
            adapter_cache_dir=str(w / "reward-cache"), **self.reward_options, **COMMON,
        )  # fmt: skip
        self.reward = reward_app(reward)
        self.addresses["reward"] = await self._host("reward", reward, self.reward.register)

    def stop(self) -> None:
        self.client.close()

        async def stop_all() -> None:
            await asyncio.gather(*(h.stop(grace=0) for h in self.hosts))

        self._run(stop_all(), timeout=60)
        if self.reward is not None:
            self.reward.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def write_pairs(path, pairs) -> str:
    rows = [{"instruction": p, "chosen": a, "rejected": p.split()[-1]} for p, a in pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def dataset(path: str, template: str = "") -> pb.DatasetRef:
    """A preference_alpaca file; ``template`` names the chat template ("": the tokenizer's)."""
    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[path]),
        format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_PREFERENCE_ALPACA),
    )
    tokenization = data_pb2.TokenizationOptions(cutoff_len=128)
    tokenization.template.name = template
    return pb.DatasetRef(spec=data_pb2.DatasetSpec(sources=[source], tokenization=tokenization))


def job_spec(job_id, base, stage, train, held_out, steps, template="") -> pb.TrainingJobSpec:
    return pb.TrainingJobSpec(
        job_id=job_id,
        base_model=str(base),
        stage=stage,
        dataset=dataset(train, template),
        eval_dataset=dataset(held_out, template),
        compute_dtype=pb.COMPUTE_DTYPE_FLOAT32,
        finetuning=pb.FinetuningConfig(
            type=pb.FINETUNING_TYPE_LORA, lora=pb.LoraConfig(rank=16, alpha=32.0)
        ),
        preference=pb.PreferenceConfig(beta=0.5),
        hyperparameters=pb.Hyperparameters(
            learning_rate=3e-3,
            lr_scheduler=pb.LR_SCHEDULER_TYPE_LINEAR,
            warmup_steps=5,
            max_steps=steps,
            per_device_batch_size=8,
            logging_steps=20,
            eval_steps=steps,
            seed=0,
        ),
    )


def watch(client: Client, job_id: str) -> list[pb.TrainingEvent]:
    request = api.WatchTrainingJobRequest(job_id=job_id)
    return [r.event for r in client.training.WatchTrainingJob(request, timeout=240)]


def eval_metrics(events) -> list[tuple[int, float, float]]:
    """(step, held-out accuracy, mean margin) of each evaluation the job reported."""
    return [
        (e.metrics.step, e.metrics.extra["eval_rewards/accuracy"], e.metrics.extra["eval_rewards/margin"])
        for e in events
        if e.HasField("metrics") and "eval_rewards/accuracy" in e.metrics.extra
    ]  # fmt: skip


def held_out_pairs(
    client: Client, held_out: str, base, template: str = ""
) -> list[data_pb2.PreferencePair]:
    """The held-out pairs exactly as the data service tokenized them."""
    spec = dataset(held_out, template).spec
    spec.tokenization.tokenizer_path = str(base)
    request = data_service_pb2.PrepareDatasetRequest(dataset_id="held-out", spec=spec)
    client.data.PrepareDataset(request, timeout=120)
    stream = data_service_pb2.StreamBatchesRequest(dataset_id="held-out", batch_rows=64)
    return [p for r in client.data.StreamBatches(stream, timeout=60) for p in r.batch.pairs]


def split(row: data_pb2.TokenRow) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the completion starts at the first trained label."""
    start = next(i for i, y in enumerate(row.labels) if y != -100)
    return list(row.input_ids[:start]), list(row.input_ids[start:])


def fetch_adapter(client: Client, job_id: str, version: int, dest):
    request = api.FetchAdapterRequest(adapter=common_pb2.AdapterRef(id=job_id, version=version))
    chunks = [r.chunk for r in client.training.FetchAdapter(request, timeout=60)]
    blob = b"".join(c.data for c in chunks)
    assert hashlib.sha256(blob).hexdigest() == chunks[0].info.sha256
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return chunks[0].info


@pytest.mark.slow  # two runner processes (each imports torch) and three services: ~40-60 s
def test_rm_and_dpo_jobs_through_the_services(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # runners inherit it: no spinning on shared cores
    base = build_tiny_model(tmp_path / "base", "tiny", seed=0)
    held = digit_task(1, 40)
    train = digit_task(2, 400, exclude={p.split()[-1] for p, _ in held})
    train_file = write_pairs(tmp_path / "train.jsonl", train)
    held_file = write_pairs(tmp_path / "held_out.jsonl", held)
    fleet = Fleet(tmp_path, base)
    try:
        client = fleet.client
        for spec in (
            job_spec("rm-e2e", base, pb.STAGE_RM, train_file, held_file, steps=200),
            job_spec("dpo-e2e", base, pb.STAGE_DPO, train_file, held_file, steps=60),
        ):  # both runners start at once: their torch imports overlap
            client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        results = {}
        for job_id in ("rm-e2e", "dpo-e2e"):
            events = watch(client, job_id)
            log = (tmp_path / "jobs" / job_id / "runner.log").read_text()
            assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED, log[-3000:]
            results[job_id] = eval_metrics(events)
            print(f"\n{job_id}: held-out (step, accuracy, margin) {results[job_id]}")

        # the jobs' own evaluations: before any update and at the end (once)
        (s0, rm_before, _), (s1, rm_after, rm_margin) = results["rm-e2e"]
        assert (s0, s1) == (0, 200) and 0.2 <= rm_before <= 0.8 and rm_after >= 0.9
        (s0, _, dpo_margin0), (s1, dpo_after, dpo_margin) = results["dpo-e2e"]
        assert (s0, s1, dpo_margin0) == (0, 60, 0.0)  # policy = reference at step 0
        assert dpo_after >= 0.9 and dpo_margin > 0.5

        # the reward service serves the rm job's adapter, fetched from training by id@version
        pairs = held_out_pairs(client, held_file, base)
        assert len(pairs) == len(held)
        job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id="rm-e2e")).job
        version = job.adapter_versions[-1].version
        request = reward_service_pb2.ScoreRolloutsRequest(
            scorer="reward_model",
            reward_adapter=common_pb2.AdapterRef(id="rm-e2e", version=version),
        )
        for i, pair in enumerate(pairs):
            for side, row in (("c", pair.chosen), ("r", pair.rejected)):
                prompt, completion = split(row)
                request.items.append(
                    reward_pb2.ScoreItem(
                        item_id=f"{i}{side}", prompt_ids=prompt, completion_ids=completion
                    )
                )
        scores = {s.item_id: s.raw_score for s in client.reward.ScoreRollouts(request).scores}
        wins = [scores[f"{i}c"] > scores[f"{i}r"] for i in range(len(pairs))]
        served = sum(wins) / len(pairs)
        print(f"reward service, rm-e2e@{version}: chosen scored above rejected on {served:.0%}")
        assert served == pytest.approx(rm_after, abs=1 / len(pairs))  # the job's own number
        assert served >= 0.9

        # the dpo adapter, fetched and loaded: its implicit reward prefers the chosen answers
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id="dpo-e2e")).job
        info = fetch_adapter(client, "dpo-e2e", job.adapter_versions[-1].version, tmp_path / "dpo")
        assert info.stage == pb.STAGE_DPO
        policy = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base), tmp_path / "dpo"
        ).eval()

        def logp(row: data_pb2.TokenRow) -> float:
            ids = torch.tensor([list(row.input_ids)])
            logits = policy(input_ids=ids).logits[0, :-1].log_softmax(-1)
            labels = torch.tensor(list(row.labels)[1:])
            keep = labels != -100
            return float(logits[keep].gather(1, labels[keep, None]).sum())

        margins = []
        with torch.no_grad():
            for pair in pairs:
                now = logp(pair.chosen) - logp(pair.rejected)
                with policy.disable_adapter():  # the reference: the base
                    ref = logp(pair.chosen) - logp(pair.rejected)
                margins.append(now - ref)
        implicit = sum(m > 0 for m in margins) / len(margins)
        print(f"fetched dpo-e2e adapter: implicit reward accuracy {implicit:.0%}")
        assert implicit == pytest.approx(dpo_after, abs=1 / len(pairs))
        assert 0.5 * sum(margins) / len(margins) == pytest.approx(dpo_margin, rel=1e-3)
    finally:
        fleet.stop()
        kill_runners(tmp_path / "jobs")

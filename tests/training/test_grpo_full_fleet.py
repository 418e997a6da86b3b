"""A full fine-tuning GRPO job across the real services: the trainer's versions reach the rollout
worker as full weights.

Real ``redis-server``, the data and training services, a rollout worker (HF engine) and a reward
worker as processes (``llamafleet.cluster``); a STAGE_GRPO job with FINETUNING_TYPE_FULL and
``beta > 0`` (a frozen reference copy in the trainer) on the built tiny model after the yes/no
SFT. The job must succeed; every version is listed with its sha256 and streamed as
``ADAPTER_FORMAT_FULL_SAFETENSORS``; the worker generated each step's rollouts with the version
the task named, and its log-probs of the sampled tokens equal the trainer's within 1e-3 (the
``grpo/engine_ratio`` of every step): what it loaded is exactly the trainer's weights.
"""

from __future__ import annotations

import json
import time

import pytest
from llamafleet import cluster
from llamafleet.common.v1 import common_pb2
from llamafleet.reward.v1 import reward_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from test_ppo_fleet import ppo_spec, prompts_file, sft_model  # noqa: F401

from services.common import queues

pytestmark = pytest.mark.slow

JOB = "ppo-e2e"  # ppo_spec's job id
STEPS = 3


@pytest.mark.heavy  # scripts/test_heavy.sh (the sync itself: test_grpo_full_sync.py)
def test_a_full_grpo_job_syncs_full_weights_to_the_rollout_worker(sft_model, tmp_path):  # noqa: F811
    run = tmp_path / "cluster"
    state = cluster.up(
        run, base_model=sft_model, roots=[str(tmp_path)], rollout_workers=1, reward_workers=1,
        timeout=120,
    )  # fmt: skip
    try:
        client = cluster.connect(run, timeout=60)
        spec = ppo_spec(sft_model, prompts_file(tmp_path / "prompts.jsonl"))
        spec.stage = pb.STAGE_GRPO
        spec.finetuning.ClearField("lora")
        spec.finetuning.type = pb.FINETUNING_TYPE_FULL
        spec.hyperparameters.max_steps = STEPS
        spec.hyperparameters.learning_rate = 3e-4
        spec.ppo.ClearField("kl_coef")
        spec.grpo.beta = 0.05
        client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        deadline = time.monotonic() + 600
        while True:
            job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=JOB)).job
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                break
            assert time.monotonic() < deadline, "the GRPO job did not finish in time"
            time.sleep(0.5)
        assert job.state == pb.JOB_STATE_SUCCEEDED, job.failure_message
        assert job.adapter_id == JOB
        assert [v.version for v in job.adapter_versions] == list(range(1, STEPS + 2))
        assert len({v.sha256 for v in job.adapter_versions}) == STEPS + 1  # every version moved
        request = api.FetchAdapterRequest(adapter=common_pb2.AdapterRef(id=JOB, version=1))
        first = next(iter(client.training.FetchAdapter(request))).chunk.info
        assert first.format == pb.ADAPTER_FORMAT_FULL_SAFETENSORS

        path = run / "jobs" / JOB / "output" / "metrics.jsonl"
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        steps = [r for r in records if "grpo/engine_ratio" in r]
        assert len(steps) == STEPS
        assert all(abs(r["grpo/engine_ratio"] - 1.0) < 1e-3 for r in steps), steps
        assert all(r["grpo/kl"] >= 0 for r in steps)
        r = queues.connect(state.redis_url)
        scored = [
            reward_pb2.ScoredRollout.FromString(f[b"payload"])
            for _, f in r.xrange(queues.reward_results_stream(JOB))
        ]
        used = {s.rollout.adapter_version for s in scored}
        assert used == {s.rollout.task.adapter.version for s in scored} == set(range(1, STEPS + 1))
        assert r.xlen(queues.DEADLETTER) == 0
        print("FIGURES", json.dumps({
            "versions": len(job.adapter_versions),
            "version_bytes": job.adapter_versions[-1].size_bytes,
            "engine_ratio": [round(x["grpo/engine_ratio"], 6) for x in steps],
            "reward": [x["reward/mean"] for x in steps],
        }))  # fmt: skip
    finally:
        cluster.down(run)

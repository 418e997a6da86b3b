"""The rollout queue worker against a real redis-server, the hf engine and a fake training
service: tasks in -> exactly one Rollout out per item id (with a missing adapter fetched first),
log-probs parallel to the ids, and a poison task dead-lettered after max_deliveries with a reason
that says what was wrong."""

from __future__ import annotations

import time

import pytest
from fake_training import TrainingServer
from llamafleet.common.v1 import common_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common import queues
from services.rollout.config import RolloutConfig
from services.rollout.generator import Generator
from services.rollout.worker import GROUP, make_worker


@pytest.fixture(scope="module")
def training(adapter_dirs):
    with TrainingServer() as server:
        server.servicer.add("policy", 1, adapter_dirs["a1"])
        yield server


@pytest.fixture(scope="module")
def generator(tiny_model, training, tmp_path_factory) -> Generator:
    return Generator(
        RolloutConfig(
            base_model=str(tiny_model),
            device="cpu",
            training_address=training.address,
            adapter_cache_dir=str(tmp_path_factory.mktemp("adapter-cache")),
        )
    )


@pytest.fixture
def r(redis_url):
    client = queues.connect(redis_url, socket_timeout=5)
    yield client
    client.close()


def task(i: int, version: int = 1, **kw) -> rollout_pb2.RolloutTask:
    return rollout_pb2.RolloutTask(
        item_id=f"job1:{version}:0:0:{i}",
        job_id="job1",
        policy_version=version,
        prompt_ids=[0, 10 + i, 20 + i, 30 + i],
        sampling=rollout_pb2.SamplingParams(temperature=1.0, seed=i, max_tokens=6),
        adapter=common_pb2.AdapterRef(id="policy", version=version),
        reference_answer=str(i),
        **kw,
    )


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def results(r) -> list[tuple[str, rollout_pb2.Rollout]]:
    return [
        (f[b"id"].decode(), rollout_pb2.Rollout.FromString(f[b"payload"]))
        for _eid, f in r.xrange(queues.ROLLOUT_RESULTS)
    ]


def test_tasks_in_rollouts_out_exactly_once(r, redis_url, generator, training):
    tasks = [task(i) for i in range(4)]
    for t in tasks:
        queues.publish(r, queues.ROLLOUT_TASKS, t.item_id, t.SerializeToString())
    # a duplicate entry for task 0 (a producer retry that got a new stream entry id)
    r.xadd(queues.ROLLOUT_TASKS, {"id": tasks[0].item_id, "payload": tasks[0].SerializeToString()})
    workers = [make_worker(generator, redis_url, lease_ms=2000, max_deliveries=3) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(results(r)) >= 4, 120, "4 rollouts")
        wait_for(lambda: queues.backlog(r, queues.ROLLOUT_TASKS, GROUP) == 0, 30, "acks")
    finally:
        for w in workers:
            w.stop()
    out = results(r)
    assert sorted(i for i, _ in out) == sorted(t.item_id for t in tasks)  # once each
    for item_id, rollout in out:
        original = next(t for t in tasks if t.item_id == item_id)
        assert rollout.task == original
        assert 0 < len(rollout.completion_ids) == len(rollout.logprobs) <= 6
        assert all(lp <= 0 for lp in rollout.logprobs)
        assert rollout.finish_reason in (
            rollout_pb2.FINISH_REASON_STOP, rollout_pb2.FINISH_REASON_LENGTH
        )  # fmt: skip
        assert rollout.engine == "hf" and rollout.adapter_version == 1
        assert rollout.worker in {w.queue.consumer for w in workers}
        assert rollout.timings.generation_time.ToNanoseconds() > 0
    # the missing adapter was fetched once, before the first task ran
    assert [f[:2] for f in training.servicer.fetches] == [("policy", 1)]
    assert r.xlen(queues.DEADLETTER) == 0


def test_poison_task_is_dead_lettered_after_max_deliveries(r, redis_url, generator):
    poison = task(0, version=99)  # training has no policy@99
    queues.publish(r, queues.ROLLOUT_TASKS, poison.item_id, poison.SerializeToString())
    worker = make_worker(generator, redis_url, lease_ms=300, max_deliveries=2)
    worker.start()
    try:
        wait_for(lambda: r.xlen(queues.DEADLETTER), 60, "the dead letter")
    finally:
        worker.stop()
    [(_eid, dead)] = r.xrange(queues.DEADLETTER)
    assert dead[b"id"].decode() == poison.item_id
    assert dead[b"deliveries"] == b"2"
    reason = dead[b"reason"].decode()
    assert "NotFound" in reason and "policy@99" in reason
    assert r.xlen(queues.ROLLOUT_RESULTS) == 0
    assert queues.backlog(r, queues.ROLLOUT_TASKS, GROUP) == 0


def test_bad_sampling_in_a_task_is_dead_lettered_with_the_field(r, redis_url, generator):
    bad = task(1)
    bad.sampling.top_p = 0.0
    queues.publish(r, queues.ROLLOUT_TASKS, bad.item_id, bad.SerializeToString())
    worker = make_worker(generator, redis_url, lease_ms=300, max_deliveries=1)
    worker.start()
    try:
        wait_for(lambda: r.xlen(queues.DEADLETTER), 30, "the dead letter")
    finally:
        worker.stop()
    [(_eid, dead)] = r.xrange(queues.DEADLETTER)
    assert "sampling.top_p" in dead[b"reason"].decode()


def test_long_generation_keeps_its_lease(r, redis_url, generator, monkeypatch):
    """A task generated for five lease periods is generated once (one keeper renews its lease)."""
    long = task(7)
    queues.publish(r, queues.ROLLOUT_TASKS, long.item_id, long.SerializeToString())
    calls: list[int] = []
    engine = generator.engine
    real = engine.generate_batch

    def slow(requests):
        calls.append(len(requests))
        time.sleep(1.0)  # a generation far longer than the lease, without timing luck
        return real(requests)

    monkeypatch.setattr(engine, "generate_batch", slow)
    workers = [
        make_worker(generator, redis_url, lease_ms=200, max_deliveries=5, max_inflight=4)
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(results(r)) == 1, 120, "the rollout")
        time.sleep(0.5)  # give the other worker the chance to (wrongly) claim it
    finally:
        for w in workers:
            w.stop()
    assert calls == [1], calls
    assert r.xlen(queues.DEADLETTER) == 0
    assert queues.backlog(r, queues.ROLLOUT_TASKS, GROUP) == 0


def test_a_batch_of_64_mixed_tasks_equals_each_task_alone(
    r, redis_url, generator, training, adapter_dirs
):
    """64 tasks (base model, two versions of one adapter and another adapter; groups of 1, 2 and
    4 samples; greedy and seeded sampling; different prompt lengths) through batching workers
    (up to 16 tasks in flight each): every sample gets exactly the ids its task gets alone from
    the engine, log-probs within 1e-5 (hf, fp32); each sample is its own rollout with its own
    deterministic id and the group fields; one-sample tasks keep their ids and copy the task
    verbatim."""
    from services.rollout.engines import GenerationRequest, collect
    from services.rollout.worker import sample_ids

    training.servicer.add("policy", 2, adapter_dirs["a2"])
    training.servicer.add("other", 1, adapter_dirs["b1"])
    refs = [
        common_pb2.AdapterRef(),
        common_pb2.AdapterRef(id="policy", version=1),
        common_pb2.AdapterRef(id="policy", version=2),
        common_pb2.AdapterRef(id="other", version=1),
    ]
    tasks = []
    for i in range(64):
        n = (1, 2, 4)[i % 3]
        t = rollout_pb2.RolloutTask(
            item_id=f"job64:1:0:{i}:0",
            job_id="job64",
            policy_version=1,
            shard=i,
            prompt_ids=[0] + [(7 * i + j) % 200 + 3 for j in range(2 + i % 7)],
            sampling=rollout_pb2.SamplingParams(
                temperature=0.0 if i % 2 == 0 else 1.0, seed=i, max_tokens=4 + i % 5
            ),
            adapter=refs[(i // 3) % 4],
            num_samples=n,
        )
        tasks.append(t)
        queues.publish(r, queues.ROLLOUT_TASKS, t.item_id, t.SerializeToString())
    workers = [
        make_worker(generator, redis_url, lease_ms=5000, max_deliveries=3, max_inflight=16)
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    try:
        total = sum(t.num_samples for t in tasks)
        wait_for(lambda: len(results(r)) >= total, 300, f"{total} rollouts")
        wait_for(lambda: queues.backlog(r, queues.ROLLOUT_TASKS, GROUP) == 0, 30, "acks")
        schedulers = [w._scheduler for w in workers if w._scheduler is not None]
        engine_calls = sum(s.batches for s in schedulers)
        requests = sum(s.requests for s in schedulers)
    finally:
        for w in workers:
            w.stop()
    assert requests == len(tasks) and engine_calls < len(tasks) / 4  # many tasks per batch
    out = dict(results(r))
    assert len(out) == len(results(r)) == total  # each sample once
    assert sum(w.commit_batches for w in workers) < len(tasks)  # commits were pipelined
    engine = generator.engine
    for t in tasks:
        with generator.pinned(t.adapter) as pinned:
            sampling = generator.sampling(
                rollout_pb2.SamplingParams(
                    temperature=t.sampling.temperature, seed=t.sampling.seed,
                    max_tokens=t.sampling.max_tokens, n=t.num_samples,
                ),
                allow_n=True,
            )  # fmt: skip
            request = GenerationRequest(tuple(t.prompt_ids), sampling, pinned.name)
            alone = collect(engine.generate(request), t.num_samples)
        ids = sample_ids(t, t.num_samples)
        assert [i for i, _ in ids] == [f"job64:1:0:{t.shard}:{k}" for k in range(t.num_samples)]
        for k, ((item_id, index), want) in enumerate(zip(ids, alone, strict=True)):
            got = out[item_id]
            assert got.group_id == t.item_id and got.group_size == t.num_samples
            assert got.group_index == k and got.task.sample_index == index == k
            assert got.task.item_id == item_id and got.task.prompt_ids == t.prompt_ids
            assert list(got.completion_ids) == want.token_ids
            assert list(got.logprobs) == pytest.approx(want.logprobs, abs=1e-5)
            assert got.completion_text == want.text
        if t.num_samples == 1:
            assert out[t.item_id].task == t  # verbatim, id unchanged


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"num_samples": 99}, "num_samples=99"),
        ({"num_samples": 2, "item_id": "job1:1:0:0:x"}, "does not end in ':0'"),
    ],
)
def test_bad_group_task_is_dead_lettered_with_the_reason(r, redis_url, generator, change, reason):
    bad = task(0)
    for k, v in change.items():
        setattr(bad, k, v)
    queues.publish(r, queues.ROLLOUT_TASKS, bad.item_id, bad.SerializeToString())
    worker = make_worker(generator, redis_url, lease_ms=300, max_deliveries=1, max_inflight=4)
    worker.start()
    try:
        wait_for(lambda: r.xlen(queues.DEADLETTER), 30, "the dead letter")
    finally:
        worker.stop()
    [(_eid, dead)] = r.xrange(queues.DEADLETTER)
    assert reason in dead[b"reason"].decode()
    assert r.xlen(queues.ROLLOUT_RESULTS) == 0

"""The reward worker against a real redis-server: rollouts in, scored rollouts out in each job's
stream exactly once; a rollout that cannot be scored is dead-lettered with the reason."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from llamafleet.common.v1 import common_pb2
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common import queues
from services.reward.config import RewardConfig
from services.reward.scoring import ScoringEngine
from services.reward.worker import GROUP, RewardWorker

EOS = 1


def wait_for(pred: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def rollout(job: str, step: int, scorer: str, completion: str, **task) -> rollout_pb2.Rollout:
    item_id = f"{job}:1:{step}:0:0"
    return rollout_pb2.Rollout(
        task=rollout_pb2.RolloutTask(
            item_id=item_id, job_id=job, policy_version=1, step=step, scorer=scorer,
            prompt_ids=[0, 9, 10], **task,
        ),
        completion_ids=[20 + step, 21, EOS],
        completion_text=completion,
        finish_reason=rollout_pb2.FINISH_REASON_STOP,
        engine="hf",
    )  # fmt: skip


def scored_in(r, job: str) -> dict[str, reward_pb2.ScoredRollout]:
    out = {}
    for _eid, fields in r.xrange(queues.reward_results_stream(job)):
        msg = reward_pb2.ScoredRollout()
        msg.ParseFromString(fields[b"payload"])
        item_id = fields[b"id"].decode()
        assert item_id == msg.rollout.task.item_id
        assert item_id not in out, f"{item_id} published twice"
        out[item_id] = msg
    return out


@pytest.fixture
def r(redis_url):
    client = queues.connect(redis_url, socket_timeout=3.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def engine(rm_folders):
    config = RewardConfig(
        base_model=str(rm_folders.base),
        adapter_dir=str(rm_folders.adapter_dir),
        max_wait_ms=20.0,
    )
    engine = ScoringEngine.from_config(config)
    yield engine
    engine.close()


def start_worker(engine, r, **kw) -> RewardWorker:
    kw.setdefault("threads", 2)
    kw.setdefault("lease_ms", 400)
    worker = RewardWorker(engine, r, block_ms=50, consumer_prefix="test", **kw)
    worker.start()
    return worker


def test_rollouts_become_scored_rollouts_in_their_jobs_streams_once(engine, r):
    rm_b = common_pb2.AdapterRef(id="rm-b", version=1)
    sent = [
        rollout("job-a", s, "exact_match", a, reference_answer="42")
        for s, a in enumerate(["42", "41", " 42 "])
    ]
    sent += [rollout("job-b", s, "reward_model", "", reward_adapter=rm_b) for s in range(3)]  # fmt: skip
    for ro in sent:
        queues.publish(r, queues.ROLLOUT_RESULTS, ro.task.item_id, ro.SerializeToString())
    # an at-least-once duplicate upstream: the same item added again under a new entry id
    dup = sent[3]
    r.xadd(queues.ROLLOUT_RESULTS, {"id": dup.task.item_id, "payload": dup.SerializeToString()})

    worker = start_worker(engine, r)
    try:
        wait_for(lambda: len(scored_in(r, "job-a")) == 3 and len(scored_in(r, "job-b")) == 3,
                 what="6 scored rollouts")  # fmt: skip
        wait_for(lambda: r.xpending(queues.ROLLOUT_RESULTS, GROUP)["pending"] == 0, what="acks")
        time.sleep(0.3)  # nothing more arrives
    finally:
        worker.stop()

    job_a, job_b = scored_in(r, "job-a"), scored_in(r, "job-b")
    assert r.xlen(queues.reward_results_stream("job-a")) == 3
    assert r.xlen(queues.reward_results_stream("job-b")) == 3  # the duplicate was not republished
    assert [job_a[ro.task.item_id].raw_score for ro in sent[:3]] == [1.0, 0.0, 1.0]
    for ro in sent:
        out = (job_a if ro.task.job_id == "job-a" else job_b)[ro.task.item_id]
        assert out.rollout == ro  # copied verbatim
        assert out.scorer == ro.task.scorer
    for ro in sent[3:]:
        ids = list(ro.task.prompt_ids) + list(ro.completion_ids)
        expected = engine.models.score([ids], ("rm-b", 1))[0]
        assert job_b[ro.task.item_id].raw_score == pytest.approx(expected, abs=1e-5)
    assert r.xlen(queues.DEADLETTER) == 0


def test_unknown_scorer_is_dead_lettered_after_max_deliveries_with_the_reason(engine, r):
    bad = rollout("job-c", 0, "my_module.evil", "x")
    good = rollout("job-c", 1, "format_json", "{}")
    for ro in (bad, good):
        queues.publish(r, queues.ROLLOUT_RESULTS, ro.task.item_id, ro.SerializeToString())
    worker = start_worker(engine, r, threads=1, max_deliveries=2)
    try:
        wait_for(lambda: r.xlen(queues.DEADLETTER) == 1, what="the dead letter")
    finally:
        worker.stop()
    [(_eid, dead)] = r.xrange(queues.DEADLETTER)
    assert dead[b"id"].decode() == bad.task.item_id
    assert dead[b"payload"] == bad.SerializeToString()
    assert dead[b"group"] == b"reward" and dead[b"deliveries"] == b"2"
    reason = dead[b"reason"].decode()
    assert "task.scorer" in reason and "unknown scorer 'my_module.evil'" in reason
    assert "valid scorers: contains_answer, exact_match, format_json, regex, reward_model" in reason
    assert list(scored_in(r, "job-c")) == [good.task.item_id]
    assert r.xpending(queues.ROLLOUT_RESULTS, GROUP)["pending"] == 0


def test_worker_runs_inside_the_service_when_redis_is_configured(redis_url, r):
    from services.reward.server import build_app

    config = replace(RewardConfig(), redis_url=redis_url, worker_threads=1, lease_ms=400)
    app = build_app(config)  # no reward model configured: still starts
    assert app.worker is not None and app.engine.models is None
    ro = rollout("job-d", 0, "contains_answer", "so 7", reference_answer="7")
    queues.publish(r, queues.ROLLOUT_RESULTS, ro.task.item_id, ro.SerializeToString())
    app.worker.start()
    try:
        got = wait_for(lambda: scored_in(r, "job-d"), what="the scored rollout")
    finally:
        app.close()
    assert got[ro.task.item_id].raw_score == 1.0


def test_the_tasks_reward_settings_are_applied_by_the_worker(engine, r):
    carried = common_pb2.RewardSettings(scale=-2.0, clip=1.0)
    sent = [
        rollout("job-s", s, "exact_match", a, reference_answer="42", reward_settings=carried)
        for s, a in enumerate(["42", "7"])
    ]
    for ro in sent:
        queues.publish(r, queues.ROLLOUT_RESULTS, ro.task.item_id, ro.SerializeToString())
    worker = start_worker(engine, r, threads=1)
    try:
        wait_for(lambda: len(scored_in(r, "job-s")) == 2, what="2 scored rollouts")
    finally:
        worker.stop()
    scored = scored_in(r, "job-s")
    assert [scored[ro.task.item_id].raw_score for ro in sent] == [1.0, 0.0]
    assert [scored[ro.task.item_id].normalized_score for ro in sent] == [-1.0, 0.0]  # x-2, clip 1


def test_a_worker_of_one_base_scores_only_the_rollouts_of_that_base(redis_url, r):
    """Several bases: the reward service of base tiny-b reads tiny-b's results stream only."""
    from services.reward.server import build_app

    named = RewardConfig(base_model="/models/tiny-b", default_base="tiny-a")
    assert named.results_stream() == "llamafleet:rollout:results:tiny-b"
    assert RewardConfig(base_model="/models/tiny-a", default_base="tiny-a").results_stream() == (
        queues.ROLLOUT_RESULTS
    )
    # the rule scorers need no model: the service's engine without one, on tiny-b's stream
    app = build_app(replace(RewardConfig(), redis_url=redis_url, worker_threads=0))
    app.worker = RewardWorker(
        app.engine, r, threads=1, lease_ms=400, block_ms=50, stream=named.results_stream()
    )
    mine = rollout("job-b", 0, "contains_answer", "so 7", reference_answer="7")
    other = rollout("job-a", 0, "contains_answer", "so 7", reference_answer="7")
    queues.publish(r, named.results_stream(), mine.task.item_id, mine.SerializeToString())
    queues.publish(r, queues.ROLLOUT_RESULTS, other.task.item_id, other.SerializeToString())
    app.worker.start()
    try:
        got = wait_for(lambda: scored_in(r, "job-b"), what="the scored rollout of tiny-b")
        time.sleep(0.5)  # time enough to have taken the other base's rollout, were it wrong
    finally:
        app.close()
    assert got[mine.task.item_id].raw_score == 1.0
    assert scored_in(r, "job-a") == {}
    assert r.xinfo_groups(queues.ROLLOUT_RESULTS) == []  # never read by this service

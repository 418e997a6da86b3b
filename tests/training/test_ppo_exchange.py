"""The PPO trainer's Redis side (``RolloutExchange``) against a real ``redis-server`` that is
killed and restarted under it: calls wait the outage out, reads come back with the entries this
trainer had been handed and not acked, and settings no wait can fix end the job at once."""

from __future__ import annotations

import threading
import time

import pytest
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common import queues
from services.common.errors import Unavailable
from services.training.ppo.exchange import RolloutExchange, task_id

JOB = "ppo-x"


def scored(item_id: str) -> bytes:
    task = rollout_pb2.RolloutTask(item_id=item_id)
    return reward_pb2.ScoredRollout(rollout=rollout_pb2.Rollout(task=task)).SerializeToString()


def exchange(url: str, **kw) -> RolloutExchange:
    r = queues.connect(url, socket_timeout=2.0, socket_connect_timeout=0.5)
    return RolloutExchange(r, JOB, **kw)


def restart_later(local_redis, after_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(after_s), local_redis.restart()))
    thread.start()
    return thread


def test_a_killed_redis_is_waited_out_and_unacked_entries_are_read_again(local_redis):
    x = exchange(local_redis.url)
    x.ensure_group()
    ids = [task_id(JOB, 1, 0, p, 0) for p in range(3)]
    admin = queues.connect(local_redis.url)
    for item_id in ids:
        queues.publish(admin, x.results, item_id, scored(item_id))
    first = x.read(block_ms=100)
    assert [g.item_id for g in first] == ids
    time.sleep(1.2)  # appendfsync everysec, as in production

    local_redis.kill()
    assert x.read(block_ms=100) == []  # down: nothing, after a short wait
    restarter = restart_later(local_redis, 1.0)
    tasks = [rollout_pb2.RolloutTask(item_id=task_id(JOB, 1, 1, p, 0)) for p in range(2)]
    assert x.publish_tasks(tasks) == 2  # waited for the restart, then published
    restarter.join()

    again = x.read(block_ms=100)  # the delivered, unacked entries, from the consumer's history
    assert [g.item_id for g in again] == ids
    assert [g.entry_id for g in again] == [g.entry_id for g in first]
    x.ack([g.entry_id for g in again])
    assert admin.xpending(x.results, "training")["pending"] == 0
    assert x.publish_tasks(tasks) == 0  # still de-duplicated after the restart
    assert x.outages == 1  # one outage: the failed read and the waiting publish


def test_wrong_credentials_end_the_job_at_once(local_redis):
    admin = queues.connect(local_redis.url)
    admin.config_set("requirepass", "s3cret-pw")
    host = f"127.0.0.1:{local_redis.port}"
    x = exchange(f"redis://:wrong-pw@{host}/0")
    started = time.monotonic()
    with pytest.raises(queues.RedisUnusable) as raised:
        x.ensure_group()
    assert time.monotonic() - started < 2
    assert "refused the credentials" in str(raised.value) and "wrong-pw" not in str(raised.value)
    x = exchange(f"redis://:wrong-pw@{host}/0")
    with pytest.raises(queues.RedisUnusable):
        x.read(block_ms=100)


def test_an_outage_longer_than_the_limit_fails_with_how_to_resume(local_redis):
    x = exchange(local_redis.url, outage_limit_s=1.0)
    x.ensure_group()
    local_redis.kill()
    started = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        x.ack(["1-0"])
    waited = time.monotonic() - started
    assert 1.0 <= waited < 4.0, waited
    message = str(raised.value)
    assert "redis_url" in message and "resume" in message and "ack" in message


def test_a_job_publishes_to_the_tasks_stream_of_its_base(local_redis, monkeypatch):
    """Several bases: the runner gives a PPO job the exchange on its base's stream (the base
    named by spec.base_model's folder), the default base keeps the single-base stream."""
    from services.training.jobs.process import DEFAULT_BASE_ENV, PPO_REDIS_URL_ENV
    from services.training.runner import recipe_arguments

    monkeypatch.setenv(PPO_REDIS_URL_ENV, local_redis.url)
    monkeypatch.setenv(DEFAULT_BASE_ENV, "tiny-a")
    x = recipe_arguments("ppo", JOB, "/models/tiny-b")["exchange"]
    assert x.tasks == "llamafleet:rollout:tasks:tiny-b"
    assert recipe_arguments("grpo", JOB, "/models/tiny-a/")["exchange"].tasks == (
        queues.ROLLOUT_TASKS
    )
    monkeypatch.setenv(DEFAULT_BASE_ENV, "")  # one base: every job on the single-base stream
    assert recipe_arguments("ppo", JOB, "/models/tiny-b")["exchange"].tasks == queues.ROLLOUT_TASKS

    task = rollout_pb2.RolloutTask(item_id=task_id(JOB, 1, 0, 0, 0), job_id=JOB)
    assert x.publish_tasks([task]) == 1
    assert x.r.xlen("llamafleet:rollout:tasks:tiny-b") == 1
    assert x.r.xlen(queues.ROLLOUT_TASKS) == 0
    assert x.published_version(0, [1]) == 1 and "publish mark" in x.leftovers()


def test_a_job_says_when_no_rollout_worker_reads_its_base_stream(local_redis, caplog):
    """A job on a base no rollout worker serves waits (workers may still come: KEDA scales from
    zero) but says so, naming the stream and the base: 0 consumers until a worker reads it."""
    import logging
    from types import SimpleNamespace

    from services.training.ppo.rollouts import RolloutPlanner

    x = exchange(local_redis.url, tasks_stream="llamafleet:rollout:tasks:tiny-b")
    x.ensure_group()
    assert x.task_consumers() == 0  # no stream yet
    task = rollout_pb2.RolloutTask(item_id=task_id(JOB, 1, 0, 0, 0), job_id=JOB)
    x.publish_tasks([task])
    x.r.xgroup_create(x.tasks, "rollout", id="0")
    assert x.task_consumers() == 0  # a group, nobody in it
    settings = SimpleNamespace(
        base_model="/models/tiny-b", ppo=SimpleNamespace(samples_per_prompt=1)
    )
    planner = RolloutPlanner(settings, None, x, job_id=JOB, batches_per_step=1, total_steps=1)
    planner.plans[0] = SimpleNamespace(version=1, prompts=[object()])
    calls = iter([False, False, True])
    planner.should_stop = lambda: next(calls)
    with caplog.at_level(logging.WARNING, logger="services.training.ppo.rollouts"):
        import services.training.ppo.rollouts as rollouts

        old, rollouts.WAIT_LOG_S = rollouts.WAIT_LOG_S, 0.0
        try:
            assert planner.collect(0) is None  # stopped while waiting
        finally:
            rollouts.WAIT_LOG_S = old
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "llamafleet:rollout:tasks:tiny-b" in warned[0]
    assert "add-base /models/tiny-b" in warned[0]

    x.r.xreadgroup("rollout", "worker-1", {x.tasks: ">"}, count=1)
    assert x.task_consumers() == 1

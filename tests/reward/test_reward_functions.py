"""Reward functions end to end in the reward service: weighted sums (computed by hand here),
each function's part reported, the worker dead-lettering an item whose function raises or runs
past its deadline (with the reason) while it goes on with the others, the ListRewardFunctions
and TestRewardFunction RPCs, and the owner's configuration checked at start-up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from llamafleet.common.v1 import common_pb2
from llamafleet.reward.v1 import reward_pb2, reward_service_pb2, reward_service_pb2_grpc
from llamafleet.rollout.v1 import rollout_pb2
from test_reward_service import _details
from test_worker import scored_in, wait_for
from user_rewards import sample_rewards

from services.common import queues
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.server import ServiceHost
from services.reward.config import RewardConfig
from services.reward.functions import FunctionFailed
from services.reward.scorers import ScoreInput
from services.reward.scoring import ScoringEngine
from services.reward.server import build_app
from services.reward.worker import GROUP, RewardWorker

USER_DIR = Path(__file__).parent / "user_rewards"


def functions_file(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "functions.yaml"
    path.write_text(
        f"python_path: [{USER_DIR}]\n"
        "pool: {workers: 2, timeout_s: 5}\n"
        "functions:\n"
        "  length: {call: 'sample_rewards:length_score', description: 'length near a target'}\n"
        "  keywords: {call: 'sample_rewards:keyword_hits'}\n"
        "  flaky: {call: 'sample_rewards:raises'}\n"
        "  slow: {call: 'sample_rewards:spins', timeout_s: 0.5}\n" + extra,
        encoding="utf-8",
    )
    return str(path)


def ref(name: str, weight: float | None = None, label: str = "", **args):
    r = common_pb2.RewardFunctionRef(name=name, label=label)
    if weight is not None:
        r.weight = weight
    if args:
        r.args.update(args)
    return r


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = functions_file(tmp_path_factory.mktemp("fns"))
    e = ScoringEngine.from_config(RewardConfig(functions_file=path, whiten=False))
    e.functions.start()
    yield e
    e.close()


def test_a_weighted_sum_by_hand_with_each_part_reported(engine):
    # "abcdef" with reference "abcdef":
    #   length(target=4)          = -|6 - 4| / 4 = -0.5     x 2.0  = -1.0
    #   exact_match               = 1.0                      x 0.5  =  0.5
    #   keywords(["ab", "zz"])    = 1 hit of 2 = 0.5         x -1.0 = -0.5
    #   math_verify (unset w = 1) : "abcdef" has no number -> 0.0     =  0.0
    # sum = -1.0
    refs = [ref("length", 2.0, target=4), ref("exact_match", 0.5),
            ref("keywords", -1.0, label="kw", keywords=["ab", "zz"]), ref("math_verify")]  # fmt: skip
    calls = engine.function_calls("functions", refs, "functions")
    item = ScoreInput(item_id="a", completion_text="abcdef", reference_answer="abcdef")
    scored = engine.score("functions", "", None, [item], calls=calls)
    assert scored.raw == [pytest.approx(-1.0)]
    parts = {c.label: c for c in scored.components[0]}
    assert [c.label for c in scored.components[0]] == ["length", "exact_match", "kw", "math_verify"]
    assert parts["length"].score == pytest.approx(
        sample_rewards.length_score(completion="abcdef", target=4)
    )
    assert (parts["kw"].name, parts["kw"].weight, parts["kw"].score) == ("keywords", -1.0, 0.5)
    assert parts["kw"].sub_scores == {"hits": 1.0, "ref_in": 1.0}
    assert parts["math_verify"].detail == "no answer found"


def test_normalisation_and_clipping_apply_to_the_sum(engine):
    from services.reward.job_settings import JobSettings

    calls = engine.function_calls("functions", [ref("length", 3.0, target=1)], "f")
    item = ScoreInput(completion_text="abcde")  # length = -4 -> sum -12
    settings = JobSettings(scale=0.5, clip=5.0)
    scored = engine.score("functions", "job-n", None, [item], calls=calls, override=settings)
    assert scored.raw == [pytest.approx(-12.0)]
    assert scored.normalized == [pytest.approx(-5.0)]  # 0.5 * -12 = -6, clipped to -5


def test_a_function_named_as_the_scorer_is_a_sum_of_one(engine):
    calls = engine.function_calls("exact_match", [], "f")
    assert calls is None  # a scorer of the table stays one
    calls = engine.function_calls("length", [], "f")
    scored = engine.score("length", "", None, [ScoreInput(completion_text="x" * 10)], calls=calls)
    assert scored.raw == [0.0] and scored.components[0][0].label == "length"


def test_bad_function_lists_are_invalid_with_field_paths(engine):
    with pytest.raises(InvalidArgument) as err:
        engine.function_calls(
            "functions",
            [ref("nope"), ref("exact_match"), ref("exact_match"), ref("math_verify", extractr="x")],
            "task.reward_settings.functions",
        )
    fields = {v.field: v.description for v in err.value.violations}
    assert "unknown reward function 'nope'" in fields["task.reward_settings.functions[0].name"]
    assert "math_verify" in fields["task.reward_settings.functions[0].name"]  # what is offered
    assert "used twice" in fields["task.reward_settings.functions[2].label"]
    assert "no argument 'extractr'" in fields["task.reward_settings.functions[3].args"]
    with pytest.raises(InvalidArgument, match="at least one"):
        engine.function_calls("functions", [], "f")
    with pytest.raises(InvalidArgument, match="only with the scorer 'functions'"):
        engine.function_calls("exact_match", [ref("length")], "f")


def test_a_raising_or_overrunning_function_fails_its_item_with_the_reason(engine):
    for name, reason, text in (
        ("flaky", "REWARD_FUNCTION_RAISED", "raised ValueError: cannot score 'boom spin'"),
        ("slow", "REWARD_FUNCTION_TIMEOUT", "longer than its deadline of 0.5 s"),
    ):
        calls = engine.function_calls(name, [], "f")
        items = [ScoreInput(completion_text="boom spin")]
        with pytest.raises(FunctionFailed) as err:
            engine.score(name, "", None, items, calls=calls)
        assert err.value.reason == reason and text in err.value.message


# --- the worker -----------------------------------------------------------------------------


def rollout(job: str, step: int, completion: str, functions, reference: str = "") -> bytes:
    task = rollout_pb2.RolloutTask(
        item_id=f"{job}:1:{step}:0:0", job_id=job, policy_version=1, step=step,
        scorer="functions", prompt_ids=[5, 6], reference_answer=reference,
    )  # fmt: skip
    task.reward_settings.functions.extend(functions)
    return rollout_pb2.Rollout(
        task=task, completion_ids=[7, 8, 1], completion_text=completion,
        finish_reason=rollout_pb2.FINISH_REASON_STOP,
    ).SerializeToString()  # fmt: skip


def test_the_worker_dead_letters_failing_items_with_the_reason_and_goes_on(engine, redis_url):
    r = queues.connect(redis_url, socket_timeout=3.0)
    fns = [ref("flaky"), ref("slow"), ref("math_verify", 2.0)]
    items = {
        "good-1": ("\\boxed{4}", "4"), "boom": ("boom", "4"), "spin": ("spin", "4"),
        "good-2": ("it is 5", "4"),
    }  # fmt: skip
    for step, (completion, reference) in enumerate(items.values()):
        payload = rollout("fj", step, completion, fns, reference)
        queues.publish(r, queues.ROLLOUT_RESULTS, f"fj:1:{step}:0:0", payload)
    queues.publish(r, queues.ROLLOUT_RESULTS, "fj:1:9:0:0", rollout("fj", 9, "x", [ref("nope")]))
    worker = RewardWorker(engine, r, threads=2, lease_ms=300, max_deliveries=2, block_ms=50,
                          consumer_prefix="fn-test")  # fmt: skip
    worker.start()
    try:
        wait_for(lambda: r.xlen(queues.DEADLETTER) == 3, timeout=60, what="3 dead letters")
        wait_for(lambda: len(scored_in(r, "fj")) == 2, what="2 scored rollouts")
        wait_for(lambda: r.xpending(queues.ROLLOUT_RESULTS, GROUP)["pending"] == 0, what="acks")
    finally:
        worker.stop()
    scored = scored_in(r, "fj")
    assert scored["fj:1:0:0:0"].raw_score == pytest.approx(1 + 1 + 2 * 1.0)
    assert scored["fj:1:3:0:0"].raw_score == pytest.approx(1 + 1 + 2 * 0.0)
    parts = {c.label: c for c in scored["fj:1:0:0:0"].components}
    assert set(parts) == {"flaky", "slow", "math_verify"} and parts["math_verify"].weight == 2.0
    reasons = {f[b"id"].decode(): f[b"reason"].decode() for _e, f in r.xrange(queues.DEADLETTER)}
    assert "reward function 'flaky' raised ValueError: cannot score 'boom'" in reasons["fj:1:1:0:0"]
    assert "reward function 'slow' failed: took longer than its deadline" in reasons["fj:1:2:0:0"]
    assert "unknown reward function 'nope'" in reasons["fj:1:9:0:0"]
    assert worker.failure is None  # the worker itself never stopped
    r.close()


# --- the RPCs and the configuration ---------------------------------------------------------


def _serve(config: RewardConfig, scenario):
    async def main():
        app = build_app(config)
        host = ServiceHost("reward", config, app.register)
        await host.start()
        try:
            async with grpc.aio.insecure_channel(host.address) as channel:
                return await scenario(reward_service_pb2_grpc.RewardServiceStub(channel))
        finally:
            await host.stop(grace=0)
            app.close()

    return asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_list_and_test_rpcs(tmp_path):
    config = RewardConfig(
        functions_file=functions_file(tmp_path), shutdown_delay_s=0.0, grace_s=0.5,
        worker_threads=0,
    )  # fmt: skip

    async def scenario(stub):
        listed = await stub.ListRewardFunctions(reward_service_pb2.ListRewardFunctionsRequest())
        by_name = {f.name: f for f in listed.functions}
        assert [f.name for f in listed.functions] == sorted(by_name)
        assert by_name["length"].kind == reward_service_pb2.REWARD_FUNCTION_KIND_USER
        assert by_name["length"].source == "sample_rewards:length_score"
        assert by_name["length"].description == "length near a target"
        assert by_name["slow"].timeout.ToMilliseconds() == 500
        assert by_name["math_verify"].kind == reward_service_pb2.REWARD_FUNCTION_KIND_BUILTIN
        assert by_name["code_tests"].kind == reward_service_pb2.REWARD_FUNCTION_KIND_SANDBOX
        assert by_name["exact_match"].available

        item = reward_pb2.ScoreItem(completion_text="So \\boxed{1/2}", reference_answer="0.5")
        reply = await stub.TestRewardFunction(reward_service_pb2.TestRewardFunctionRequest(
            functions=[ref("math_verify", 3.0), ref("length", target=14)], item=item))  # fmt: skip
        assert reply.score == pytest.approx(3.0)
        assert [c.label for c in reply.components] == ["math_verify", "length"]
        assert "equals the reference" in reply.components[0].detail

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.TestRewardFunction(reward_service_pb2.TestRewardFunctionRequest(
                functions=[ref("flaky")], item=reward_pb2.ScoreItem(completion_text="boom")))  # fmt: skip
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _details(err.value)[0] == "REWARD_FUNCTION_RAISED"
        assert "cannot score 'boom'" in err.value.details()

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.TestRewardFunction(reward_service_pb2.TestRewardFunctionRequest(
                functions=[ref("regex")], item=item))  # fmt: skip
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(err.value)[1] == ["functions[0].args.pattern"]

        scored = await stub.ScoreRollouts(reward_service_pb2.ScoreRolloutsRequest(
            scorer="functions", items=[item], reward_settings=common_pb2.RewardSettings(
                functions=[ref("format_json"), ref("math_verify", 0.25)])))  # fmt: skip
        assert scored.scores[0].raw_score == pytest.approx(0.25)
        assert [c.name for c in scored.scores[0].components] == ["format_json", "math_verify"]

    _serve(config, scenario)


def test_the_owners_configuration_is_checked_at_start_up(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("functions:\n  f: {cal: 'x:y'}\n", encoding="utf-8")
    with pytest.raises(
        FailedPrecondition, match=r"functions.f: unknown key 'cal'; did you mean 'call'"
    ):
        build_app(RewardConfig(functions_file=str(bad_key), worker_threads=0))
    clash = tmp_path / "clash.yaml"
    clash.write_text("functions:\n  math_verify: {call: 'x:y'}\n", encoding="utf-8")
    with pytest.raises(FailedPrecondition, match="'math_verify' is already offered"):
        build_app(RewardConfig(functions_file=str(clash), worker_threads=0))
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        f"python_path: [{USER_DIR}]\nfunctions:\n  g: {{call: 'sample_rewards:nope'}}\n",
        encoding="utf-8",
    )
    start = time.monotonic()
    with pytest.raises(FailedPrecondition, match="sample_rewards:nope: AttributeError"):
        build_app(RewardConfig(functions_file=str(missing), worker_threads=0))
    assert time.monotonic() - start < 60
    assert struct_pb2  # Struct is how args travel


def test_functions_of_an_entry_point_group_are_offered_and_run(tmp_path, monkeypatch):
    dist = tmp_path / "owner_rewards-1.0.dist-info"  # an installed package declaring a function
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: owner-rewards\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[owner.rewards]\nkeyword-hits = sample_rewards:keyword_hits\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # where the metadata is found (no import)
    path = tmp_path / "functions.yaml"
    path.write_text(f"python_path: [{USER_DIR}]\nentry_point_group: owner.rewards\n")
    engine = ScoringEngine.from_config(RewardConfig(functions_file=str(path)))
    try:
        spec = engine.functions.config.functions["keyword-hits"]
        assert (spec.source, spec.target) == (
            "entry point owner.rewards",
            "sample_rewards:keyword_hits",
        )
        calls = engine.function_calls("functions", [ref("keyword-hits", keywords=["a", "b"])], "f")
        item = ScoreInput(completion_text="a c", reference_answer="c")
        scored = engine.score("functions", "", None, [item], calls=calls)
        direct = sample_rewards.keyword_hits("a c", "c", keywords=["a", "b"])
        assert scored.raw == [direct[0]]
        assert scored.components[0][0].sub_scores == direct[1]
    finally:
        engine.close()

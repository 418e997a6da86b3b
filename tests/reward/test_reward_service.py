"""ScoreRollouts through a real grpc.aio server on a loopback port: rule scorers without any
model, errors with google.rpc details, reward models by config and by adapter, batching across
concurrent callers, and per-job normalisation."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llamafleet.common.v1 import common_pb2
from llamafleet.reward.v1 import reward_pb2, reward_service_pb2, reward_service_pb2_grpc

from services.common.server import ServiceHost
from services.reward.config import RewardConfig
from services.reward.server import build_app

TOL = 1e-5
EOS = 1
BASE_CONFIG = RewardConfig(shutdown_delay_s=0.0, grace_s=0.5, worker_threads=0)


def _run(scenario, config: RewardConfig):
    async def main():
        app = build_app(config)
        host = ServiceHost("reward", config, app.register)
        await host.start()
        try:
            async with grpc.aio.insecure_channel(host.address) as channel:
                return await scenario(reward_service_pb2_grpc.RewardServiceStub(channel), app)
        finally:
            await host.stop(grace=0)
            app.close()

    return asyncio.run(asyncio.wait_for(main(), timeout=120))


def _details(err: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    status = rpc_status.from_call(err)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    reason = info.reason if status.details[0].Unpack(info) else ""
    fields = []
    if len(status.details) > 1 and status.details[1].Unpack(bad):
        fields = [v.field for v in bad.field_violations]
    return reason, fields


def _request(scorer: str, items, **kw) -> reward_service_pb2.ScoreRolloutsRequest:
    return reward_service_pb2.ScoreRolloutsRequest(scorer=scorer, items=items, **kw)


def test_without_models_rule_scorers_work_and_reward_model_says_what_to_configure():
    async def scenario(stub, app):
        reply = await stub.ScoreRollouts(
            _request(
                "exact_match",
                [
                    reward_pb2.ScoreItem(item_id="a", completion_text="42", reference_answer="42"),
                    reward_pb2.ScoreItem(item_id="b", completion_text="41", reference_answer="42"),
                ],
            ),
            timeout=10,
        )
        assert reply.scorer == "exact_match"
        assert [(s.item_id, s.raw_score, s.normalized_score) for s in reply.scores] == [
            ("a", 1.0, 1.0),
            ("b", 0.0, 0.0),
        ]
        item = reward_pb2.ScoreItem(completion_ids=[5, 6, EOS])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ScoreRollouts(_request("reward_model", [item]), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "reward_model" in err.value.details() and "base_model" in err.value.details()
        assert _details(err.value)[0] == "REWARD_MODEL_NOT_CONFIGURED"
        # ids only, no tokenizer to decode them for a rule scorer
        item = reward_pb2.ScoreItem(completion_ids=[5, 6], reference_answer="x")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ScoreRollouts(_request("exact_match", [item]), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "tokenizer" in err.value.details()

    _run(scenario, BASE_CONFIG)


def test_invalid_requests_name_the_field():
    async def scenario(stub, app):
        item = reward_pb2.ScoreItem(completion_text="x", reference_answer="x")
        cases = [
            (_request("python:eval", [item]), "UNKNOWN_SCORER", ["scorer"]),
            (_request("exact_match", [reward_pb2.ScoreItem(completion_text="x")]),
             "MISSING_REFERENCE_ANSWER", ["items[0].reference_answer"]),
            (_request("reward_model", [item], reward_adapter=common_pb2.AdapterRef(id="rm")),
             "INVALID_ARGUMENT", ["reward_adapter.version"]),
            (_request("exact_match", [item], reward_adapter=common_pb2.AdapterRef(id="rm", version=1)),
             "ADAPTER_NOT_USED", ["reward_adapter"]),
        ]  # fmt: skip
        for request, reason, fields in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ScoreRollouts(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert _details(err.value) == (reason, fields)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ScoreRollouts(_request("nope", [item]), timeout=10)
        assert "valid scorers: contains_answer, exact_match, format_json, regex, reward_model" in (
            err.value.details()
        )

    _run(scenario, BASE_CONFIG)


@pytest.fixture(scope="module")
def model_config(rm_folders) -> RewardConfig:
    return replace(
        BASE_CONFIG,
        reward_model=str(rm_folders.rm_a),
        base_model=str(rm_folders.base),
        adapter_dir=str(rm_folders.adapter_dir),
        max_batch_size=64,
        max_wait_ms=300.0,
    )


def test_concurrent_callers_are_batched_and_each_gets_its_own_scores(model_config):
    sequences = [[0, 5 + i] * (i + 1) + [EOS] for i in range(8)]  # lengths 3 .. 17

    async def scenario(stub, app):
        models = app.engine.models
        alone = [models.score([seq], None)[0] for seq in sequences]
        before = models.forwards

        async def call(i: int):
            item = reward_pb2.ScoreItem(
                item_id=f"c{i}", prompt_ids=sequences[i][:2], completion_ids=sequences[i][2:]
            )
            return await stub.ScoreRollouts(_request("reward_model", [item]), timeout=30)

        replies = await asyncio.gather(*(call(i) for i in range(8)))
        forwards = models.forwards - before
        assert 1 <= forwards < 8
        for i, reply in enumerate(replies):
            [score] = reply.scores
            assert score.item_id == f"c{i}"
            assert score.raw_score == pytest.approx(alone[i], abs=TOL)
            assert score.normalized_score == score.raw_score  # no job: scale 1, no clip

    _run(scenario, model_config)


def test_adapter_named_in_the_request_and_text_items(model_config):
    async def scenario(stub, app):
        models, codec = app.engine.models, app.engine.codec
        ids = [0, 7, 8, 9, EOS]
        item = reward_pb2.ScoreItem(prompt_ids=ids[:2], completion_ids=ids[2:])
        ref_b = common_pb2.AdapterRef(id="rm-b", version=1)
        b = await stub.ScoreRollouts(_request("reward_model", [item], reward_adapter=ref_b))
        assert b.scores[0].raw_score == pytest.approx(models.score([ids], ("rm-b", 1))[0], abs=TOL)
        a = await stub.ScoreRollouts(_request("reward_model", [item]))
        assert abs(a.scores[0].raw_score - b.scores[0].raw_score) > 1e-3

        missing = common_pb2.AdapterRef(id="rm-b", version=9)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ScoreRollouts(_request("reward_model", [item], reward_adapter=missing))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        text = reward_pb2.ScoreItem(prompt_text="What is 2+2?", completion_text=" 4")
        got = await stub.ScoreRollouts(_request("reward_model", [text]))
        expected_ids = codec.encode_prompt("What is 2+2?") + codec.encode_completion(" 4")
        assert expected_ids[-1] == EOS
        assert got.scores[0].raw_score == pytest.approx(
            models.score([expected_ids], None)[0], abs=TOL
        )

        # ids only, for a rule scorer: decoded with the base tokenizer (special tokens skipped)
        answer = list(codec.encode_completion("so 42"))
        decoded = reward_pb2.ScoreItem(completion_ids=answer, reference_answer="42")
        got = await stub.ScoreRollouts(_request("contains_answer", [decoded]))
        assert answer[-1] == EOS and got.scores[0].raw_score == 1.0

        too_big = reward_pb2.ScoreItem(completion_ids=[5, 100_000, EOS])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ScoreRollouts(_request("reward_model", [item, too_big]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(err.value)[1] == ["items[1].completion_ids"]

    _run(scenario, model_config)


def test_job_scores_are_whitened_with_running_statistics_scaled_and_clipped():
    config = replace(BASE_CONFIG, whiten=True, scale=2.0, clip=1.5)

    async def scenario(stub, app):
        def items(*answers):
            return [
                reward_pb2.ScoreItem(completion_text=a, reference_answer="yes") for a in answers
            ]

        # Batch [1, 0, 0, 0]: mean 0.25, std 0.433 -> 1 whitens to 1.732 -> x2 = 3.46 -> clip 1.5;
        # 0 -> -0.577 -> -1.155.
        reply = await stub.ScoreRollouts(
            _request("exact_match", items("yes", "no", "no", "no"), job_id="j1")
        )
        normalized = [s.normalized_score for s in reply.scores]
        assert normalized == pytest.approx([1.5, -1.1547005, -1.1547005, -1.1547005])
        assert app.engine.normalizer.stats("j1").count == 4
        # No job: no statistics, just scale and clip.
        reply = await stub.ScoreRollouts(_request("exact_match", items("yes", "no")))
        assert [s.normalized_score for s in reply.scores] == [1.5, 0.0]

    _run(scenario, config)


def test_settings_carried_by_the_request_override_the_services():
    config = replace(BASE_CONFIG, whiten=False, scale=1.0, clip=0.0)

    async def scenario(stub, app):
        items = [
            reward_pb2.ScoreItem(completion_text=a, reference_answer="yes")
            for a in ("yes", "no", "no", "no")
        ]
        carried = common_pb2.RewardSettings(whiten=True, scale=2.0, clip=1.5)
        request = _request("exact_match", items, job_id="j2", reward_settings=carried)
        reply = await stub.ScoreRollouts(request)
        # as the service-configured whitening above: the request's settings applied
        normalized = [s.normalized_score for s in reply.scores]
        assert normalized == pytest.approx([1.5, -1.1547005, -1.1547005, -1.1547005])
        # the regex rule reads its pattern from the request too
        pattern = common_pb2.RewardSettings(regex_pattern=r"^y", ignore_case=True)
        reply = await stub.ScoreRollouts(
            _request("regex", items[:2], job_id="j3", reward_settings=pattern)
        )
        assert [s.raw_score for s in reply.scores] == [1.0, 0.0]
        # a bad pattern is the caller's error, named
        bad = common_pb2.RewardSettings(regex_pattern="(unclosed")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ScoreRollouts(_request("regex", items[:1], reward_settings=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(err.value)[1] == ["reward_settings.regex_pattern"]

    _run(scenario, config)

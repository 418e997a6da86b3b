"""RolloutService over a real grpc.aio server (port 0) with the hf engine and a fake training
service: streamed tokens and log-probs, sampling validation with field paths, adapters fetched on
first use, ListAdapters order, and FAILED_PRECONDITION without a base model."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fake_training import TrainingServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llamafleet.common.v1 import common_pb2
from llamafleet.rollout.v1 import rollout_pb2, rollout_service_pb2, rollout_service_pb2_grpc

from services.common.server import ServiceHost
from services.rollout.config import RolloutConfig
from services.rollout.generator import Generator
from services.rollout.server import SERVICE_NAME
from services.rollout.servicer import RolloutServicer

pb = rollout_service_pb2


@pytest.fixture(scope="module")
def training(adapter_dirs):
    with TrainingServer() as server:
        server.servicer.add("policy", 1, adapter_dirs["a1"])
        server.servicer.add("policy", 2, adapter_dirs["a2"])
        yield server


@pytest.fixture(scope="module")
def generator(tiny_model, training, tmp_path_factory) -> Generator:
    config = RolloutConfig(
        base_model=str(tiny_model),
        device="cpu",
        training_address=training.address,
        adapter_cache_dir=str(tmp_path_factory.mktemp("adapter-cache")),
        max_resident_adapters=2,
        max_tokens_limit=64,
        default_max_tokens=16,
    )
    return Generator(config)


def serve(generator: Generator, coro_fn):
    async def scenario():
        def register(server):
            rollout_service_pb2_grpc.add_RolloutServiceServicer_to_server(
                RolloutServicer(generator.config, generator), server
            )
            return [SERVICE_NAME]

        host = ServiceHost("rollout", RolloutConfig(shutdown_delay_s=0, grace_s=1), register)
        await host.start()
        try:
            async with grpc.aio.insecure_channel(host.address) as channel:
                return await coro_fn(rollout_service_pb2_grpc.RolloutServiceStub(channel))
        finally:
            await host.stop(grace=0)

    return asyncio.run(asyncio.wait_for(scenario(), timeout=120))


async def generate(stub, **kw) -> list[pb.GenerateResponse]:
    return [r async for r in stub.Generate(pb.GenerateRequest(**kw), timeout=60)]


def field_violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [v.field for v in bad.field_violations]
    return out


def test_generate_streams_tokens_then_one_finished_per_sequence(generator):
    sampling = rollout_pb2.SamplingParams(temperature=0.8, seed=5, max_tokens=12, n=2)

    async def run(stub):
        return await generate(stub, prompt_text="Once upon a time", sampling=sampling)

    responses = serve(generator, run)
    for index in (0, 1):
        seq = [r for r in responses if r.sequence_index == index]
        assert [r.WhichOneof("event") for r in seq] == ["tokens"] * (len(seq) - 1) + ["finished"]
        ids = [t for r in seq[:-1] for t in r.tokens.token_ids]
        logprobs = [x for r in seq[:-1] for x in r.tokens.logprobs]
        assert len(ids) == len(logprobs) == seq[-1].finished.completion_tokens > 0
        assert all(len(r.tokens.token_ids) <= 1 for r in seq[:-1])  # one token per message
        assert seq[-1].finished.prompt_tokens == len(generator.engine.tokenize("Once upon a time"))
        assert seq[-1].finished.finish_reason in (
            rollout_pb2.FINISH_REASON_STOP, rollout_pb2.FINISH_REASON_LENGTH
        )  # fmt: skip
    # the same seed reproduces the stream
    again = serve(generator, run)
    assert [r.SerializeToString() for r in again] == [r.SerializeToString() for r in responses]


def test_invalid_sampling_reports_every_field_path(generator):
    bad = rollout_pb2.SamplingParams(top_p=1.5, temperature=-1, max_tokens=10_000)

    async def run(stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, prompt_ids=[1, 2, 3], sampling=bad)
        return err.value

    err = serve(generator, run)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err)) == {
        "sampling.top_p", "sampling.temperature", "sampling.max_tokens"
    }  # fmt: skip


def test_top_logprobs_details_and_structured_output_refusal(generator):
    """``top_logprobs``: each streamed token with its text and k ranked alternatives, the first
    being the chosen token under greedy decoding; bad bounds and a non-object schema are named;
    JSON output on the hf engine (no constrained decoding) is UNIMPLEMENTED naming the field."""
    greedy = rollout_pb2.SamplingParams(temperature=0, max_tokens=5, top_logprobs=4)

    async def run(stub):
        out = await generate(stub, prompt_text="Once upon a time", sampling=greedy)
        errors = []
        for sampling in (
            rollout_pb2.SamplingParams(top_logprobs=21),
            rollout_pb2.SamplingParams(
                structured_output=rollout_pb2.StructuredOutput(json_schema="[1, 2]")
            ),
            rollout_pb2.SamplingParams(
                structured_output=rollout_pb2.StructuredOutput(json_object=True)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await generate(stub, prompt_ids=[1, 2], sampling=sampling)
            errors.append(err.value)
        return out, errors

    responses, errors = serve(generator, run)
    deltas = [r.tokens for r in responses if r.HasField("tokens") and r.tokens.token_ids]
    assert len(deltas) == 5
    for delta in deltas:
        (token,), (logprob,), (detail,) = delta.token_ids, delta.logprobs, delta.details
        assert detail.token == generator.engine.tokenizer.decode([token])
        assert detail.token_bytes == detail.token.encode()
        assert len(detail.top) == 4 and detail.top[0].token_id == token
        assert detail.top[0].logprob == pytest.approx(logprob)
        assert [t.logprob for t in detail.top] == sorted(
            (t.logprob for t in detail.top), reverse=True
        )
    assert [e.code() for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT] * 2 + [
        grpc.StatusCode.UNIMPLEMENTED
    ]
    assert field_violations(errors[0]) == ["sampling.top_logprobs"]
    assert field_violations(errors[1]) == ["sampling.structured_output.json_schema"]
    assert field_violations(errors[2]) == ["sampling.structured_output"]
    assert "vllm" in errors[2].details()


@pytest.mark.parametrize(
    ("request_kw", "field"),
    [
        ({}, "prompt_ids"),
        ({"prompt_ids": [1], "prompt_text": "x"}, "prompt_ids"),
        ({"prompt_ids": [1, 999_999]}, "prompt_ids[1]"),
        ({"prompt_ids": [1], "adapter": common_pb2.AdapterRef(id="policy")}, "adapter.version"),
    ],
)
def test_bad_requests_are_invalid_argument(generator, request_kw, field):
    async def run(stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, **request_kw)
        return err.value

    err = serve(generator, run)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(err)


def test_adapters_load_list_and_missing_version(generator, training):
    policy = common_pb2.AdapterRef(id="policy", version=1)
    greedy = rollout_pb2.SamplingParams(temperature=0, max_tokens=8)

    async def run(stub):
        base = await generate(stub, prompt_ids=[0, 5, 6, 7], sampling=greedy)
        # Generate fetches a missing version itself
        tuned = await generate(stub, prompt_ids=[0, 5, 6, 7], sampling=greedy, adapter=policy)
        loaded = await stub.LoadAdapter(
            pb.LoadAdapterRequest(adapter=common_pb2.AdapterRef(id="policy", version=2)),
            timeout=60,
        )
        listed = await stub.ListAdapters(pb.ListAdaptersRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.LoadAdapter(
                pb.LoadAdapterRequest(adapter=common_pb2.AdapterRef(id="policy", version=9)),
                timeout=60,
            )
        return base, tuned, loaded, listed, err.value

    base, tuned, loaded, listed, err = serve(generator, run)
    ids = lambda rs: [t for r in rs if r.HasField("tokens") for t in r.tokens.token_ids]  # noqa: E731
    assert ids(base) != ids(tuned)
    assert tuned[-1].finished.adapter_version == 1 and base[-1].finished.adapter_version == 0
    assert loaded.adapter.adapter.version == 2 and len(loaded.adapter.sha256) == 64
    assert [(a.adapter.id, a.adapter.version) for a in listed.adapters] == [
        ("policy", 2), ("policy", 1)
    ]  # fmt: skip
    assert err.code() == grpc.StatusCode.NOT_FOUND and "policy@9" in err.details()


def test_without_base_model_generate_is_failed_precondition(tmp_path):
    generator = Generator(RolloutConfig(adapter_cache_dir=str(tmp_path / "cache")))

    async def run(stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, prompt_ids=[1, 2])
        listed = await stub.ListAdapters(pb.ListAdaptersRequest(), timeout=5)
        return err.value, listed

    err, listed = serve(generator, run)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "base_model" in err.details()
    assert list(listed.adapters) == []

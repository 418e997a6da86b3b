"""The DataService over real gRPC (in-process server on a loopback port, real client channel)."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as pb
from llamafleet.data.v1 import data_service_pb2_grpc as pb_grpc

from .conftest import sharegpt_record, write_jsonl


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.DataServiceStub(channel)


def spec(model_dir: str, path, **kw) -> d.DatasetSpec:
    s = d.DatasetSpec(
        sources=[
            d.DatasetSource(
                files=d.FileSource(paths=[str(path)]),
                format=d.FormatOptions(format=d.DATASET_FORMAT_SHAREGPT),
            )
        ],
        tokenization=d.TokenizationOptions(tokenizer_path=model_dir, cutoff_len=128),
        **kw,
    )
    s.tokenization.template.name = "qwen"
    s.tokenization.template.default_system = "You are a helpful assistant."  # short rows
    return s


def violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    out = []
    for detail in rpc_status.from_call(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def test_preview_marks_trained_spans(stub, model_dir):
    record = struct_pb2.Struct()
    record.update({"instruction": "Say hi", "output": "Hi there"})
    request = pb.PreviewExampleRequest(
        record=record,
        format=d.FormatOptions(format=d.DATASET_FORMAT_ALPACA),
        tokenization=d.TokenizationOptions(tokenizer_path=model_dir),
    )
    request.tokenization.template.name = "chatml"
    response = stub.PreviewExample(request)
    assert response.kind == d.EXAMPLE_KIND_SFT
    (seq,) = response.sequences
    assert seq.text.endswith("<|im_start|>assistant\nHi there<|im_end|>\n")
    assert list(seq.trained_texts) == ["Hi there<|im_end|>\n"]
    span = seq.trained_spans[0]
    assert all(seq.labels[i] == seq.input_ids[i] for i in range(span.start, span.end))
    assert set(seq.labels[: span.start]) == {-100}

    request.tokenization.template.name = "chatml3"
    with pytest.raises(grpc.RpcError) as info:
        stub.PreviewExample(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chatml" in info.value.details() and "llama3" in info.value.details()


def test_prepare_get_list_and_idempotency(stub, model_dir, tmp_path):
    records = [sharegpt_record(i, turns=1 + i % 3, words=2 + i % 7) for i in range(40)]
    records.insert(
        5, {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}
    )
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    s = spec(model_dir, path, packing=True, eval_fraction=0.2, seed=3)
    ds = stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="chat", spec=s)).dataset
    assert ds.id == "chat" and ds.kind == d.EXAMPLE_KIND_SFT
    st = ds.stats
    assert (
        st.source_rows == 41
        and st.examples == 40
        and dict(st.dropped_rows) == {"invalid_role_order": 1}
    )
    assert [x.split for x in ds.splits] == [d.SPLIT_TRAIN, d.SPLIT_EVAL]
    assert sum(x.stats.examples for x in ds.splits) == 40 and ds.splits[1].stats.examples > 0
    assert st.rows < st.examples  # packed
    assert st.padding_fraction == pytest.approx(1 - st.tokens / (st.rows * 128))
    assert 0 < st.trained_tokens < st.tokens
    # same id + same spec: the same dataset, not a second preparation
    again = stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="chat", spec=s)).dataset
    assert again.create_time == ds.create_time and again.fingerprint == ds.fingerprint
    other = spec(model_dir, path, packing=False)
    with pytest.raises(grpc.RpcError) as info:
        stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="chat", spec=other))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert stub.GetDataset(pb.GetDatasetRequest(dataset_id="chat")).dataset == ds
    unpacked = stub.PrepareDataset(pb.PrepareDatasetRequest(spec=other)).dataset
    assert unpacked.id.startswith("ds-") and unpacked.stats.rows == 40
    listed = stub.ListDatasets(pb.ListDatasetsRequest(page_size=1))
    assert [x.id for x in listed.datasets] == [unpacked.id] and listed.next_page_token
    page2 = stub.ListDatasets(
        pb.ListDatasetsRequest(page_size=1, page_token=listed.next_page_token)
    )
    assert [x.id for x in page2.datasets] == ["chat"] and not page2.next_page_token
    with pytest.raises(grpc.RpcError) as info:
        stub.GetDataset(pb.GetDatasetRequest(dataset_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_rows_fail_policy_and_bad_registry_entry(stub, model_dir, tmp_path):
    records = [sharegpt_record(0), {"conversations": [{"from": "robot", "value": "x"}]}]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    s = spec(model_dir, path, bad_row_policy=d.BAD_ROW_POLICY_FAIL)
    with pytest.raises(grpc.RpcError) as info:
        stub.PrepareDataset(pb.PrepareDatasetRequest(spec=s))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(info.value)[0][0] == "bad.jsonl:2:conversations[0].from"
    (tmp_path / "dataset_info.json").write_text(json.dumps({"chat": {"file_name": "bad.jsonl"}}))
    s = spec(model_dir, path)
    s.sources[0].ClearField("files")
    s.sources[0].registry.name = "chta"
    with pytest.raises(grpc.RpcError) as info:
        stub.PrepareDataset(pb.PrepareDatasetRequest(spec=s))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "did you mean 'chat'" in info.value.details()


def _stream(stub, **kw) -> list[pb.StreamBatchesResponse]:
    return list(stub.StreamBatches(pb.StreamBatchesRequest(**kw), timeout=60))


def _ids(responses) -> list[list[str]]:
    return [[e for r in resp.batch.rows for e in r.example_ids] for resp in responses]


@pytest.mark.parametrize("streaming", [False, True])
def test_stream_batches_ranks_determinism_and_resume(stub, model_dir, tmp_path, streaming):
    records = [sharegpt_record(i, turns=1 + i % 2, words=2 + i % 9) for i in range(60)]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    s = spec(model_dir, path, packing=True, streaming=streaming)
    ds = stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="s", spec=s)).dataset
    assert ds.stats.estimated == streaming
    common = dict(dataset_id="s", world_size=2, seed=7, batch_rows=2)
    r0 = _stream(stub, rank=0, **common)
    r1 = _stream(stub, rank=1, **common)
    assert len(r0) == len(r1) > 1
    seen0 = {e for b in _ids(r0) for e in b}
    seen1 = {e for b in _ids(r1) for e in b}
    assert not seen0 & seen1  # each rank its own shard
    assert _ids(_stream(stub, rank=0, **common)) == _ids(r0)  # deterministic for a seed
    assert _ids(_stream(stub, rank=0, epoch=1, **common)) != _ids(r0)  # reshuffled per epoch
    resumed = _stream(stub, rank=0, cursor=r0[1].cursor, **common)
    assert _ids(resumed) == _ids(r0)[2:] and [x.batch.index for x in resumed] == list(
        range(2, len(r0))
    )
    row = r0[0].batch.rows[0]
    assert row.cu_seqlens[0] == 0 and row.cu_seqlens[-1] == len(row.input_ids) <= 128
    starts = set(row.cu_seqlens[:-1])
    assert all((p == 0) == (i in starts) for i, p in enumerate(row.position_ids))
    assert r0[0].batch.tokens == sum(len(r.input_ids) for r in r0[0].batch.rows)
    with pytest.raises(grpc.RpcError) as info:
        _stream(stub, rank=0, cursor=r0[1].cursor, **{**common, "seed": 8})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("streaming", [False, True])
def test_count_only_answers_the_streamed_count_without_sending_rows(
    stub, server, model_dir, tmp_path, streaming
):
    """``count_only`` is one response with ``num_batches`` and no batch, equal to the number of
    batches the same request streams: by rows and by token budget, one rank and two, the eval
    split, another epoch; the cursor is ignored. The training side asks it instead of streaming
    the epoch (``DataServiceSource.count``)."""
    records = [sharegpt_record(i, turns=1 + i % 2, words=2 + i % 9) for i in range(60)]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    s = spec(model_dir, path, packing=True, streaming=streaming, eval_fraction=0.25)
    stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="c", spec=s))
    plans = [
        dict(batch_rows=2),
        dict(batch_rows=3, world_size=2, rank=1),
        dict(batch_tokens=300, world_size=2, rank=0),
        dict(batch_rows=2, split=d.SPLIT_EVAL),
        dict(batch_rows=4, epoch=1),
    ]
    for plan in plans:
        common = dict(dataset_id="c", seed=7, **plan)
        streamed = _stream(stub, **common)
        (answer,) = _stream(stub, count_only=True, **common)
        assert answer.num_batches == len(streamed) > 0, plan
        assert not answer.HasField("batch") and not answer.cursor
        again = _stream(stub, count_only=True, cursor=streamed[0].cursor, **common)
        assert [a.num_batches for a in again] == [len(streamed)]

    from llamafleet.client import Client

    from services.training.loop.batches import DataServiceSource, StreamRequest

    class RecordingClient:  # records what each StreamBatches call returned
        def __init__(self, client):
            self.client, self.data, self.calls = client, self, []

        def StreamBatches(self, request, **kw):
            messages = list(self.client.data.StreamBatches(request, **kw))
            self.calls.append((request.count_only, len(messages), messages[0].HasField("batch")))
            yield from messages

    with Client({"data": server.address}) as client:
        recording = RecordingClient(client)
        source = DataServiceSource(recording, "c")
        request = StreamRequest(world_size=2, rank=1, batch_rows=3, seed=7)
        counted = source.count(request)
        assert recording.calls == [(True, 1, False)]  # one message, no rows
        assert counted == sum(1 for _ in source.stream(request)) > 0


def test_stream_preference_pairs_and_prompts_by_token_budget(stub, model_dir, tmp_path):
    rows = [
        {"instruction": f"q{i} " * (1 + i % 5), "chosen": "good", "rejected": "bad"}
        for i in range(9)
    ]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    s = spec(model_dir, path)
    s.sources[0].format.format = d.DATASET_FORMAT_PREFERENCE_ALPACA
    stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="p", spec=s))
    batches = _stream(stub, dataset_id="p", batch_tokens=100)
    pairs = [p for b in batches for p in b.batch.pairs]
    assert len(pairs) == 9 and not any(b.batch.rows for b in batches)
    for b in batches:
        longest = max(
            max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in b.batch.pairs
        )
        assert len(b.batch.pairs) * longest <= 100 or len(b.batch.pairs) == 1
    s.sources[0].format.format = d.DATASET_FORMAT_PROMPT
    stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="q", spec=s))
    prompts = [p for b in _stream(stub, dataset_id="q", batch_rows=4) for p in b.batch.prompts]
    assert len(prompts) == 9 and prompts[0].prompt_ids  # one rank: the short last batch too
    for rank in (0, 1):  # 3 batches for 2 ranks: the batch that cannot be split evenly goes
        batches = _stream(stub, dataset_id="q", batch_rows=4, world_size=2, rank=rank)
        assert [len(b.batch.prompts) for b in batches] == [4]


def test_registry_source_with_max_samples_and_pretrain_from_alpaca_columns(
    stub, model_dir, tmp_path
):
    rows = [
        {"instruction": f"q{i}", "output": f"a{i}", "text": f"document {i} " * 30}
        for i in range(20)
    ]
    write_jsonl(tmp_path / "alpaca.jsonl", rows)
    info = {"demo": {"file_name": "alpaca.jsonl"}, "docs": {"file_name": "alpaca.jsonl",
            "columns": {"prompt": "text"}}}  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    s = d.DatasetSpec(
        sources=[d.DatasetSource(registry=d.RegistryEntry(name="demo"), max_samples=5)],
        tokenization=d.TokenizationOptions(tokenizer_path=model_dir, cutoff_len=64),
        seed=1,
    )
    s.tokenization.template.name = "alpaca"
    ds = stub.PrepareDataset(pb.PrepareDatasetRequest(spec=s)).dataset
    assert ds.kind == d.EXAMPLE_KIND_SFT and ds.stats.source_rows == 5 and ds.stats.examples == 5
    s.sources[0].registry.name = "docs"
    s.kind = d.EXAMPLE_KIND_PRETRAIN  # LLaMA-Factory's pt stage reads the `prompt` column
    s.packing = True
    ds = stub.PrepareDataset(pb.PrepareDatasetRequest(spec=s)).dataset
    assert ds.kind == d.EXAMPLE_KIND_PRETRAIN and ds.stats.trained_tokens == ds.stats.tokens
    assert ds.stats.rows >= ds.stats.tokens / 64


def test_streaming_stats_become_exact_after_a_pass_over_each_split(stub, model_dir, tmp_path):
    records = [sharegpt_record(i, turns=1 + i % 3, words=2 + i % 40) for i in range(90)]
    records[5] = {"conversations": [{"from": "robot", "value": "x"}]}
    records[9] = {"conversations": []}
    long_answer = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "because " * 300}]
    records.append({"conversations": long_answer})  # over cutoff_len: truncated
    records.append({"conversations": [{"from": "human", "value": "why " * 300}, long_answer[1]]})
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    stored = stub.PrepareDataset(
        pb.PrepareDatasetRequest(dataset_id="m", spec=spec(model_dir, path, eval_fraction=0.2))
    ).dataset
    s = spec(model_dir, path, eval_fraction=0.2, streaming=True)
    ds = stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id="x", spec=s)).dataset
    assert ds.stats.estimated and all(sp.stats.estimated for sp in ds.splits)
    keys = ("examples", "tokens", "trained_tokens", "truncated_examples", "rows")
    by_split = {sp.split: sp.stats for sp in stored.splits}

    def counts(stats):
        return {k: getattr(stats, k) for k in keys}

    partial = stub.StreamBatches(pb.StreamBatchesRequest(dataset_id="x", batch_rows=1))
    next(partial)  # a pass that stops early counts nothing
    partial.cancel()
    assert stub.GetDataset(pb.GetDatasetRequest(dataset_id="x")).dataset.stats.estimated
    _stream(stub, dataset_id="x", batch_rows=4, world_size=2, rank=1)  # the train split
    ds = stub.GetDataset(pb.GetDatasetRequest(dataset_id="x")).dataset
    train = next(sp.stats for sp in ds.splits if sp.split == d.SPLIT_TRAIN)
    assert not train.estimated and ds.stats.estimated  # the eval split is not counted yet
    # unpacked rows: one per example, so every count equals the materialised dataset's
    assert counts(train) == counts(by_split[d.SPLIT_TRAIN])
    _stream(stub, dataset_id="x", split=d.SPLIT_EVAL, batch_rows=4)
    ds = stub.GetDataset(pb.GetDatasetRequest(dataset_id="x")).dataset
    assert not ds.stats.estimated
    assert counts(ds.stats) == counts(stored.stats)
    assert ds.stats.truncated_examples >= 1
    assert ds.stats.source_rows == stored.stats.source_rows == 92
    assert (
        dict(ds.stats.dropped_rows)
        == dict(stored.stats.dropped_rows)
        == {
            "unknown_role": 1,
            "empty_conversation": 1,
            "too_long_prompt": 1,
        }
    )
    assert ds.stats.padding_fraction == pytest.approx(stored.stats.padding_fraction)

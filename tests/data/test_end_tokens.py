"""The data service names the tokens that end a response (``Dataset.end_token_ids``), and a
preview reads its record as JSON text when given one.

End tokens decide where a reward model is trained and read (``services.common.scored_position``);
they come from the template and the tokenizer, never from a list in the code: ChatML's
``<|im_end|>`` (and its stop word ``<|im_start|>``), the tokenizer's eos.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as pb
from llamafleet.data.v1 import data_service_pb2_grpc as pb_grpc

from services.common.scored_position import scored_index
from services.data.encode import EncodeOptions, Encoder

from .conftest import write_jsonl

EOS = "<|end_of_text|>"  # the tiny tokenizer's eos


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.DataServiceStub(channel)


def ids(tokenizer, *tokens: str) -> tuple[int, ...]:
    return tuple(sorted(tokenizer.convert_tokens_to_ids(list(tokens))))


@pytest.mark.parametrize(
    ("template", "tokens"),
    [
        ("chatml", ("<|im_end|>", "<|im_start|>", EOS)),  # stop words + the tokenizer's eos
        ("qwen", ("<|im_end|>", EOS)),  # replaces the eos with its end of turn
        ("default", (EOS,)),  # ends turns with the tokenizer's eos
        ("", (EOS,)),  # the tokenizer's Jinja template: its eos
    ],
)
def test_end_tokens_come_from_the_template_and_the_tokenizer(tokenizer, template, tokens):
    assert tokenizer.eos_token == EOS
    encoder = Encoder(tokenizer, EncodeOptions(template=template))
    assert encoder.end_token_ids() == ids(tokenizer, *tokens)


def preference_spec(model_dir, path, template="chatml") -> d.DatasetSpec:
    spec = d.DatasetSpec(
        sources=[
            d.DatasetSource(
                files=d.FileSource(paths=[str(path)]),
                format=d.FormatOptions(format=d.DATASET_FORMAT_PREFERENCE_ALPACA),
            )
        ],
        tokenization=d.TokenizationOptions(tokenizer_path=model_dir, cutoff_len=64),
    )
    spec.tokenization.template.name = template
    return spec


def test_a_dataset_names_its_end_tokens_and_a_row_is_scored_before_the_template_text(
    stub, model_dir, tokenizer, tmp_path, server
):
    rows = [{"instruction": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(3)]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    request = pb.PrepareDatasetRequest(dataset_id="p", spec=preference_spec(model_dir, path))
    ds = stub.PrepareDataset(request).dataset
    ends = set(ds.end_token_ids)
    assert ends == set(ids(tokenizer, "<|im_end|>", "<|im_start|>", EOS))
    assert stub.GetDataset(pb.GetDatasetRequest(dataset_id="p")).dataset.end_token_ids == (
        ds.end_token_ids
    )
    stream = pb.StreamBatchesRequest(dataset_id="p", batch_rows=8)
    (pair, *_) = [p for r in stub.StreamBatches(stream) for p in r.batch.pairs]
    row = pair.chosen
    assert tokenizer.decode(row.input_ids[-2:]) == "<|im_end|>\n"  # ChatML's text after the end
    start = next(i for i, y in enumerate(row.labels) if y != -100)
    assert scored_index(list(row.input_ids), start, ends) == len(row.input_ids) - 2

    # a dataset prepared before end tokens were recorded gets them on its next PrepareDataset
    meta_path = tmp_path / "datasets" / "p" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["end_token_ids"]
    meta_path.write_text(json.dumps(meta))
    assert not stub.GetDataset(pb.GetDatasetRequest(dataset_id="p")).dataset.end_token_ids
    again = stub.PrepareDataset(request).dataset
    assert again.end_token_ids == ds.end_token_ids and again.create_time == ds.create_time
    assert json.loads(meta_path.read_text())["end_token_ids"] == list(ds.end_token_ids)


def test_preview_reads_record_json_in_its_key_order_and_refuses_bad_json(stub, model_dir):
    tool = {"name": "f", "description": "d", "parameters": {"type": "object", "maxItems": 3}}
    text = json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": [tool]})
    request = pb.PreviewExampleRequest(
        record_json=text,
        format=d.FormatOptions(format=d.DATASET_FORMAT_OPENAI),
        kind=d.EXAMPLE_KIND_PROMPT,
        tokenization=d.TokenizationOptions(tokenizer_path=model_dir),
    )
    request.tokenization.template.name = "qwen"
    (seq,) = stub.PreviewExample(request).sequences
    assert '{"name": "f", "description": "d", "parameters": {"type": "object", "maxItems": 3}}' in (
        seq.text
    )
    # the Struct form (kept for compatibility) loses both the order and the integer
    record = struct_pb2.Struct()
    record.update(json.loads(text))
    struct_request = pb.PreviewExampleRequest()
    struct_request.CopyFrom(request)
    struct_request.ClearField("record_json")
    struct_request.record.CopyFrom(record)
    (struct_seq,) = stub.PreviewExample(struct_request).sequences
    assert '"maxItems": 3.0' in struct_seq.text and struct_seq.input_ids != seq.input_ids
    # record_json wins when both are set
    struct_request.record_json = text
    assert stub.PreviewExample(struct_request).sequences[0].input_ids == seq.input_ids

    for bad, why in (("{not json", "not JSON"), ("[1, 2]", "one JSON object")):
        request.record_json = bad
        with pytest.raises(grpc.RpcError) as info:
            stub.PreviewExample(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "record_json" in info.value.details() and why in info.value.details()

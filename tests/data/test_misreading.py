"""No silent misreading of LLaMA-Factory's demo data (issue 17).

* ``kto_en_demo``: the ``kto_tag`` column makes a FEEDBACK dataset whose examples carry the
  rating through ``StreamBatches``; the column in any other kind is an error naming it.
* ``mllm_demo``: a record with images (videos, audios) is an error saying multimodal training is
  not supported, never read without its media with ``<image>`` trained as text.
* ``c4_demo`` / ``wiki_demo`` prepared without a kind: an error that says no example came out and
  why (the counts per reason), not a success with 0 examples.

The records below are short excerpts in the demo files' shapes (LLaMA-Factory's data/ folder).
"""

from __future__ import annotations

import json

import grpc
import pytest
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as pb
from llamafleet.data.v1 import data_service_pb2_grpc as pb_grpc

from services.data.formats import FormatSpec, RowError, to_example
from services.data.pipeline import resolve_kind
from services.data.registry import resolve

# dataset_info.json entries as LLaMA-Factory ships them
REGISTRY = {
    "kto_en_demo": {
        "file_name": "kto_en_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"},
    },
    "mllm_demo": {
        "file_name": "mllm_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"},
    },
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
    "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}},
}  # fmt: skip
KTO = [
    {
        "messages": [
            {"role": "user", "content": "Give me a fun fact about cats."},
            {"role": "assistant", "content": "Cats sleep for about two thirds of their lives."},
        ],
        "label": True,
    },
    {
        "messages": [
            {"role": "user", "content": "What is the boiling point of water at sea level?"},
            {"role": "assistant", "content": "It boils at 50 degrees Celsius."},
        ],
        "label": False,
    },
    {
        "messages": [
            {"role": "user", "content": "Name a primary colour."},
            {"role": "assistant", "content": "Green is not one; red is."},
        ],
        "label": True,
    },
]
MLLM = [
    {
        "messages": [
            {"role": "user", "content": "<image>Who are they?"},
            {"role": "assistant", "content": "They're two players of a football team."},
        ],
        "images": ["mllm_demo_data/1.jpg"],
    }
]
C4 = [
    {"text": "Beginners BBQ Class Taking Place in Missoula!"},
    {"text": "Discussion in 'Mac OS X'"},
]
WIKI = "Anarchism is a political philosophy.\nAutism is a developmental disorder.\n"


@pytest.fixture
def demo_dir(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps(REGISTRY))
    (tmp_path / "kto_en_demo.json").write_text(json.dumps(KTO))
    (tmp_path / "mllm_demo.json").write_text(json.dumps(MLLM))
    (tmp_path / "c4_demo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in C4))
    (tmp_path / "wiki_demo.txt").write_text(WIKI)
    return tmp_path


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.DataServiceStub(channel)


def _spec(model_dir, demo_dir, name, kind=0, policy=0, template="chatml") -> d.DatasetSpec:
    s = d.DatasetSpec(
        sources=[d.DatasetSource(registry=d.RegistryEntry(dataset_dir=str(demo_dir), name=name))],
        tokenization=d.TokenizationOptions(tokenizer_path=model_dir, cutoff_len=256),
        kind=kind,
        bad_row_policy=policy,
    )
    s.tokenization.template.name = template
    return s


def test_registry_kto_tag_makes_a_feedback_dataset(demo_dir):
    entry = resolve(str(demo_dir), "kto_en_demo")
    assert entry.format.column("kto_tag") == "label"
    assert resolve_kind([entry.format], "") == "feedback"
    example = to_example(KTO[1], entry.format, "feedback")
    assert example.desirable is False
    assert example.response.content == "It boils at 50 degrees Celsius."
    assert [m.role for m in example.messages] == ["user"]
    with pytest.raises(RowError) as info:
        to_example({**KTO[0], "label": "yes"}, entry.format, "feedback")
    assert (info.value.reason, info.value.field) == ("invalid_kto_tag", "label")


def test_kto_tag_outside_feedback_and_media_are_row_errors_naming_the_column(demo_dir):
    kto = resolve(str(demo_dir), "kto_en_demo").format
    with pytest.raises(RowError) as info:
        to_example(KTO[1], kto, "sft")
    assert (info.value.reason, info.value.field) == ("kto_tag_outside_feedback", "label")
    mllm = resolve(str(demo_dir), "mllm_demo").format
    with pytest.raises(RowError) as info:
        to_example(MLLM[0], mllm, "sft")
    assert (info.value.reason, info.value.field) == ("multimodal_not_supported", "images")
    assert "multimodal training is not supported" in info.value.description
    # files read without a registry: the default column names are checked too
    with pytest.raises(RowError) as info:
        to_example({**MLLM[0], "videos": ["a.mp4"], "images": []}, mllm, "sft")
    assert info.value.field == "videos"
    assert (
        to_example({**MLLM[0], "images": []}, mllm, "sft").messages[0].content.startswith("<image>")
    )  # no media: plain text, nothing dropped
    assert to_example({"instruction": "q", "output": "a"}, FormatSpec("alpaca"), "sft")


@pytest.mark.parametrize("streaming", [False, True], ids=["stored", "streaming"])
def test_kto_dataset_streams_its_ratings(stub, model_dir, demo_dir, streaming):
    spec = _spec(model_dir, demo_dir, "kto_en_demo")
    spec.streaming = streaming
    ds = stub.PrepareDataset(pb.PrepareDatasetRequest(spec=spec)).dataset
    assert ds.kind == d.EXAMPLE_KIND_FEEDBACK and ds.stats.examples == 3
    responses = list(
        stub.StreamBatches(
            pb.StreamBatchesRequest(dataset_id=ds.id, batch_rows=8, shuffle=False), timeout=60
        )
    )
    (batch,) = [r.batch for r in responses]
    assert not batch.rows and not batch.pairs and len(batch.feedback) == 3
    by_id = {f.row.example_ids[0].rsplit(":", 1)[1]: f for f in batch.feedback}
    assert [by_id[str(i)].desirable for i in (1, 2, 3)] == [True, False, True]
    for f in batch.feedback:
        labels, ids = list(f.row.labels), list(f.row.input_ids)
        assert set(labels[: f.prompt_length]) == {-100}
        assert labels[f.prompt_length :] == ids[f.prompt_length :]
        assert list(f.row.cu_seqlens) == [0, len(ids)]
    assert batch.trained_tokens == sum(len(f.row.labels) - f.prompt_length for f in batch.feedback)


def _error(stub, spec) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.PrepareDataset(pb.PrepareDatasetRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return info.value


def test_kto_tag_in_an_sft_dataset_is_refused(stub, model_dir, demo_dir):
    err = _error(
        stub,
        _spec(model_dir, demo_dir, "kto_en_demo", d.EXAMPLE_KIND_SFT, d.BAD_ROW_POLICY_FAIL),
    )
    assert "kto_en_demo.json:1:label" in err.details() and "FEEDBACK" in err.details()
    # skip policy: every row counted under its reason, and then no example is an error too
    err = _error(stub, _spec(model_dir, demo_dir, "kto_en_demo", d.EXAMPLE_KIND_SFT))
    assert "no examples" in err.details() and "kto_tag_outside_feedback: 3" in err.details()


def test_multimodal_records_are_refused(stub, model_dir, demo_dir):
    err = _error(stub, _spec(model_dir, demo_dir, "mllm_demo", policy=d.BAD_ROW_POLICY_FAIL))
    assert "mllm_demo.json:1:images" in err.details()
    assert "multimodal training is not supported" in err.details()
    err = _error(stub, _spec(model_dir, demo_dir, "mllm_demo"))
    assert "multimodal_not_supported: 1" in err.details()


@pytest.mark.parametrize("name", ["c4_demo", "wiki_demo"])
def test_text_corpus_without_a_kind_is_an_error_that_says_why(stub, model_dir, demo_dir, name):
    err = _error(stub, _spec(model_dir, demo_dir, name))
    details = err.details()
    assert "no examples: 2 records read as sft, all dropped (missing_column: 2" in details
    assert "PRETRAIN" in details
    ds = stub.PrepareDataset(
        pb.PrepareDatasetRequest(spec=_spec(model_dir, demo_dir, name, d.EXAMPLE_KIND_PRETRAIN))
    ).dataset
    assert ds.stats.examples == 2

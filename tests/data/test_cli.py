"""``llamafleet data preview|prepare|get|list`` through the real CLI entry point and client,
against a data service started in-process and recorded in a run directory."""

from __future__ import annotations

import json

import pytest
from llamafleet import cli, cluster

from .conftest import sharegpt_record, write_jsonl


@pytest.fixture
def run_dir(server, tmp_path) -> str:
    run = tmp_path / "run"
    run.mkdir()
    state = cluster.ClusterState(str(run), redis_url="redis://unused")
    state.services["data"] = cluster.ServiceProcess("data", 0, server.address)
    state.save()
    return str(run)


def test_preview_json_has_ids_and_masked_labels(run_dir, model_dir, capsys):
    record = json.dumps({"conversations": [
        {"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi!"},
    ]})  # fmt: skip
    argv = ["data", "preview", "--run-dir", run_dir, "--record", record, "--format", "sharegpt"]
    argv += ["--tokenizer", model_dir, "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (seq,) = out["sequences"]
    assert out["kind"] == "sft" and len(seq["input_ids"]) == len(seq["labels"])
    assert -100 in seq["labels"] and seq["trained_texts"] == ["hi!<|im_end|>"]
    trained = [i for i, label in zip(seq["input_ids"], seq["labels"], strict=True) if label != -100]
    assert trained == [label for label in seq["labels"] if label != -100]


def test_prepare_json_stats_and_user_errors(run_dir, model_dir, tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [sharegpt_record(i) for i in range(10)] + [{"x": 1}])
    argv = ["data", "prepare", "--run-dir", run_dir, "--file", str(path), "--format", "sharegpt"]
    argv += ["--tokenizer", model_dir, "--template", "qwen", "--packing", "--cutoff-len", "256"]
    assert cli.main([*argv, "--dataset-id", "cli", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset_id"] == "cli" and out["stats"]["examples"] == 10
    assert out["stats"]["dropped_rows"] == {"missing_column": 1}
    assert 0 <= out["stats"]["padding_fraction"] < 1
    assert cli.main(["data", "get", "cli", "--run-dir", run_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"] == out["stats"]
    assert cli.main(["data", "list", "--run-dir", run_dir]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--template", "qwne"]) == 2
    assert "did you mean 'qwen'" in capsys.readouterr().err
    assert cli.main([*argv, "--bad-rows", "fail"]) == 2
    assert "d.jsonl:11" in capsys.readouterr().err


# A tool whose schema keys are not in alphabetical order ("name", "description", "parameters";
# "type", "properties", "required") and hold an integer: a protobuf Struct would hand the service
# "description", "name", "parameters" and 7.0.
TOOL_RECORD = {
    "messages": [
        {"role": "user", "content": "weather in Oslo for 3 days?"},
        {"role": "assistant", "content": "Calling the tool."},
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "The forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "maximum": 7},
                },
                "required": ["city"],
            },
        }
    ],
}


@pytest.mark.parametrize("template", ["qwen", ""])  # a named template, the tokenizer's Jinja
def test_preview_renders_the_ids_prepare_trains_on_for_a_record_with_tools(
    run_dir, server, model_dir, tmp_path, capsys, template
):
    """``data preview`` and ``data prepare`` on the same record give identical ids (key order and
    integers of the tools' schemas kept), and the text shows the user's key order."""
    from llamafleet.client import Client
    from llamafleet.data.v1 import data_service_pb2

    common = ["--run-dir", run_dir, "--format", "openai", "--tokenizer", model_dir]
    common += ["--template", template] if template else []
    path = write_jsonl(tmp_path / "tools.jsonl", [TOOL_RECORD])
    argv = ["data", "preview", *common, "--record", f"@{path}", "--json"]
    assert cli.main(argv) == 0
    (seq,) = json.loads(capsys.readouterr().out)["sequences"]
    assert seq["text"].index('"name"') < seq["text"].index('"description"')
    assert '"maximum": 7' in seq["text"] or '"maximum":7' in seq["text"]

    argv = ["data", "prepare", *common, "--file", str(path), "--dataset-id", "tools", "--json"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    with Client({"data": server.address}, timeout=30) as client:
        request = data_service_pb2.StreamBatchesRequest(dataset_id="tools", batch_rows=1)
        (row,) = [r for resp in client.data.StreamBatches(request) for r in resp.batch.rows]
    assert list(row.input_ids) == seq["input_ids"]
    assert list(row.labels) == seq["labels"]

"""Record formats, files and the dataset_info.json registry, including the bad-input paths."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.errors import InvalidArgument
from services.data import registry
from services.data.formats import FormatSpec, RowError, to_example
from services.data.pipeline import DataSpec, SourceSpec, Stats, iter_examples
from services.data.sources import expand, iter_records

from .conftest import write_jsonl


def test_alpaca_with_history_and_system():
    record = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "history": [["hi", "hey"]],
    }
    ex = to_example(record, FormatSpec("alpaca"), "sft")
    assert [(m.role, m.content) for m in ex.messages] == [
        ("user", "hi"),
        ("assistant", "hey"),
        ("user", "Translate\nbonjour"),
        ("assistant", "hello"),
    ]
    assert ex.system == "You translate."


def test_openai_messages_with_tool_calls_and_results():
    record = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"function": {"name": "w", "arguments": '{"city": "Paris"}'}},
                    {"function": {"name": "w", "arguments": {"city": "Rome"}}},
                ],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "tool", "content": "rainy"},
            {"role": "assistant", "content": "Sunny in Paris, rainy in Rome."},
        ]
    }
    ex = to_example(record, FormatSpec("openai"), "sft")
    assert ex.system == "sys"
    assert [m.role for m in ex.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c.arguments for c in ex.messages[1].tool_calls] == [
        '{"city": "Paris"}',
        '{"city": "Rome"}',
    ]


def test_preference_pairs_in_both_shapes():
    alpaca = {"instruction": "q", "chosen": "good", "rejected": "bad"}
    ex = to_example(alpaca, FormatSpec("preference_alpaca"), "preference")
    assert (ex.chosen.content, ex.rejected.content) == ("good", "bad")
    sharegpt = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    ex = to_example(sharegpt, FormatSpec("preference_sharegpt"), "preference")
    assert (ex.chosen.content, ex.rejected.content, len(ex.messages)) == ("good", "bad", 1)


def test_custom_columns_and_tags():
    spec = FormatSpec(
        "sharegpt",
        columns={"messages": "dialog", "system": "sys"},
        tags={"role_tag": "speaker", "content_tag": "text", "user_tag": "u", "assistant_tag": "a"},
    )
    record = {
        "sys": "S",
        "dialog": [{"speaker": "u", "text": "hi"}, {"speaker": "a", "text": "yo"}],
    }
    ex = to_example(record, spec, "sft")
    assert ex.system == "S" and [m.content for m in ex.messages] == ["hi", "yo"]


@pytest.mark.parametrize(
    ("record", "reason", "field"),
    [
        ({"conversations": []}, "empty_conversation", "conversations"),
        ({"input": "x", "output": "y"}, "missing_column", "instruction"),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
            "unknown_role",
            "conversations[1].from",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "human", "value": "b"},
                    {"from": "gpt", "value": "c"},
                ]
            },
            "invalid_role_order",
            "conversations[1]",
        ),
        ({"conversations": [{"from": "human"}]}, "missing_field", "conversations[0].value"),
        ({"conversations": [{"from": "human", "value": "a"}]}, "missing_response", "conversations"),
    ],
)
def test_bad_records_name_the_field_and_reason(record, reason, field):
    fmt = "alpaca" if "input" in record else "sharegpt"
    with pytest.raises(RowError) as info:
        to_example(record, FormatSpec(fmt), "sft")
    assert (info.value.reason, info.value.field) == (reason, field)


def test_every_file_type_and_folders(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows)
    (folder / "b.json").write_text(json.dumps(rows))
    (folder / "c.csv").write_text(
        "instruction,output\n" + "".join(f"q{i},a{i}\n" for i in range(3))
    )
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, folder / "d.parquet")
    with (
        pa.OSFile(str(folder / "e.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)  # the IPC stream format Hugging Face datasets write
    (folder / "notes.md").write_text("ignored: not a data file")
    records = list(iter_records(expand([str(folder)])))
    assert [r.file for r in records] == [
        f for f in ("a.jsonl", "b.json", "c.csv", "d.parquet", "e.arrow") for _ in range(3)
    ]
    assert all(r.value == rows[r.row - 1] for r in records)


def test_bad_rows_are_counted_per_reason_or_fail_with_file_row_field(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps(
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    )
    lines = [
        good,
        '{"conversations": [{"from": "human", "value": "a"}, {"from": "alien", "value": "b"}]}',
        "not json",
        good,
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"conversations": "\xff\xfe"}\n')
    source = SourceSpec((str(path),), FormatSpec("sharegpt"))
    spec = DataSpec((source,), "sft", "", None)  # type: ignore[arg-type]
    stats = Stats()
    kept = list(iter_examples(spec, stats))
    assert [eid for eid, _ in kept] == ["0/data.jsonl:1", "0/data.jsonl:4"]
    assert stats.source_rows == 5
    assert dict(stats.dropped_rows) == {"unknown_role": 1, "invalid_json": 1, "invalid_utf8": 1}
    failing = DataSpec((source,), "sft", "", None, fail_on_bad_rows=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as info:
        list(iter_examples(failing, Stats()))
    assert info.value.violations[0].field == "data.jsonl:2:conversations[1].from"


def test_dataset_info_json_entries_work_unchanged(tmp_path):
    write_jsonl(tmp_path / "sg.jsonl", [{"messages": [{"role": "user", "content": "a"}]}])
    info = {
        "alpaca_demo": {"file_name": "alpaca.json"},
        "glaive_like": {
            "file_name": "sg.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "tools": "tools", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant"},
        },
        "dpo_demo": {"file_name": "dpo.json", "ranking": True, "formatting": "sharegpt"},
        "hub_only": {"hf_hub_url": "org/name"},
        "bad_format": {"file_name": "x.json", "formatting": "vicuna"},
    }  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    entry = registry.resolve(str(tmp_path), "glaive_like")
    assert entry.format.format == "sharegpt" and entry.format.tag("role_tag") == "role"
    # kept, so that a record holding images is refused by name (test_misreading.py)
    assert entry.format.column("images") == "images"
    assert registry.resolve(str(tmp_path), "dpo_demo").format.format == "preference_sharegpt"
    assert registry.resolve(str(tmp_path), "alpaca_demo").format.format == "alpaca"
    with pytest.raises(InvalidArgument) as bad:
        registry.resolve(str(tmp_path), "alpaca_dem")
    assert "did you mean 'alpaca_demo'" in str(bad.value) and "dpo_demo" in str(bad.value)
    with pytest.raises(InvalidArgument, match="hub"):
        registry.resolve(str(tmp_path), "hub_only")
    with pytest.raises(InvalidArgument, match="alpaca, sharegpt"):
        registry.resolve(str(tmp_path), "bad_format")
